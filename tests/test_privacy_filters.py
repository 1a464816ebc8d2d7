"""Issue 9 items 14-16 and "Also": private events and reminders as filters (stored, shown,
re-rendered), what calsync sends for them end to end, and the Google batch URL beside the API URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from calsync_cli.config import load_settings
from calsync_cli.services import connections
from calsync_cli.services import integrations as core
from calsync_cli.store.db import Store
from calsync_cli.store.models import Integration
from tests.conftest import NOW, visit
from tests.engine_support import Env
from tests.engine_support import connect as connect_env
from tests.test_store import connect, seed


def test_private_and_reminders_filters_bump_the_version(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    with store.read() as s:
        before = s.get(Integration, lee)
        assert before is not None
        version = before.filter_version
    out = core.set_filters(store, lee, core.FilterChange(private=False, reminders=True), now=NOW)
    assert out["changed"] == ["private", "reminders"]
    assert out["private"] is False and out["reminders"] is True
    shown = core.show_filters(store, lee)
    assert shown["private"] is False and shown["reminders"] is True
    with store.read() as s:
        after = s.get(Integration, lee)
        assert after is not None and after.filter_version == version + 1
    unchanged = core.set_filters(store, lee, core.FilterChange(private=False), now=NOW)
    assert unchanged["changed"] == []


def test_disclosure_notice_names_private_and_reminders() -> None:
    google = connections.disclosure_notice("dr-lee", "google")
    outlook = connections.disclosure_notice("dr-lee", "outlook")
    assert "marked private" in google and "--no-private" in google
    assert "--no-reminders" in google and "Reminders are off" in outlook


@pytest.mark.parametrize("app", ["google", "outlook"])
def test_filters_reach_the_event(env: Env, app: str) -> None:
    iid = connect_env(env, app)
    env.import_visits([visit("a", reason="BP <140")])
    core.set_filters(env.store, iid, core.FilterChange(notes=True), now=env.clock())
    env.sync()
    [event] = env.events(app)
    if app == "google":
        assert event["visibility"] == "private" and event["reminders"] == {"useDefault": True}
        assert "BP &lt;140" in event["description"]
    else:
        assert event["sensitivity"] == "private" and event["isReminderOn"] is False
        assert event["body"] == {"contentType": "text", "content": event["body"]["content"]}
        assert "BP <140" in event["body"]["content"]
    core.set_filters(
        env.store,
        iid,
        core.FilterChange(private=False, reminders=app == "outlook"),
        now=env.clock(),
    )
    assert env.sync().integrations[iid].updated == 1  # the filter change re-renders
    [event] = env.events(app)
    if app == "google":
        assert event["visibility"] == "default"
        assert event["reminders"] == {"useDefault": False, "overrides": []}
    else:
        assert event["sensitivity"] == "normal" and event["isReminderOn"] is True


def test_google_batch_url_follows_the_api_url(tmp_path: Path) -> None:
    env = {
        "CALSYNC_CONFIG": str(tmp_path / "none.toml"),
        "CALSYNC_GOOGLE_API_URL": "http://127.0.0.1:8080/google/calendar/v3",
    }
    (tmp_path / "none.toml").write_text("")
    settings = load_settings(env)
    assert settings.google_batch_url == "http://127.0.0.1:8080/google/batch/calendar/v3"
    other = load_settings({**env, "CALSYNC_GOOGLE_API_URL": "https://proxy.example/gcal/"})
    assert other.google_batch_url == "https://proxy.example/batch/calendar/v3"
    explicit = load_settings({**env, "CALSYNC_GOOGLE_BATCH_URL": "https://b.example/batch"})
    assert explicit.google_batch_url == "https://b.example/batch"
