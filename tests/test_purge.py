"""``calsync disconnect ID --purge``: calsync's events of upcoming visits leave the calendar
before the sign-in is revoked; past visits' events stay; a partial failure keeps the
integration connected and says what is left."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from calsync_cli.errors import CalsyncError, InputError
from calsync_cli.services import connections
from calsync_cli.services.clients import open_provider
from calsync_cli.store.models import AuditEntry, EventLink, Integration
from tests.conftest import visit
from tests.engine_support import EMAILS, Env, connect

APPS = ["google", "outlook"]
runner = CliRunner()


def _setup(env: Env, app_name: str) -> int:
    """A past visit, two upcoming ones and one upcoming whose event was deleted outside
    calsync; all synced (env.clock is 2026-11-24 15:00 UTC)."""
    iid = connect(env, app_name)
    env.import_visits(
        [
            visit("past", start="2026-11-20T09:00:00-06:00", end="2026-11-20T09:30:00-06:00"),
            visit("a"),
            visit("b", start="2026-12-02T09:00:00-06:00", end="2026-12-02T09:30:00-06:00"),
            visit("gone", start="2026-12-03T09:00:00-06:00", end="2026-12-03T09:30:00-06:00"),
        ]
    )
    assert env.sync().integrations[iid].pushed == 4
    with env.store.read() as s:
        link = s.get(EventLink, (iid, "gone"))
        assert link is not None and link.external_id is not None
        external = link.external_id

    async def delete_outside() -> None:
        async with open_provider(env.settings, app_name, iid, "dr-lee") as provider:
            await provider.delete_event(env.calendar(app_name), external)

    asyncio.run(delete_outside())
    assert len(env.events(app_name)) == 3
    return iid


def _starts(env: Env, app_name: str) -> list[str]:
    return sorted(e["start"]["dateTime"][:10] for e in env.events(app_name))


@pytest.mark.parametrize("app_name", APPS)
def test_purge_removes_only_upcoming_events(env: Env, app_name: str) -> None:
    iid = _setup(env, app_name)
    result = connections.disconnect(env.settings, env.store, iid, now=env.clock, purge=True)
    assert result.purge is not None
    assert result.purge.to_json() == {"deleted": 2, "already_gone": 1, "failed": 0, "past_kept": 1}
    assert _starts(env, app_name) == ["2026-11-20"]  # only the past visit's event is left
    with env.store.read() as s:
        integ = s.get(Integration, iid)
        assert integ is not None and integ.status == "Disconnected"
        links = {lk.visit_id: lk.external_id for lk in s.exec(select(EventLink))}
        purged = s.exec(
            select(AuditEntry).where(
                AuditEntry.action == "push_delete", AuditEntry.integration_id == iid
            )
        ).all()
        disconnect_row = s.exec(select(AuditEntry).where(AuditEntry.action == "disconnect")).one()
    assert links["past"] is not None and links["a"] is links["b"] is links["gone"] is None
    assert sorted(a.visit_id or "" for a in purged) == ["a", "b", "gone"]
    assert all(a.fields == [] and "purged on disconnect" in (a.detail or "") for a in purged)
    assert "purged 3 upcoming events" in (disconnect_row.detail or "")


@pytest.mark.parametrize("app_name", APPS)
def test_failed_deletes_keep_the_integration_connected(env: Env, app_name: str) -> None:
    iid = _setup(env, app_name)
    env.sb.faults(app_name, EMAILS[app_name]).fail_next(1, status=400)
    with pytest.raises(CalsyncError) as failed:
        connections.disconnect(env.settings, env.store, iid, now=env.clock, purge=True)
    message = failed.value.one_line()
    assert f"integration {iid} is still connected" in message
    assert f"calsync disconnect {iid} --purge" in message
    with env.store.read() as s:
        integ = s.get(Integration, iid)
        assert integ is not None and integ.status == "Active"
    left = _starts(env, app_name)
    assert "2026-11-20" in left and len(left) >= 2  # something upcoming is left, past stays

    # once the fault is gone, purging again finishes the job
    again = connections.disconnect(env.settings, env.store, iid, now=env.clock, purge=True)
    assert again.purge is not None and again.purge.failed == 0
    assert _starts(env, app_name) == ["2026-11-20"]


def test_without_purge_nothing_leaves_the_calendar_and_cli_reports_counts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.settings.__dict__.items():
        if isinstance(value, str) and key != "config_path":
            monkeypatch.setenv(f"CALSYNC_{key.upper()}", value)
    google = _setup(env, "google")
    outlook = connect(env, "outlook", provider_id="dr-patel")
    env.import_visits([visit("p1", provider_id="dr-patel")], "patel.jsonl")
    env.sync()
    assert len(env.events("outlook")) == 1

    kept = runner.invoke(app, ["disconnect", str(outlook), "--yes", "--json"])
    assert kept.exit_code == 0, kept.stderr
    assert "purge" not in json.loads(kept.stdout)
    assert len(env.events("outlook")) == 1  # the default keeps everything

    purged = runner.invoke(app, ["disconnect", str(google), "--yes", "--purge"])
    assert purged.exit_code == 0, purged.stderr
    assert (
        "Deleted 3 events of upcoming visits (1 were already gone); 1 events of past visits stay."
        in purged.stderr
    )
    assert _starts(env, "google") == ["2026-11-20"]

    # a disconnected integration has no sign-in to delete with
    with pytest.raises(InputError, match="already disconnected"):
        connections.disconnect(env.settings, env.store, outlook, now=env.clock, purge=True)
    refused = runner.invoke(app, ["disconnect", str(outlook), "--purge", "--yes"])
    assert (
        refused.exit_code == 2 and "calsync connect outlook --provider dr-patel" in refused.stderr
    )


def test_purge_with_a_lost_grant_needs_reconnect_and_keeps_everything(env: Env) -> None:
    from calsync_cli.errors import ReauthRequired

    iid = _setup(env, "google")
    env.sb.faults("google", EMAILS["google"]).revoke_grant()
    with pytest.raises(ReauthRequired) as lost:
        connections.disconnect(env.settings, env.store, iid, now=env.clock, purge=True)
    assert "calsync connect google --provider dr-lee" in lost.value.one_line()
    with env.store.read() as s:
        integ = s.get(Integration, iid)
        assert integ is not None and integ.status == "Error" and integ.needs_reauth
    assert len(env.events("google")) == 3  # nothing deleted, nothing revoked
