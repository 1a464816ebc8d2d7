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
    EventLink,
    Integration,
    Job,
    Practice,
    Visit,
)

#: ``EventLink.content_hash`` while a create may have reached the calendar unrecorded
PENDING_CREATE = "pending-create"

_CHUNK = 500
#: the live job states as literal SQL (see ``needing_work``); models.LIVE_JOB_STATES
LIVE_STATES_SQL = sa.text("job.state IN ('queued', 'running', 'held')")


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


def live_visit_ids(session: Session, integration_id: int) -> set[str]:
    """The visits that have a live event on the integration's calendar (as far as it knows)."""
    stmt = select(EventLink.visit_id).where(
        EventLink.integration_id == integration_id, col(EventLink.external_id).is_not(None)
    )
    return set(session.exec(stmt))


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
    audit_rows: list[dict[str, Any]] | None = None,
) -> None:
    """Record what happened to the visit's event, and audit the disclosure (field names); the
    audit row goes to ``audit_rows`` when given (written with ``audit.record_many``)."""
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
    row = audit.entry(
        action, now=now, integration_id=integration_id, visit_id=visit_id,
        fields=result.fields, detail=detail,
    )  # fmt: skip
    if audit_rows is not None:
        audit_rows.append(row)
    else:
        audit.record_many(session, [row])


@dataclass(frozen=True)
class Candidate:
    """A visit the sweep may have to queue (see ``needing_work``)."""

    visit_id: str
    wanted: bool
    #: its event is live on the integration's calendar: only a render can tell whether it is
    #: out of date (its inputs changed, or are unknown)
    live_here: bool
    content_hash: str | None


def needing_work(session: Session, integ: Integration, *, since: datetime) -> list[Candidate]:
    """Visits of ``integ`` changed since ``since`` whose event may not be what it should be,
    and that have no live job, answered by one indexed query (the render's inputs recorded on
    each link make staleness a question for the database).

    A visit is here when it is wanted (not cancelled, the filters match) and has no event on the
    integration's calendar, or an event rendered from other inputs (another content hash of the
    visit, another filter version, another calendar); or when it is not wanted and its event
    (or a create that may have landed) is still there. Only the integration's clinicians' visits
    and those it has a link for are read (a visit reassigned away still loses its event).
    The caller renders only the ``live_here`` ones (``visits_and_practices``).
    """
    assert integ.id is not None
    v, lk, job = (SQLModel.metadata.tables[t] for t in ("visit", "event_link", "job"))
    link_on = sa.and_(lk.c.integration_id == integ.id, lk.c.visit_id == v.c.id)
    is_wanted = sa.and_(
        v.c.status != "cancelled",
        v.c.practice_id.in_(integ.practice_filter) if integ.practice_filter else sa.true(),
        v.c.provider_id.in_(integ.provider_filter) if integ.provider_filter else sa.true(),
    )
    same_calendar = sa.func.coalesce(lk.c.calendar_id, "") == (integ.calendar_id or "")
    current = sa.and_(
        lk.c.external_id.is_not(None),
        same_calendar,
        sa.func.coalesce(lk.c.visit_hash, "") == v.c.content_hash,
        sa.func.coalesce(lk.c.filter_version, -1) == integ.filter_version,
    )
    there = sa.or_(lk.c.external_id.is_not(None), lk.c.content_hash == PENDING_CREATE)
    live_job = (
        sa.select(sa.literal(1))
        .where(job.c.integration_id == integ.id, job.c.visit_id == v.c.id)
        # spelled as the partial unique index's own condition, so the database uses that index
        # (SQLite only matches a partial index against literal terms, not bound parameters)
        .where(LIVE_STATES_SQL)
    )
    live_here = sa.and_(lk.c.external_id.is_not(None), same_calendar)
    stmt = (
        sa.select(
            v.c.id, is_wanted.label("wanted"), live_here.label("live_here"), lk.c.content_hash
        )  # fmt: skip
        .select_from(v.outerjoin(lk, link_on))
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
    return [
        Candidate(vid, bool(wanted), bool(here), content_hash)
        for vid, wanted, here, content_hash in session.execute(stmt)
    ]


def visits_and_practices(
    session: Session, visit_ids: Sequence[str]
) -> dict[str, tuple[Visit, Practice]]:
    """The visits (with their practice) to render, loaded in chunks."""
    out: dict[str, tuple[Visit, Practice]] = {}
    for first in range(0, len(visit_ids), _CHUNK):
        stmt = (
            select(Visit, Practice)
            .join(Practice, col(Practice.id) == col(Visit.practice_id))
            .where(col(Visit.id).in_(visit_ids[first : first + _CHUNK]))
        )
        out.update((visit.id, (visit, practice)) for visit, practice in session.exec(stmt))
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
