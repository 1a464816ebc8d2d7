"""The sync worker: claim due jobs, push them, record the outcome.

For each claimed job the worker decides from the visit as it is now (jobs carry no content):

* the visit belongs on the integration's calendar (not cancelled, filters match): create its
  event, or update it when the rendered content changed (no API call when it did not), or move
  it when the integration's calendar changed (delete there, create here); an event deleted
  outside calsync is created again;
* it does not (cancelled, reassigned, filtered out): delete its event; an event already gone
  counts as deleted.

Crash safety: before any call the worker writes ahead what it is about to do, so a worker that
dies after its calls but before recording them leaves a link that cannot mislead the next one. A
live link loses its content hash (the next run updates instead of skipping an unchanged visit:
the event may show a newer edit, or be deleted already); a create leaves ``PENDING_CREATE`` on
the link with the calendar it targets, and so does a move once its old event is deleted. The
next run repeats a pending create on the same key (the same event; on Graph, whose
transactionId answers the existing event unchanged, it then updates it), or, when the visit no
longer belongs there or the integration has moved to another calendar since, creates and
deletes it on that key, so nothing the dead worker made stays behind.

Failures follow DESIGN.md's schedule: retried 1, 4, 16, 60 and 60 minutes later (up to 10%
jitter; a longer Retry-After wins), then failed. A refused grant holds the integration's jobs
(no retry used up) and sets it to Error, "reconnect needed".
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from calsync_cli.config import Settings
from calsync_cli.engine.render import Rendered, render
from calsync_cli.errors import CalsyncError
from calsync_cli.providers.base import (
    CalendarProvider,
    Gone,
    NotFound,
    Operation,
    ProviderError,
    RateLimited,
    ReauthRequired,
)
from calsync_cli.store import audit, jobs, queue, states
from calsync_cli.store.db import Store
from calsync_cli.store.models import JOB_RUNNING, EventLink, Integration, Job

RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=4), timedelta(minutes=16),
                timedelta(hours=1), timedelta(hours=1))  # fmt: skip
MAX_RETRIES = len(RETRY_DELAYS)
JITTER = 0.10

#: ``EventLink.content_hash`` while a create may have reached the calendar unrecorded
PENDING_CREATE = "pending-create"

OpenProvider = Callable[..., AbstractAsyncContextManager[CalendarProvider]]


def retry_at(
    attempts: int, now: datetime, *, retry_after: float | None, rng: random.Random
) -> datetime:
    """When to try again after the ``attempts``-th failure (1-based)."""
    delay = RETRY_DELAYS[min(attempts, MAX_RETRIES) - 1]
    delay = delay * (1 + rng.uniform(0, JITTER))
    if retry_after is not None and timedelta(seconds=retry_after) > delay:
        delay = timedelta(seconds=retry_after)
    return now + delay


@dataclass
class Outcome:
    kind: str  # created | updated | deleted | skipped
    external_id: str | None = None
    calendar_id: str | None = None
    content_hash: str | None = None
    generation: int | None = None
    fields: tuple[str, ...] = ()


@dataclass
class IntegrationSummary:
    id: int
    app: str
    pushed: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    rescheduled: int = 0
    failed: int = 0
    held: int = 0
    needs_reauth: bool = False
    error: str | None = None

    def add(self, other: IntegrationSummary) -> None:
        for name in ("pushed", "updated", "deleted", "skipped", "rescheduled", "failed", "held"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.needs_reauth = self.needs_reauth or other.needs_reauth
        self.error = other.error or self.error


@dataclass
class RunSummary:
    integrations: dict[int, IntegrationSummary] = field(default_factory=dict)

    def merge(self, summary: IntegrationSummary) -> None:
        if summary.id in self.integrations:
            self.integrations[summary.id].add(summary)
        else:
            self.integrations[summary.id] = summary

    @property
    def exit_code(self) -> int:
        items = self.integrations.values()
        if any(s.needs_reauth for s in items):
            return 4
        return 1 if any(s.failed for s in items) else 0

    def totals(self) -> dict[str, int]:
        keys = ("pushed", "updated", "deleted", "skipped", "rescheduled", "failed", "held")
        return {k: sum(getattr(s, k) for s in self.integrations.values()) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        return {
            "integrations": [asdict(s) for s in self.integrations.values()],
            "totals": self.totals(),
            "exit_code": self.exit_code,
        }


def _one_line(exc: BaseException) -> str:
    """A PHI-free line: our own messages (with their hint), else only the exception's type."""
    if isinstance(exc, CalsyncError):
        text = exc.one_line()
    elif isinstance(exc, ProviderError):
        text = exc.message
    else:
        text = f"unexpected {type(exc).__name__}"
    return " ".join(str(text).split())[:300]


