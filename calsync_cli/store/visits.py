"""Reading visits."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from calsync_cli.store.models import Visit


def visits_between(session: Session, start: datetime, end: datetime) -> list[Visit]:
    """Visits that are not cancelled and overlap [start, end)."""
    stmt = select(Visit).where(
        col(Visit.end) > start, col(Visit.start) < end, Visit.status != "cancelled"
    )
    return list(session.exec(stmt))
