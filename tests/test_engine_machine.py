"""A Hypothesis state machine over the push engine, in the spirit of vdirsyncer's SyncMachine.

Two clinicians, each with one integration: dr-lee on Google, dr-patel on Outlook (fresh sandbox
accounts per example, each with a second calendar, "Clinic", to move to). Every example starts
with five visits imported (maybe followed by a worker run, which may die); then the rules are
what happens to a practice: visit edits through the real importer (create; change time, type,
patient, room, practice, reason; cancel; un-cancel; reassign to the other clinician), faults
injected into the sandbox (5xx, 429 with Retry-After, dropped connections, expired access
tokens), pause and resume, privacy filter changes, a calendar switch, and time passing before
``calsync sync`` (sometimes after ``calsync sweep``) runs once, or dies mid-run.

A dying worker is simulated at the boundaries the worker takes as parameters: its HTTP client's
transport forwards a number of requests to the sandbox (which applies them), then "kills the
process" (that answer never reaches the worker, nor does any later one), and its clock raises
from then on, so nothing more is recorded and its leases are not released (as after SIGKILL:
they expire five minutes later). A variant dies at the first completion, after every call was
made (what tests/test_engine_crash.py's DyingWorker does). No calsync internals are patched.

Invariant after every step: a calendar never shows two events of one visit, nor an event that
is not calsync's. At the end (``teardown``) the faults are cleared, paused integrations resumed,
and the worker run, the clock past every retry and lease, until no work is due; then every
visit that belongs on an integration's calendar has exactly one event, on its current calendar,
with the content ``render`` gives, and nothing else is on any calendar of the account. Two kinds
of (integration, visit) pair are only held to "at most one event": what changed while the
integration was paused (never backfilled, by design) and a job that failed for good (retries
used up). A sweep then queues the latter again, and those must converge too.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlmodel import SQLModel, col, select

from calsync_cli.auth.apps import GOOGLE_SCOPES, MICROSOFT_SCOPES
from calsync_cli.auth.tokens import Tokens, TokenStore
from calsync_cli.config import Settings, load_settings
from calsync_cli.engine.render import event_tag, render
from calsync_cli.engine.sweep import sweep
from calsync_cli.engine.worker import RunSummary, Worker
from calsync_cli.providers import google as google_api
from calsync_cli.providers import microsoft as graph_api
from calsync_cli.sandbox import Sandbox
from calsync_cli.sandbox.testing import google_sign_in, microsoft_sign_in
from calsync_cli.services import connections
from calsync_cli.services import imports as importers
from calsync_cli.services import integrations as core
from calsync_cli.store.db import Store
from calsync_cli.store.models import (
    JOB_FAILED,
    LIVE_JOB_STATES,
    Integration,
    Job,
    Practice,
    Visit,
)
from tests.conftest import NOW, PRACTICES, PROVIDERS, write_jsonl
from tests.engine_support import Clock, Env
from tests.sync_support import CLINICIANS

APPS = ("google", "outlook")
PROVIDER_OF = {app: provider for provider, app in CLINICIANS.items()}
VIDS = tuple(f"v{i}" for i in range(5))
#: visits are two weeks out: the clock never gets near them, so all stay "upcoming"
BASE = datetime(2026, 12, 8, 15, 0, tzinfo=UTC)

KINDS = (
    "create", "time", "type", "patient", "room", "practice", "reason",
    "cancel", "uncancel", "reassign",
)  # fmt: skip
VALUES: dict[str, tuple[Any, ...]] = {
    "time": (-30, 15, 45, 90),  # minutes
    "type": ("Follow Up", "New Patient", "Annual Physical", None),
    "patient": ("Jane Doe", "John Q Public", "Ana Maria Silva", "Bo Li"),
    "room": ("Room 1", "Room 2", None, "Lab"),
    "practice": ("main", "river", "main", "river"),
    "reason": ("knee pain", None, "labs", "cough"),
}
FILTER_CHANGES = (
    core.FilterChange(patient_name_format="initials"),
    core.FilterChange(patient_name_format="short"),
    core.FilterChange(patient_name_format="full"),
    core.FilterChange(patient_name=False),
    core.FilterChange(patient_name=True),
    core.FilterChange(location=False),
    core.FilterChange(location=True),
    core.FilterChange(notes=True),
    core.FilterChange(notes=False),
    core.FilterChange(practice_name=False, visit_type=False),
    core.FilterChange(practice_name=True, visit_type=True),
)

#: minutes that pass before a worker runs: past a first retry, a lease, a last retry...
ADVANCE = st.sampled_from([0, 0.5, 2, 6, 17, 61, 130])

#: now and then cron's sweep runs before the sync (a safety net: not too often, or it would
#: hide what the imports failed to queue)
SWEEP_FIRST = st.sampled_from([False, False, False, True])

#: how a worker run ends: normally, after that many HTTP answers, or at its first completion
DIES = st.sampled_from([None, 1, "at completion", 0, 2, 3, None])

#: examples per backend, each of STEPS rules and the convergence check: about 10 s on SQLite
#: and 7 s on PostgreSQL, which runs fewer (one worker at a time: PostgreSQL's part here is its
#: SQL, not its row locks)
EXAMPLES, EXAMPLES_POSTGRES, STEPS = 50, 20, 25

SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------- visits


def new_row(vid: str, k: int) -> dict[str, Any]:
    start = BASE + timedelta(hours=2 * VIDS.index(vid))
    return {
        "id": vid,
        "practice_id": "main",
        "provider_id": list(CLINICIANS)[k % 2],
        "patient_name": VALUES["patient"][VIDS.index(vid) % 4],
        "visit_type": "Follow Up",
        "room": "Room 1",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=30)).isoformat(),
        "status": "scheduled",
        "reason": None,
    }


def edited(row: dict[str, Any], kind: str, k: int) -> dict[str, Any]:
    row = dict(row)
    if kind == "time":
        shift = timedelta(minutes=VALUES["time"][k])
        for key in ("start", "end"):
            row[key] = (datetime.fromisoformat(row[key]) + shift).isoformat()
    elif kind in ("type", "patient", "room", "practice", "reason"):
        field = {"type": "visit_type", "patient": "patient_name", "practice": "practice_id"}
        row[field.get(kind, kind)] = VALUES[kind][k]
    elif kind == "cancel":
        row["status"] = "cancelled"
    elif kind == "uncancel":
        row["status"] = "confirmed"
    elif kind == "reassign":
        row["provider_id"] = "dr-patel" if row["provider_id"] == "dr-lee" else "dr-lee"
    return row


def belongs(app: str, row: dict[str, Any] | None) -> bool:
    """The model's own answer: not cancelled, and the integration's clinician's visit (the
    provider filter is the clinician; the practice filter is empty)."""
    return (
        row is not None and row["status"] != "cancelled" and row["provider_id"] == PROVIDER_OF[app]
    )


def queues(app: str, old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether importing ``new`` over ``old`` queues work for ``app``'s integration (README:
    each created, changed or cancelled visit, for integrations it matches or matched)."""
    if old == new:
        return False
    if old is None:
        return belongs(app, new)
    if old["status"] == "cancelled" and new["status"] == "cancelled":
        return False
    return PROVIDER_OF[app] in (old["provider_id"], new["provider_id"])


