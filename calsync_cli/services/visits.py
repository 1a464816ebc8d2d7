"""Read-only questions about stored visits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import col, select

from calsync_cli.store.db import Store
from calsync_cli.store.models import Practice, Visit


def list_visits(
    store: Store,
    *,
    providers: Sequence[str] = (),
    practices: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Visits overlapping [start, end), times shown in the practice's time zone."""
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
    stmt = stmt.order_by(col(Visit.start), col(Visit.id)).limit(limit)
    with store.read() as session:
        rows = []
        for visit, tz in session.exec(stmt):
            zone = ZoneInfo(tz)
            rows.append(
                {
                    "id": visit.id,
                    "practice_id": visit.practice_id,
                    "provider_id": visit.provider_id,
                    "patient_name": visit.patient_name,
                    "visit_type": visit.visit_type,
                    "room": visit.room,
                    "start": visit.start.astimezone(zone).isoformat(),
                    "end": visit.end.astimezone(zone).isoformat(),
                    "status": visit.status,
                    "reason": visit.reason,
                }
            )
        return rows
