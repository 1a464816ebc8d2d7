"""Integrations: what ``status``, ``filters``, ``direction`` and ``toggle`` read and change.

Each function takes the store and an injected ``now``; none knows about the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from calsync_cli.engine.plan import wanted
from calsync_cli.errors import InputError, NotFoundError
from calsync_cli.store import audit, jobs, links
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store import status as store_status
from calsync_cli.store import visits as store_visits
from calsync_cli.store.db import Store
from calsync_cli.store.integrations import get as get
from calsync_cli.store.models import (
    DIRECTIONS,
    NAME_FORMATS,
    Integration,
    Practice,
    Provider,
)

PRIVACY_FLAGS = ("patient_name", "visit_type", "location", "notes", "practice_name")


def refuse_disconnected(integration_id: int, status: str, app: str, provider_id: str) -> None:
    """The one refusal for commands that need a connected integration."""
    if status == "Disconnected":
        raise InputError(
            f"integration {integration_id} is disconnected",
            hint=f"Reconnect it first: calsync connect {app} --provider {provider_id}",
        )


def status_rows(store: Store, integration_id: int | None = None) -> list[dict[str, Any]]:
    """One dict per integration: the ``status --json`` item (see DESIGN.md); for one
    integration also its latest failed jobs (``store.status``)."""
    with store.read() as session:
        return store_status.rows(session, integration_id)


def store_counts(store: Store) -> dict[str, int]:
    """How many practices, providers and visits are stored."""
    with store.read() as session:
        return store_status.counts(session)


def filters_of(integ: Integration) -> dict[str, Any]:
    return {
        "patient_name": integ.f_patient_name,
        "patient_name_format": integ.f_patient_name_format,
        "visit_type": integ.f_visit_type,
        "location": integ.f_location,
        "notes": integ.f_notes,
        "practice_name": integ.f_practice_name,
        "private": integ.f_private,
        "reminders": integ.f_reminders,
        "practices": list(integ.practice_filter),
        "providers": list(integ.provider_filter),
    }


def show_filters(store: Store, integration_id: int) -> dict[str, Any]:
    with store.read() as session:
        return {"integration": integration_id, **filters_of(get(session, integration_id))}


def disclosed_fields(integ: Integration) -> list[str]:
    """The visit fields an integration's events carry under its current filters."""
    fields = ["start", "end"]
    if integ.f_practice_name:
        fields.append("practice_name")
    if integ.f_patient_name:
        fields.append(f"patient_name:{integ.f_patient_name_format}")
    if integ.f_visit_type:
        fields.append("visit_type")
    if integ.f_location:
        fields.extend(["location", "room"])
    if integ.f_notes:
        fields.append("reason")
    return fields


@dataclass
class FilterChange:
    patient_name: bool | None = None
    patient_name_format: str | None = None
    visit_type: bool | None = None
    location: bool | None = None
    notes: bool | None = None
    practice_name: bool | None = None
    private: bool | None = None
    reminders: bool | None = None  # None: unchanged (the stored None means the app's default)
    practices: list[str] | None = None  # replaces the list; [] means all
    providers: list[str] | None = None


def set_filters(
    store: Store, integration_id: int, change: FilterChange, *, now: datetime
) -> dict[str, Any]:
    """Apply a filter change; re-queue upcoming visits whose events it affects."""
    if change.patient_name_format is not None and change.patient_name_format not in NAME_FORMATS:
        raise InputError(
            f"unknown patient name format {change.patient_name_format!r}",
            hint="Use full, short or initials",
        )
    with store.write() as session:
        integ = get(session, integration_id)
        refuse_disconnected(integration_id, integ.status, integ.app, integ.provider_id)
        for ids, model, label in (
            (change.practices, Practice, "practice"),
            (change.providers, Provider, "provider"),
        ):
            for item in ids or []:
                if session.get(model, item) is None:
                    raise NotFoundError(
                        f"unknown {label} {item!r}",
                        hint=f"Import it with: calsync {label}s import FILE",
                    )
        before = filters_of(integ)
        for flag in (*PRIVACY_FLAGS, "patient_name_format", "private", "reminders"):
            value = getattr(change, flag)
            if value is not None:
                setattr(integ, f"f_{flag}", value)
        if change.practices is not None:
            integ.practice_filter = sorted(set(change.practices))
        if change.providers is not None:
            integ.provider_filter = sorted(set(change.providers))
        after = filters_of(integ)
        changed = sorted(k for k in after if after[k] != before[k])
        if changed:
            # links rendered under an older version are stale (store.models.Integration)
            integ.filter_version = (integ.filter_version or 0) + 1
        session.add(integ)
        queued = 0
        if changed:
            audit.record(
                session,
                "filters_set",
                now=now,
                integration_id=integration_id,
                fields=changed,
                detail="disclosed: " + ", ".join(disclosed_fields(integ)),
            )
            queued = requeue_upcoming(session, integ, now=now)
        return {"integration": integration_id, **after, "changed": changed, "jobs_queued": queued}