# ------------------------------------------------------------------------- a dying worker


class Crash(BaseException):
    """The worker process died here."""


class DyingTransport(httpx2.AsyncBaseTransport):
    """Forwards ``calls`` requests to the sandbox (which applies them), then dies: the last
    answer never reaches the worker, and every later request dies too."""

    def __init__(self, calls: int | None) -> None:
        self.inner = httpx2.AsyncHTTPTransport(verify=False)  # plain HTTP on loopback
        self.left = calls
        self.dead = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.dead or self.left == 0:
            self.dead = True
            raise Crash()
        response = await self.inner.handle_async_request(request)
        if self.left is not None:
            self.left -= 1
            self.dead = self.dead or self.left == 0
        if self.dead:  # this answer, or one in flight when the process died, is lost
            await response.aread()
            await response.aclose()
            raise Crash()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class DyingClock:
    """The worker's clock; once the process is dead every reading raises (so no completion
    and no lease release is recorded). ``reads``: die at that reading."""

    clock: Clock
    transport: DyingTransport
    reads: int | None = None

    def __call__(self) -> datetime:
        if self.reads is not None:
            self.reads -= 1
            if self.reads == 0:
                self.transport.dead = True
        if self.transport.dead:
            raise Crash()
        return self.clock()


# ------------------------------------------------------------------------- the environment


