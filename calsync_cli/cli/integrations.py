"""``calsync status``, ``filters show|set``, ``direction`` and ``toggle``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import IntegrationArg, JsonOpt

filters = typer.Typer(
    help="Privacy, practice and provider filters: what each integration's events show.",
    no_args_is_help=True,
)


class Direction(StrEnum):
    push = "push"
    pull = "pull"
    two_way = "two-way"


class NameFormat(StrEnum):
    full = "full"
    short = "short"
    initials = "initials"


GETTING_STARTED = """\
No integrations yet{counts}. To get started:
  calsync practices import practices.jsonl
  calsync providers import providers.jsonl
  calsync visits import visits.jsonl
  calsync connect google --provider PROVIDER_ID     (or: calsync connect outlook ...)
Try it all offline first with: calsync demo"""


def _when(iso: str | None) -> str:
    """2026-11-24T15:00:43.911581+00:00 -> 2026-11-24 15:00Z"""
    return "never" if iso is None else f"{iso[:10]} {iso[11:16]}Z"


def status_table(rows: list[dict[str, Any]]) -> None:
    """The table of ``calsync status`` (also shown by ``calsync demo``)."""
    output.table(
        None,
        ["id", "provider", "app", "account", "calendar", "direction", "status", "last synced", "queued", "failed"],
        [
            [
                r["id"], r["provider_id"], r["app"], r["account"] or "-",
                r["calendar_name"] or r["calendar_id"] or "(none chosen)", r["direction"],
                r["status"] + (" (paused)" if r["paused"] else ""),
                _when(r["last_synced_at"]), r["queued"], r["failed"],
            ]
            for r in rows
        ],
    )  # fmt: skip
    for r in rows:
        if r["status_detail"]:
            output.say(f"integration {r['id']}: {r['status_detail']}")
        failures = r.get("failures") or []
        if failures:
            shown = f"the latest {len(failures)}" if len(failures) < r["failed"] else "all"
            output.say(f"Failed for good ({r['failed']}; {shown}, newest first):")
            for f in failures:
                output.say(
                    f"  visit {f['visit_id']} at {_when(f['start'])}: {f['action']} failed"
                    f" {_when(f['failed_at'])}: {f['error'] or 'no detail'}"
                )
            output.say(
                "  After fixing the cause: calsync sweep --retry-failed queues them again"
                " (a later change of a visit queues it too)."
            )


def status(
    integration: Annotated[
        int | None,
        typer.Argument(metavar="INTEGRATION", help="Show only this integration.", min=1),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show each integration: its calendar, status, last sync and queued work.

    Status is Active (syncing), Pending (a calendar must be chosen), Error (the latest attempt
    failed; calsync keeps retrying; see the detail) or Disconnected. Given one INTEGRATION, it
    also lists its latest jobs that failed for good: visit id, start, and the error.
    """
    from calsync_cli.services import status as core

    url = context.settings().db_url
    rows = core.status_rows(url, context.store, integration)
    context.private(url)  # the fast read opens no store, which would have done it

    def human() -> None:
        if not rows:
            counts = core.store_counts(context.store)
            have = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
            output.say(GETTING_STARTED.format(counts=f" ({have} stored)" if have else ""))
            return
        status_table(rows)

    output.render({"integrations": rows}, as_json, human)


def _show_filters(data: dict[str, Any]) -> None:
    on = lambda v: "on" if v else "off"  # noqa: E731
    output.table(
        f"Filters of integration {data['integration']}",
        ["filter", "value"],
        [
            [
                "patient name",
                on(data["patient_name"])
                + (f" ({data['patient_name_format']})" if data["patient_name"] else ""),
            ],
            ["visit type", on(data["visit_type"])],
            ["location", on(data["location"])],
            ["notes (visit reason)", on(data["notes"])],
            ["practice name", on(data["practice_name"])],
            ["private", on(data["private"])],
            [
                "reminders",
                "app default" if data["reminders"] is None else on(data["reminders"]),
            ],
            ["practices", ", ".join(data["practices"]) or "all"],
            ["providers", ", ".join(data["providers"]) or "all"],
        ],
    )


@filters.command("show")
def filters_show(integration: IntegrationArg, as_json: JsonOpt = False) -> None:
    """Show what an integration's events disclose, and which visits it syncs."""
    from calsync_cli.services import integrations as core

    data = core.show_filters(context.store(), integration)
    output.render(data, as_json, lambda: _show_filters(data))


