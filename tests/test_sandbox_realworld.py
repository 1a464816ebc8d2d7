"""The sandbox answers as the real services do (issue 9), checked over raw HTTP, and two of those
behaviours end to end through the engine: a Google event deleted in the Calendar UI, and a
target calendar that is gone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from calsync_cli.providers.google import event_id_for
from calsync_cli.providers.microsoft import TAG_PROPERTY_ID
from calsync_cli.sandbox import Sandbox
from calsync_cli.services import integrations as core
from tests.conftest import visit
from tests.engine_support import Env, connect

GOOGLE = "g@example.com"
OUTLOOK = "o@example.com"


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox(port=0) as sandbox:
        sandbox.add_account("google", GOOGLE, calendars=[{"name": "Clinic"}])
        sandbox.add_account("outlook", OUTLOOK, calendars=[{"name": "Other"}])
        yield sandbox


def google_event(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "summary": "Visit",
        "start": {"dateTime": "2026-12-01T09:00:00-06:00"},
        "end": {"dateTime": "2026-12-01T09:30:00-06:00"},
    }


def graph_event(zone: str = "Central Standard Time", tag: str = "t") -> dict[str, Any]:
    return {
        "subject": "Visit",
        "start": {"dateTime": "2026-12-01T09:00:00", "timeZone": zone},
        "end": {"dateTime": "2026-12-01T09:30:00", "timeZone": zone},
        "singleValueExtendedProperties": [{"id": TAG_PROPERTY_ID, "value": tag}],
    }


def api(sb: Sandbox, app: str, email: str) -> httpx2.Client:
    base = sb.env()["CALSYNC_GOOGLE_API_URL" if app == "google" else "CALSYNC_MICROSOFT_GRAPH_URL"]
    token = sb.issue_token(app, email)
    return httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})


def test_google_event_deleted_in_the_ui(sb: Sandbox) -> None:
    with api(sb, "google", GOOGLE) as c:
        for purge, restore_status in ((False, 403), (True, 404)):
            event_id = event_id_for(f"ui-{purge}")
            assert c.post(f"/calendars/{GOOGLE}/events", json=google_event(event_id)).is_success
            sb.faults("google", GOOGLE).delete_in_ui(GOOGLE, event_id, purge=purge)
            again = c.post(f"/calendars/{GOOGLE}/events", json=google_event(event_id))
            assert again.status_code == 409
            assert again.json()["error"]["errors"][0]["reason"] == "duplicate"
            body = dict(google_event(event_id), status="confirmed")
            assert c.put(f"/calendars/{GOOGLE}/events/{event_id}", json=body).status_code == (
                restore_status
            )


def test_google_reminders_cannot_be_default_and_overridden(sb: Sandbox) -> None:
    with api(sb, "google", GOOGLE) as c:
        body = dict(
            google_event(event_id_for("rem")),
            reminders={"useDefault": True, "overrides": [{"method": "popup", "minutes": 5}]},
        )
        answer = c.post(f"/calendars/{GOOGLE}/events", json=body)
        assert answer.status_code == 400


@pytest.mark.parametrize(
    ("zone", "ok"),
    [
        ("America/Detroit", False),
        ("America/Boise", False),
        ("Etc/UTC", False),
        ("America/Chicago", True),  # on Graph's short IANA list
        ("Eastern Standard Time", True),
        ("UTC", True),
    ],
)
def test_graph_time_zones(sb: Sandbox, zone: str, ok: bool) -> None:
    with api(sb, "outlook", OUTLOOK) as c:
        answer = c.post("/me/events", json=graph_event(zone))
        assert answer.is_success is ok
        if not ok:
            assert answer.json()["error"]["code"] == "TimeZoneNotSupportedException"


def test_graph_immutable_id_only_when_asked(sb: Sandbox) -> None:
    prefer = {"Prefer": 'IdType="ImmutableId"'}
    with api(sb, "outlook", OUTLOOK) as c:
        plain = c.post("/me/events", json=graph_event()).json()["id"]
        immutable = c.post("/me/events", json=graph_event(), headers=prefer).json()["id"]
        other = sb.account("outlook", OUTLOOK).calendar_id("Other")
        sb.faults("outlook", OUTLOOK).move_event(plain, other)
        assert c.get(f"/me/events/{plain}").status_code == 404  # the default id changed
        sb.faults("outlook", OUTLOOK).move_event(immutable, other)
        moved = c.get(f"/me/events/{immutable}", headers=prefer)
        assert moved.status_code == 200 and moved.json()["id"] == immutable


def test_graph_batch_answers_401_per_request(sb: Sandbox) -> None:
    token = sb.issue_token("outlook", OUTLOOK)
    sb.faults("outlook", OUTLOOK).expire_access_tokens()
    answer = httpx2.post(
        sb.env()["CALSYNC_MICROSOFT_GRAPH_URL"] + "/$batch",
        json={"requests": [{"id": "1", "method": "GET", "url": "/me/calendars"}]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200
    assert answer.json()["responses"][0]["status"] == 401


def test_graph_shared_calendar_needs_the_shared_scope(sb: Sandbox) -> None:
    email = "shared@example.com"
    acct = sb.add_account(
        "outlook", email, calendars=[{"name": "Boss", "shared_from": "boss@example.com"}]
    )
    cal = acct.calendar_id("Boss")
    with api(sb, "outlook", email) as c:
        listed = {x["id"]: x for x in c.get("/me/calendars").json()["value"]}
        assert listed[cal]["canEdit"] is True  # what Graph reports
        assert listed[cal]["owner"]["address"] == "boss@example.com"
        assert c.post(f"/me/calendars/{cal}/events", json=graph_event()).status_code == 403
    shared = sb.issue_token("outlook", email, ["Calendars.ReadWrite", "Calendars.ReadWrite.Shared"])
    answer = httpx2.post(
        sb.env()["CALSYNC_MICROSOFT_GRAPH_URL"] + f"/me/calendars/{cal}/events",
        json=graph_event(),
        headers={"Authorization": f"Bearer {shared}"},
    )
    assert answer.status_code == 201


# -- end to end through the engine -------------------------------------------------------------


def test_google_ui_deleted_event_is_created_again_under_a_new_id(env: Env) -> None:
    iid = connect(env, "google")
    env.import_visits([visit("a")])
    env.sync()
    [event] = env.events("google")
    env.sb.faults("google", env.sb.accounts("google")[0].email).delete_in_ui(
        env.calendar("google"), event["id"]
    )
    env.import_visits(
        [visit("a", start="2026-12-01T10:00:00-06:00", end="2026-12-01T10:30:00-06:00")], "v2.jsonl"
    )
    summary = env.sync()
    assert summary.integrations[iid].failed == 0
    [again] = env.events("google")
    assert again["id"] != event["id"] and "10:00:00" in again["start"]["dateTime"]


@pytest.mark.parametrize("app", ["google", "outlook"])
def test_deleted_calendar_puts_the_integration_in_error(env: Env, app: str) -> None:
    iid = connect(env, app)
    env.import_visits([visit("a")])
    env.sync()
    email = env.sb.accounts(app)[0].email
    env.sb.faults(app, email).delete_calendar(env.calendar(app))
    env.import_visits([visit("b")], "v2.jsonl")
    env.sync()
    [row] = core.status_rows(env.store, iid)
    assert row["status"] == "Error"
    assert "calsync calendars select" in (row["status_detail"] or "")


def test_control_api_reaches_the_new_switches(sb: Sandbox) -> None:
    email = "ctl@example.com"
    acct = sb.add_account("google", email, calendars=[{"name": "Clinic"}])
    cal = acct.calendar_id("Clinic")
    faults = sb.url + "/_sandbox/faults"
    base = {"app": "google", "email": email}
    for extra in (
        {"action": "calendar_burst", "writes": 5},
        {"action": "set_writable", "calendar": cal, "writable": False},
        {"action": "delete_calendar", "calendar": cal},
    ):
        assert httpx2.post(faults, json={**base, **extra}).status_code == 200
    assert cal not in sb.account("google", email).calendar_ids
