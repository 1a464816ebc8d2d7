"""One renderer for ``--json`` and human output, and one error mapper.

Data goes to stdout (one JSON document with ``--json``); everything meant for people goes to
stderr. Errors are one line on stderr, also with ``--json``, and map to exit codes:
0 success, 1 operational failure, 2 bad usage or input, 4 the integration needs signing in again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REAUTH = 0, 1, 2, 4


class State:
    """Global options, set by the app callback."""

    verbose: bool = False


state = State()


def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


#: width of tables written to a pipe or a log (no terminal, no COLUMNS): Rich would use 80 and
#: fold every cell of a 10-column status table over several lines
PIPE_WIDTH = 200


def out_console() -> Console:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


def say(message: str) -> None:
    """A line for people, on stderr."""
    err_console().print(message, markup=False)


def warn(message: str) -> None:
    err_console().print(f"warning: {message}", style="yellow", markup=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    out_console().print(t)


def render(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``human`` to print it for people."""
    if as_json:
        emit_json(data)
    else:
        human()


def error_line(message: str) -> None:
    sys.stderr.write(f"calsync: error: {message}\n")
    sys.stderr.flush()


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A Rich progress bar on stderr when ``enabled`` and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda phase, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"{label}: {phase}", total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def exit_code_of(exc: BaseException) -> int:
    """The exit code an exception means (README "Exit codes"): chosen here, and only here."""
    from calsync_cli.errors import InputError, ReauthRequired

    if isinstance(exc, ReauthRequired):
        return EXIT_REAUTH
    return EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILURE


def handle_exception(exc: BaseException) -> int:
    """Map an exception to one stderr line and an exit code."""
    from calsync_cli.errors import CalsyncError, one_line

    if isinstance(exc, CalsyncError):
        error_line(one_line(exc, limit=2000))
        if state.verbose:
            import traceback

            traceback.print_exception(exc)
        return exit_code_of(exc)
    if isinstance(exc, KeyboardInterrupt):
        error_line("interrupted")
        return 130
    # A bug, or a failure nobody translated. Its text may quote data (patient names), so only
    # its type is shown; the traceback only with -v.
    hint = "" if state.verbose else " (run with -v for the traceback)"
    error_line(f"unexpected internal error {type(exc).__name__}{hint}")
    if state.verbose:
        import traceback

        traceback.print_exception(exc)
    return EXIT_FAILURE
