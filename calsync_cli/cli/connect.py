"""``calsync connect``, ``calendars list|select`` and ``disconnect``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from calsync_cli.cli.options import IntegrationArg, JsonOpt


class App(StrEnum):
    google = "google"
    outlook = "outlook"


calendars = typer.Typer(
    help="The calendars of a connected account, and which one visits go to.", no_args_is_help=True
)


def _later(feature: str) -> None:
    from calsync_cli.errors import NotImplementedYet

    raise NotImplementedYet(f"{feature} is not available in this build yet")


def connect(
    app_name: Annotated[App, typer.Argument(metavar="google|outlook", help="The calendar app.")],
    provider: Annotated[
        str,
        typer.Option(
            "--provider", help="The provider (clinician) id whose visits this calendar receives."
        ),
    ],
    calendar: Annotated[
        str | None,
        typer.Option(
            "--calendar",
            metavar="CAL_ID",
            help="The calendar to use (default: ask, or leave Pending).",
        ),
    ] = None,
    no_browser: Annotated[
        bool,
        typer.Option("--no-browser", help="Do not open a browser; open the printed URL yourself."),
    ] = False,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="Loopback port for the sign-in redirect (default: any free port).",
        ),
    ] = 0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the sign-in.")
    ] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Sign in to Google or Microsoft and connect a clinician's calendar."""
    _later("connect")


@calendars.command("list")
def calendars_list(integration: IntegrationArg, as_json: JsonOpt = False) -> None:
    """List the account's calendars: id, name, primary, writable."""
    _later("calendars list")


@calendars.command("select")
def calendars_select(
    integration: IntegrationArg,
    calendar_id: Annotated[
        str, typer.Argument(metavar="CAL_ID", help="A calendar id from 'calsync calendars list'.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Choose the calendar visits go to."""
    _later("calendars select")


def disconnect(
    integration: IntegrationArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Revoke the tokens and stop syncing; events already synced stay."""
    _later("disconnect")


def register(app: typer.Typer) -> None:
    app.command("connect")(connect)
    app.add_typer(calendars, name="calendars")
    app.command("disconnect")(disconnect)
