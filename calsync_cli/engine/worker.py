"""The sync worker: claim due jobs, plan, write ahead, apply through the provider, record.

Per integration and claim round::

    steps = plan(integration, claimed, provider)      # engine.plan: pure, one Step per job
    links.forget_hashes / links.mark_pending          # write ahead (store.links)
    apply(steps)                                      # provider calls, batched
    _complete: links.record + queue.finish|...        # record the outcomes, move the state

Crash safety: a worker that dies after its calls but before recording them leaves a link that
cannot mislead the next one (see ``store.links``): a live link has lost its content hash, so the
next run updates rather than skips; a create leaves a pending create on the calendar it targets,
which the next run repeats on the same key (the same event; a provider whose repeated create
answers the event as first created, ``repeated_create_returns_original``, then gets an update),
or, when the visit no longer belongs there or the integration has moved to another calendar
since, *recovers*: creates on that key and deletes what it answers, so nothing the dead worker
made stays behind.

Only result-dependent fallbacks are decided here: an update answered NotFound/Gone (deleted
outside calsync) becomes a create under the next generation, and a create whose id is held by an
event that cannot be restored (``EventIdTaken``) takes the next generation too.

Failures follow DESIGN.md's schedule: retried 1, 4, 16, 60 and 60 minutes later (up to 10%
jitter, downwards for the hour-long delays: never more than an hour between attempts; a longer
Retry-After wins), then failed. A refused grant holds the integration's jobs (no retry used up)
and flags it "reconnect needed"; a calendar that is gone or read-only holds them until a
calendar is chosen again (``store.states``).
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

from calsync_cli.config import Settings
from calsync_cli.engine.plan import PENDING_CREATE, Step, plan
from calsync_cli.engine.render import Rendered, render
from calsync_cli.errors import KeyringError, StoreError, one_line
from calsync_cli.providers.base import (
    CalendarProvider,
    CalendarUnavailable,
    EventIdTaken,
    Gone,
    InvalidRequest,
    NotFound,
    Operation,
    OperationResult,
    ProviderError,
    ReauthRequired,
)
from calsync_cli.store import audit, links, queue, states
from calsync_cli.store.db import Store
from calsync_cli.store.links import Pending, Result
from calsync_cli.store.models import Integration

__all__ = ["PENDING_CREATE", "IntegrationSummary", "RunSummary", "Worker", "retry_at"]

RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=4), timedelta(minutes=16),
                timedelta(hours=1), timedelta(hours=1))  # fmt: skip
MAX_RETRIES = len(RETRY_DELAYS)
JITTER = 0.10
#: the product page promises "up to 1 hour between attempts"
MAX_DELAY = timedelta(hours=1)

OpenProvider = Callable[..., AbstractAsyncContextManager[CalendarProvider]]
Outcomes = dict[int, Result | BaseException]


def retry_at(
    attempts: int, now: datetime, *, retry_after: float | None, rng: random.Random
) -> datetime:
    """When to try again after the ``attempts``-th failure (1-based). Jitter spreads the short
    delays upwards and the hour-long ones downwards, so no wait exceeds an hour; only a longer
    ``Retry-After`` from the provider can (it asked for it)."""
    delay = RETRY_DELAYS[min(attempts, MAX_RETRIES) - 1]
    spread = delay * rng.uniform(0, JITTER)
    delay = delay - spread if delay + spread > MAX_DELAY else delay + spread
    if retry_after is not None and timedelta(seconds=retry_after) > delay:
        delay = timedelta(seconds=retry_after)
    return now + delay


COUNTERS = ("pushed", "updated", "deleted", "skipped", "rescheduled", "failed", "held")


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
    #: this host could not work for it (an unusable keyring or database): an operational failure
    blocked: bool = False
    error: str | None = None

    def add(self, other: IntegrationSummary) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.needs_reauth = self.needs_reauth or other.needs_reauth
        self.blocked = self.blocked or other.blocked
        self.error = other.error or self.error

    @property
    def done(self) -> int:
        return sum(getattr(self, name) for name in COUNTERS)


@dataclass
class RunSummary:
    integrations: dict[int, IntegrationSummary] = field(default_factory=dict)

    def merge(self, summary: IntegrationSummary) -> None:
        if summary.id in self.integrations:
            self.integrations[summary.id].add(summary)
        else:
            self.integrations[summary.id] = summary

    def extend(self, other: RunSummary) -> None:
        for item in other.integrations.values():
            self.merge(item)

    @property
    def needs_reauth(self) -> bool:
        return any(s.needs_reauth for s in self.integrations.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.integrations.values())

    @property
    def blocked(self) -> bool:
        return any(s.blocked for s in self.integrations.values())

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(s, k) for s in self.integrations.values()) for k in COUNTERS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "integrations": [asdict(s) for s in self.integrations.values()],
            "totals": self.totals(),
        }


def owner_is_dead_here(owner: str) -> bool:
    """Whether a lease ``owner`` (``host:pid:nonce``) is a process of this host that is gone.
    Only provable deaths count: another host's owner, or a pid that exists, is alive."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but was not reaped yet (Linux ``/proc``): dead all the same."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Worker:
    """Runs due sync work. ``clock``, ``rng`` and ``open_provider`` are injectable."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        owner: str | None = None,
        lease: timedelta = timedelta(minutes=5),
        claim_limit: int = 2000,
        per_integration: int = 250,
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
        self.per_integration = per_integration
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
            with self.store.write() as session:  # count among the workers before anyone claims
                queue.heartbeat(session, self.owner, now=self.clock())
            await asyncio.to_thread(self._reclaim_dead)
            for _ in range(max_rounds):
                if self.stop_requested:
                    break
                now = self.clock()
                with self.store.write() as session:
                    claimed = queue.claim(
                        session, owner=self.owner, now=now, lease=self.lease,
                        limit=self.claim_limit, per_integration=self.per_integration,
                    )  # fmt: skip
                if not claimed:
                    break
                total += sum(len(items) for _, items in claimed.values())
                renewing = asyncio.create_task(self._renew_leases())
                try:
                    results = await asyncio.gather(
                        *(self._integration(i, items, client) for i, items in claimed.values())
                    )
                finally:
                    renewing.cancel()
                for result in results:
                    summary.merge(result)
                    done += result.done
                    if self.on_progress:
                        self.on_progress(done, total)
        finally:
            if client is not None:
                await client.aclose()
            with self.store.write() as session:
                queue.release(session, self.owner, now=self.clock())
                queue.resign(session, self.owner)
        return summary

    async def _renew_leases(self) -> None:
        """While a round is in flight, extend its leases every third of a lease, so a long batch
        is never taken over by another worker while it is still being pushed."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)

            def renew() -> None:
                with self.store.write() as session:
                    queue.renew(session, self.owner, until=self.clock() + self.lease)

            await asyncio.to_thread(renew)

    def _reclaim_dead(self) -> None:
        """Leases held by a process of this host that no longer exists (killed, crashed) are
        ended now: the queue does not sit idle until they expire."""
        now = self.clock()
        with self.store.write() as session:
            dead = [o for o in queue.lease_owners(session, now=now) if owner_is_dead_here(o)]
            queue.expire_leases(session, dead, now=now)

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
        outcomes: Outcomes = {}
        try:
            options = dict(self.provider_options)
            if client is not None:
                options["client"] = client
            async with self.open_provider(
                self.settings, integ.app, integ.id, integ.provider_id, **options
            ) as provider:
                steps = plan(integ, items, type(provider), visit_link=self.settings.visit_link)
                await Applier(self, provider, integ, items).run(steps, outcomes)
        except Exception as exc:  # noqa: BLE001 - the whole integration failed this round
            for item in items:
                outcomes.setdefault(item.job_id, exc)
        # The store work runs in a thread: the event loop keeps the other integrations' calls
        # moving meanwhile (a blocking completion of 200 jobs stalled every batch in flight).
        return await asyncio.to_thread(self._complete, integ, items, outcomes)

    # ----------------------------------------------------------------- write-ahead

    def write_ahead(self, integ: Integration, steps: Sequence[Step]) -> None:
        """Record, before the calls, what a dead worker may leave done but unrecorded."""
        changing = [s for s in steps if s.action in ("update", "move", "delete")]
        creating = [s for s in steps if s.action == "create"]
        if not changing and not creating:
            return
        assert integ.id is not None
        with self.store.write() as session:  # a few set-based statements: this is on the clock
            held = links.held(session, [s.job_id for s in (*changing, *creating)], self.owner)
            links.forget_hashes(
                session, integ.id, [s.visit_id for s in changing if s.visit_id in held]
            )
            links.mark_pending(
                session, integ.id,
                [Pending(s.visit_id, str(s.calendar_id), s.generation)
                 for s in creating if s.visit_id in held],
            )  # fmt: skip

    def write_ahead_relocations(self, integ: Integration, steps: Sequence[Step]) -> None:
        """A move's old event (or a dead worker's create elsewhere) is gone: the link becomes a
        pending create on the new calendar, with the generation that create uses."""
        assert integ.id is not None
        with self.store.write() as session:
            held = links.held(session, [s.job_id for s in steps], self.owner)
            links.mark_pending(
                session, integ.id,
                [Pending(s.visit_id, str(s.calendar_id), s.generation)
                 for s in steps if s.visit_id in held],
                relocation=True,
            )  # fmt: skip

    # ----------------------------------------------------------------- completion

    def _complete(
        self, integ: Integration, items: Sequence[queue.Claimed], outcomes: Outcomes
    ) -> IntegrationSummary:
        assert integ.id is not None
        summary = IntegrationSummary(id=integ.id, app=integ.app)
        now = self.clock()
        success = False
        last_error: str | None = None
        calendar_lost: CalendarUnavailable | None = None
        detail = f"{integ.app} calendar"
        audit_rows: list[dict[str, Any]] = []
        settled: list[Any] = []
        with self.store.write() as session:
            loaded = queue.load_claimed(session, integ.id, items)  # noqa: F841 - kept alive
            for item in items:
                job = queue.owned(session, item.job_id, self.owner)
                if job is None:
                    continue  # our lease expired and another worker took the job over
                outcome = outcomes.get(item.job_id)
                if outcome is None:  # not reached before a stop: back to the queue, untouched
                    queue.give_back(session, job, now=now)
                    continue
                if isinstance(outcome, Result):
                    success = True
                    outcome.visit_hash = item.visit.content_hash
                    outcome.filter_version = integ.filter_version
                    links.record(
                        session, integ.id, item.visit.id, outcome, now=now,
                        detail=f"{detail} {outcome.calendar_id}", audit_rows=audit_rows,
                    )  # fmt: skip
                    queue.finish(session, job, now=now, settled=settled)
                    name = "pushed" if outcome.kind == "created" else outcome.kind
                    setattr(summary, name, getattr(summary, name) + 1)
                    continue
                error = one_line(outcome)
                last_error = error
                if isinstance(outcome, KeyringError | StoreError):
                    # this host cannot reach its tokens or its database: not the provider's
                    # fault and not the visit's, so no retry is used up (exit 1, operational)
                    summary.held += 1
                    summary.blocked = True
                    queue.hold(session, job, now=now, error=error, at=now + RETRY_DELAYS[0])
                elif isinstance(outcome, ReauthRequired | CalendarUnavailable):
                    summary.needs_reauth = summary.needs_reauth or isinstance(
                        outcome, ReauthRequired
                    )
                    if isinstance(outcome, CalendarUnavailable):
                        calendar_lost = outcome
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
                        after = getattr(outcome, "retry_after", None)
                        at = retry_at(job.attempts, now, retry_after=after, rng=self.rng)
                        queue.reschedule(session, job, now=now, at=at, error=error)
            queue.forget_failures(session, settled)
            audit.record_many(session, audit_rows)
            fresh = session.get(Integration, integ.id)
            if fresh is not None:
                if summary.needs_reauth:
                    states.mark_reauth(session, fresh, now=now)
                elif calendar_lost is not None:
                    states.mark_calendar_lost(session, fresh, now=now, why=one_line(calendar_lost))
                elif last_error is not None:
                    states.mark_error(session, fresh, now=now, source="push", detail=last_error)
                    if success:
                        states.mark_active(session, fresh, now=now, source="push", synced=True)
                elif success:
                    states.mark_active(session, fresh, now=now, source="push", synced=True)
        summary.error = last_error
        return summary


