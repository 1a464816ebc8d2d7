"""Read-only questions about stored visits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calsync_cli.store import visits as store_visits
from calsync_cli.store.db import Store


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
    with store.read() as session:
        rows = []
        zones: dict[str, ZoneInfo | None] = {}
        found = store_visits.listing(
            session, providers=providers, practices=practices, start=start, end=end, limit=limit
        )
        for visit, tz in found:
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
