"""Options shared by every command."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout; messages go to stderr."),
]
IntegrationArg = Annotated[
    int,
    typer.Argument(
        metavar="INTEGRATION",
        help="The integration's id, as 'calsync connect' prints and 'calsync status' lists.",
        min=1,
    ),
]
