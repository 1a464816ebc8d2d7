"""Read-only questions about stored visits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
        zones: dict[str, ZoneInfo | None] = {}
        for visit, tz in session.exec(stmt):
            if tz not in zones:
                zones[tz] = _zone(tz)
            rows.append(
                {
                    "id": visit.id,
                    "practice_id": visit.practice_id,
                    "provider_id": visit.provider_id,
                    "patient_name": visit.patient_name,
                    "visit_type": visit.visit_type,
                    "room": visit.room,
                    "start": _local(visit.start, zones[tz]),
                    "end": _local(visit.end, zones[tz]),
                    "status": visit.status,
                    "reason": visit.reason,
                }
            )
        return rows


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _local(when: datetime, zone: ZoneInfo | None) -> str:
    """``when`` in the practice's zone; in UTC when that cannot be done (a zone this host
    lacks, an instant stored before import bounded the years): one odd row must not stop the
    list for everyone."""
    if zone is not None:
        try:
            return when.astimezone(zone).isoformat()
        except (OverflowError, ValueError):
            pass
    return when.isoformat()