def empty(store: Store, tmp: Path) -> Store:
    """The test's database, emptied, with the practices and providers."""
    with store.write() as s:
        for table in reversed(SQLModel.metadata.sorted_tables):
            if table.name != "calsync_meta":
                s.execute(table.delete())
    for kind, rows in (("practices", PRACTICES), ("providers", PROVIDERS)):
        path = write_jsonl(tmp / f"{kind}.jsonl", [dict(r) for r in rows])
        importers.import_file(store, kind, str(path), now=NOW)  # type: ignore[arg-type]
    return store


def tag_of(app: str, event: dict[str, Any]) -> str | None:
    if app == "google":
        private = (event.get("extendedProperties") or {}).get("private") or {}
        return private.get(google_api.TAG_PROPERTY)
    for prop in event.get("singleValueExtendedProperties") or ():
        if str(prop.get("id")).lower() == graph_api.TAG_PROPERTY_ID.lower():
            return str(prop.get("value"))
    return None


def shown(app: str, event: dict[str, Any]) -> dict[str, Any]:
    """What a clinician sees of an event (sandbox copy, or a body calsync would send)."""
    if app == "google":
        keys = ("summary", "description", "location", "start", "end")
        return {k: event.get(k) for k in keys}
    return {
        "subject": event.get("subject"),
        "body": (event.get("body") or {}).get("content"),
        "location": (event.get("location") or {}).get("displayName"),
        "start": event.get("start"),
        "end": event.get("end"),
    }


def expected_body(app: str, rendered_event: Any) -> dict[str, Any]:
    api = google_api if app == "google" else graph_api
    return shown(app, api.event_body(rendered_event))


# ------------------------------------------------------------------------- the machine


