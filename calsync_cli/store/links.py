"""Event links: which external event shows a visit on an integration's calendar.

The worker's crash safety lives here (see ``engine.worker``): before any call it writes ahead
what a dead worker may leave done but unrecorded, and afterwards it records what happened.

* A live link about to be updated, moved or deleted loses its content hash, so the next run
  updates instead of skipping (the event may show a newer edit, or be gone already).
* A create turns its link into ``PENDING_CREATE`` on the calendar it targets, with the
  generation its key uses; so does a move once its old event is deleted (a *relocation*).
* Links of jobs the worker no longer holds (its lease expired and another worker took over)
  are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col, select

from calsync_cli.store import audit
from calsync_cli.store.models import (
    JOB_RUNNING,
    LIVE_JOB_STATES,
    EventLink,
    Integration,
    Job,
    Practice,
    Visit,
)

#: ``EventLink.content_hash`` while a create may have reached the calendar unrecorded
PENDING_CREATE = "pending-create"

_CHUNK = 500


@dataclass(frozen=True)
class Pending:
    """A create about to be sent: the visit, the calendar, the generation of its key."""

    visit_id: str
    calendar_id: str
    generation: int


@dataclass
class Result:
    """What happened to one visit's event, to record on its link."""

    kind: str  # created | updated | deleted | skipped
    external_id: str | None = None
    calendar_id: str | None = None
    content_hash: str | None = None
    generation: int | None = None
    fields: tuple[str, ...] = ()
    #: the render's inputs: the visit's content hash and the integration's filter version
    visit_hash: str | None = None
    filter_version: int | None = None


def held(session: Session, job_ids: Iterable[int], owner: str) -> set[str]:
    """The visit ids of these jobs that ``owner`` still holds."""
    ids = list(job_ids)
    found: set[str] = set()
    for first in range(0, len(ids), _CHUNK):
        found.update(
            session.exec(
                select(Job.visit_id).where(
                    col(Job.id).in_(ids[first : first + _CHUNK]),
                    Job.state == JOB_RUNNING,
                    Job.lease_owner == owner,
                )
            )
        )
    return found


def _table() -> Any:
    return EventLink.__table__  # type: ignore[attr-defined]


def forget_hashes(session: Session, integration_id: int, visit_ids: Sequence[str]) -> None:
    """Live links that are about to change: drop their content hash (see the docstring)."""
    links = _table()
    for first in range(0, len(visit_ids), _CHUNK):
        session.execute(
            sa.update(links)
            .where(
                links.c.integration_id == integration_id,
                links.c.visit_id.in_(visit_ids[first : first + _CHUNK]),
            )
            .where(links.c.external_id.is_not(None))
            .values(content_hash=None)
        )


def mark_pending(
    session: Session, integration_id: int, creates: Sequence[Pending], *, relocation: bool = False
) -> None:
    """These creates may land unrecorded: their links become pending creates on their calendar.

    A plain create touches only links without a live event; a relocation (a move whose old event
    is gone) turns the live link into a pending create on the new calendar.
    """
    if not creates:
        return
    links = _table()
    by_visit = {c.visit_id: c for c in creates}
    known: set[str] = set()
    ids = list(by_visit)
    for first in range(0, len(ids), _CHUNK):
        known.update(
            session.exec(
                select(EventLink.visit_id).where(
                    EventLink.integration_id == integration_id,
                    col(EventLink.visit_id).in_(ids[first : first + _CHUNK]),
                )
            )
        )
    for visit_id in known:
        c = by_visit[visit_id]
        stmt = sa.update(links).where(
            links.c.integration_id == integration_id, links.c.visit_id == visit_id
        )
        if not relocation:
            stmt = stmt.where(links.c.external_id.is_(None))
        session.execute(
            stmt.values(
                external_id=None,
                calendar_id=c.calendar_id,
                content_hash=PENDING_CREATE,
                generation=c.generation,
            )
        )
    fresh = [
        {"integration_id": integration_id, "visit_id": c.visit_id, "external_id": None,
         "calendar_id": c.calendar_id, "content_hash": PENDING_CREATE,
         "generation": c.generation, "synced_at": None}
        for c in creates if c.visit_id not in known
    ]  # fmt: skip
    if fresh:
        session.execute(sa.insert(links), fresh)


