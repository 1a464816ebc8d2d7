"""``calsync tokens migrate``: move sign-ins between the keyring and the sealed database store."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import JsonOpt

tokens = typer.Typer(
    help="Where OAuth tokens live: this host's keyring, or sealed in the database for a fleet.",
    no_args_is_help=True,
)


class Target(StrEnum):
    database = "database"
    keyring = "keyring"


@tokens.command("migrate")
def migrate(
    to: Annotated[
        Target,
        typer.Option(
            "--to",
            metavar="database|keyring",
            help="The store to move every connected integration's tokens into.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Move existing sign-ins to another token store, without signing in again.

    --to database seals each connected integration's tokens into the calsync database (with the
    key in CALSYNC_SECRET_KEY_FILE, else one kept in this host's keyring) and removes them from
    the keyring; --to keyring moves them back. Safe to run again: what was moved already is
    counted, not moved twice. Then set CALSYNC_TOKEN_STORE to the same store on every host.
    """
    from calsync_cli.services.tokens import migrate as run_migrate

    settings = context.settings()
    result = run_migrate(settings, context.store(), to.value)

    def human() -> None:
        where = "the database (sealed)" if result.to == "database" else "the keyring"
        output.say(
            f"Moved {len(result.moved)} sign-ins to {where}; {len(result.already)} were there "
            "already."
        )
        if result.missing:
            ids = ", ".join(str(i) for i in result.missing)
            output.warn(
                f"no stored sign-in for integration(s) {ids}: run the 'calsync connect' "
                "command that 'calsync status' names"
            )
        if result.setting != result.to:
            output.say(
                f"Now set CALSYNC_TOKEN_STORE={result.to} on every host "
                f"(this one has {result.setting})."
            )

    output.render(result.to_json(), as_json, human)


def register(app: typer.Typer) -> None:
    app.add_typer(tokens, name="tokens")