class EngineMachine(RuleBasedStateMachine):
    """See the module docstring. A subclass per test sets ``tmp``, the shared sandbox ``sb``
    and ``store``, and the ``cfg`` pointing at both."""

    tmp: Path
    store: Store
    sb: Sandbox
    cfg: Settings
    examples = 0

    def __init__(self) -> None:
        super().__init__()
        cls = type(self)
        cls.examples += 1
        n = cls.examples
        tmp = cls.tmp / f"example{n}"
        tmp.mkdir()
        #: fresh sandbox accounts for each example, each with a second calendar
        self.emails = {
            "google": f"ana.lee.{n}@gmail.example",
            "outlook": f"raj.{n}@outlook.example",
        }
        self.calendars: dict[str, list[str]] = {}
        for app, email in self.emails.items():
            account = self.sb.add_account(app, email, calendars=[{"name": "Clinic"}])
            self.calendars[app] = [account.primary_calendar_id, account.calendar_id("Clinic")]
        self.current = {app: cals[0] for app, cals in self.calendars.items()}
        self.env = Env(self.sb, empty(self.store, tmp), self.cfg, tmp, clock=Clock(NOW))
        with httpx2.Client(trust_env=False, verify=False) as http:  # plain HTTP on loopback
            self.iids = {app: self._connect(http, app) for app in APPS}
        self.app_of = {iid: app for app, iid in self.iids.items()}
        self.rows: dict[str, dict[str, Any]] = {}
        self.paused = dict.fromkeys(APPS, False)
        #: (app, visit) pairs changed while the integration was paused: never backfilled
        self.tainted: set[tuple[str, str]] = set()
        #: fault units (failures, drops) injected per app, to tell when none is pending
        self.injected: Counter[str] = Counter()

    def _connect(self, http: httpx2.Client, app: str) -> int:
        """What ``tests.engine_support.connect`` does, on one cheap HTTP client; the tokens'
        expiry counts from the real clock, which the token source reads (so only the faults
        force refreshes)."""
        email = self.emails[app]
        if app == "google":
            answer = google_sign_in(http, self.sb.url, email, scopes=GOOGLE_SCOPES)
        else:
            answer = microsoft_sign_in(http, self.sb.url, email, scopes=MICROSOFT_SCOPES)
        with self.env.store.write() as s:
            integ = core.create(
                s, provider_id=PROVIDER_OF[app], app=app, now=self.env.clock(), account=email,
                calendar_id=self.current[app], calendar_name="Calendar",
            )  # fmt: skip
            assert integ.id is not None
            iid = integ.id
        TokenStore().put(iid, Tokens.from_token_response(answer, datetime.now(UTC)))
        return iid

    # ---------------------------------------------------------------- helpers

    def _changed(self, apps_pairs: list[tuple[str, str]]) -> None:
        """Work was (or would have been) queued for these pairs: a paused integration misses
        it for good; for a pushing one the queued job renders the visit as it is now."""
        for app, vid in apps_pairs:
            if self.paused[app]:
                self.tainted.add((app, vid))
            else:
                self.tainted.discard((app, vid))

    def _belonging(self, app: str) -> list[tuple[str, str]]:
        return [(app, vid) for vid, row in self.rows.items() if belongs(app, row)]

    def _pending_faults(self, app: str) -> int:
        taken = self.sb.stats()["faults_injected"].get(app, {}).get(self.emails[app], 0)
        return self.injected[app] - taken

    # ---------------------------------------------------------------- rules: the practice

    @initialize(
        kinds=st.lists(st.integers(0, 3), min_size=len(VIDS), max_size=len(VIDS)),
        first_run=st.sampled_from(["none", "sync", "dies"]),
        dies=st.sampled_from([1, "at completion", 0, 2]),
    )
    def seed_visits(self, kinds: list[int], first_run: str, dies: int | str) -> None:
        """Every visit exists from the start (one in four first seen cancelled); maybe a first
        worker run, which may die (``dies``: see ``run_worker``)."""
        self.import_visits(
            [(vid, "create", k) for vid, k in zip(VIDS, kinds, strict=True)]
            + [(vid, "cancel", 0) for vid, k in zip(VIDS, kinds, strict=True) if k == 3]
        )
        if first_run != "none":
            self.run_worker(0, dies if first_run == "dies" else None, False)

    @rule(
        edits=st.lists(
            st.tuples(st.sampled_from(VIDS), st.sampled_from(KINDS), st.integers(0, 3)),
            min_size=1,
            max_size=3,
        )
    )
    def import_visits(self, edits: list[tuple[str, str, int]]) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for vid, kind, k in edits:
            row = rows.get(vid) or self.rows.get(vid) or new_row(vid, k)
            rows[vid] = edited(row, kind, k)
        self._changed(
            [
                (app, vid)
                for vid, row in rows.items()
                for app in APPS
                if queues(app, self.rows.get(vid), row)
            ]
        )
        file_rows = [{k: v for k, v in r.items() if v is not None} for r in rows.values()]
        self.env.import_visits(file_rows)
        self.rows.update(rows)

    @rule(
        app=st.sampled_from(APPS),
        what=st.sampled_from(["filters", "calendar", "resume", "pause"]),
        change=st.sampled_from(FILTER_CHANGES),
    )
    def reconfigure(self, app: str, what: str, change: core.FilterChange) -> None:
        """A privacy filter change, a calendar switch, or pause / resume."""
        iid, now = self.iids[app], self.env.clock()
        if what in ("pause", "resume"):
            core.toggle(self.env.store, iid, what == "pause", now=now)
            self.paused[app] = what == "pause"
        elif what == "filters":
            if core.set_filters(self.env.store, iid, change, now=now)["changed"]:
                self._changed(self._belonging(app))  # upcoming visits re-queued (not if paused)
        else:
            # The choice reads the calendar list live, with real (sleeping) quick retries: the
            # provider is healthy for it (pending failures and drops are forgotten).
            self.sb.faults(app, self.emails[app]).clear()
            self.injected[app] -= self._pending_faults(app)
            target = next(c for c in self.calendars[app] if c != self.current[app])
            connections.select_calendar(
                self.env.settings, self.env.store, iid, target, now=self.env.clock
            )
            self.current[app] = target
            self._changed(self._belonging(app))

    # ---------------------------------------------------------------- rules: the providers

    @rule(
        app=st.sampled_from(APPS),
        fault=st.sampled_from(["503", "429", "drop", "expire", "500"]),
        n=st.integers(1, 3),
        retry_after=st.sampled_from([None, 1, 90, 600, 3600]),
    )
    def inject_fault(self, app: str, fault: str, n: int, retry_after: float | None) -> None:
        """The next ``n`` calls answer 5xx or 429 (with ``retry_after``), or have their
        connection dropped; or every access token issued so far expires."""
        faults = self.sb.faults(app, self.emails[app])
        if fault == "expire":
            faults.expire_access_tokens()
            return
        if fault == "drop":
            faults.drop_next(n)
        else:
            faults.fail_next(
                n, status=int(fault), retry_after=retry_after if fault == "429" else None
            )
        self.injected[app] += n

    # ---------------------------------------------------------------- rules: time and workers

    def work(self, *, calls: int | None = None, reads: int | None = None) -> RunSummary | None:
        """One ``Worker.run_once`` on the injected clock, with quick retries off (the stored
        schedule takes over at once). It dies after ``calls`` HTTP answers or at its ``reads``-th
        clock reading (see ``DyingTransport``, ``DyingClock``); None when it died."""

        async def run() -> RunSummary | None:
            transport = DyingTransport(calls)
            clock = DyingClock(self.env.clock, transport, reads=reads)
            async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
                worker = Worker(
                    self.env.store, self.env.settings, clock=clock, rng=random.Random(1),
                    provider_options={"retry_budget": 0, "client": client},
                )  # fmt: skip
                try:
                    return await worker.run_once()
                except Crash:
                    # What the dead worker still had going (another integration's calls, a
                    # token refresh) runs into the dead transport or clock, or finishes what a
                    # live process could have finished just before dying.
                    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                    await asyncio.gather(*others, return_exceptions=True)
                    return None

        return asyncio.run(run())

    @rule(minutes=ADVANCE, dies=DIES, sweep_first=SWEEP_FIRST)
    def run_worker(self, minutes: float, dies: int | str | None, sweep_first: bool) -> None:
        """Time passes; ``calsync sweep --lookback 1d`` when ``sweep_first``; then ``calsync
        sync``, which dies (``dies``) after that many HTTP answers, or at its first completion
        (after all its calls), or not at all."""
        self.env.clock.advance(minutes=minutes)
        if sweep_first:
            sweep(
                self.env.store, self.env.settings, now=self.env.clock(), lookback=timedelta(days=1)
            )
        if dies == "at completion":
            self.work(reads=2)  # 1: the first claim; 2: the first completion
            return
        summary = self.work(calls=None if dies is None else int(dies))
        if summary is not None:
            assert not summary.needs_reauth, summary.as_dict()  # only a refused grant would
            assert summary.totals()["held"] == 0, summary.as_dict()

    # ---------------------------------------------------------------- invariants

    @invariant()
    def never_two_events_of_one_visit_in_a_calendar(self) -> None:
        known = {event_tag(iid, vid) for iid in self.iids.values() for vid in VIDS}
        for app in APPS:
            for cal in self.calendars[app]:
                tags = Counter(tag_of(app, e) for e in self.sb.events(app, self.emails[app], cal))
                twice = {t: n for t, n in tags.items() if n > 1}
                assert not twice, f"{app} calendar {cal[:12]}: {twice}"
                assert set(tags) <= known, f"{app}: events not calsync's: {set(tags) - known}"

    # ---------------------------------------------------------------- the end

    def settle(self) -> None:
        """Run the worker, the clock past every retry and lease, until no work is due."""
        for _ in range(12):
            self.env.clock.advance(hours=2)
            summary = self.work()
            assert summary is not None
            if not summary.integrations:
                break
        else:
            raise AssertionError("work still due after 12 runs")
        with self.env.store.read() as s:
            live = list(s.exec(select(Job).where(col(Job.state).in_(LIVE_JOB_STATES))))
        assert live == [], f"live jobs left: {[(j.visit_id, j.state) for j in live]}"

    def failed_pairs(self) -> dict[tuple[str, str], bool]:
        """(app, visit) whose latest job failed for good -> whether the sweep looks at it
        (the visit changed after the integration last became active)."""
        with self.env.store.read() as s:
            latest: dict[tuple[int, str], Job] = {}
            for job in s.exec(select(Job).order_by(col(Job.id))):
                latest[(job.integration_id, job.visit_id)] = job
            since = {i.id: i.active_since for i in s.exec(select(Integration))}
            changed = {v.id: v.changed_at for v in s.exec(select(Visit))}
        return {
            (self.app_of[iid], vid): changed[vid] >= since[iid]
            for (iid, vid), job in latest.items()
            if job.state == JOB_FAILED
        }

    def job_errors(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """The last error of each pair's latest job."""
        with self.env.store.read() as s:
            jobs = list(s.exec(select(Job).order_by(col(Job.id))))
        latest = {(self.app_of[j.integration_id], j.visit_id): j.last_error for j in jobs}
        return {pair: latest.get(pair) for pair in sorted(pairs)}

    def calendar_problems(self, relaxed: set[tuple[str, str]]) -> list[str]:
        problems: list[str] = []
        with self.env.store.read() as s:
            integrations = {i.id: i for i in s.exec(select(Integration))}
            visits = {v.id: v for v in s.exec(select(Visit))}
            practices = {p.id: p for p in s.exec(select(Practice))}
        assert set(visits) == set(self.rows)
        for app, iid in self.iids.items():
            integ = integrations[iid]
            assert integ.calendar_id == self.current[app]
            found: dict[str | None, list[tuple[str, dict[str, Any]]]] = {}
            for cal in self.calendars[app]:
                for event in self.sb.events(app, self.emails[app], cal):
                    found.setdefault(tag_of(app, event), []).append((cal, event))
            for vid, row in sorted(self.rows.items()):
                v = visits[vid]
                assert (v.provider_id, v.status) == (row["provider_id"], row["status"])
                events = found.pop(event_tag(iid, vid), [])
                where = sorted(self.calendars[app].index(cal) for cal, _ in events)
                if (app, vid) in relaxed:
                    if len(events) > 1:
                        problems.append(f"{app} {vid}: {len(events)} events (calendars {where})")
                    continue
                if not belongs(app, row):
                    if events:
                        problems.append(f"{app} {vid}: event(s) left (calendars {where})")
                    continue
                if len(events) != 1:
                    problems.append(f"{app} {vid}: {len(events)} events (calendars {where})")
                    continue
                cal, event = events[0]
                if cal != integ.calendar_id:
                    problems.append(f"{app} {vid}: on calendar {where}, not the current one")
                rendered = render(
                    v, practices[v.practice_id], integ, visit_link=self.env.settings.visit_link(vid)
                )
                got, want = shown(app, event), expected_body(app, rendered.event)
                if got != want:
                    problems.append(f"{app} {vid}: shows {got}, expected {want}")
            for tag, extra in found.items():
                problems.append(f"{app}: {len(extra)} event(s) with unknown tag {tag}")
        return problems

    def converge_and_check(self) -> None:
        for app in APPS:
            self.sb.faults(app, self.emails[app]).clear()
            if self.paused[app]:
                core.toggle(self.env.store, self.iids[app], False, now=self.env.clock())
                self.paused[app] = False
        self.settle()
        failed = self.failed_pairs()
        problems = self.calendar_problems(self.tainted | set(failed))
        assert problems == [], problems
        # A job that failed for good is the sweep's to find again.
        sweep(self.env.store, self.env.settings, now=self.env.clock(), lookback=timedelta(days=30))
        self.settle()
        unswept = {pair for pair, seen in failed.items() if not seen}
        problems = self.calendar_problems(self.tainted | unswept)
        assert problems == [], f"after the sweep: {problems}"
        # With the providers healthy again, what the sweep queued succeeded.
        still = {pair for pair in self.failed_pairs() if pair not in unswept}
        assert still == set(), f"failed again after the sweep: {self.job_errors(still)}"

    def teardown(self) -> None:
        if sys.exc_info()[0] is None:  # a step failed: report that, not what follows
            self.converge_and_check()


@pytest.mark.slow
def test_engine_state_machine(db_url: str, tmp_path: Path) -> None:
    examples = EXAMPLES if db_url.startswith("sqlite") else EXAMPLES_POSTGRES
    with Sandbox(port=0) as sb:
        cfg = load_settings({**sb.env(), "CALSYNC_DB_URL": db_url})
        store = Store(db_url)
        try:
            machine = type(
                "EngineMachineRun",
                (EngineMachine,),
                {"tmp": tmp_path, "store": store, "sb": sb, "cfg": cfg, "examples": 0},
            )
            run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=examples))
        finally:
            store.close()