def requeue_upcoming(session: Session, integ: Integration, *, now: datetime) -> int:
    """Queue every upcoming visit that is, or should be, on the integration's calendar.

    Used after a filter change or a calendar choice: the worker then creates, re-renders, moves
    or deletes each event as the visit and the filters now say. Past visits are left alone.
    """
    if integ.id is None or integ not in store_integrations.pushing(session):
        return 0
    linked = links.live_visit_ids(session, integ.id)
    work: list[tuple[int, str, str]] = []
    for vid, facts in store_visits.upcoming_facts(session, now):
        if wanted(facts, integ):
            work.append((integ.id, vid, "upsert"))
        elif vid in linked:
            work.append((integ.id, vid, "delete"))
    return jobs.enqueue(session, work, now)


def set_direction(
    store: Store, integration_id: int, direction: str, *, now: datetime
) -> dict[str, Any]:
    if direction not in DIRECTIONS:
        raise InputError(f"unknown direction {direction!r}", hint="Use push, pull or two-way")
    with store.write() as session:
        integ = get(session, integration_id)
        previous = integ.direction
        integ.direction = direction
        session.add(integ)
        if previous != direction:
            audit.record(
                session,
                "direction",
                now=now,
                integration_id=integration_id,
                detail=f"{previous} -> {direction}",
            )
            if previous == "pull":
                integ.active_since = now  # pushing starts now; nothing from before is backfilled
        return {"integration": integration_id, "direction": direction, "previous": previous}


def toggle(
    store: Store, integration_id: int, pause: bool | None, *, now: datetime
) -> dict[str, Any]:
    """Pause or resume pushing (``pause=None`` flips).

    While paused the worker skips the integration and imports queue nothing for it. Work queued
    before the pause waits and runs after the resume; what changed while paused is never
    backfilled (``active_since`` moves to the resume, and the sweep looks only after it).
    """
    with store.write() as session:
        integ = get(session, integration_id)
        refuse_disconnected(integration_id, integ.status, integ.app, integ.provider_id)
        target = (not integ.paused) if pause is None else pause
        if target != integ.paused:
            integ.paused = target
            if not target:
                integ.active_since = now
            session.add(integ)
            audit.record(
                session, "pause" if target else "resume", now=now, integration_id=integration_id
            )
        return {"integration": integration_id, "paused": integ.paused}


def drop_live_jobs(session: Session, integration_id: int, *, now: datetime, reason: str) -> int:
    return jobs.drop_live(session, integration_id, now=now, reason=reason)


def create(
    session: Session,
    *,
    provider_id: str,
    app: str,
    now: datetime,
    account: str | None = None,
    calendar_id: str | None = None,
    calendar_name: str | None = None,
) -> Integration:
    """A new integration for a provider: privacy filters at the seed defaults, the provider
    filter holding the clinician's own id, Active once a calendar is chosen, else Pending."""
    if session.get(Provider, provider_id) is None:
        raise NotFoundError(
            f"unknown provider {provider_id!r}",
            hint="Import it first: calsync providers import FILE (see 'calsync visits list')",
        )
    integ = Integration(
        provider_id=provider_id,
        app=app,
        account=account,
        calendar_id=calendar_id,
        calendar_name=calendar_name,
        status="Active" if calendar_id else "Pending",
        status_detail=None if calendar_id else "choose a calendar: calsync calendars select",
        created_at=now,
        active_since=now,
        provider_filter=[provider_id],
    )
    session.add(integ)
    session.flush()
    audit.record(
        session,
        "connect",
        now=now,
        integration_id=integ.id,
        detail=f"{app} account {account or '?'}",
    )
    return integ
