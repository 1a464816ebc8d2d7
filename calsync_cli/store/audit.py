"""The audit trail: who changed what, and which fields were disclosed to which integration.

Entries name fields, never their values: the trail itself must hold no patient data.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from calsync_cli.store.models import AuditEntry, Integration


@cache
def current_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def entry(
    action: str,
    *,
    now: datetime,
    integration_id: int | None = None,
    visit_id: str | None = None,
    fields: Sequence[str] = (),
    detail: str | None = None,
) -> dict[str, Any]:
    """One audit row, for ``record_many``."""
    return {
        "at": now, "actor": current_actor(), "action": action, "integration_id": integration_id,
        "visit_id": visit_id, "fields": list(fields), "detail": detail,
    }  # fmt: skip


def record_many(session: Session, entries: Sequence[dict[str, Any]]) -> None:
    """Write many audit rows in one statement (a sync completes hundreds of pushes at once)."""
    if entries:
        session.execute(sa.insert(AuditEntry), list(entries))


def record(
    session: Session,
    action: str,
    *,
    now: datetime,
    integration_id: int | None = None,
    visit_id: str | None = None,
    fields: Sequence[str] = (),
    detail: str | None = None,
) -> None:
    session.add(
        AuditEntry(
            at=now,
            actor=current_actor(),
            action=action,
            integration_id=integration_id,
            visit_id=visit_id,
            fields=list(fields),
            detail=detail,
        )
    )


# -- reading and pruning the trail ------------------------------------------------------------

#: rows fetched per round trip while streaming (a server-side cursor on PostgreSQL)
STREAM_BATCH = 1000

#: the columns ``stream`` yields, in order
COLUMNS = (
    "id",
    "at",
    "actor",
    "action",
    "integration_id",
    "app",
    "account",
    "visit_id",
    "fields",
    "detail",
)


def stream(
    session: Session,
    *,
    integration_id: int | None = None,
    visit_id: str | None = None,
    since: datetime | None = None,
    batch: int = STREAM_BATCH,
) -> Iterator[tuple[Any, ...]]:
    """The entries, oldest first, as tuples of ``COLUMNS`` (with the integration's app and
    account joined in). Rows arrive ``batch`` at a time: a server-side cursor on PostgreSQL
    (``yield_per`` turns on ``stream_results``), SQLite's own cursor stepping on SQLite; nothing
    holds the whole trail in memory."""
    a = SQLModel.metadata.tables[AuditEntry.__tablename__]
    i = SQLModel.metadata.tables[Integration.__tablename__]
    stmt = (
        sa.select(
            a.c.id,
            a.c.at,
            a.c.actor,
            a.c.action,
            a.c.integration_id,
            i.c.app,
            i.c.account,
            a.c.visit_id,
            a.c.fields,
            a.c.detail,
        )  # fmt: skip
        .select_from(a.outerjoin(i, i.c.id == a.c.integration_id))
        .order_by(a.c.id)
    )
    if integration_id is not None:
        stmt = stmt.where(a.c.integration_id == integration_id)
    if visit_id is not None:
        stmt = stmt.where(a.c.visit_id == visit_id)
    if since is not None:
        stmt = stmt.where(a.c.at >= since)
    result = session.execute(stmt.execution_options(yield_per=batch))
    try:
        for row in result:
            yield tuple(row)
    finally:
        result.close()


def prune_before(session: Session, cutoff: datetime) -> int:
    """Delete the entries recorded before ``cutoff``; how many went."""
    a = SQLModel.metadata.tables[AuditEntry.__tablename__]
    result = session.execute(sa.delete(a).where(a.c.at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
