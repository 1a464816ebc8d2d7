"""``calsync audit``: the disclosure log, streamed; ``--prune-before`` for retention."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import JsonOpt


class Format(StrEnum):
    table = "table"
    jsonl = "jsonl"
    csv = "csv"


#: the table's columns: (heading, key, width); the last one is not padded
TABLE = (
    ("when", "at", 25),
    ("integ", "integration_id", 5),
    ("app", "app", 7),
    ("account", "account", 26),
    ("visit", "visit_id", 12),
    ("action", "action", 16),
    ("fields", "fields", 40),
    ("detail", "detail", 0),
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return " ".join(str(value).split())


def _write_table(rows: Iterable[dict[str, Any]]) -> int:
    out = sys.stdout
    out.write("  ".join(h.ljust(w) for h, _, w in TABLE).rstrip() + "\n")
    n = 0
    for row in rows:
        out.write("  ".join(_cell(row[k]).ljust(w) for _, k, w in TABLE).rstrip() + "\n")
        n += 1
    return n


def _write_jsonl(rows: Iterable[dict[str, Any]]) -> int:
    out, dumps, n = sys.stdout, json.dumps, 0
    for row in rows:
        out.write(dumps(row, separators=(",", ":")) + "\n")
        n += 1
    return n


def _write_csv(rows: Iterable[dict[str, Any]]) -> int:
    from calsync_cli.services.audit import COLUMNS

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = 0
    for row in rows:
        writer.writerow(["" if row[c] is None else _cell(row[c]) for c in COLUMNS])
        n += 1
    return n


def audit(
    integration: Annotated[
        int | None,
        typer.Option("--integration", min=1, metavar="ID", help="Only this integration's entries."),
    ] = None,
    visit: Annotated[
        str | None, typer.Option("--visit", metavar="ID", help="Only this visit's entries.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Only entries from WHEN on: an ISO date or instant, or an age (30d, 12h).",
        ),
    ] = None,
    fmt: Annotated[
        Format | None,
        typer.Option("--format", help="table (default), jsonl (one JSON object a line) or csv."),
    ] = None,
    prune_before: Annotated[
        str | None,
        typer.Option(
            "--prune-before",
            metavar="WHEN",
            help="Delete the entries recorded before WHEN (retention); the pruning is audited.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The disclosure log: when, which integration (app, account), which visit, what action,
    which fields were sent (names of fields, never their values).

    Entries stream oldest first, so a large trail exports in constant memory; --json prints
    JSON Lines (the same as --format jsonl).
    """
    from calsync_cli.errors import InputError
    from calsync_cli.services import audit as core

    now = context.now()
    if prune_before is not None:
        if integration is not None or visit is not None or since is not None or fmt is not None:
            raise InputError(
                "--prune-before cannot be combined with --integration, --visit, --since or "
                "--format",
                hint="Prune the whole trail before a date: calsync audit --prune-before 365d",
            )
        result = core.prune(context.store(), core.parse_when(prune_before, now=now), now=now)
        output.render(
            result.to_json(),
            as_json,
            lambda: output.say(
                f"Deleted {result.deleted} audit entries recorded before "
                f"{result.before.isoformat()}."
            ),
        )
        return
    if as_json and fmt not in (None, Format.jsonl):
        raise InputError(
            f"--json prints JSON Lines and cannot be combined with --format {fmt}",
            hint="Use --json or --format",
        )
    chosen = Format.jsonl if as_json else (fmt or Format.table)
    query = core.AuditQuery(
        integration_id=integration,
        visit_id=visit,
        since=core.parse_when(since, now=now) if since is not None else None,
    )
    writer = {Format.table: _write_table, Format.jsonl: _write_jsonl, Format.csv: _write_csv}
    try:
        with core.entries(context.store(), query) as rows:
            writer[chosen](core.entry_json(row) for row in rows)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (calsync audit | head): stop quietly, like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
