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
    app.command("demo")(demo)
    app.add_typer(sandbox, name="sandbox")
