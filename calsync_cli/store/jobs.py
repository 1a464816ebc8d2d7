"""The outbox: queue sync work, coalesced to one live job per (integration, visit).

A job carries no content: the worker renders the visit as it is when the job runs, so queuing
twice is the same as queuing once. The database enforces the coalescing with a partial unique
index over the live states; a job that is running when its visit changes again is marked
``dirty`` and runs once more when it completes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from calsync_cli.store.models import (
    JOB_DROPPED,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    LIVE_JOB_STATES,
    Job,
)

CHUNK = 500

_LIVE_WHERE = sa.text("state IN ('queued', 'running', 'held')")


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def enqueue(session: Session, work: Sequence[tuple[int, str, str]], now: datetime) -> int:
    """Queue (integration_id, visit_id, action) work; return how many new jobs were queued.

    Work for a pair that already has a live job coalesces into it; a running one is marked
    dirty so the worker runs it again with the visit's latest state.
    """
    if not work:
        return 0
    table = Job.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert_fn: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    queued = 0
    for chunk in _chunks(list({(i, v): (i, v, a) for i, v, a in work}.values())):
        rows = [
            {
                "integration_id": iid,
                "visit_id": vid,
                "action": action,
                "state": JOB_QUEUED,
                "attempts": 0,
                "next_attempt_at": now,
                "dirty": False,
                "created_at": now,
                "updated_at": now,
            }
            for iid, vid, action in chunk
        ]
        stmt = (
            insert_fn(table)
            .on_conflict_do_nothing(
                index_elements=["integration_id", "visit_id"], index_where=_LIVE_WHERE
            )
            .returning(table.c.id)
        )
        queued += len(session.execute(stmt, rows).all())
        pairs = [(iid, vid) for iid, vid, _ in chunk]
        session.execute(
            sa.update(table)
            .where(table.c.state == JOB_RUNNING)
            .where(sa.tuple_(table.c.integration_id, table.c.visit_id).in_(pairs))
            .values(dirty=True, updated_at=now)
        )
    return queued


def drop_live(session: Session, integration_id: int, *, now: datetime, reason: str) -> int:
    """Drop every live job of the integration (it was disconnected); answers how many."""
    table = Job.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.update(table)
        .where(table.c.integration_id == integration_id, table.c.state.in_(LIVE_JOB_STATES))
        .values(
            state=JOB_DROPPED, last_error=reason, updated_at=now, lease_owner=None, lease_until=None
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def failed_visits(session: Session, integration_id: int) -> list[str]:
    """The visits of the integration with a job that failed for good."""
    stmt = (
        select(Job.visit_id)
        .where(Job.integration_id == integration_id, Job.state == JOB_FAILED)
        .distinct()
    )
    return list(session.exec(stmt))


def live_pairs(session: Session, integration_id: int | None = None) -> set[tuple[int, str]]:
    stmt = select(Job.integration_id, Job.visit_id).where(col(Job.state).in_(LIVE_JOB_STATES))
    if integration_id is not None:
        stmt = stmt.where(Job.integration_id == integration_id)
    return {(i, v) for i, v in session.exec(stmt)}