def load(session: Session, integration_id: int, visit_ids: Sequence[str]) -> list[EventLink]:
    """The links of these visits (kept in the session's identity map while the answer lives)."""
    loaded: list[EventLink] = []
    for first in range(0, len(visit_ids), _CHUNK):
        loaded += session.exec(
            select(EventLink).where(
                EventLink.integration_id == integration_id,
                col(EventLink.visit_id).in_(visit_ids[first : first + _CHUNK]),
            )
        )
    return loaded


def record(
    session: Session,
    integration_id: int,
    visit_id: str,
    result: Result,
    *,
    now: datetime,
    detail: str,
) -> None:
    """Record what happened to the visit's event, and audit the disclosure (field names)."""
    link = session.get(EventLink, (integration_id, visit_id))
    if result.kind == "skipped":
        # unchanged: only the render's inputs move on (a change that did not alter the event)
        if link is not None and result.visit_hash is not None:
            link.visit_hash, link.filter_version = result.visit_hash, result.filter_version
            session.add(link)
        return
    if link is None:
        link = EventLink(integration_id=integration_id, visit_id=visit_id)
    if result.kind == "deleted":
        link.external_id = None
        link.content_hash = None
        link.visit_hash = link.filter_version = None
    else:
        link.external_id = result.external_id
        link.calendar_id = result.calendar_id
        link.content_hash = result.content_hash
        link.visit_hash, link.filter_version = result.visit_hash, result.filter_version
    if result.generation is not None:
        link.generation = result.generation
    link.synced_at = now
    session.add(link)
    action = {"created": "push_create", "updated": "push_update"}.get(result.kind, "push_delete")
    audit.record(
        session, action, now=now, integration_id=integration_id, visit_id=visit_id,
        fields=result.fields, detail=detail,
    )  # fmt: skip


def needing_work(
    session: Session, integ: Integration, *, since: datetime
) -> list[tuple[Visit, Practice, EventLink | None, bool]]:
    """Visits of ``integ`` changed since ``since`` whose event may not be what it should be,
    and that have no live job: ``(visit, practice, link, wanted)``, answered by one indexed
    query (the render's inputs recorded on each link make staleness a question for the database).

    A visit is here when it is wanted (not cancelled, the filters match) and has no event on the
    integration's calendar, or an event rendered from other inputs (another content hash of the
    visit, another filter version, another calendar); or when it is not wanted and its event
    (or a create that may have landed) is still there. Only the integration's clinicians' visits
    and those it has a link for are read (a visit reassigned away still loses its event).
    The caller renders only what this answers, and only where the inputs alone cannot tell.
    """
    assert integ.id is not None
    v, p, lk, job = (
        SQLModel.metadata.tables[t] for t in ("visit", "practice", "event_link", "job")
    )
    link_on = sa.and_(lk.c.integration_id == integ.id, lk.c.visit_id == v.c.id)
    is_wanted = sa.and_(
        v.c.status != "cancelled",
        v.c.practice_id.in_(integ.practice_filter) if integ.practice_filter else sa.true(),
        v.c.provider_id.in_(integ.provider_filter) if integ.provider_filter else sa.true(),
    )
    current = sa.and_(
        lk.c.external_id.is_not(None),
        sa.func.coalesce(lk.c.calendar_id, "") == (integ.calendar_id or ""),
        sa.func.coalesce(lk.c.visit_hash, "") == v.c.content_hash,
        sa.func.coalesce(lk.c.filter_version, -1) == integ.filter_version,
    )
    there = sa.or_(lk.c.external_id.is_not(None), lk.c.content_hash == PENDING_CREATE)
    live_job = (
        sa.select(sa.literal(1))
        .where(job.c.integration_id == integ.id, job.c.visit_id == v.c.id)
        .where(job.c.state.in_(LIVE_JOB_STATES))
    )
    stmt = (
        sa.select(v, p, lk, is_wanted.label("wanted"))
        .select_from(v.join(p, p.c.id == v.c.practice_id).outerjoin(lk, link_on))
        .where(v.c.changed_at >= since)
        .where(
            sa.or_(
                sa.and_(is_wanted, sa.or_(lk.c.visit_id.is_(None), sa.not_(current))),
                sa.and_(sa.not_(is_wanted), lk.c.visit_id.is_not(None), there),
            )
        )
        .where(~sa.exists(live_job))
    )
    if integ.provider_filter:
        stmt = stmt.where(
            sa.or_(v.c.provider_id.in_(integ.provider_filter), lk.c.visit_id.is_not(None))
        )
    out: list[tuple[Visit, Practice, EventLink | None, bool]] = []
    nv, np_ = len(v.c), len(p.c)
    for row in session.execute(stmt):
        values = tuple(row)
        visit = Visit(**dict(zip(v.c.keys(), values[:nv], strict=True)))
        practice = Practice(**dict(zip(p.c.keys(), values[nv : nv + np_], strict=True)))
        link_values = dict(zip(lk.c.keys(), values[nv + np_ : -1], strict=True))
        link = EventLink(**link_values) if link_values["visit_id"] is not None else None
        out.append((visit, practice, link, bool(values[-1])))
    return out


