"""Commands whose features are built in later steps: they parse their options and say so."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from calsync_cli.cli.options import JsonOpt


class App(StrEnum):
    google = "google"
    outlook = "outlook"


calendars = typer.Typer(
    help="The calendars of a connected account, and which one visits go to.", no_args_is_help=True
)
sandbox = typer.Typer(
    help="The local provider sandbox: fake Google and Microsoft services.", no_args_is_help=True
)


def _later(feature: str) -> None:
    from calsync_cli.errors import NotImplementedYet

    raise NotImplementedYet(f"{feature} is not available in this build yet")


def sync(
    watch: Annotated[bool, typer.Option("--watch", help="Keep running until interrupted.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between rounds with --watch.")
    ] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Push queued work to the external calendars (and pull busy time for pull/two-way)."""
    _later("sync")


def sweep(
    lookback: Annotated[
        str, typer.Option("--lookback", help="How far back to look, e.g. 24h, 90m, 2d.")
    ] = "24h",
    as_json: JsonOpt = False,
) -> None:
    """Queue visits that should have synced and did not."""
    _later("sweep")


def conflicts(
    integration: Annotated[
        int | None, typer.Argument(metavar="[INTEGRATION]", min=1, help="Only this integration.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Visits that overlap busy time on the external calendar (pull and two-way)."""
    _later("conflicts")


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo's temporary directory.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run everything end to end on the built-in sandbox: no account needed."""
    _later("demo")


@sandbox.command("serve")
def sandbox_serve(
    port: Annotated[
        int,
        typer.Option(
            "--port", min=0, max=65535, help="Port on 127.0.0.1 (default: any free port)."
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run the provider sandbox in the foreground."""
    _later("sandbox serve")


def register(app: typer.Typer) -> None:
    app.command("sync")(sync)
    app.command("sweep")(sweep)
    app.command("conflicts")(conflicts)
    app.command("demo")(demo)
    app.add_typer(sandbox, name="sandbox")