@filters.command("set")
def filters_set(
    integration: IntegrationArg,
    patient_name: Annotated[
        bool | None,
        typer.Option(
            "--patient-name/--no-patient-name",
            help="Patient name in title and description (default on).",
        ),
    ] = None,
    patient_name_format: Annotated[
        NameFormat | None,
        typer.Option(
            "--patient-name-format", help="full: Jane Doe; short: Jane D.; initials: J.D."
        ),
    ] = None,
    visit_type: Annotated[
        bool | None, typer.Option("--visit-type/--no-visit-type", help="Visit type (default on).")
    ] = None,
    location: Annotated[
        bool | None,
        typer.Option("--location/--no-location", help="Practice location and room (default on)."),
    ] = None,
    notes: Annotated[
        bool | None,
        typer.Option("--notes/--no-notes", help="Visit reason in the description (default off)."),
    ] = None,
    practice_name: Annotated[
        bool | None,
        typer.Option("--practice-name/--no-practice-name", help="Practice name (default on)."),
    ] = None,
    private: Annotated[
        bool | None,
        typer.Option(
            "--private/--no-private",
            help="Mark events private, so people the calendar is shared with see only busy (default on).",
        ),
    ] = None,
    reminders: Annotated[
        bool | None,
        typer.Option(
            "--reminders/--no-reminders",
            help="Reminders on synced events (default: Outlook off, Google the calendar's default reminders).",
        ),
    ] = None,
    practice: Annotated[
        list[str] | None,
        typer.Option(
            "--practice", help="Sync only this practice's visits (repeatable; replaces the list)."
        ),
    ] = None,
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider", help="Sync only this provider's visits (repeatable; replaces the list)."
        ),
    ] = None,
    all_practices: Annotated[
        bool, typer.Option("--all-practices", help="Clear the practice filter: every practice.")
    ] = False,
    all_providers: Annotated[
        bool, typer.Option("--all-providers", help="Clear the provider filter: every provider.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change what an integration's events show and which visits it syncs.

    Upcoming events are re-rendered (or removed, when a visit no longer matches) on the next
    sync; past events are left as they are. Example, to hide patient names:

      calsync filters set 1 --no-patient-name
    """
    from calsync_cli.errors import InputError
    from calsync_cli.services import integrations as core

    if all_practices and practice:
        raise InputError(
            "--all-practices and --practice contradict each other", hint="Use one of them"
        )
    if all_providers and provider:
        raise InputError(
            "--all-providers and --provider contradict each other", hint="Use one of them"
        )
    change = core.FilterChange(
        patient_name=patient_name,
        patient_name_format=patient_name_format.value if patient_name_format else None,
        visit_type=visit_type,
        location=location,
        notes=notes,
        practice_name=practice_name,
        private=private,
        reminders=reminders,
        practices=[] if all_practices else (practice or None),
        providers=[] if all_providers else (provider or None),
    )
    data = core.set_filters(context.store(), integration, change, now=context.now())

    def human() -> None:
        if not data["changed"]:
            output.say("Nothing changed.")
        else:
            output.say(
                f"Changed {', '.join(data['changed'])}; queued {data['jobs_queued']} upcoming visits to re-sync."
            )
        _show_filters(data)

    output.render(data, as_json, human)


def direction(
    integration: IntegrationArg,
    mode: Annotated[
        Direction,
        typer.Argument(
            metavar="push|pull|two-way",
            help="push: send visits out (default). pull: read the calendar to report conflicts. two-way: both.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Choose the sync direction of an integration."""
    from calsync_cli.services import integrations as core

    data = core.set_direction(context.store(), integration, mode.value, now=context.now())
    output.render(
        data, as_json, lambda: output.say(f"Integration {integration} now syncs {mode.value}.")
    )


def toggle(
    integration: IntegrationArg,
    pause: Annotated[
        bool | None,
        typer.Option("--pause/--resume", help="Pause or resume explicitly (default: flip)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause or resume pushing without disconnecting.

    While paused nothing is pushed. Visits that change while paused are not backfilled when
    you resume: only later changes sync.
    """
    from calsync_cli.services import integrations as core

    data = core.toggle(context.store(), integration, pause, now=context.now())
    word = "paused" if data["paused"] else "resumed"
    output.render(data, as_json, lambda: output.say(f"Integration {integration} {word}."))


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.add_typer(filters, name="filters")
    app.command("direction")(direction)
    app.command("toggle")(toggle)
