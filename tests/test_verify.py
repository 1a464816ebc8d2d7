"""``calsync verify``: drift made directly in the sandbox (as another client of the calendar
would: over its API) is found by kind, ``--repair`` + ``sync`` leaves exactly the wanted events,
and verify is clean again. Both providers, end to end over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from typer.testing import CliRunner

from calsync_cli.cli.app import app as cli
from calsync_cli.providers.google import TAG_PROPERTY
from calsync_cli.providers.microsoft import TAG_PROPERTY_ID
from tests.conftest import visit
from tests.engine_support import EMAILS, Env, connect

APPS = ["google", "outlook"]


class Calendar:
    """Another client of the clinician's calendar, talking to the sandbox's API."""

    opened: list[httpx2.Client] = []  # noqa: RUF012 - closed by the fixture

    def __init__(self, env: Env, app: str) -> None:
        self.env, self.app = env, app
        self.cal = env.calendar(app)
        token = env.sb.issue_token(app, EMAILS[app])
        self.http = httpx2.Client(headers={"Authorization": f"Bearer {token}"})
        Calendar.opened.append(self.http)
        urls = env.sb.env()
        if app == "google":
            self.base = f"{urls['CALSYNC_GOOGLE_API_URL']}/calendars/{self.cal}/events"
        else:
            self.base = f"{urls['CALSYNC_MICROSOFT_GRAPH_URL']}/me/calendars/{self.cal}/events"

    def events(self) -> list[dict[str, Any]]:
        return self.env.events(self.app)

    def delete(self, event_id: str) -> None:
        assert self.http.delete(f"{self.base}/{event_id}").status_code == 204

    def retitle(self, event_id: str, title: str) -> None:
        body = {"summary": title} if self.app == "google" else {"subject": title}
        assert self.http.patch(f"{self.base}/{event_id}", json=body).status_code == 200

    def copy(self, event: dict[str, Any]) -> None:
        """A second event with the same calsync tag (an import into the calendar, say)."""
        if self.app == "google":
            body = {k: event[k] for k in ("summary", "start", "end", "extendedProperties")}
        else:
            tag = next(
                p["value"] for p in event["singleValueExtendedProperties"]
                if p["id"].lower() == TAG_PROPERTY_ID.lower()
            )  # fmt: skip
            body = {
                "subject": event["subject"], "start": event["start"], "end": event["end"],
                "singleValueExtendedProperties": [{"id": TAG_PROPERTY_ID, "value": tag}],
            }  # fmt: skip
        assert self.http.post(self.base, json=body).status_code in (200, 201)


def title(app: str, event: dict[str, Any]) -> str:
    return str(event["summary"] if app == "google" else event["subject"])


def tag(app: str, event: dict[str, Any]) -> str:
    if app == "google":
        return str(event["extendedProperties"]["private"][TAG_PROPERTY])
    return next(
        str(p["value"]) for p in event.get("singleValueExtendedProperties", [])
        if p["id"].lower() == TAG_PROPERTY_ID.lower()
    )  # fmt: skip


def verify(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["verify", "--json", *args])
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def cli_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    for key, value in {**env.sb.env(), "CALSYNC_DB_URL": env.settings.db_url}.items():
        monkeypatch.setenv(key, value)
    env.clock.now = datetime.now(UTC) - timedelta(minutes=1)  # the CLI runs on real time
    yield env
    for client in Calendar.opened:
        client.close()
    Calendar.opened.clear()


def _upcoming(vid: str, day: int, **over: object) -> dict[str, object]:
    start = (datetime.now(UTC) + timedelta(days=day)).replace(microsecond=0)
    return visit(vid, start=start.isoformat(), end=(start + timedelta(minutes=30)).isoformat(),
                 **over)  # fmt: skip


@pytest.mark.parametrize("app", APPS)
def test_verify_finds_each_kind_of_drift_and_repair_fixes_it(cli_env: Env, app: str) -> None:
    env = cli_env
    iid = connect(env, app)
    rows = [
        _upcoming(v, d)
        for v, d in (("gone", 1), ("edited", 2), ("twice", 3), ("called-off", 4), ("fine", 5))
    ]
    env.import_visits(rows)
    runner = CliRunner()
    assert runner.invoke(cli, ["sync"]).exit_code == 0
    code, clean = verify()
    assert code == 0 and clean["drift"] is False
    assert clean["integrations"][0]["events"] == 5

    cal = Calendar(env, app)

    def event_of(vid: str) -> dict[str, Any]:
        return next(e for e in cal.events() if _is(env, app, e, vid))

    cal.delete(event_of("gone")["id"])
    cal.retitle(event_of("edited")["id"], "Lunch")
    cal.copy(event_of("twice"))
    # cancelled in the practice system; its delete never ran (the sync did not run yet)
    env.import_visits([_upcoming("called-off", 4, status="cancelled")], "v2.jsonl")

    code, found = verify(str(iid))
    assert code == 1 and found["drift"] is True
    counts = found["integrations"][0]["counts"]
    assert counts == {"missing": 1, "stale": 1, "duplicate": 1, "orphaned": 1, "unknown": 0}
    kinds = {d["visit_id"]: d["kind"] for d in found["integrations"][0]["drift"]}
    assert kinds == {
        "gone": "missing",
        "edited": "stale",
        "twice": "duplicate",
        "called-off": "orphaned",
    }
    stale = next(d for d in found["integrations"][0]["drift"] if d["kind"] == "stale")
    assert stale["fields"] == ["title"]
    human = runner.invoke(cli, ["verify"])
    assert human.exit_code == 1 and "calsync verify --repair" in human.stderr

    code, repaired = verify("--repair")
    assert code == 0 and repaired["integrations"][0]["repaired"]["deleted"] == 1
    assert len(cal.events()) == 4  # the duplicate is gone at once; the rest waits for sync
    assert runner.invoke(cli, ["sync"]).exit_code == 0
    events = cal.events()
    assert len(events) == 4 and len({tag(app, e) for e in events}) == 4
    assert "Lunch" not in {title(app, e) for e in events}
    code, after = verify()
    assert code == 0 and after["drift"] is False, after


def _is(env: Env, app: str, event: dict[str, Any], vid: str) -> bool:
    from calsync_cli.engine.render import event_tag

    return tag(app, event) == event_tag(env.integrations[app], vid)


def test_verify_leaves_unknown_tags_alone_and_refuses_bad_windows(cli_env: Env) -> None:
    env = cli_env
    connect(env, "google")
    env.import_visits([_upcoming("a", 1)])
    assert CliRunner().invoke(cli, ["sync"]).exit_code == 0
    cal = Calendar(env, "google")
    [event] = cal.events()
    stranger = {**event, "extendedProperties": {"private": {TAG_PROPERTY: "calsync-99-abc"}}}
    cal.copy(stranger)
    code, found = verify()
    assert code == 0 and found["integrations"][0]["counts"]["unknown"] == 1
    verify("--repair")
    assert len(cal.events()) == 2  # not ours to judge: left alone
    bad = CliRunner().invoke(cli, ["verify", "--from", "2026-12-10", "--to", "2026-12-01"])
    assert bad.exit_code == 2 and bad.stderr.startswith("calsync: error: --to must be after")
    junk = CliRunner().invoke(cli, ["verify", "--from", "next tuesday"])
    assert junk.exit_code == 2 and "--from" in junk.stderr
    assert CliRunner().invoke(cli, ["verify", "99"]).exit_code == 2
