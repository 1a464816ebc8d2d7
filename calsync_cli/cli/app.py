"""The ``calsync`` Typer application: global options, command groups, and the error mapper."""

from __future__ import annotations

import math
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


#: the largest integer calsync accepts anywhere (ids, limits, ports): PostgreSQL's INTEGER,
#: the type of every id column (a larger value is an error there, and SQLite overflows at 2**63)
MAX_INT = 2**31 - 1
#: the largest number of seconds (every float option is one): about 31 years. More is a typo,
#: and overflows timers
MAX_SECONDS = 1e9


#: parameters that name a file: any bytes the file system allows, UTF-8 or not
PATH_PARAMETERS = frozenset({"file"})


def _check_value(param: Any, ctx: typer.Context, value: object) -> None:
    """Refuse values no command can use, as Click's own usage error (exit 2): an integer
    beyond ``MAX_INT`` (it would overflow the database), a float that is not finite (``inf``,
    ``nan``) or beyond ``MAX_SECONDS``, text with bytes that are not UTF-8 (Python hands them
    over as lone surrogates, which no database, JSON or HTTP call accepts) except in a file
    name."""
    values = value if isinstance(value, list | tuple) else (value,)
    for v in values:
        if isinstance(v, bool):
            continue
        if isinstance(v, str) and param.name not in PATH_PARAMETERS:
            if any("\ud800" <= c <= "\udfff" for c in v):
                raise typer.BadParameter(
                    "contains bytes that are not UTF-8 text", ctx=ctx, param=param
                )
            if "\x00" in v:
                raise typer.BadParameter("contains a NUL character", ctx=ctx, param=param)
        if isinstance(v, int) and abs(v) > MAX_INT:
            raise typer.BadParameter(f"{v} is too large (at most {MAX_INT})", ctx=ctx, param=param)
        if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= MAX_SECONDS):
            raise typer.BadParameter(
                f"{v:g} is not a number of seconds (finite, at most {MAX_SECONDS:g})",
                ctx=ctx,
                param=param,
            )


def _patch_parameter_processing() -> None:
    """Two changes to how Typer processes every parameter's value, in one place.

    1. Refuse unusable numbers and text (``_check_value``) for every command's options and arguments.
    2. Hand back an absent value without building a coercer for it. Typer (0.27 and later)
       coerces every parameter's value through a pydantic TypeAdapter it builds on first use,
       even when the value is ``None`` (an option not given, the ``--help`` and completion
       flags), which its coercion then returns unchanged. Building the adapter imports
       pydantic: ~0.1 s on every run of every command, half of what ``calsync status`` costs
       cold. For a single-valued parameter that is absent and not required the result is the
       same without the adapter: ``None``, passed to the parameter's callback if it has one.
       Everything else, the "missing argument" error included, goes through Typer unchanged.

    ``tests/test_cli.py`` checks that ``calsync status`` does not import pydantic and
    ``tests/test_hardening_cli.py`` that numbers are bounded, so a Typer release that moves
    these internals shows up there; until then this is a no-op.
    """
    param_class = getattr(typer.core, "_TyperParameter", None)
    typer_process_value = getattr(param_class, "process_value", None)
    if param_class is None or typer_process_value is None:
        return

    def process_value(self: Any, ctx: typer.Context, value: object) -> object:
        if value is None and not self.required and self.nargs == 1 and not self.multiple:
            return value if self.callback is None else self.callback(ctx, self, value)
        value = typer_process_value(self, ctx, value)
        _check_value(self, ctx, value)
        return value

    param_class.process_value = process_value


_patch_parameter_processing()


def _refuse_contradictions(ctx: typer.Context, command: Any, args: list[str]) -> None:
    """``--pause --resume``, ``--notes --no-notes``: Click lets the last of a flag pair win
    silently; calsync refuses both given, for every ``--x/--no-x`` option of every command."""
    while isinstance(command, TyperGroup) and args and not args[0].startswith("-"):
        sub = command.get_command(ctx, args[0])
        if sub is None:
            return  # Click words the unknown command
        command, args = sub, args[1:]
    given = set(args[: args.index("--")] if "--" in args else args)
    for param in getattr(command, "params", ()):
        on = [o for o in param.opts if o in given]
        off = [o for o in getattr(param, "secondary_opts", ()) if o in given]
        if on and off:
            from calsync_cli.errors import InputError

            raise InputError(f"{on[0]} and {off[0]} contradict each other", hint="Give one")


class CalsyncGroup(TyperGroup):
    """The root command group: the one place that maps calsync's errors to exit codes, and
    Click's usage errors to calsync's one-line format."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.TyperException as exc:  # Click's usage errors
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help
                exc.show()  # type: ignore[attr-defined]
                sys.exit(2)
            ctx = getattr(exc, "ctx", None)
            sys.exit(output.usage_error(exc, ctx.command_path if ctx is not None else None))
        except typer.Abort:
            output.error_line("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:  # ``calsync -h | true``
            raise typer.Exit(output.broken_pipe()) from None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        _refuse_contradictions(ctx, command, rest)
        return name, command, rest

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
    from calsync_cli.cli import audit, connect, data, demo, doctor, integrations, sync, tokens

    app.add_typer(data.practices, name="practices")
    app.add_typer(data.providers, name="providers")
    app.add_typer(data.visits, name="visits")
    integrations.register(app)
    connect.register(app)
    sync.register(app)
    tokens.register(app)
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
