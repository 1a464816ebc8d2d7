"""Answers that need no argument parsing, given before Typer is imported.

``calsync --help`` and ``calsync status --json`` are what people, scripts and monitoring run
most; importing Typer (and Click under it) costs more than the answers themselves. For exactly
these argument shapes the entry point answers here, with the same bytes the full command line
would print (tests compare the two), and hands everything else to the full command line:

* ``calsync --help`` / ``-h``: the top-level help as Typer renders it 80 columns wide,
  generated with the completions (``python -m calsync_cli.cli.completions``; a test fails when
  stale). Given only when that is the width the full command line would use: output to a pipe
  or a file, or a terminal of exactly 80 columns (any other width is rendered by Typer).
* ``calsync status --json``: the store's fast read (``store.fast_status``), printed by the same
  JSON renderer. When the fast read cannot answer (no database yet, an older schema, another
  backend, a bad setting), the full command line takes over and says what is wrong.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from importlib import resources

HELP_WIDTH = 80


def help_text() -> str:
    return (resources.files("calsync_cli") / "data" / "help.txt").read_text(encoding="utf-8")


def answer(argv: Sequence[str]) -> bool:
    """Answer ``argv`` here when it is one of the shapes above; False: not answered."""
    args = list(argv)
    if args in (["--help"], ["-h"]):
        if shutil.get_terminal_size((HELP_WIDTH, 24)).columns != HELP_WIDTH:
            return False
        sys.stdout.write(help_text())
        sys.stdout.flush()
        return True
    if args == ["status", "--json"]:
        return _status_json()
    return False


def _status_json() -> bool:
    try:
        from calsync_cli.config import load_settings

        settings = load_settings()
    except Exception:  # noqa: BLE001 - the full command line reports it properly
        return False
    from calsync_cli.store import fast_status

    rows = fast_status.status_rows(settings.db_url)
    if rows is None:
        return False
    from calsync_cli.cli import context, output

    context.private(settings.db_url)  # as the command does: a loose file is made 0600
    output.emit_json({"integrations": rows})
    return True