class Applier:
    """Applies one integration's steps through its provider; fills ``outcomes`` per job."""

    def __init__(
        self,
        worker: Worker,
        provider: CalendarProvider,
        integ: Integration,
        items: Sequence[queue.Claimed],
    ) -> None:
        assert integ.calendar_id is not None
        self.worker = worker
        self.provider = provider
        self.integ = integ
        self.calendar = integ.calendar_id
        self.items = {item.job_id: item for item in items}

    def _render(self, step: Step, generation: int) -> Rendered:
        item = self.items[step.job_id]
        return render(
            item.visit, item.practice, self.integ, generation=generation,
            visit_link=self.worker.settings.visit_link(item.visit.id),
        )  # fmt: skip

    @staticmethod
    def _made(step: Step, rendered: Rendered, generation: int, result: OperationResult) -> Result:
        return Result(
            "created", external_id=result.event_id, calendar_id=step.calendar_id,
            content_hash=rendered.content_hash, generation=generation, fields=rendered.fields,
        )  # fmt: skip

    def _gone(self, step: Step, calendar: str | None) -> Result:
        return Result("deleted", calendar_id=calendar, generation=step.generation_after_delete)

    async def run(self, steps: Sequence[Step], outcomes: Outcomes) -> None:
        for step in steps:
            if step.action == "skip":
                outcomes[step.job_id] = Result("skipped")
            elif step.action == "invalid":
                outcomes[step.job_id] = InvalidRequest(f"visit {step.visit_id} {step.why}")
        await asyncio.to_thread(self.worker.write_ahead, self.integ, steps)

        # 1. What must go before a create here: a dead worker's create where it should not be
        #    (recover), and a move's old event. Both then create here, as relocations.
        relocations: list[Step] = []
        recover = [s for s in steps if s.action == "recover"]
        for step in await self._recover(recover, outcomes):
            if step.rendered is not None:
                del outcomes[step.job_id]
                relocations.append(step)
        relocations += await self._delete_moved([s for s in steps if s.action == "move"], outcomes)
        if relocations:
            await asyncio.to_thread(self.worker.write_ahead_relocations, self.integ, relocations)

        # 2. One batch on the integration's calendar: updates, creates, deletes there.
        creates = [s for s in steps if s.action == "create"] + relocations
        if self.provider.repeated_create_returns_original:
            # The service's idempotency key (Graph's transactionId) is kept for an undocumented
            # while only: before creating again what a dead worker may have made, look for it by
            # calsync's tag; found, it is updated in place instead of created twice.
            found = await self._find_repeats([s for s in creates if s.repeat], outcomes)
            creates = [s for s in creates if s.job_id not in found]
        updates = [s for s in steps if s.action == "update"]
        deletes = [s for s in steps if s.action == "delete"]
        here = [s for s in deletes if s.from_calendar == self.calendar]
        ops = [Operation("update", event=self._event(s), event_id=s.event_id) for s in updates]
        ops += [Operation("create", event=self._event(s)) for s in creates]
        ops += [Operation("delete", event_id=s.event_id) for s in here]
        results = await self._batch_until_stopped(ops)
        again: list[tuple[Step, int]] = []  # creates to send under another generation
        for step, result in zip([*updates, *creates, *here], results, strict=False):
            error, rendered = result.error, step.rendered
            if step.action == "delete":
                if error is None or isinstance(error, NotFound | Gone):
                    outcomes[step.job_id] = self._gone(step, self.calendar)
                else:
                    outcomes[step.job_id] = error
            elif error is None:
                assert rendered is not None
                if step.action == "update":
                    outcomes[step.job_id] = Result(
                        "updated", external_id=result.event_id, calendar_id=self.calendar,
                        content_hash=rendered.content_hash, fields=rendered.fields,
                    )  # fmt: skip
                else:
                    outcomes[step.job_id] = self._made(step, rendered, step.generation, result)
            elif step.action == "update" and isinstance(error, NotFound | Gone):
                # deleted outside calsync: create it again (a provider that restores deleted
                # events under their id keeps the generation; any other takes the next one)
                restores = self.provider.create_restores_deleted
                again.append((step, step.generation + (0 if restores else 1)))
            elif isinstance(error, EventIdTaken):
                again.append((step, step.generation + 1))
            else:
                outcomes[step.job_id] = error

        # 3. Result-dependent fallbacks, then the rest.
        await self._create_again(again, outcomes)
        if self.provider.repeated_create_returns_original:
            await self._refresh_repeats([s for s in creates if s.repeat], outcomes)
        for step in (s for s in deletes if s.from_calendar != self.calendar):
            assert step.from_calendar is not None and step.event_id is not None
            try:
                await self.provider.delete_event(step.from_calendar, step.event_id)
                outcomes[step.job_id] = self._gone(step, step.from_calendar)
            except (NotFound, Gone):
                outcomes[step.job_id] = self._gone(step, step.from_calendar)
            except ReauthRequired:
                raise
            except ProviderError as exc:
                outcomes[step.job_id] = exc

    async def _batch_until_stopped(self, ops: Sequence[Operation]) -> list[OperationResult]:
        """The batch on the integration's calendar, in slices of as many requests as may be in
        flight at once; a stop request (SIGTERM) ends it between slices: what was not sent gets
        no outcome and goes back to the queue untouched."""
        size = max(1, self.provider.max_batch * self.provider.max_concurrency)
        results: list[OperationResult] = []
        for first in range(0, len(ops), size):
            if self.worker.stop_requested:
                break
            results += await self.provider.batch(self.calendar, ops[first : first + size])
        return results

    @staticmethod
    def _event(step: Step) -> Any:
        assert step.rendered is not None
        return step.rendered.event

    async def _recover(self, steps: Sequence[Step], outcomes: Outcomes) -> list[Step]:
        """Remove what a dead worker's create may have made: create on the same key (the same
        event, or a new one) and delete that. Answers the steps whose cleanup succeeded."""
        cleared: list[Step] = []
        for cal in sorted({str(s.from_calendar) for s in steps}):
            batch = [s for s in steps if s.from_calendar == cal]
            made = await self.provider.batch(
                cal, [Operation("create", event=s.probe.event) for s in batch if s.probe]
            )
            to_delete: list[tuple[Step, str]] = []
            for step, result in zip(batch, made, strict=True):
                if result.error is None and result.event_id is not None:
                    to_delete.append((step, result.event_id))
                elif isinstance(result.error, NotFound | Gone | CalendarUnavailable):
                    outcomes[step.job_id] = self._gone(step, cal)  # no such calendar any more
                    cleared.append(step)
                else:
                    outcomes[step.job_id] = result.error or ProviderError("no event id")
            gone = await self.provider.batch(
                cal, [Operation("delete", event_id=event_id) for _, event_id in to_delete]
            ) if to_delete else []  # fmt: skip
            for (step, _), result in zip(to_delete, gone, strict=True):
                if result.error is None or isinstance(result.error, NotFound | Gone):
                    outcomes[step.job_id] = self._gone(step, cal)
                    cleared.append(step)
                else:
                    outcomes[step.job_id] = result.error
        return cleared

    async def _delete_moved(self, steps: Sequence[Step], outcomes: Outcomes) -> list[Step]:
        """Delete moved events on their old calendars; answers the moves ready to create here."""
        ready: list[Step] = []
        for old in sorted({str(s.from_calendar) for s in steps}):
            batch = [s for s in steps if s.from_calendar == old]
            results = await self.provider.batch(
                old, [Operation("delete", event_id=s.event_id) for s in batch]
            )
            for step, result in zip(batch, results, strict=True):
                error = result.error
                if error is None or isinstance(error, NotFound | Gone | CalendarUnavailable):
                    ready.append(step)
                else:
                    outcomes[step.job_id] = error
        return ready

    async def _create_again(self, again: list[tuple[Step, int]], outcomes: Outcomes) -> None:
        """Creates under a later generation (the event was deleted outside calsync, or its id
        cannot be restored); an id that is taken again moves on once more, at most 3 times."""
        for _ in range(3):
            if not again:
                return
            drawn = [(step, gen, self._render(step, gen)) for step, gen in again]
            results = await self.provider.batch(
                self.calendar, [Operation("create", event=r.event) for _, _, r in drawn]
            )
            again = []
            for (step, gen, rendered), result in zip(drawn, results, strict=True):
                if result.error is None:
                    outcomes[step.job_id] = self._made(step, rendered, gen, result)
                elif isinstance(result.error, EventIdTaken):
                    again.append((step, gen + 1))
                else:
                    outcomes[step.job_id] = result.error
        for step, _ in again:
            outcomes[step.job_id] = EventIdTaken("no free event id for this visit")

    async def _find_repeats(self, repeats: Sequence[Step], outcomes: Outcomes) -> set[int]:
        """Repeated creates whose event is found by its tag: updated to the current render and
        recorded as created. Answers their job ids."""
        found: set[int] = set()
        for step in repeats:
            if self.worker.stop_requested:
                break
            assert step.rendered is not None
            try:
                event_id = await self.provider.find_event_by_tag(
                    self.calendar, step.rendered.event.tag
                )
                if event_id is None:
                    continue
                await self.provider.update_event(self.calendar, event_id, step.rendered.event)
            except ReauthRequired:
                raise
            except ProviderError as exc:
                outcomes[step.job_id] = exc
                found.add(step.job_id)
                continue
            outcomes[step.job_id] = self._made(
                step, step.rendered, step.generation, OperationResult(event_id)
            )
            found.add(step.job_id)
        return found

    async def _refresh_repeats(self, repeats: Sequence[Step], outcomes: Outcomes) -> None:
        """A repeated create answered the event as first created: bring it up to date."""
        todo = [
            (step, outcome)
            for step in repeats
            if isinstance(outcome := outcomes.get(step.job_id), Result)
            and outcome.external_id is not None
        ]
        if not todo:
            return
        results = await self.provider.batch(
            self.calendar,
            [Operation("update", event=self._event(s), event_id=o.external_id) for s, o in todo],
        )
        for (step, _outcome), result in zip(todo, results, strict=True):
            if result.error is not None:
                outcomes[step.job_id] = result.error
