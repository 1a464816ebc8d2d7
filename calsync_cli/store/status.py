"""What ``calsync status`` reads through the ORM (``fast_status`` answers the same without it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from calsync_cli.store.integrations import get
from calsync_cli.store.models import (
    JOB_FAILED,
    LIVE_JOB_STATES,
    Integration,
    Job,
    Practice,
    Provider,
    Visit,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


#: how many failed jobs ``calsync status INTEGRATION`` lists, newest first
FAILURES_SHOWN = 20


def rows(session: Session, integration_id: int | None = None) -> list[dict[str, Any]]:
    """One dict per integration: the ``status --json`` item (see DESIGN.md). For one
    integration it also lists its latest failed jobs (``failures``): visit id, start, action,
    error, when; never patient data."""
    if integration_id is not None:
        integrations = [get(session, integration_id)]
    else:
        integrations = list(session.exec(select(Integration).order_by(col(Integration.id))))
    counts: dict[tuple[int | None, str], int] = {}
    stmt = (
        select(Job.integration_id, Job.state, func.count())
        .where(col(Job.state).in_((*LIVE_JOB_STATES, JOB_FAILED)))
        .group_by(col(Job.integration_id), col(Job.state))
    )
    for iid, state, n in session.exec(stmt):
        counts[(iid, state)] = n
    rows: list[dict[str, Any]] = [
        {
            "id": i.id,
            "provider_id": i.provider_id,
            "app": i.app,
            "account": i.account,
            "calendar_id": i.calendar_id,
            "calendar_name": i.calendar_name,
            "direction": i.direction,
            "status": i.status,
            "status_detail": i.status_detail,
            "paused": i.paused,
            "last_synced_at": _iso(i.last_synced_at),
            "queued": sum(counts.get((i.id, s), 0) for s in LIVE_JOB_STATES),
            "failed": counts.get((i.id, JOB_FAILED), 0),
        }
        for i in integrations
    ]
    if integration_id is not None:
        failed = session.exec(
            select(Job, Visit.start)
            .join(Visit, col(Visit.id) == col(Job.visit_id))
            .where(Job.integration_id == integration_id, Job.state == JOB_FAILED)
            .order_by(col(Job.updated_at).desc(), col(Job.id).desc())
            .limit(FAILURES_SHOWN)
        )
        rows[0]["failures"] = [
            {
                "visit_id": job.visit_id,
                "start": _iso(start),
                "action": job.action,
                "error": job.last_error,
                "failed_at": _iso(job.updated_at),
            }
            for job, start in failed
        ]
    return rows


def counts(session: Session) -> dict[str, int]:
    """How many practices, providers and visits are stored."""
    return {
        name: session.exec(select(func.count()).select_from(model)).one()
        for name, model in (("practices", Practice), ("providers", Provider), ("visits", Visit))
    }
