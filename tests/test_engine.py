"""The push engine end to end: store -> worker -> provider clients -> sandbox over loopback."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from calsync_cli.cli.sync import exit_code_of_run
from calsync_cli.engine.render import format_name
from calsync_cli.services import integrations as core
from calsync_cli.store.models import AuditEntry, Job
from tests.conftest import visit
from tests.engine_support import EMAILS, Env, connect

APPS = ["google", "outlook"]


def title(app: str, event: dict) -> str:
    return event["summary"] if app == "google" else event["subject"]


def body(app: str, event: dict) -> str:
    return event.get("description", "") if app == "google" else event["body"]["content"]


@pytest.mark.parametrize("app", APPS)
def test_seed_title_then_update_then_cancel(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a")])
    summary = env.sync()
    assert summary.integrations[iid].pushed == 1 and exit_code_of_run(summary) == 0
    [event] = env.events(app)
    assert title(app, event) == "[Main Street Practice] - Jane Doe - Follow Up"
    assert "Location: 12 Main Street, Room 2" in body(app, event)
    assert "Reason" not in body(app, event)

    # unchanged: no API call at all
    env.sb.reset_stats()
    core.set_filters(env.store, iid, core.FilterChange(practices=["main"]), now=env.clock())
    core.set_filters(env.store, iid, core.FilterChange(practices=[]), now=env.clock())
    assert env.sync().integrations[iid].skipped == 1
    assert env.sb.stats()["requests"] == {}  # an unchanged visit costs no API call

    env.import_visits(
        [visit("a", start="2026-12-01T10:00:00-06:00", end="2026-12-01T10:30:00-06:00")], "v2.jsonl"
    )
    assert env.sync().integrations[iid].updated == 1
    [event] = env.events(app)
    assert "10:00:00" in event["start"]["dateTime"]

    env.import_visits([visit("a", status="cancelled")], "v3.jsonl")
    assert env.sync().integrations[iid].deleted == 1
    assert env.events(app) == []
    with env.store.read() as s:
        actions = [
            a.action for a in s.exec(select(AuditEntry).where(AuditEntry.integration_id == iid))
        ]
    assert actions == [
        "connect",
        "push_create",
        "filters_set",
        "filters_set",
        "push_update",
        "push_delete",
    ]
    [row] = core.status_rows(env.store, iid)
    assert row["status"] == "Active" and row["last_synced_at"] is not None and row["queued"] == 0


@pytest.mark.parametrize("app", APPS)
def test_privacy_filters_reach_the_calendar(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a", reason="knee pain")])
    env.sync()
    core.set_filters(
        env.store, iid, core.FilterChange(patient_name=False, notes=True), now=env.clock()
    )
    assert env.sync().integrations[iid].updated == 1
    [event] = env.events(app)
    assert title(app, event) == "[Main Street Practice] - Follow Up"
    assert "Jane" not in body(app, event) and "Reason: knee pain" in body(app, event)
    core.set_filters(
        env.store, iid,
        core.FilterChange(patient_name=True, patient_name_format="initials", practice_name=False, visit_type=False, location=False),
        now=env.clock(),
    )  # fmt: skip
    env.sync()
    [event] = env.events(app)
    assert title(app, event) == "J.D."
    assert "Main Street" not in str(event.get("location")) and "12 Main" not in body(app, event)


def test_name_formats() -> None:
    assert format_name("Jane Doe", "full") == "Jane Doe"
    assert format_name("Jane Mary Doe", "short") == "Jane D."
    assert format_name("Jane Doe", "initials") == "J.D."


@pytest.mark.parametrize("app", APPS)
def test_reassignment_deletes_at_old_integration(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a")])
    env.sync()
    env.import_visits([visit("a", provider_id="dr-patel")], "v2.jsonl")
    assert env.sync().integrations[iid].deleted == 1
    assert env.events(app) == []


@pytest.mark.parametrize("app", APPS)
def test_event_deleted_outside_is_recreated_and_comeback_after_cancel(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a")])
    env.sync()
    env.import_visits([visit("a", status="cancelled")], "v2.jsonl")
    env.sync()
    env.import_visits([visit("a", status="confirmed")], "v3.jsonl")  # comes back
    assert env.sync().integrations[iid].pushed == 1
    assert len(env.events(app)) == 1
    assert exit_code_of_run(env.sync()) == 0


@pytest.mark.parametrize("app", APPS)
def test_retry_schedule_through_five_failures(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a")])
    env.sb.faults(app, EMAILS[app]).fail_next(100, status=503)
    expected = [1, 4, 16, 60, 60]
    for minutes in expected:
        summary = env.sync()
        assert summary.integrations[iid].rescheduled == 1 and exit_code_of_run(summary) == 0
        with env.store.read() as s:
            job = s.exec(select(Job)).one()
        delay = job.next_attempt_at - env.clock()
        if minutes < 60:  # jitter spreads upwards...
            assert timedelta(minutes=minutes) <= delay <= timedelta(minutes=minutes * 1.1)
        else:  # ...but never past the hour the product page promises (issue 9, item 13)
            assert timedelta(minutes=minutes * 0.9) <= delay <= timedelta(minutes=60)
        assert core.status_rows(env.store, iid)[0]["status"] == "Error"
        assert env.sync().integrations == {}  # not due yet
        env.clock.now = job.next_attempt_at
    summary = env.sync()
    assert summary.integrations[iid].failed == 1 and exit_code_of_run(summary) == 1
    [row] = core.status_rows(env.store, iid)
    assert row["failed"] == 1 and row["queued"] == 0 and row["status"] == "Error"
    assert row["status_detail"]


@pytest.mark.parametrize("app", APPS)
def test_retry_after_longer_than_schedule_wins(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a")])
    env.sb.faults(app, EMAILS[app]).fail_next(1, status=429, retry_after=600)
    assert env.sync().integrations[iid].rescheduled == 1
    with env.store.read() as s:
        job = s.exec(select(Job)).one()
    assert job.next_attempt_at - env.clock() == timedelta(seconds=600)
    env.clock.now = job.next_attempt_at
    assert env.sync().integrations[iid].pushed == 1


@pytest.mark.parametrize("app", APPS)
def test_expired_token_is_refreshed_mid_run(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.sb.faults(app, EMAILS[app]).expire_access_tokens()
    env.import_visits([visit("a"), visit("b")])
    assert env.sync().integrations[iid].pushed == 2


@pytest.mark.parametrize("app", APPS)
def test_invalid_grant_puts_integration_in_error_and_holds_jobs(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a")])
    faults = env.sb.faults(app, EMAILS[app])
    faults.expire_access_tokens()
    faults.revoke_grant()
    summary = env.sync()
    assert exit_code_of_run(summary) == 4 and summary.integrations[iid].held == 1
    [row] = core.status_rows(env.store, iid)
    assert (
        row["status"] == "Error"
        and f"calsync connect {app} --provider dr-lee" in row["status_detail"]
    )
    with env.store.read() as s:
        job = s.exec(select(Job)).one()
    assert job.state == "held" and job.attempts == 0
    assert env.sync().integrations == {}  # held until reconnected


@pytest.mark.parametrize("app", APPS)
def test_pause_pushes_nothing_and_resume_does_not_backfill(env: Env, app: str) -> None:
    iid = connect(env, app)
    core.toggle(env.store, iid, True, now=env.clock())
    env.import_visits([visit("a")])
    assert env.sync().integrations == {}
    env.clock.advance(minutes=5)
    core.toggle(env.store, iid, False, now=env.clock())
    assert env.sync().integrations == {}
    assert env.events(app) == []
    env.import_visits([visit("a", room="Room 5"), visit("b")], "v2.jsonl")
    assert env.sync().integrations[iid].pushed == 2


def test_lost_lease_cannot_complete(env: Env) -> None:
    iid = connect(env, "google")
    env.import_visits([visit("a")])
    with env.store.write() as s:  # another worker holds the lease
        s.execute(
            sa.update(Job).values(
                state="running", lease_owner="other", lease_until=env.clock() + timedelta(minutes=5)
            )
        )
    assert env.sync().integrations == {}
    env.clock.advance(minutes=6)  # its lease expired: the job is reclaimed
    assert env.sync().integrations[iid].pushed == 1


@pytest.mark.parametrize("app", APPS)
def test_sweep_finds_a_lost_job_and_is_idempotent(env: Env, app: str) -> None:
    from calsync_cli.engine.sweep import sweep

    iid = connect(env, app)
    env.import_visits([visit("a"), visit("b")])
    with env.store.write() as s:  # the job for b was lost
        s.execute(sa.delete(Job).where(Job.visit_id == "b"))
    env.sync()
    assert len(env.events(app)) == 1
    first = sweep(env.store, env.settings, now=env.clock(), lookback=timedelta(hours=24))
    assert first["queued"] == 1 and first["integrations"] == [{"id": iid, "queued": 1}]
    again = sweep(env.store, env.settings, now=env.clock(), lookback=timedelta(hours=24))
    assert again["queued"] == 0  # the job is live already
    env.sync()
    assert len(env.events(app)) == 2
    assert (
        sweep(env.store, env.settings, now=env.clock(), lookback=timedelta(hours=24))["queued"] == 0
    )


def test_sweep_does_not_backfill_changes_made_while_paused(env: Env) -> None:
    from calsync_cli.engine.sweep import sweep

    iid = connect(env, "google")
    core.toggle(env.store, iid, True, now=env.clock())
    env.clock.advance(minutes=1)
    env.import_visits([visit("a")])
    env.clock.advance(minutes=1)
    core.toggle(env.store, iid, False, now=env.clock())
    assert (
        sweep(env.store, env.settings, now=env.clock(), lookback=timedelta(hours=24))["queued"] == 0
    )


def test_a_failure_stops_counting_once_the_visit_syncs(env: Env) -> None:
    from calsync_cli.engine.sweep import sweep

    iid = connect(env, "google")
    env.import_visits([visit("a"), visit("b")])
    env.sb.faults("google", EMAILS["google"]).fail_next(1, status=400)  # fails at once
    assert env.sync().integrations[iid].failed == 1
    assert core.status_rows(env.store, iid)[0]["failed"] == 1
    requeued = sweep(env.store, env.settings, now=env.clock(), lookback=timedelta(hours=24))
    assert requeued["queued"] == 1  # the failed visit is not on the calendar
    assert core.status_rows(env.store, iid)[0]["failed"] == 1  # until it gets there
    assert env.sync().integrations[iid].pushed == 1
    assert len(env.events("google")) == 2
    assert core.status_rows(env.store, iid)[0]["failed"] == 0


def test_sweep_retry_failed_queues_old_failures_again(env: Env) -> None:
    from calsync_cli.engine.sweep import sweep

    iid = connect(env, "google")
    env.import_visits([visit("a")])
    env.sb.faults("google", EMAILS["google"]).fail_next(1, status=400)
    assert env.sync().integrations[iid].failed == 1
    env.clock.advance(days=2)  # beyond the look-back: the plain sweep leaves it
    day = timedelta(hours=24)
    assert sweep(env.store, env.settings, now=env.clock(), lookback=day)["queued"] == 0
    out = sweep(env.store, env.settings, now=env.clock(), lookback=day, retry_failed=True)
    assert out["retried_failed"] == 1 and out["integrations"] == [{"id": iid, "queued": 1}]
    again = sweep(env.store, env.settings, now=env.clock(), lookback=day, retry_failed=True)
    assert again["retried_failed"] == 0  # already queued: coalesced
    assert env.sync().integrations[iid].pushed == 1
    assert len(env.events("google")) == 1
    [row] = core.status_rows(env.store, iid)
    assert row["failed"] == 0 and row["failures"] == []


def test_sweep_prunes_jobs_finished_over_a_week_ago(env: Env) -> None:
    from calsync_cli.engine.sweep import sweep
    from calsync_cli.store.queue import FINISHED_RETENTION

    iid = connect(env, "google")

    def states() -> list[tuple[str, str]]:
        with env.store.read() as s:
            return sorted((j.visit_id, j.state) for j in s.exec(select(Job)))

    def run_sweep() -> int:
        lookback = timedelta(hours=1)  # nothing to re-queue: this test is about pruning
        return int(sweep(env.store, env.settings, now=env.clock(), lookback=lookback)["pruned"])

    env.import_visits([visit("a"), visit("b")])
    env.sync()
    env.clock.advance(days=3)
    assert run_sweep() == 0  # done three days ago: kept
    env.import_visits([visit("c")], "v2.jsonl")
    env.sb.faults("google", EMAILS["google"]).fail_next(1, status=400)
    assert env.sync().integrations[iid].failed == 1
    env.clock.now = env.clock() - timedelta(days=3) + FINISHED_RETENTION + timedelta(minutes=1)
    assert run_sweep() == 2  # a and b finished over a week ago
    assert states() == [("c", "failed")]  # a failure is kept: status reports it
    env.clock.advance(days=30)
    assert run_sweep() == 0 and states() == [("c", "failed")]
    assert len(env.events("google")) == 2  # pruning jobs touches no event


def test_duration_parsing() -> None:
    from calsync_cli.engine.sweep import parse_duration
    from calsync_cli.errors import InputError

    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("90m") == timedelta(minutes=90)
    with pytest.raises(InputError):
        parse_duration("yesterday")


def test_sync_command_json_and_exit_codes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from calsync_cli.cli.app import app as cli

    for key, value in {**env.sb.env(), "CALSYNC_DB_URL": env.settings.db_url}.items():
        monkeypatch.setenv(key, value)
    from datetime import UTC, datetime

    env.clock.now = datetime.now(UTC) - timedelta(minutes=1)  # the CLI's worker runs on real time
    iid = connect(env, "outlook")
    env.import_visits([visit("a")])
    runner = CliRunner()
    result = runner.invoke(cli, ["sync", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"]["pushed"] == 1 and data["integrations"][0]["id"] == iid
    faults = env.sb.faults("outlook", EMAILS["outlook"])
    faults.expire_access_tokens()
    faults.revoke_grant()
    env.import_visits([visit("a", room="Room 7")], "v2.jsonl")
    result = runner.invoke(cli, ["sync"])
    assert result.exit_code == 4
    assert "calsync connect outlook --provider dr-lee" in result.stderr
    sweep = runner.invoke(cli, ["sweep", "--json", "--lookback", "2d"])
    assert sweep.exit_code == 0 and "queued" in json.loads(sweep.stdout)
    assert runner.invoke(cli, ["sweep", "--lookback", "soon"]).exit_code == 2


@pytest.mark.parametrize("app", APPS)
def test_conflicts_report_foreign_busy_time_only(env: Env, app: str) -> None:
    import asyncio

    import httpx2

    from calsync_cli.engine.conflicts import pull
    from calsync_cli.errors import InputError

    iid = connect(env, app)
    env.import_visits(
        [visit("a"), visit("b", start="2026-12-01T11:00:00-06:00", end="2026-12-01T11:30:00-06:00")]
    )
    env.sync()  # calsync's own events are on the calendar: they are not conflicts
    with pytest.raises(InputError, match="only pushes"):
        asyncio.run(pull(env.store, env.settings, now=env.clock(), integration_id=iid))
    core.set_direction(env.store, iid, "two-way", now=env.clock())
    # the clinician's own appointment overlapping visit a (09:00-09:30 Chicago = 15:00Z)
    token = env.sb.issue_token(app, EMAILS[app])
    cal = env.calendar(app)
    with httpx2.Client(headers={"Authorization": f"Bearer {token}"}) as http:
        if app == "google":
            url = f"{env.settings.google_api_url}/calendars/{cal}/events"
            body = {
                "summary": "Dentist",
                "start": {"dateTime": "2026-12-01T15:15:00Z"},
                "end": {"dateTime": "2026-12-01T16:00:00Z"},
            }
        else:
            url = f"{env.settings.microsoft_graph_url}/me/calendars/{cal}/events"
            body = {
                "subject": "Dentist",
                "start": {"dateTime": "2026-12-01T15:15:00", "timeZone": "UTC"},
                "end": {"dateTime": "2026-12-01T16:00:00", "timeZone": "UTC"},
            }
        assert http.post(url, json=body).status_code in (200, 201)
    [result] = asyncio.run(pull(env.store, env.settings, now=env.clock()))
    assert result.error is None
    assert [(c.visit_id, c.busy_start) for c in result.conflicts] == [
        ("a", "2026-12-01T15:15:00+00:00")
    ]
    with env.store.read() as s:
        from calsync_cli.store.models import Integration

        integ = s.get(Integration, iid)
        assert integ is not None and integ.pulled_at == env.clock()


@pytest.mark.parametrize("app", APPS)
def test_choosing_another_calendar_moves_upcoming_events(env: Env, app: str) -> None:
    from calsync_cli.services import connections

    iid = connect(env, app)
    past = visit("past", start="2026-11-02T09:00:00-06:00", end="2026-11-02T09:30:00-06:00")
    env.import_visits([visit("a"), past])
    env.sync()
    primary = env.calendar(app)
    assert len(env.events(app)) == 2
    clinic = env.sb.account(app, EMAILS[app]).calendar_id("Clinic")
    connections.select_calendar(env.settings, env.store, iid, clinic, now=env.clock)
    summary = env.sync()
    assert summary.integrations[iid].pushed == 1
    moved = env.sb.events(app, EMAILS[app], clinic)
    assert [title(app, e) for e in moved] == ["[Main Street Practice] - Jane Doe - Follow Up"]
    left = env.sb.events(app, EMAILS[app], primary)
    assert len(left) == 1 and "09:00:00" in left[0]["start"]["dateTime"]  # the past visit stays
    assert env.sync().integrations == {}


@pytest.mark.parametrize("app", APPS)
def test_sweep_keeps_quiet_connections_alive(env: Env, app: str) -> None:
    import asyncio

    from calsync_cli.auth.tokens import TokenStore
    from calsync_cli.engine.keepalive import keep_alive

    iid = connect(env, app)
    store = TokenStore()
    before = store.get(iid)
    assert before is not None and before.expires_at is not None
    assert asyncio.run(keep_alive(env.store, env.settings, now=env.clock()))["refreshed"] == []
    later = before.expires_at + timedelta(days=8)  # a quiet week and more
    out = asyncio.run(keep_alive(env.store, env.settings, now=later))
    assert out == {"refreshed": [iid], "reauth_needed": [], "unusable": [], "errors": {}}
    after = store.get(iid)
    assert after is not None and after.access_token != before.access_token
    if app == "outlook":  # Microsoft rotates the refresh token: the new one was stored
        assert after.refresh_token != before.refresh_token
    assert env.sb.stats()["token_refreshes"][app][EMAILS[app]] == 1
    env.sb.faults(app, EMAILS[app]).revoke_grant()
    out = asyncio.run(keep_alive(env.store, env.settings, now=later + timedelta(days=30)))
    assert out["reauth_needed"] == [iid]
    assert core.status_rows(env.store, iid)[0]["status"] == "Error"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sync_watch_stops_cleanly_on_a_signal(env: Env, sig: str) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from datetime import UTC, datetime

    env.clock.now = datetime.now(UTC) - timedelta(minutes=1)  # the subprocess runs on real time
    connect(env, "google")
    env.import_visits([visit("a")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "calsync_cli", "sync", "--watch", "--interval", "0.2", "--json"],
        env={**os.environ, **env.sb.env(), "CALSYNC_DB_URL": env.settings.db_url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not env.events("google") and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the sandbox, not waiting on a clock
        assert env.events("google"), "the watcher pushed nothing"
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out)["totals"]["pushed"] == 1
    with env.store.read() as s:
        assert all(j.lease_owner is None for j in s.exec(select(Job)))


def test_sweep_finds_a_lost_delete_of_a_visit_reassigned_away(env: Env) -> None:
    """The sweep reads each integration's own clinicians' visits, and those it has an event
    for: a visit moved to another clinician still has its old event removed."""
    from calsync_cli.engine.sweep import sweep

    lee = connect(env, "google")
    env.import_visits([visit("a"), visit("b")])
    env.sync()
    env.import_visits([visit("a", provider_id="dr-patel"), visit("b")], "v2.jsonl")
    with env.store.write() as s:  # the delete queued at dr-lee's integration was lost
        s.execute(sa.delete(Job).where(Job.state == "queued"))
    out = sweep(env.store, env.settings, now=env.clock(), lookback=timedelta(hours=24))
    assert out["queued"] == 1 and out["integrations"] == [{"id": lee, "queued": 1}]
    assert env.sync().integrations[lee].deleted == 1
    assert [e["summary"] for e in env.events("google")] == [
        "[Main Street Practice] - Jane Doe - Follow Up"
    ]


def test_sweep_queues_a_pending_create_of_a_visit_that_no_longer_belongs(env: Env) -> None:
    from calsync_cli.engine.sweep import sweep
    from calsync_cli.engine.worker import PENDING_CREATE
    from calsync_cli.store.models import EventLink

    iid = connect(env, "google")
    env.import_visits([visit("a", status="cancelled")])  # first seen cancelled: nothing queued
    with env.store.write() as s:  # as a worker killed mid-create would leave it
        s.add(
            EventLink(
                integration_id=iid,
                visit_id="a",
                calendar_id=env.calendar("google"),
                content_hash=PENDING_CREATE,
            )
        )
    out = sweep(env.store, env.settings, now=env.clock(), lookback=timedelta(hours=24))
    assert out["queued"] == 1
    env.sync()
    assert env.events("google") == []
