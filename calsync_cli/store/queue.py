"""Claiming and completing outbox jobs.

A claim takes due jobs (queued and due, held for an integration that was reconnected, or
running with an expired lease: their worker died) and leases them to one owner. On SQLite the
claim runs in a ``BEGIN IMMEDIATE`` transaction, so two claimers serialise; on PostgreSQL it
uses ``FOR UPDATE SKIP LOCKED``, so workers on several hosts take disjoint jobs. Only the current
lease holder may complete a job: a worker whose lease expired and was taken over completes
nothing.

Fair sharing: a claim takes at most ``per_integration`` jobs of one integration, oldest due
integrations first, at most its share of the integrations with work (their number divided by the
workers at work now, ``heartbeat``), and leaves alone an integration another worker is pushing
to (a live lease):
one mailbox is served by one worker at a time (its concurrency limit is per mailbox), so two or
three workers spread over the integrations, and a slow or throttled mailbox holds back only
itself. On PostgreSQL a transaction-scoped advisory lock per integration keeps two claims that
run at the same instant off the same integration. Leases are renewed while a long batch is in
flight (``renew``); a lease whose owner is provably dead (a process of this host that no longer
exists) is reclaimed at once rather than after it expires (``reclaim_dead``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from calsync_cli.store.models import (
    DISCONNECTED,
    JOB_DONE,
    JOB_DROPPED,
    JOB_FAILED,
    JOB_HELD,
    JOB_QUEUED,
    JOB_RUNNING,
    EventLink,
    Integration,
    Job,
    Practice,
    Visit,
    WorkerSeen,
)

#: how long finished jobs (done, or dropped by a disconnect) are kept before the sweep prunes them
FINISHED_RETENTION = timedelta(days=7)


@dataclass
class Claimed:
    job: Job
    visit: Visit
    practice: Practice
    link: EventLink | None

    @property
    def job_id(self) -> int:
        assert self.job.id is not None
        return self.job.id


def _due(now: datetime, limit: int | None) -> Any:
    """Due jobs of integrations that take pushed work now, oldest due first."""
    pushing = (
        select(Integration.id)
        .where(
            Integration.status != DISCONNECTED,
            Integration.paused == False,  # noqa: E712
            col(Integration.calendar_id).is_not(None),
            col(Integration.direction).in_(("push", "two-way")),
            Integration.needs_reauth == False,  # noqa: E712
            Integration.needs_calendar == False,  # noqa: E712
        )
        .scalar_subquery()
    )
    due = sa.or_(
        sa.and_(col(Job.state).in_((JOB_QUEUED, JOB_HELD)), col(Job.next_attempt_at) <= now),
        sa.and_(col(Job.state) == JOB_RUNNING, col(Job.lease_until) < now),
    )
    stmt = (
        select(Job)
        .where(due, col(Job.integration_id).in_(pushing))
        .order_by(col(Job.next_attempt_at), col(Job.id))
    )
    return stmt if limit is None else stmt.limit(limit)


#: advisory lock namespace for "claiming jobs of integration N" (PostgreSQL)
_CLAIM_LOCK = 4242002


def claim(
    session: Session,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    per_integration: int | None = None,
) -> dict[int, tuple[Integration, list[Claimed]]]:
    """Lease up to ``limit`` due jobs to ``owner``, at most ``per_integration`` of one
    integration (see the module docstring); grouped by integration."""
    per = per_integration or limit
    postgres = session.get_bind().dialect.name == "postgresql"
    heartbeat(session, owner, now=now)
    workers = session.exec(
        select(sa.func.count())
        .select_from(WorkerSeen)
        .where(col(WorkerSeen.seen_at) >= now - lease)
    ).one()
    busy = (
        select(Job.integration_id)
        .where(Job.state == JOB_RUNNING, col(Job.lease_until) >= now, Job.lease_owner != owner)
        .distinct()
    )
    waiting = (
        _due(now, None)
        .with_only_columns(col(Job.integration_id), sa.func.min(Job.next_attempt_at))
        .where(col(Job.integration_id).not_in(busy))
        .group_by(col(Job.integration_id))
        .order_by(None)
        .order_by(sa.func.min(Job.next_attempt_at), col(Job.integration_id))
    )
    candidates = session.execute(waiting).all()
    others = session.exec(select(sa.func.count()).select_from(busy.subquery())).one()
    share = -(-(len(candidates) + others) // max(1, workers))  # ceil: every worker gets some
    jobs: list[Job] = []
    taken = 0
    for integration_id, _oldest in candidates:
        if len(jobs) >= limit or taken >= share:
            break
        if (
            postgres
            and not session.execute(
                sa.text("SELECT pg_try_advisory_xact_lock(:ns, :id)"),
                {"ns": _CLAIM_LOCK, "id": integration_id},
            ).scalar()
        ):
            continue  # another worker is claiming this integration right now
        stmt = _due(now, min(per, limit - len(jobs))).where(Job.integration_id == integration_id)
        if postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        got = list(session.exec(stmt))
        taken += 1 if got else 0
        jobs += got
    if not jobs:
        return {}
    until = now + lease
    for job in jobs:
        job.state, job.lease_owner, job.lease_until = JOB_RUNNING, owner, until
        job.dirty, job.updated_at = False, now
        session.add(job)
    session.flush()
    return _with_context(session, jobs)


def heartbeat(session: Session, owner: str, *, now: datetime) -> None:
    """``owner`` is at work now (claims divide the integrations among the workers at work)."""
    row = session.get(WorkerSeen, owner)
    if row is None:
        session.add(WorkerSeen(owner=owner, seen_at=now))
    else:
        row.seen_at = now
        session.add(row)
    session.flush()


def resign(session: Session, owner: str) -> None:
    """``owner`` stopped working: it no longer counts among the workers."""
    row = session.get(WorkerSeen, owner)
    if row is not None:
        session.delete(row)


def renew(session: Session, owner: str, *, until: datetime) -> int:
    """Extend every live lease of ``owner`` to ``until`` (a long batch is still in flight)."""
    table = Job.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.update(table)
        .where(table.c.state == JOB_RUNNING, table.c.lease_owner == owner)
        .values(lease_until=until)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def lease_owners(session: Session, *, now: datetime) -> list[str]:
    """Owners of live leases."""
    stmt = (
        select(Job.lease_owner)
        .where(Job.state == JOB_RUNNING, col(Job.lease_until) >= now)
        .distinct()
    )
    return [o for o in session.exec(stmt) if o]


def expire_leases(session: Session, owners: Sequence[str], *, now: datetime) -> int:
    """End the leases of ``owners`` now: their jobs are due for any worker."""
    if not owners:
        return 0
    table = Job.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.update(table)
        .where(table.c.state == JOB_RUNNING, table.c.lease_owner.in_(list(owners)))
        .values(lease_until=now - timedelta(seconds=1))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def peek(
    session: Session, *, now: datetime, limit: int = 100_000
) -> dict[int, tuple[Integration, list[Claimed]]]:
    """What ``claim`` would take now, without taking it (``sync --dry-run``)."""
    return _with_context(session, list(session.exec(_due(now, limit))))


def _with_context(
    session: Session, jobs: list[Job]
) -> dict[int, tuple[Integration, list[Claimed]]]:
    """The jobs with their integration, visit, practice and link, grouped by integration."""
    if not jobs:
        return {}
    integ_ids = {j.integration_id for j in jobs}
    integrations = {
        i.id: i for i in session.exec(select(Integration).where(col(Integration.id).in_(integ_ids)))
    }
    visit_ids = list({j.visit_id for j in jobs})
    visits: dict[str, Visit] = {}
    links: dict[tuple[int, str], EventLink] = {}
    for first in range(0, len(visit_ids), 500):
        chunk = visit_ids[first : first + 500]
        visits.update(
            (v.id, v) for v in session.exec(select(Visit).where(col(Visit.id).in_(chunk)))
        )
        links.update(
            ((lk.integration_id, lk.visit_id), lk)
            for lk in session.exec(
                select(EventLink).where(
                    col(EventLink.integration_id).in_(integ_ids), col(EventLink.visit_id).in_(chunk)
                )
            )
        )
    practices = {
        p.id: p
        for p in session.exec(
            select(Practice).where(col(Practice.id).in_({v.practice_id for v in visits.values()}))
        )
    }
    out: dict[int, tuple[Integration, list[Claimed]]] = {}
    for job in jobs:
        visit = visits[job.visit_id]
        entry = out.setdefault(job.integration_id, (integrations[job.integration_id], []))
        entry[1].append(
            Claimed(
                job,
                visit,
                practices[visit.practice_id],
                links.get((job.integration_id, job.visit_id)),
            )
        )
    return out


def load_claimed(session: Session, integration_id: int, items: Sequence[Claimed]) -> list[Any]:
    """Load the items' jobs and links in a few queries, so that the per-item ``session.get``
    calls that follow are answered from the session's identity map instead of one query (and one
    autoflush) each. The identity map holds its objects weakly: keep the answer while they are
    used."""
    loaded: list[Any] = []
    for first in range(0, len(items), 500):
        chunk = items[first : first + 500]
        loaded += session.exec(select(Job).where(col(Job.id).in_([i.job.id for i in chunk])))
        loaded += session.exec(
            select(EventLink).where(
                EventLink.integration_id == integration_id,
                col(EventLink.visit_id).in_([i.visit.id for i in chunk]),
            )
        )
    return loaded


def owned(session: Session, job_id: int, owner: str) -> Job | None:
    """The job, if ``owner`` still holds its lease; None when it was taken over."""
    job = session.get(Job, job_id)
    if job is None or job.state != JOB_RUNNING or job.lease_owner != owner:
        return None
    return job


def finish(session: Session, job: Job, *, now: datetime, settled: list[Job] | None = None) -> None:
    """Done, or back to the queue at once when the visit changed while it ran.

    Done means the visit is on the calendar as it should be, so an earlier failed job for the
    same visit and integration is no longer a problem to report: it is deleted (at once, or by
    ``forget_failures(settled)`` when the caller collects them in ``settled``).
    """
    if not job.dirty:
        if settled is None:
            forget_failures(session, [job])
        else:
            settled.append(job)
    job.state = JOB_QUEUED if job.dirty else JOB_DONE
    job.next_attempt_at = now
    job.attempts = 0 if job.dirty else job.attempts
    job.dirty = False
    job.lease_owner = job.lease_until = None
    job.last_error = None
    job.updated_at = now
    session.add(job)


def forget_failures(session: Session, done: Sequence[Job]) -> None:
    """Delete the failed jobs of the (integration, visit) pairs these jobs have now synced."""
    table = Job.__table__  # type: ignore[attr-defined]
    pairs = list({(j.integration_id, j.visit_id) for j in done})
    for first in range(0, len(pairs), 500):
        session.execute(
            sa.delete(table).where(
                table.c.state == JOB_FAILED,
                sa.tuple_(table.c.integration_id, table.c.visit_id).in_(pairs[first : first + 500]),
            )
        )


def give_back(session: Session, job: Job, *, now: datetime) -> None:
    """Back to the queue as it was: the worker stopped before reaching it (no attempt used)."""
    job.state, job.next_attempt_at = JOB_QUEUED, now
    job.lease_owner = job.lease_until = None
    job.updated_at = now
    session.add(job)


def reschedule(session: Session, job: Job, *, now: datetime, at: datetime, error: str) -> None:
    job.state, job.next_attempt_at, job.last_error = JOB_QUEUED, at, error
    job.lease_owner = job.lease_until = None
    job.updated_at = now
    session.add(job)


def fail(session: Session, job: Job, *, now: datetime, error: str) -> None:
    job.state, job.last_error = JOB_FAILED, error
    job.lease_owner = job.lease_until = None
    job.updated_at = now
    session.add(job)


def hold(
    session: Session, job: Job, *, now: datetime, error: str, at: datetime | None = None
) -> None:
    """Waiting for something outside the job (a reconnect, a usable keyring): no retry is used
    up. Due again at ``at`` (default: at once, for when the integration is fit again)."""
    job.state, job.last_error, job.next_attempt_at = JOB_HELD, error, at or now
    job.lease_owner = job.lease_until = None
    job.updated_at = now
    session.add(job)


def release(session: Session, owner: str, *, now: datetime) -> int:
    """Give back every lease of ``owner`` (a worker stopping early)."""
    table = Job.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.update(table)
        .where(table.c.state == JOB_RUNNING, table.c.lease_owner == owner)
        .values(state=JOB_QUEUED, lease_owner=None, lease_until=None, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def prune(session: Session, *, before: datetime) -> int:
    """Delete jobs that finished (done, or dropped by a disconnect) before ``before``.

    Failed jobs stay until their visit syncs (see ``finish``): they are what ``calsync status``
    reports as failed.
    """
    table = Job.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.delete(table).where(
            table.c.state.in_((JOB_DONE, JOB_DROPPED)), table.c.updated_at < before
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
