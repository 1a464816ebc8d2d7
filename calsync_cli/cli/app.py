"""The ``calsync`` Typer application: global options, command groups, and the error mapper."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
import typer.core
from typer.core import TyperGroup

from calsync_cli import __version__
from calsync_cli.cli import output

HELP = """\
Keep each clinician's visit schedule in the calendar app they already use.

calsync imports practices, providers and visits from your practice management system, and
pushes each clinician's visits to their own Google Calendar or Outlook calendar.

Getting started:

\b
  calsync practices import practices.jsonl
  calsync providers import providers.jsonl
  calsync visits import visits.jsonl
  calsync connect google --provider dr-lee
  calsync sync --watch

\b
Every command takes --json. Exit codes: 0 ok, 1 operational failure, 2 bad usage or input,
4 an integration needs signing in again.
"""


def _skip_coercion_of_absent_values() -> None:
    """Make Typer hand back an absent value without building a coercer for it.

    Typer (0.27 and later) coerces every parameter's value through a pydantic TypeAdapter it
    builds on first use, even when the value is ``None`` (an option not given, the ``--help``
    and completion flags), which its coercion then returns unchanged. Building the adapter
    imports pydantic: ~0.1 s on every run of every command, half of what ``calsync status``
    costs cold. For a single-valued parameter that is absent and not required the result is
    the same without the adapter: ``None``, passed to the parameter's callback if it has one.
    Everything else, the "missing argument" error included, goes through Typer unchanged.
    ``tests/test_cli.py`` checks that ``calsync status`` does not import pydantic, so a Typer
    release that moves these internals shows up there; until then this is a no-op.
    """
    param_class = getattr(typer.core, "_TyperParameter", None)
    typer_process_value = getattr(param_class, "process_value", None)
    if param_class is None or typer_process_value is None:
        return

    def process_value(self: Any, ctx: typer.Context, value: object) -> object:
        if value is None and not self.required and self.nargs == 1 and not self.multiple:
            return value if self.callback is None else self.callback(ctx, self, value)
        return typer_process_value(self, ctx, value)

    param_class.process_value = process_value


_skip_coercion_of_absent_values()


class CalsyncGroup(TyperGroup):
    """The root command group: the one place that maps calsync's errors to exit codes."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:  # noqa: BLE001 - every other failure becomes one line
            raise typer.Exit(output.handle_exception(exc)) from None


app = typer.Typer(
    name="calsync",
    cls=CalsyncGroup,
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"calsync {__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Show details and tracebacks of failures.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Keep each clinician's visit schedule in the calendar app they already use."""
    from calsync_cli.cli import context

    output.state.verbose = verbose
    context.reset()


def _register() -> None:
    from calsync_cli.cli import audit, connect, data, demo, doctor, integrations, sync

    app.add_typer(data.practices, name="practices")
    app.add_typer(data.providers, name="providers")
    app.add_typer(data.visits, name="visits")
    integrations.register(app)
    connect.register(app)
    sync.register(app)
    demo.register(app)
    audit.register(app)
    doctor.register(app)


_register()


def run() -> None:
    """The console script: run the app; Typer exits with the command's code."""
    try:
        app(prog_name="calsync")
    except KeyboardInterrupt:
        output.error_line("interrupted")
        sys.exit(130)
