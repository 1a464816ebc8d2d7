"""A worker that dies between its calendar calls and recording them leaves nothing wrong behind.

The targeted tests simulate the death in-process (the calls are made, the completion never
commits, the leases are not released); the randomised test SIGKILLs real ``calsync sync``
processes between random edits and then lets an in-process worker finish after the leases
expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from calsync_cli.engine.worker import Worker
from calsync_cli.sandbox import Sandbox
from calsync_cli.store import queue
from calsync_cli.store.models import Job
from tests.conftest import visit
from tests.engine_support import EMAILS, Env, connect
from tests.sync_support import (
    calendar_problems,
    connect_both,
    edit,
    import_rows,
    make_db_env,
    sync_process,
    visit_rows,
)

APPS = ["google", "outlook"]


class Crash(BaseException):
    """The process died here."""


class DyingWorker(Worker):
    """Makes every calendar call, then dies before the completion commits."""

    def _complete(self, *args: Any, **kwargs: Any) -> Any:
        raise Crash()


def die_while_syncing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run that pushes and dies: its leases stay until they expire."""
    worker = DyingWorker(
        env.store, env.settings, clock=env.clock, provider_options={"retry_budget": 0}
    )
    with monkeypatch.context() as m:
        m.setattr(queue, "release", lambda *a, **k: 0)  # a killed process releases nothing
        with pytest.raises(Crash):
            asyncio.run(worker.run_once())
    env.clock.advance(minutes=6)  # past the 5-minute lease


def finish(env: Env) -> None:
    for _ in range(5):
        if not env.sync().integrations:
            return
    raise AssertionError("work still due after 5 runs")


