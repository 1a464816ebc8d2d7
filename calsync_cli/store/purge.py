"""What ``calsync disconnect --purge`` asks the store: an integration's events of upcoming
visits, and forgetting an event once it is deleted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from calsync_cli.store import audit
from calsync_cli.store.models import EventLink


@dataclass(frozen=True)
class LinkedEvent:
    visit_id: str
    external_id: str
    #: the calendar the event was written to (None: the integration's calendar)
    calendar_id: str | None


def events_by_period(
    session: Session, integration_id: int, *, now: datetime
) -> tuple[list[LinkedEvent], int]:
    """The integration's events of visits that end after ``now`` (upcoming, in progress), and
    how many events of visits that ended by then it also has (past: they stay)."""
    lk, v = (SQLModel.metadata.tables[t] for t in ("event_link", "visit"))
    stmt = (
        sa.select(lk.c.visit_id, lk.c.external_id, lk.c.calendar_id, v.c.end > now)
        .select_from(lk.join(v, v.c.id == lk.c.visit_id))
        .where(lk.c.integration_id == integration_id, lk.c.external_id.is_not(None))
        .order_by(v.c.start, lk.c.visit_id)
    )
    upcoming: list[LinkedEvent] = []
    past = 0
    for visit_id, external_id, calendar_id, is_upcoming in session.execute(stmt):
        if is_upcoming:
            upcoming.append(LinkedEvent(visit_id, external_id, calendar_id))
        else:
            past += 1
    return upcoming, past


def forget_deleted(
    session: Session, integration_id: int, visit_id: str, *, now: datetime, detail: str
) -> None:
    """The event of ``visit_id`` is gone from the calendar: clear its link (the row and its
    generation stay, as after any delete) and record the delete."""
    link = session.get(EventLink, (integration_id, visit_id))
    if link is not None:
        link.external_id = None
        link.content_hash = None
        link.visit_hash = link.filter_version = None
        link.synced_at = now
        session.add(link)
    audit.record(
        session, "push_delete", now=now, integration_id=integration_id, visit_id=visit_id,
        detail=detail,
    )  # fmt: skip
