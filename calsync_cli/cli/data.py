"""``calsync practices|providers|visits import`` and ``calsync visits list``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import JsonOpt

if TYPE_CHECKING:
    from calsync_cli.services.imports import Kind

PROGRESS_ROWS = 5000

practices = typer.Typer(help="Practices: id, name, location, timezone.", no_args_is_help=True)
providers = typer.Typer(help="Providers (clinicians): id, name, email.", no_args_is_help=True)
visits = typer.Typer(help="Visits: import them, list them.", no_args_is_help=True)

FileArg = Annotated[
    str,
    typer.Argument(
        metavar="FILE",
        help="A .jsonl or .csv file, or - for standard input.",
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        metavar="jsonl|csv",
        help="The file's format, when its extension does not say (default: by extension).",
    ),
]


def _run_import(kind: Kind, file: str, fmt: str | None, as_json: bool) -> None:
    from calsync_cli.services import imports as importers

    store = context.store()
    size_hint = _rows_hint(file)
    with output.progress_bar(
        f"importing {kind}", enabled=not as_json and size_hint > PROGRESS_ROWS
    ) as bar:
        result = importers.import_file(
            store,
            kind,
            file,
            fmt=fmt,
            now=context.now(),
            progress=bar,
        )
    for warning in result.warnings:
        output.warn(warning)
    data = result.as_dict()

    def human() -> None:
        parts = [
            f"{result.created} new",
            f"{result.updated} changed",
            f"{result.unchanged} unchanged",
        ]
        if kind == "visits":
            parts.append(f"{result.cancelled} cancelled")
        line = f"Imported {result.rows} {kind}: " + ", ".join(parts)
        if result.jobs_queued:
            line += f"; queued {result.jobs_queued} sync jobs"
        output.say(line + ".")

    output.render(data, as_json, human)


def _rows_hint(file: str) -> int:
    """A cheap guess at the row count (file size / 100 bytes) to decide on a progress bar."""
    import os

    try:
        return os.path.getsize(file) // 100 if file != "-" else 0
    except OSError:
        return 0


@practices.command("import")
def practices_import(file: FileArg, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Add or update practices from FILE (fields: id, name, timezone, location).

    timezone is an IANA name such as America/Chicago. Re-importing the same file changes
    nothing. A renamed or moved practice re-renders its upcoming events.
    """
    _run_import("practices", file, fmt, as_json)


@providers.command("import")
def providers_import(file: FileArg, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Add or update providers (clinicians) from FILE (fields: id, name, email)."""
    _run_import("providers", file, fmt, as_json)


@visits.command("import")
def visits_import(file: FileArg, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Add, update or cancel visits from FILE, and queue their sync.

    Fields: id, practice_id, provider_id, patient_name, start, end (ISO 8601 with an offset,
    e.g. 2026-12-01T09:00:00-06:00), and optional visit_type, room, reason, status (scheduled,
    confirmed, checked_in, completed, no_show, cancelled; default scheduled).

    Every row is checked before anything is written: one bad row fails the import with its line
    number and nothing changes. Only new, changed or cancelled visits queue sync work.
    """
    _run_import("visits", file, fmt, as_json)


def _parse_day(value: str | None, option: str, *, end: bool) -> datetime | None:
    from datetime import UTC, time, timedelta

    from calsync_cli.errors import InputError

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"{option} {value!r} is not a date or time",
            hint="Use e.g. 2026-12-01 or 2026-12-01T09:00-06:00",
        ) from None
    from calsync_cli.services.imports import MAX_YEAR, MIN_YEAR, within_years

    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if not within_years(parsed):
        raise InputError(
            f"{option} {value!r} is outside the years {MIN_YEAR}-{MAX_YEAR}",
            hint="Stored visits all fall within them",
        )
    if len(value) == 10:  # a bare date: the whole day, in UTC
        parsed = datetime.combine(parsed.date(), time(0), UTC) + (
            timedelta(days=1) if end else timedelta()
        )
    return parsed


def _span(start: str, end: str) -> str:
    """``2026-12-01 09:00-09:30``; a visit that ends on another day shows both dates:
    ``2026-12-01 23:00-2026-12-02 01:00``."""
    tail = end[11:16] if end[:10] == start[:10] else f"{end[:10]} {end[11:16]}"
    return f"{start[:10]} {start[11:16]}-{tail}"


@visits.command("list")
def visits_list(
    provider: Annotated[
        list[str] | None, typer.Option("--provider", help="Only this provider (repeatable).")
    ] = None,
    practice: Annotated[
        list[str] | None, typer.Option("--practice", help="Only this practice (repeatable).")
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Visits ending after this date/time (e.g. 2026-12-01)."),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Visits starting before this date/time; a bare date includes that day."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many visits.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List stored visits, earliest first, in each practice's time zone."""
    from calsync_cli.services import visits as queries

    rows = queries.list_visits(
        context.store(),
        providers=provider or [],
        practices=practice or [],
        start=_parse_day(from_, "--from", end=False),
        end=_parse_day(to, "--to", end=True),
        limit=limit,
    )

    def human() -> None:
        if not rows:
            output.say("No visits match. Import some with: calsync visits import FILE")
            return
        output.table(
            None,
            ["id", "when (practice time)", "practice", "provider", "patient", "type", "status"],
            [
                [
                    r["id"],
                    _span(r["start"], r["end"]),
                    r["practice_id"],
                    r["provider_id"],
                    r["patient_name"],
                    r["visit_type"],
                    r["status"],
                ]
                for r in rows
            ],
        )

    data: dict[str, Any] = {"visits": rows}
    output.render(data, as_json, human)