def _prefetch(session: Any, integration_id: int, items: Sequence[queue.Claimed]) -> list[Any]:
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


class Worker:
    """Runs due sync work. ``clock``, ``rng``, ``sleep`` and ``open_provider`` are injectable."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        owner: str | None = None,
        lease: timedelta = timedelta(minutes=5),
        claim_limit: int = 2000,
        open_provider: OpenProvider | None = None,
        provider_options: dict[str, Any] | None = None,
        rng: random.Random | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.lease = lease
        self.claim_limit = claim_limit
        if open_provider is None:
            from calsync_cli.services.clients import open_provider as default_open

            open_provider = default_open
        self.open_provider = open_provider
        self.provider_options = provider_options or {}
        self.rng = rng or random.Random()
        self.on_progress = on_progress
        self.stop_requested = False

    # ----------------------------------------------------------------- run

    async def run_once(self, *, max_rounds: int = 50) -> RunSummary:
        """Process everything due now (several claim rounds), then return."""
        summary = RunSummary()
        done = total = 0
        client = self._http_client()
        try:
            for _ in range(max_rounds):
                if self.stop_requested:
                    break
                now = self.clock()
                with self.store.write() as session:
                    claimed = queue.claim(
                        session, owner=self.owner, now=now, lease=self.lease, limit=self.claim_limit
                    )
                if not claimed:
                    break
                total += sum(len(items) for _, items in claimed.values())
                results = await asyncio.gather(
                    *(self._integration(integ, items, client) for integ, items in claimed.values())
                )
                for result in results:
                    summary.merge(result)
                    done += sum(
                        getattr(result, k)
                        for k in (
                            "pushed",
                            "updated",
                            "deleted",
                            "skipped",
                            "rescheduled",
                            "failed",
                            "held",
                        )
                    )
                    if self.on_progress:
                        self.on_progress(done, total)
        finally:
            if client is not None:
                await client.aclose()
            with self.store.write() as session:
                queue.release(session, self.owner, now=self.clock())
        return summary

    def _http_client(self) -> Any:
        if "client" in self.provider_options:
            return None
        from calsync_cli.services.clients import http_client

        return http_client()

    # ----------------------------------------------------------------- one integration

    async def _integration(
        self, integ: Integration, items: Sequence[queue.Claimed], client: Any
    ) -> IntegrationSummary:
        assert integ.id is not None and integ.calendar_id is not None
        outcomes: dict[int, Outcome | BaseException] = {}
        try:
            options = dict(self.provider_options)
            if client is not None:
                options["client"] = client
            async with self.open_provider(
                self.settings, integ.app, integ.id, integ.provider_id, **options
            ) as provider:
                await self._push(provider, integ, items, outcomes)
        except ReauthRequired as exc:
            for item in items:
                outcomes.setdefault(item.job.id, exc)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the whole integration failed this round
            for item in items:
                outcomes.setdefault(item.job.id, exc)  # type: ignore[arg-type]
        # The store work runs in a thread: the event loop keeps the other integrations' calls
        # moving meanwhile (a blocking completion of 200 jobs stalled every batch in flight).
        return await asyncio.to_thread(self._complete, integ, items, outcomes)

    def _generation(self, integ: Integration, link: EventLink | None, bump: bool = False) -> int:
        # Google keeps a deleted event's id (a re-create restores it), so its key never changes;
        # Graph's transactionId must be fresh after a delete.
        if integ.app == "google":
            return 0
        base = link.generation if link else 0
        return base + 1 if bump else base

    def _render(self, integ: Integration, item: queue.Claimed, *, bump: bool = False) -> Rendered:
        """The event ``item``'s visit should be on ``integ``'s calendar; ``bump`` takes the next
        generation (a create after a delete)."""
        return render(
            item.visit, item.practice, integ,
            generation=self._generation(integ, item.link, bump=bump),
            visit_link=self.settings.visit_link(item.visit.id),
        )  # fmt: skip

    async def _push(
        self,
        provider: CalendarProvider,
        integ: Integration,
        items: Sequence[queue.Claimed],
        outcomes: dict[int, Outcome | BaseException],
    ) -> None:
        calendar = integ.calendar_id
        assert calendar is not None
        creates: list[tuple[queue.Claimed, Rendered]] = []
        updates: list[tuple[queue.Claimed, Rendered]] = []
        deletes: list[tuple[queue.Claimed, str, str]] = []  # item, calendar, event id
        moves: list[tuple[queue.Claimed, Rendered]] = []
        recover: list[queue.Claimed] = []  # a dead worker's create may have landed: remove it
        # ... on a calendar the integration has left since: remove it there, then create here
        stranded: list[queue.Claimed] = []
        repeats: set[int] = set()  # job ids whose create repeats one that may have landed
        for item in items:
            job_id, visit, link = item.job.id, item.visit, item.link
            assert job_id is not None
            belongs = visit.status != "cancelled" and jobs.matches(
                integ, visit.practice_id, visit.provider_id
            )
            live = link is not None and link.external_id is not None
            pending = link is not None and not live and link.content_hash == PENDING_CREATE
            if belongs:
                rendered = self._render(integ, item)
                if pending and link is not None and link.calendar_id not in (None, calendar):
                    stranded.append(item)
                elif not live:
                    creates.append((item, rendered))
                    if pending:
                        repeats.add(job_id)
                elif link is not None and link.calendar_id != calendar:
                    moves.append((item, rendered))
                elif link is not None and link.content_hash == rendered.content_hash:
                    outcomes[job_id] = Outcome("skipped")
                else:
                    updates.append((item, rendered))
            elif live and link is not None and link.external_id is not None:
                deletes.append((item, link.calendar_id or calendar, link.external_id))
            elif pending:
                recover.append(item)
            else:
                outcomes[job_id] = Outcome("skipped")

        await asyncio.to_thread(
            self._write_ahead,
            integ,
            [c[0] for c in creates],
            [u[0] for u in updates] + [m[0] for m in moves] + [d[0] for d in deletes],
        )
        await self._recover(provider, integ, [*recover, *stranded], outcomes)
        relocated: list[queue.Claimed] = []  # gone from the old calendar, to create here
        for item in stranded:
            if isinstance(outcomes.get(item.job.id), Outcome):  # type: ignore[arg-type]
                del outcomes[item.job.id]  # type: ignore[arg-type]
                creates.append((item, self._render(integ, item, bump=True)))
                relocated.append(item)

        # Moves: delete on the old calendar first, then create on the new one.
        for old_calendar in {lk.calendar_id for lk in (m[0].link for m in moves) if lk}:
            batch = [m for m in moves if m[0].link and m[0].link.calendar_id == old_calendar]
            results = await provider.batch(
                old_calendar or calendar,
                [Operation("delete", event_id=m[0].link.external_id) for m in batch if m[0].link],
            )
            for (item, _rendered), result in zip(batch, results, strict=True):
                if result.error is not None and not isinstance(result.error, NotFound | Gone):
                    outcomes[item.job.id] = result.error  # type: ignore[index]
                else:
                    creates.append((item, self._render(integ, item, bump=True)))
                    relocated.append(item)
        if relocated:
            await asyncio.to_thread(self._write_ahead_moves, integ, relocated)

        ops: list[Operation] = []
        kinds: list[tuple[str, queue.Claimed, Rendered | None]] = []
        for item, rendered in updates:
            assert item.link is not None
            ops.append(Operation("update", event=rendered.event, event_id=item.link.external_id))
            kinds.append(("updated", item, rendered))
        for item, rendered in creates:
            ops.append(Operation("create", event=rendered.event))
            kinds.append(("created", item, rendered))
        own_deletes = [d for d in deletes if d[1] == calendar]
        for item, _cal, event_id in own_deletes:
            ops.append(Operation("delete", event_id=event_id))
            kinds.append(("deleted", item, None))
        results = await provider.batch(calendar, ops) if ops else []
        recreate: list[tuple[queue.Claimed, Rendered]] = []
        for (kind, item, sent), result in zip(kinds, results, strict=True):
            job_id = item.job.id
            assert job_id is not None
            error = result.error
            if error is None:
                outcomes[job_id] = Outcome(
                    kind, external_id=None if kind == "deleted" else result.event_id,
                    calendar_id=calendar, content_hash=sent.content_hash if sent else None,
                    fields=sent.fields if sent else (),
                )  # fmt: skip
            elif kind == "deleted" and isinstance(error, NotFound | Gone):
                outcomes[job_id] = Outcome("deleted", calendar_id=calendar)
            elif kind == "updated" and isinstance(error, NotFound | Gone):
                # deleted outside calsync: create it again
                recreate.append((item, self._render(integ, item, bump=True)))
            else:
                outcomes[job_id] = error
        if integ.app != "google":
            # Graph answers a repeated transactionId with the event as first created: bring a
            # repeated create's event up to date. (Google's create of an existing id replaces it.)
            await self._refresh_repeats(provider, calendar, creates, repeats, outcomes)
        # Deletes on a calendar the integration no longer uses.
        for item, old_calendar, event_id in (d for d in deletes if d[1] != calendar):
            try:
                await provider.delete_event(old_calendar, event_id)
                outcomes[item.job.id] = Outcome("deleted", calendar_id=old_calendar)  # type: ignore[index]
            except (NotFound, Gone):
                outcomes[item.job.id] = Outcome("deleted", calendar_id=old_calendar)  # type: ignore[index]
            except ProviderError as exc:
                if isinstance(exc, ReauthRequired):
                    raise
                outcomes[item.job.id] = exc  # type: ignore[index]
        if recreate:
            results = await provider.batch(
                calendar, [Operation("create", event=r.event) for _, r in recreate]
            )
            for (item, again), result in zip(recreate, results, strict=True):
                outcomes[item.job.id] = (  # type: ignore[index]
                    result.error
                    if result.error is not None
                    else Outcome(
                        "created", external_id=result.event_id, calendar_id=calendar,
                        content_hash=again.content_hash, fields=again.fields,
                        generation=self._generation(integ, item.link, bump=True),
                    )
                )  # fmt: skip
        # record the generation a create used
        for item, _rendered in creates:
            outcome = outcomes.get(item.job.id)  # type: ignore[arg-type]
            if isinstance(outcome, Outcome) and outcome.generation is None:
                bump = any(r is item for r in relocated)
                outcome.generation = self._generation(integ, item.link, bump=bump)

    def _write_ahead(
        self, integ: Integration, creating: Sequence[queue.Claimed], live: Sequence[queue.Claimed]
    ) -> None:
        """Record, before the calls, what a dead worker may leave done but unrecorded (see the
        module docstring). Links of jobs this worker no longer holds are left alone."""
        if not creating and not live:
            return
        assert integ.id is not None
        iid = integ.id
        links = EventLink.__table__  # type: ignore[attr-defined]
        with self.store.write() as session:  # a few set-based statements: this is on the clock
            held = self._held(session, [*live, *creating])
            touched = [i.visit.id for i in live if i.visit.id in held]
            if touched:
                session.execute(
                    sa.update(links)
                    .where(links.c.integration_id == iid, links.c.visit_id.in_(touched))
                    .where(links.c.external_id.is_not(None))
                    .values(content_hash=None)
                )
            created = [i.visit.id for i in creating if i.visit.id in held]
            if created:
                known = set(
                    session.exec(
                        select(EventLink.visit_id).where(
                            EventLink.integration_id == iid, col(EventLink.visit_id).in_(created)
                        )
                    )
                )
                session.execute(
                    sa.update(links)
                    .where(links.c.integration_id == iid, links.c.visit_id.in_(known))
                    .where(links.c.external_id.is_(None))
                    .values(calendar_id=integ.calendar_id, content_hash=PENDING_CREATE)
                )
                fresh = [
                    {"integration_id": iid, "visit_id": v, "external_id": None,
                     "calendar_id": integ.calendar_id, "content_hash": PENDING_CREATE,
                     "generation": 0, "synced_at": None}
                    for v in created if v not in known
                ]  # fmt: skip
                if fresh:
                    session.execute(sa.insert(links), fresh)

    def _held(self, session: Any, items: Sequence[queue.Claimed]) -> set[str]:
        """The visit ids of ``items`` whose jobs this worker still holds."""
        return set(
            session.exec(
                select(Job.visit_id).where(
                    col(Job.id).in_([i.job.id for i in items]),
                    Job.state == JOB_RUNNING,
                    Job.lease_owner == self.owner,
                )
            )
        )

    def _write_ahead_moves(self, integ: Integration, moved: Sequence[queue.Claimed]) -> None:
        """A move's old event is gone; record its create on the new calendar as pending.

        Between the delete on the old calendar and the create on the new one the link turns
        into a pending create there (with the generation the create uses), so a worker that
        dies after the create leaves what any pending create leaves: the next run repeats it on
        the same key, or removes it when the visit no longer belongs there.
        """
        assert integ.id is not None
        links = EventLink.__table__  # type: ignore[attr-defined]
        with self.store.write() as session:
            held = self._held(session, moved)
            for item in (i for i in moved if i.visit.id in held):
                session.execute(
                    sa.update(links)
                    .where(links.c.integration_id == integ.id, links.c.visit_id == item.visit.id)
                    .values(
                        external_id=None,
                        calendar_id=integ.calendar_id,
                        content_hash=PENDING_CREATE,
                        generation=self._generation(integ, item.link, bump=True),
                    )
                )

    async def _recover(
        self,
        provider: CalendarProvider,
        integ: Integration,
        items: Sequence[queue.Claimed],
        outcomes: dict[int, Outcome | BaseException],
    ) -> None:
        """Remove what a dead worker's create may have made for visits that no longer belong:
        create on the same key (idempotent: the same event, or a new one) and delete that."""
        for cal in sorted({str(i.link.calendar_id or integ.calendar_id) for i in items if i.link}):
            batch = [
                i for i in items if i.link and (i.link.calendar_id or integ.calendar_id) == cal
            ]
            made = await provider.batch(
                cal,
                [
                    Operation("create", event=self._render(integ, i).event)
                    for i in batch
                ],
            )  # fmt: skip
            to_delete: list[tuple[queue.Claimed, str]] = []
            for item, result in zip(batch, made, strict=True):
                assert item.job.id is not None
                if result.error is None and result.event_id is not None:
                    to_delete.append((item, result.event_id))
                elif isinstance(result.error, NotFound | Gone):  # no such calendar any more
                    outcomes[item.job.id] = Outcome("deleted", calendar_id=cal)
                else:
                    outcomes[item.job.id] = result.error or RuntimeError("no event id")
            gone = await provider.batch(
                cal, [Operation("delete", event_id=event_id) for _, event_id in to_delete]
            ) if to_delete else []  # fmt: skip
            for (item, _), result in zip(to_delete, gone, strict=True):
                assert item.job.id is not None
                if result.error is None or isinstance(result.error, NotFound | Gone):
                    outcomes[item.job.id] = Outcome("deleted", calendar_id=cal)
                else:
                    outcomes[item.job.id] = result.error

    async def _refresh_repeats(
        self,
        provider: CalendarProvider,
        calendar: str,
        creates: Sequence[tuple[queue.Claimed, Rendered]],
        repeats: set[int],
        outcomes: dict[int, Outcome | BaseException],
    ) -> None:
        todo = [
            (item, rendered, outcome)
            for item, rendered in creates
            if item.job.id in repeats
            and isinstance(outcome := outcomes.get(item.job.id), Outcome)
            and outcome.external_id is not None
        ]
        if not todo:
            return
        results = await provider.batch(
            calendar,
            [Operation("update", event=r.event, event_id=o.external_id) for _, r, o in todo],
        )
        for (item, _rendered, _outcome), result in zip(todo, results, strict=True):
            if result.error is not None:
                outcomes[item.job.id] = result.error  # type: ignore[index]

    # ----------------------------------------------------------------- completion

    def _complete(
        self,
        integ: Integration,
        items: Sequence[queue.Claimed],
        outcomes: dict[int, Outcome | BaseException],
    ) -> IntegrationSummary:
        assert integ.id is not None
        summary = IntegrationSummary(id=integ.id, app=integ.app)
        now = self.clock()
        success = False
        last_error: str | None = None
        with self.store.write() as session:
            loaded = _prefetch(session, integ.id, items)  # noqa: F841 - kept alive on purpose
            for item in items:
                assert item.job.id is not None
                job = queue.owned(session, item.job.id, self.owner)
                if job is None:
                    continue  # our lease expired and another worker took the job over
                outcome = outcomes.get(item.job.id, RuntimeError("no outcome"))
                if isinstance(outcome, Outcome):
                    success = True
                    self._record(session, integ, item, outcome, now)
                    queue.finish(session, job, now=now)
                    if outcome.kind == "created":
                        summary.pushed += 1
                    else:
                        setattr(summary, outcome.kind, getattr(summary, outcome.kind) + 1)
                    continue
                error = _one_line(outcome)
                last_error = error
                if isinstance(outcome, ReauthRequired):
                    summary.needs_reauth = True
                    summary.held += 1
                    queue.hold(session, job, now=now, error=error)
                elif isinstance(outcome, ProviderError) and not outcome.retryable:
                    summary.failed += 1
                    queue.fail(session, job, now=now, error=error)
                else:
                    job.attempts += 1
                    if job.attempts > MAX_RETRIES:
                        summary.failed += 1
                        queue.fail(session, job, now=now, error=error)
                    else:
                        summary.rescheduled += 1
                        after = outcome.retry_after if isinstance(outcome, RateLimited) else None
                        at = retry_at(job.attempts, now, retry_after=after, rng=self.rng)
                        queue.reschedule(session, job, now=now, at=at, error=error)
            fresh = session.get(Integration, integ.id)
            if fresh is not None:
                if summary.needs_reauth:
                    states.mark_reauth(session, fresh, now=now)
                elif last_error is not None:
                    states.mark_error(session, fresh, now=now, source="push", detail=last_error)
                    if success:
                        states.mark_active(session, fresh, now=now, source="push", synced=True)
                elif success:
                    states.mark_active(session, fresh, now=now, source="push", synced=True)
        summary.error = last_error
        return summary

    def _record(
        self, session: Any, integ: Integration, item: queue.Claimed, outcome: Outcome, now: datetime
    ) -> None:
        if outcome.kind == "skipped":
            return
        assert integ.id is not None
        link = session.get(EventLink, (integ.id, item.visit.id))
        if link is None:
            link = EventLink(integration_id=integ.id, visit_id=item.visit.id)
        if outcome.kind == "deleted":
            link.external_id = None
            link.content_hash = None
            link.generation += 1
        else:
            link.external_id = outcome.external_id
            link.calendar_id = outcome.calendar_id
            link.content_hash = outcome.content_hash
            if outcome.generation is not None:
                link.generation = outcome.generation
        link.synced_at = now
        session.add(link)
        audit.record(
            session, {"created": "push_create", "updated": "push_update"}.get(outcome.kind, "push_delete"),
            now=now, integration_id=integ.id, visit_id=item.visit.id, fields=outcome.fields,
            detail=f"{integ.app} calendar {outcome.calendar_id}",
        )  # fmt: skip
