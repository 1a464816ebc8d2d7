"""Reading visits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlmodel import Session, col, select

from calsync_cli.store.models import Practice, Visit


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


def upcoming_facts(
    session: Session, now: datetime, *, practices: Sequence[str] | None = None
) -> list[tuple[str, Facts]]:
    """Every visit that ends from ``now`` on (of these practices, when given), with what
    ``plan.wanted`` reads of it."""
    stmt = select(Visit.id, Visit.status, Visit.practice_id, Visit.provider_id).where(
        col(Visit.end) >= now
    )
    if practices is not None:
        stmt = stmt.where(col(Visit.practice_id).in_(practices))
    return [(vid, Facts(status, pid, prov)) for vid, status, pid, prov in session.exec(stmt)]


def listing(
    session: Session,
    *,
    providers: Sequence[str] = (),
    practices: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 200,
) -> list[tuple[Visit, str]]:
    """Visits overlapping [start, end) with their practice's time zone, by start."""
    stmt = select(Visit, Practice.timezone).join(
        Practice, col(Practice.id) == col(Visit.practice_id)
    )
    if providers:
        stmt = stmt.where(col(Visit.provider_id).in_(providers))
    if practices:
        stmt = stmt.where(col(Visit.practice_id).in_(practices))
    if start is not None:
        stmt = stmt.where(Visit.end > start)
    if end is not None:
        stmt = stmt.where(Visit.start < end)
    return list(session.exec(stmt.order_by(col(Visit.start), col(Visit.id)).limit(limit)))
