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
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REAUTH = 0, 1, 2, 4


class State:
    """Global options, set by the app callback."""

    verbose: bool = False


state = State()


@cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class PipeConsole(Console):
        """Rich exits 1 when its reader goes away; calsync's error mapper decides instead."""

        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return PipeConsole


def err_console() -> Console:
    return _console_class()(stderr=True, highlight=False, soft_wrap=True)


#: width of tables written to a pipe or a log (no terminal, no COLUMNS): Rich would use 80 and
#: fold every cell of a 10-column status table over several lines
PIPE_WIDTH = 200


def out_console() -> Console:
    console = _console_class()(highlight=False, soft_wrap=True)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


def say(message: str) -> None:
    """A line for people, on stderr."""
    from calsync_cli.errors import redact_url

    err_console().print(redact_url(message), markup=False)


def warn(message: str) -> None:
    from calsync_cli.errors import redact_url

    err_console().print(f"warning: {redact_url(message)}", style="yellow", markup=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


#: the narrowest a table column may get before the table turns into one record per block:
#: Rich squeezes columns down to nothing on a narrow terminal, and a number must never vanish
MIN_COLUMN = 6


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    cells = [["" if v is None else str(v) for v in row] for row in rows]
    console = out_console()
    need = 1 + sum(
        3 + min(MIN_COLUMN, max([len(c), *(len(r[i]) for r in cells)]))
        for i, c in enumerate(columns)
    )
    if console.width < need:
        _records(console, title, columns, cells)
        return
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold", min_width=min(MIN_COLUMN, len(c)))
    for row in cells:
        t.add_row(*row)
    console.print(t)


def _records(
    console: Console, title: str | None, columns: Sequence[str], cells: Sequence[Sequence[str]]
) -> None:
    """A table too wide for the terminal, as ``column: value`` lines, one block per row (the
    terminal wraps long lines; nothing is cut)."""
    if title:
        console.print(title, markup=False, style="bold")
    for n, row in enumerate(cells):
        if n:
            console.print()
        for c, v in zip(columns, row, strict=False):
            console.print(f"{c}: {v}", markup=False)


def render(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``human`` to print it for people."""
    if as_json:
        emit_json(data)
    else:
        human()


def error_line(message: str) -> None:
    """The one format of every error: ``calsync: error: what. How to fix it`` on one line,
    with any URL's password hidden."""
    from calsync_cli.errors import redact_url

    text = " ".join(redact_url(message).split())
    try:
        sys.stderr.write(f"calsync: error: {text}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # stderr is a closed pipe too: nothing to tell
        pass


#: the exit code of a command whose reader went away (``| head``): 128 + SIGPIPE, as a shell
#: reports a process killed by that signal
EXIT_BROKEN_PIPE = 141


def broken_pipe() -> int:
    """The reader of our output went away (``calsync status --json | true``): stop quietly.

    Point stdout at /dev/null so the interpreter's final flush does not print "Exception
    ignored ... BrokenPipeError" (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests): nothing to flush
        pass
    return EXIT_BROKEN_PIPE


def usage_error(exc: Exception, command_path: str | None) -> int:
    """Click's own usage errors (unknown option, bad value, missing argument) in calsync's
    one-line format, exit 2."""
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    message = message.strip().rstrip(".")
    hint = f"Run '{command_path} -h' for help" if command_path else "Run 'calsync -h' for help"
    error_line(f"{message}. {hint}")
    return EXIT_USAGE


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
    if isinstance(exc, BrokenPipeError):
        return broken_pipe()
    if type(exc).__module__.startswith("sqlalchemy."):
        # A database failure no core function translated: the driver's text can quote
        # values (patient names), so the class and a fixed summary only.
        from calsync_cli.errors import safe_summary

        error_line(
            f"database error: {safe_summary(exc)}. Check CALSYNC_DB_URL and retry; "
            "-v shows the traceback"
        )
        if state.verbose:
            import traceback

            traceback.print_exception(exc)
        return EXIT_FAILURE
    # A bug, or a failure nobody translated. Its text may quote data (patient names), so only
    # its type is shown; the traceback only with -v.
    hint = "" if state.verbose else " (run with -v for the traceback)"
    error_line(f"unexpected internal error {type(exc).__name__}{hint}")
    if state.verbose:
        import traceback

        traceback.print_exception(exc)
    return EXIT_FAILURE