@pytest.mark.parametrize("app", APPS)
def test_create_that_landed_then_cancelled_leaves_no_event(
    env: Env, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(env, app)
    env.import_visits([visit("a")])
    die_while_syncing(env, monkeypatch)
    assert len(env.events(app)) == 1  # the create reached the calendar, unrecorded
    env.import_visits([visit("a", status="cancelled")], "v2.jsonl")
    finish(env)
    assert env.events(app) == []
    assert calendar_problems(env) == []


@pytest.mark.parametrize("app", APPS)
def test_create_that_landed_then_reassigned_leaves_no_event(
    env: Env, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(env, app)
    env.import_visits([visit("a")])
    die_while_syncing(env, monkeypatch)
    env.import_visits([visit("a", provider_id="dr-patel")], "v2.jsonl")
    finish(env)
    assert env.events(app) == []


@pytest.mark.parametrize("app", APPS)
def test_repeated_create_shows_the_latest_content(
    env: Env, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(env, app)
    env.import_visits([visit("a")])
    die_while_syncing(env, monkeypatch)
    env.import_visits([visit("a", room="Room 9")], "v2.jsonl")
    finish(env)
    [event] = env.events(app)  # the repeated create landed on the same event...
    assert calendar_problems(env) == []  # ...which shows Room 9


@pytest.mark.parametrize("app", APPS)
def test_delete_that_landed_then_uncancelled_brings_the_event_back(
    env: Env, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(env, app)
    env.import_visits([visit("a")])
    finish(env)
    env.import_visits([visit("a", status="cancelled")], "v2.jsonl")
    die_while_syncing(env, monkeypatch)
    assert env.events(app) == []  # deleted, unrecorded
    env.import_visits([visit("a", status="confirmed")], "v3.jsonl")  # same content as before
    finish(env)
    assert len(env.events(app)) == 1
    assert calendar_problems(env) == []


@pytest.mark.parametrize("app", APPS)
def test_update_that_landed_then_reverted_shows_the_reverted_content(
    env: Env, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(env, app)
    env.import_visits([visit("a")])
    finish(env)
    env.import_visits([visit("a", room="Room 9")], "v2.jsonl")
    die_while_syncing(env, monkeypatch)
    env.import_visits([visit("a")], "v3.jsonl")  # back to Room 2, what the link recorded
    finish(env)
    assert calendar_problems(env) == []


def _move_to_clinic(env: Env, app: str) -> tuple[str, str]:
    from calsync_cli.services import connections
    from tests.engine_support import EMAILS

    iid = connect(env, app)
    env.import_visits([visit("a")])
    finish(env)
    primary = env.calendar(app)
    clinic = env.sb.account(app, EMAILS[app]).calendar_id("Clinic")
    connections.select_calendar(env.settings, env.store, iid, clinic, now=env.clock)
    return primary, clinic


@pytest.mark.parametrize("change", [{"status": "cancelled"}, {"room": "Room 9"}], ids=str)
@pytest.mark.parametrize("app", APPS)
def test_move_that_landed_then_changed_leaves_the_right_event(
    env: Env, app: str, change: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled: no event on either calendar. Changed: one event, on the new calendar, current."""
    from tests.engine_support import EMAILS

    primary, clinic = _move_to_clinic(env, app)
    die_while_syncing(env, monkeypatch)
    assert env.sb.events(app, EMAILS[app], primary) == []  # moved, unrecorded
    assert len(env.sb.events(app, EMAILS[app], clinic)) == 1
    env.import_visits([visit("a", **change)], "v2.jsonl")
    finish(env)
    assert env.sb.events(app, EMAILS[app], primary) == []
    assert calendar_problems(env) == []


@pytest.mark.parametrize("dies_again", [False, True], ids=["", "dies-mid-move"])
@pytest.mark.parametrize("app", APPS)
def test_create_that_landed_then_calendar_changed_moves_it(
    env: Env, app: str, dies_again: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending create on the calendar the integration has left is removed there."""
    from calsync_cli.services import connections
    from tests.engine_support import EMAILS

    iid = connect(env, app)
    env.import_visits([visit("a")])
    die_while_syncing(env, monkeypatch)
    primary = env.calendar(app)
    assert len(env.sb.events(app, EMAILS[app], primary)) == 1  # landed, unrecorded
    clinic = env.sb.account(app, EMAILS[app]).calendar_id("Clinic")
    connections.select_calendar(env.settings, env.store, iid, clinic, now=env.clock)
    if dies_again:
        die_while_syncing(env, monkeypatch)
    finish(env)
    assert env.sb.events(app, EMAILS[app], primary) == []
    assert calendar_problems(env) == []  # one current event on the clinic calendar


RUNS = 14
SEED = 20261124


def expire_leases(env: Env) -> None:
    with env.store.write() as s:
        s.execute(
            sa.update(Job)
            .where(col(Job.state) == "running")
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )


@pytest.mark.slow
def test_random_kills_between_random_edits_converge(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    base = datetime.now(UTC) - timedelta(minutes=2)  # the CLI's worker runs on the real clock
    db_url = f"sqlite:///{tmp_path / 'crash.db'}"
    with Sandbox(port=0, latency=0.02) as sb:
        env = make_db_env(tmp_path, sb, db_url, base)
        try:
            connect_both(env)
            rows = visit_rows(60, rng, datetime(2026, 12, 1, 14, tzinfo=UTC))
            import_rows(env, rows, "v0.jsonl", base)
            variables = {**sb.env(), "CALSYNC_DB_URL": db_url}
            killed = 0
            for run in range(RUNS):
                # Kill after a random number of API calls (inner batch calls count), so the kill
                # lands inside the pushing, or at a random moment in one run out of four.
                # Driven by events: the sandbox wakes the test at the target call, no polling.
                calls_before = sb.api_calls()
                target = rng.randint(1, 12)
                patience = rng.uniform(0.2, 1.0)
                at_random = rng.random() < 0.25
                proc = sync_process(variables)
                if at_random:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=patience)
                elif sb.wait_for_api_calls(calls_before + target, timeout=30):
                    time.sleep(rng.uniform(0, 0.03))  # land inside the next calls
                if proc.poll() is None:
                    proc.kill()
                    killed += 1
                proc.communicate(timeout=30)
                expire_leases(env)  # as if 5 minutes passed: the next process reclaims them
                changed = edit(rows, rng, rng.randint(3, 10))
                import_rows(env, changed, f"v{run + 1}.jsonl", datetime.now(UTC))
            assert killed >= RUNS // 2  # most runs really were interrupted
            # Finish in-process, after every lease the killed processes held has expired.
            env.clock.now = datetime.now(UTC) + timedelta(minutes=6)
            finish(env)
            assert calendar_problems(env) == []
        finally:
            env.store.close()


def test_outlook_repeat_after_the_transaction_id_was_forgotten_finds_the_event_by_tag(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Graph keeps a transactionId for an undocumented while: a create repeated after that would
    make a second event. The worker looks the event up by calsync's tag first (issue 9, item 9)."""
    connect(env, "outlook")
    env.import_visits([visit("a")])
    die_while_syncing(env, monkeypatch)
    assert len(env.events("outlook")) == 1
    env.sb.faults("outlook", EMAILS["outlook"]).forget_transactions()
    env.import_visits([visit("a", room="Room 9")], "v2.jsonl")
    finish(env)
    [event] = env.events("outlook")
    assert "Room 9" in event["location"]["displayName"]
    assert calendar_problems(env) == []
