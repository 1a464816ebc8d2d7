"""Entry point for ``calsync`` and ``python -m calsync_cli``."""

from __future__ import annotations


def main() -> None:
    from calsync_cli.cli.app import run

    run()


if __name__ == "__main__":
    main()
