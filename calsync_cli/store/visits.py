"""Reading visits."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlmodel import Session, col, select

from calsync_cli.store.models import Visit


class Facts(NamedTuple):
    """A visit's facts that ``engine.plan.wanted`` reads (a stored visit, or an import's record)."""

    status: str
    practice_id: str
    provider_id: str


def visits_between(session: Session, start: datetime, end: datetime) -> list[Visit]:
    """Visits that are not cancelled and overlap [start, end)."""
    stmt = select(Visit).where(
        col(Visit.end) > start, col(Visit.start) < end, Visit.status != "cancelled"
    )
    return list(session.exec(stmt))


def upcoming_facts(session: Session, now: datetime) -> list[tuple[str, Facts]]:
    """Every visit that ends from ``now`` on, with what ``plan.wanted`` reads of it."""
    stmt = select(Visit.id, Visit.status, Visit.practice_id, Visit.provider_id).where(
        col(Visit.end) >= now
    )
    return [(vid, Facts(status, pid, prov)) for vid, status, pid, prov in session.exec(stmt)]