def expected_in_window(
    session: Session, integ: Integration, *, start: datetime, end: datetime
) -> dict[str, tuple[Visit, Practice, EventLink | None]]:
    """What ``verify`` compares the calendar with: the integration's visits overlapping
    [start, end) (its clinicians', when it filters them) and every visit it has a link for
    (a visit moved out of the window may have left its event inside), with practice and link."""
    assert integ.id is not None
    linked = select(EventLink.visit_id).where(EventLink.integration_id == integ.id)
    in_window = sa.and_(col(Visit.end) > start, col(Visit.start) < end)
    if integ.provider_filter:
        in_window = sa.and_(in_window, col(Visit.provider_id).in_(integ.provider_filter))
    stmt = (
        select(Visit, Practice, EventLink)
        .join(Practice, col(Practice.id) == col(Visit.practice_id))
        .join(
            EventLink,
            sa.and_(
                col(EventLink.visit_id) == col(Visit.id), col(EventLink.integration_id) == integ.id
            ),
            isouter=True,
        )
        .where(sa.or_(in_window, col(Visit.id).in_(linked)))
    )
    return {visit.id: (visit, practice, link) for visit, practice, link in session.exec(stmt)}


@dataclass(frozen=True)
class Fix:
    """A repair for the queue: point the visit's link at ``event_id`` (None: no event), mark
    it out of date, and queue ``action``."""

    visit_id: str
    event_id: str | None
    action: str  # upsert | delete


def queue_fixes(
    session: Session, integ: Integration, fixes: Sequence[Fix], *, now: datetime
) -> int:
    """Apply ``fixes`` to the links and queue their jobs; answers how many jobs were queued."""
    from calsync_cli.store import jobs

    assert integ.id is not None
    for fix in fixes:
        link = session.get(EventLink, (integ.id, fix.visit_id))
        if link is None:
            link = EventLink(integration_id=integ.id, visit_id=fix.visit_id)
        if fix.event_id is not None:
            link.external_id, link.calendar_id = fix.event_id, integ.calendar_id
        elif link.calendar_id == integ.calendar_id:
            link.external_id = None  # nothing there: create it (a live link would be updated)
        link.content_hash = None
        link.visit_hash = link.filter_version = None
        session.add(link)
    session.flush()
    return jobs.enqueue(session, [(integ.id, f.visit_id, f.action) for f in fixes], now)
