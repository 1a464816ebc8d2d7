"""Entry point for ``calsync`` and ``python -m calsync_cli``."""

from __future__ import annotations


def main() -> None:
    import sys

    from calsync_cli.cli.fast import answer

    if answer(sys.argv[1:]):  # --help and status --json, without importing Typer
        return
    from calsync_cli.cli.app import run

    run()


if __name__ == "__main__":
    main()
