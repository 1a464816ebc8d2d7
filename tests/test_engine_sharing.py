"""Workers sharing the queue fairly, and a worker that cannot work: fair claims, lease renewal,
dead owners on this host, a stop in the middle of a round, an unusable keyring, a visit that
cannot be rendered."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from calsync_cli.cli.sync import exit_code_of_run
from calsync_cli.engine.worker import owner_is_dead_here
from calsync_cli.store import queue
from calsync_cli.store.models import Job, Visit
from tests.conftest import visit
from tests.engine_support import Env, connect


def _jobs(env: Env) -> list[Job]:
    with env.store.read() as s:
        return list(s.exec(select(Job).order_by(col(Job.id))))


def _claim(env: Env, owner: str, **kw: Any) -> dict[int, int]:
    with env.store.write() as s:
        got = queue.claim(
            s, owner=owner, now=env.clock(), lease=timedelta(minutes=5), **kw
        )  # fmt: skip
        return {iid: len(items) for iid, (_, items) in got.items()}


def test_claims_are_sized_per_integration_and_leave_a_busy_mailbox_alone(env: Env) -> None:
    google, outlook = connect(env, "google"), connect(env, "outlook", provider_id="dr-patel")
    env.import_visits(
        [visit(f"g{i}") for i in range(6)]
        + [visit(f"o{i}", provider_id="dr-patel") for i in range(6)]
    )
    # alone, a worker takes every integration, at most 2 jobs of each, 3 in all
    first = _claim(env, "w1", limit=3, per_integration=2)
    assert sum(first.values()) == 3 and all(n <= 2 for n in first.values())
    assert set(first) == {google, outlook}
    # another worker does not take jobs of an integration w1 is pushing to
    assert _claim(env, "w2", limit=100, per_integration=100) == {}
    with env.store.write() as s:
        queue.release(s, "w1", now=env.clock())
        queue.resign(s, "w1")
        queue.resign(s, "w2")
    # two workers at work: each takes its share, one integration each
    with env.store.write() as s:
        queue.heartbeat(s, "w1", now=env.clock())
        queue.heartbeat(s, "w2", now=env.clock())
    mine, theirs = _claim(env, "w1", limit=100), _claim(env, "w2", limit=100)
    assert len(mine) == 1 and len(theirs) == 1 and set(mine) != set(theirs)
    assert sum(mine.values()) + sum(theirs.values()) == 12


def _wait_exit(proc: subprocess.Popen[bytes]) -> bool:
    """Until the child has exited, without reaping it (waitid with WNOWAIT)."""
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    return True


def test_leases_are_renewed_and_dead_owners_on_this_host_reclaimed(env: Env) -> None:
    connect(env, "google")
    env.import_visits([visit("a"), visit("b")])
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = f"{socket.gethostname()}:{done.stdout.strip()}:feedbeef"
    alive = f"{socket.gethostname()}:{os.getppid()}:cafe"
    elsewhere = f"another-host:{done.stdout.strip()}:beef"
    assert owner_is_dead_here(dead)
    assert not owner_is_dead_here(alive) and not owner_is_dead_here(elsewhere)
    assert not owner_is_dead_here("not-an-owner")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    assert _wait_exit(zombie)  # exited, not reaped yet: dead all the same
    assert owner_is_dead_here(f"{socket.gethostname()}:{zombie.pid}:0")
    zombie.wait()
    assert _claim(env, dead, limit=100)  # a worker that is killed right after claiming
    with env.store.write() as s:
        assert queue.renew(s, dead, until=env.clock() + timedelta(hours=1)) == 2
    # the next worker on this host does not wait an hour (or five minutes) for those leases
    summary = env.sync()
    assert sum(s.pushed for s in summary.integrations.values()) == 2
    assert len(env.events("google")) == 2


def test_a_stop_mid_round_gives_the_rest_back_untouched(env: Env) -> None:
    iid = connect(env, "google")
    env.import_visits([visit(f"v{i}") for i in range(450)])
    worker = env.worker()
    real_batch = None

    async def run() -> Any:
        nonlocal real_batch
        from calsync_cli.engine import worker as module

        original = module.Applier._batch_until_stopped

        async def first_slice_then_stop(self: Any, ops: Any) -> Any:
            size = self.provider.max_batch * self.provider.max_concurrency
            out = await self.provider.batch(self.calendar, ops[:size])
            worker.stop_requested = True  # SIGTERM arrives while the first slice is in flight
            return out + await original(self, ops[size:])

        module.Applier._batch_until_stopped = first_slice_then_stop  # type: ignore[method-assign]
        try:
            return await worker.run_once()
        finally:
            module.Applier._batch_until_stopped = original  # type: ignore[method-assign]

    summary = asyncio.run(run())
    pushed = summary.integrations[iid].pushed
    assert 0 < pushed < 250  # one slice, not the whole claim
    jobs = _jobs(env)
    back = [j for j in jobs if j.state == "queued"]
    assert len(back) == 450 - pushed and all(
        j.attempts == 0 and j.lease_owner is None for j in back
    )
    assert len(env.events("google")) == pushed
    worker.stop_requested = False
    env.sync()
    assert len(env.events("google")) == 450


def test_an_unusable_keyring_holds_jobs_without_using_retries(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    iid = connect(env, "outlook")
    env.import_visits([visit("a")])
    from calsync_cli.auth.tokens import TokenStore
    from calsync_cli.errors import KeyringError

    def broken(self: Any, *_a: Any) -> Any:
        raise KeyringError("the keyring cannot be read", hint="Check PYTHON_KEYRING_BACKEND")

    with monkeypatch.context() as patch:
        patch.setattr(TokenStore, "get", broken)
        for _ in range(8):  # more runs than retries: none is used up
            env.clock.advance(minutes=2)
            summary = env.sync()
            assert summary.integrations[iid].held == 1 and summary.blocked
            assert exit_code_of_run(summary) == 1
        [job] = _jobs(env)
        assert job.state == "held" and job.attempts == 0
    assert env.sync().integrations == {}  # not due again before a minute has passed
    env.clock.advance(minutes=2)
    assert env.sync().integrations[iid].pushed == 1


def test_a_visit_that_cannot_be_rendered_fails_alone(env: Env) -> None:
    iid = connect(env, "google")
    env.import_visits([visit("fine"), visit("odd")])
    far = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    with env.store.write() as s:  # what an older import let in
        odd = s.get(Visit, "odd")
        assert odd is not None
        odd.start, odd.end = far, far
        s.add(odd)
    with env.store.write() as s:
        from calsync_cli.store.models import Practice

        main = s.get(Practice, "main")
        assert main is not None
        main.timezone = "Asia/Tokyo"  # year 9999 + 9 h does not exist
        s.add(main)
    summary = env.sync()
    assert summary.integrations[iid].pushed == 1 and summary.integrations[iid].failed == 1
    failed = [j for j in _jobs(env) if j.state == "failed"]
    assert [j.visit_id for j in failed] == ["odd"]
    assert (
        failed[0].last_error is not None and "visit odd cannot be rendered" in failed[0].last_error
    )


def test_sweep_with_an_unusable_keyring_exits_1(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from calsync_cli.auth.tokens import TokenStore
    from calsync_cli.cli.app import app as cli
    from calsync_cli.errors import KeyringError

    for key, value in {**env.sb.env(), "CALSYNC_DB_URL": env.settings.db_url}.items():
        monkeypatch.setenv(key, value)
    iid = connect(env, "google")

    def broken(self: Any, *_a: Any) -> Any:
        raise KeyringError("the keyring cannot be read", hint="Check PYTHON_KEYRING_BACKEND")

    with monkeypatch.context() as patch:
        patch.setattr(TokenStore, "get", broken)
        result = CliRunner().invoke(cli, ["sweep", "--json"])
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["tokens"]["unusable"] == [iid]
    assert "keyring" in data["tokens"]["errors"][str(iid)]


@pytest.mark.slow
def test_sigterm_stops_a_busy_watcher_within_seconds(env: Env) -> None:
    """Issue 13, class 7: a watcher in the middle of a big round finishes the calls in flight
    and gives the rest of its claim back, instead of pushing the whole round first."""
    import signal
    import time

    env.clock.now = datetime.now(UTC) - timedelta(minutes=1)  # the subprocess runs on real time
    connect(env, "outlook")
    env.import_visits([visit(f"v{i}") for i in range(240)])
    env.sb.latency = 0.05  # a round of 240 Outlook calls, 4 at a time: about 3 s
    proc = subprocess.Popen(
        [sys.executable, "-m", "calsync_cli", "sync", "--watch", "--interval", "0.2", "--json"],
        env={**os.environ, **env.sb.env(), "CALSYNC_DB_URL": env.settings.db_url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert env.sb.wait_for_api_calls(env.sb.api_calls() + 8, timeout=30)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert took < 2.5, took  # one slice of calls (80 at 4 in flight: 1 s), not the round
    assert "Exception ignored" not in err and "Traceback" not in err
    pushed = json.loads(out)["totals"]["pushed"]
    jobs = _jobs(env)
    assert 0 < pushed < 240 and len(env.events("outlook")) == pushed
    waiting = [j for j in jobs if j.state == "queued"]
    assert len(waiting) == 240 - pushed
    assert all(j.attempts == 0 and j.lease_owner is None for j in waiting)
