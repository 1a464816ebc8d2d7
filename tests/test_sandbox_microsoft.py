"""The sandbox's Microsoft side over real loopback HTTP: identity platform v2.0 and Graph."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from calsync_cli.sandbox import MICROSOFT_CLIENT_ID, Sandbox
from calsync_cli.sandbox.testing import microsoft_code, microsoft_sign_in, pkce, redirect_params

EMAIL = "dr.smith@contoso.example"
PROP = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name calsync"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        sandbox.add_account("outlook", EMAIL, calendars=[{"name": "Holidays", "writable": False}])
        yield sandbox


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5) as c:
        yield c


def graph(sb: Sandbox) -> str:
    return sb.env()["CALSYNC_MICROSOFT_GRAPH_URL"]


def token_url(sb: Sandbox) -> str:
    return sb.env()["CALSYNC_MICROSOFT_AUTHORITY"] + "/oauth2/v2.0/token"


def auth(sb: Sandbox, email: str = EMAIL, scopes: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + sb.issue_token("outlook", email, scopes)}


def event(start: str = "09:00", end: str = "10:00", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": "Jane Doe - Follow Up",
        "body": {"contentType": "text", "content": "Room 4"},
        "start": {"dateTime": f"2026-12-01T{start}:00", "timeZone": "America/Chicago"},
        "end": {"dateTime": f"2026-12-01T{end}:00", "timeZone": "America/Chicago"},
        "location": {"displayName": "Main Street"},
        "singleValueExtendedProperties": [{"id": PROP, "value": "tag1"}],
    }
    body.update(extra)
    return body


def code(resp: httpx2.Response) -> str:
    return resp.json()["error"]["code"]  # type: ignore[no-any-return]


def aad(resp: httpx2.Response) -> tuple[str, int]:
    body = resp.json()
    assert body["error_description"].startswith(f"AADSTS{body['error_codes'][0]}:")
    return body["error"], body["error_codes"][0]


# ---------------------------------------------------------------------------------- OAuth
def test_code_flow_pkce_and_rotation(sb: Sandbox, client: httpx2.Client) -> None:
    verifier, challenge = pkce()
    redirect_uri = "http://localhost:61000/"
    resp = microsoft_code(
        client, sb.url, redirect_uri=redirect_uri, challenge=challenge, state="st"
    )
    params = redirect_params(resp)
    assert params["state"] == "st"
    form = {
        "client_id": MICROSOFT_CLIENT_ID,
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": redirect_uri,
    }
    bad = client.post(token_url(sb), data={**form, "code_verifier": "wrong" * 10})
    assert bad.status_code == 400 and aad(bad) == ("invalid_grant", 501481)
    wrong_uri = client.post(
        token_url(sb),
        data={**form, "code_verifier": verifier, "redirect_uri": "http://localhost:61000"},
    )
    assert wrong_uri.status_code == 400 and aad(wrong_uri)[0] == "invalid_grant"
    secret = client.post(
        token_url(sb), data={**form, "code_verifier": verifier, "client_secret": "s"}
    )
    assert secret.status_code == 401 and aad(secret) == ("invalid_client", 700025)
    good = client.post(token_url(sb), data={**form, "code_verifier": verifier})
    assert good.status_code == 200
    tokens = good.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert "refresh_token" in tokens
    reused = client.post(token_url(sb), data={**form, "code_verifier": verifier})
    assert reused.status_code == 400 and aad(reused) == ("invalid_grant", 54005)

    refresh = {
        "client_id": MICROSOFT_CLIENT_ID,
        "grant_type": "refresh_token",
        "scope": "offline_access https://graph.microsoft.com/Calendars.ReadWrite",
    }
    first = client.post(token_url(sb), data={**refresh, "refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    rotated = first.json()["refresh_token"]
    assert rotated != tokens["refresh_token"]
    # Microsoft does not revoke a refresh token when it is used: two clients that refresh with
    # the same one at the same moment both get tokens
    old = client.post(token_url(sb), data={**refresh, "refresh_token": tokens["refresh_token"]})
    assert old.status_code == 200 and old.json()["refresh_token"] not in (
        rotated,
        tokens["refresh_token"],
    )
    second = client.post(token_url(sb), data={**refresh, "refresh_token": rotated})
    assert second.status_code == 200
    h = {"Authorization": "Bearer " + second.json()["access_token"]}
    assert client.get(f"{graph(sb)}/me/calendars", headers=h).status_code == 200
    assert sb.stats()["token_refreshes"]["outlook"][EMAIL] == 3
    sb.faults("outlook", EMAIL).revoke_grant()  # a revocation ends every one of them
    for token in (tokens["refresh_token"], rotated):
        gone = client.post(token_url(sb), data={**refresh, "refresh_token": token})
        assert gone.status_code == 400 and aad(gone)[0] == "invalid_grant"


def test_no_refresh_token_without_offline_access(sb: Sandbox, client: httpx2.Client) -> None:
    tokens = microsoft_sign_in(
        client, sb.url, EMAIL, scopes=("https://graph.microsoft.com/Calendars.ReadWrite",)
    )
    assert "refresh_token" not in tokens


def test_authorize_checks(sb: Sandbox, client: httpx2.Client) -> None:
    _, challenge = pkce()
    for uri in ("http://localhost:1234", "http://localhost:9/", "http://localhost"):
        assert "code" in redirect_params(
            microsoft_code(client, sb.url, redirect_uri=uri, challenge=challenge)
        )
    for uri in ("http://127.0.0.1:1234", "https://example.com/", "http://localhost:1/cb"):
        resp = microsoft_code(client, sb.url, redirect_uri=uri, challenge=challenge)
        assert resp.status_code == 400 and "AADSTS50011" in resp.text
    resp = client.get(
        f"{sb.url}/microsoft/common/oauth2/v2.0/authorize",
        params={
            "client_id": MICROSOFT_CLIENT_ID,
            "redirect_uri": "http://localhost:5",
            "response_type": "code",
            "scope": "offline_access",
            "state": "z",
        },
    )
    assert redirect_params(resp)["error"] == "invalid_request"  # PKCE required
    sb.consent("deny")
    params = redirect_params(microsoft_code(client, sb.url, challenge=challenge, state="d"))
    assert params["error"] == "access_denied" and params["state"] == "d"


def test_grant_revoked_and_tokens_expired(sb: Sandbox, client: httpx2.Client) -> None:
    tokens = microsoft_sign_in(client, sb.url, EMAIL)
    h = {"Authorization": "Bearer " + tokens["access_token"]}
    sb.faults("outlook", EMAIL).expire_access_tokens()
    r = client.get(f"{graph(sb)}/me/calendars", headers=h)
    assert r.status_code == 401 and code(r) == "InvalidAuthenticationToken"
    assert "innerError" in r.json()["error"]
    refresh = {
        "client_id": MICROSOFT_CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
    }
    ok = client.post(token_url(sb), data=refresh)
    assert ok.status_code == 200
    sb.faults("outlook", EMAIL).revoke_grant()
    r = client.post(token_url(sb), data={**refresh, "refresh_token": ok.json()["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = client.get(
        f"{graph(sb)}/me/calendars",
        headers={"Authorization": "Bearer " + ok.json()["access_token"]},
    )
    assert r.status_code == 401


# ---------------------------------------------------------------------------------- Graph
def test_calendars(sb: Sandbox, client: httpx2.Client) -> None:
    r = client.get(f"{graph(sb)}/me/calendars")
    assert r.status_code == 401 and code(r) == "InvalidAuthenticationToken"
    cals = client.get(f"{graph(sb)}/me/calendars", headers=auth(sb)).json()["value"]
    assert [(c["name"], c["isDefaultCalendar"], c["canEdit"]) for c in cals] == [
        ("Calendar", True, True),
        ("Holidays", False, False),
    ]
    assert cals[0]["owner"]["address"] == EMAIL and cals[0]["owner"]["name"]
    default = client.get(f"{graph(sb)}/me/calendar", headers=auth(sb)).json()
    assert default["id"] == cals[0]["id"] == sb.account("outlook", EMAIL).primary_calendar_id
    r = client.get(f"{graph(sb)}/me/calendars", headers=auth(sb, scopes=["User.Read"]))
    assert r.status_code == 403 and code(r) == "ErrorAccessDenied"


def test_event_crud(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    cal = sb.account("outlook", EMAIL).primary_calendar_id
    base = f"{graph(sb)}/me/calendars/{cal}/events"
    r = client.post(base, json=event(transactionId="txn-1"), headers=h)
    assert r.status_code == 201
    ev = r.json()
    for key in (
        "id",
        "subject",
        "body",
        "start",
        "end",
        "location",
        "transactionId",
        "showAs",
        "isCancelled",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
    ):
        assert key in ev, key
    assert ev["start"] == {"dateTime": "2026-12-01T09:00:00", "timeZone": "America/Chicago"}
    assert "singleValueExtendedProperties" not in ev
    again = client.post(base, json=event(subject="retry", transactionId="txn-1"), headers=h)
    assert again.status_code == 201 and again.json()["id"] == ev["id"]
    assert len(sb.events("outlook", EMAIL, cal)) == 1

    expand = {"$expand": f"singleValueExtendedProperties($filter=id eq '{PROP}')"}
    got = client.get(f"{base}/{ev['id']}", params=expand, headers=h).json()
    assert got["singleValueExtendedProperties"] == [{"id": PROP, "value": "tag1"}]
    via_me = client.get(f"{graph(sb)}/me/events/{ev['id']}", headers=h)
    assert via_me.status_code == 200

    windows = {"dateTime": "2026-12-01T11:00:00", "timeZone": "Central Standard Time"}
    patched = client.patch(f"{base}/{ev['id']}", json={"subject": "New", "end": windows}, headers=h)
    assert patched.status_code == 200
    assert patched.json()["subject"] == "New" and patched.json()["end"] == windows
    assert patched.json()["changeKey"] != ev["changeKey"]
    bad_tz = client.patch(
        f"{base}/{ev['id']}",
        json={"end": {"dateTime": "2026-12-01T11:00:00", "timeZone": "Mars/Base"}},
        headers=h,
    )
    assert bad_tz.status_code == 400 and code(bad_tz) == "TimeZoneNotSupportedException"

    assert client.delete(f"{base}/{ev['id']}", headers=h).status_code == 204
    for method in ("GET", "DELETE"):
        r = client.request(method, f"{base}/{ev['id']}", headers=h)
        assert r.status_code == 404 and code(r) == "ErrorItemNotFound"
    r = client.patch(f"{graph(sb)}/me/events/{ev['id']}", json={"subject": "x"}, headers=h)
    assert r.status_code == 404
    # the transactionId of a deleted event no longer matches: a new event is made
    fresh = client.post(base, json=event(transactionId="txn-1"), headers=h)
    assert fresh.status_code == 201 and fresh.json()["id"] != ev["id"]


def test_read_only_calendar_and_bad_ids(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    holidays = sb.account("outlook", EMAIL).calendar_id("Holidays")
    r = client.post(f"{graph(sb)}/me/calendars/{holidays}/events", json=event(), headers=h)
    assert r.status_code == 403 and code(r) == "ErrorAccessDenied"
    r = client.get(
        f"{graph(sb)}/me/calendars/AAMkAGnope=/calendarView",
        headers=h,
        params={"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2026-12-02T00:00:00Z"},
    )
    assert r.status_code == 404 and code(r) == "ErrorItemNotFound"


def test_calendar_view_and_paging(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    cal = sb.account("outlook", EMAIL).primary_calendar_id
    base = f"{graph(sb)}/me/calendars/{cal}"
    ids = []
    for s, e in [("12:00", "13:00"), ("08:00", "09:00"), ("10:00", "11:00"), ("20:00", "21:00")]:
        ids.append(client.post(f"{base}/events", json=event(s, e), headers=h).json()["id"])
    view = f"{base}/calendarView"
    window = {
        "startDateTime": "2026-12-01T14:00:00Z",
        "endDateTime": "2026-12-01T20:00:00Z",
        "$top": "2",
    }
    page = client.get(view, params=window, headers=h).json()
    assert [v["id"] for v in page["value"]] == [ids[1], ids[2]]
    nxt = client.get(page["@odata.nextLink"], headers=h).json()
    assert [v["id"] for v in nxt["value"]] == [ids[0]]
    assert "@odata.nextLink" not in nxt
    r = client.get(view, headers=h)
    assert r.status_code == 400 and code(r) == "ErrorInvalidParameter"
    flt = {
        **window,
        "$top": "10",
        "$filter": f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP}' and ep/value eq 'tag1')",
    }
    assert len(client.get(view, params=flt, headers=h).json()["value"]) == 3


def test_get_schedule(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    client.post(f"{graph(sb)}/me/calendar/events", json=event("09:00", "10:00"), headers=h)
    client.post(
        f"{graph(sb)}/me/calendar/events", json=event("11:00", "12:00", showAs="free"), headers=h
    )
    body = {
        "schedules": [EMAIL],
        "startTime": {"dateTime": "2026-12-01T08:00:00", "timeZone": "Central Standard Time"},
        "endTime": {"dateTime": "2026-12-01T12:00:00", "timeZone": "Central Standard Time"},
        "availabilityViewInterval": 60,
    }
    r = client.post(f"{graph(sb)}/me/calendar/getSchedule", json=body, headers=h)
    assert r.status_code == 200
    info = r.json()["value"][0]
    assert info["availabilityView"] == "0200"
    assert [(i["status"], i["start"]["dateTime"]) for i in info["scheduleItems"]] == [
        ("busy", "2026-12-01T15:00:00.0000000")
    ]
    sb.add_account("outlook", "me@outlook.example", personal=True)
    r = client.post(
        f"{graph(sb)}/me/calendar/getSchedule",
        json={**body, "schedules": ["me@outlook.example"]},
        headers=auth(sb, "me@outlook.example"),
    )
    assert r.status_code == 400 and "error" in r.json()


# ---------------------------------------------------------------------------------- $batch
def test_json_batch(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    url = f"{graph(sb)}/$batch"
    cal = sb.account("outlook", EMAIL).primary_calendar_id
    too_many = {
        "requests": [{"id": str(i), "method": "GET", "url": "/me/calendar"} for i in range(21)]
    }
    r = client.post(url, json=too_many, headers=h)
    assert r.status_code == 400 and code(r) == "BadRequest"
    requests = [
        {
            "id": "1",
            "method": "POST",
            "url": f"/me/calendars/{cal}/events",
            "body": event(),
            "headers": {"Content-Type": "application/json"},
        },
        {"id": "2", "method": "GET", "url": "/me/events/AAMkAGmissing="},
        {"id": "3", "method": "GET", "url": "me/calendars"},
    ]
    r = client.post(url, json={"requests": requests}, headers=h)
    assert r.status_code == 200
    by_id = {x["id"]: x for x in r.json()["responses"]}
    assert by_id["1"]["status"] == 201 and by_id["1"]["body"]["subject"] == "Jane Doe - Follow Up"
    assert (
        by_id["2"]["status"] == 404 and by_id["2"]["body"]["error"]["code"] == "ErrorItemNotFound"
    )
    assert by_id["3"]["status"] == 200
    stats = sb.stats()
    assert stats["batch_calls"]["outlook"][EMAIL] == 3 and stats["batches"]["outlook"] == 1


def test_batch_items_wait_for_each_other_not_429(client: httpx2.Client) -> None:
    with Sandbox(latency=0.05) as sb:
        sb.add_account("outlook", EMAIL)
        reqs = [{"id": str(i), "method": "GET", "url": "/me/calendar"} for i in range(10)]
        r = client.post(f"{graph(sb)}/$batch", json={"requests": reqs}, headers=auth(sb))
        assert [x["status"] for x in r.json()["responses"]] == [200] * 10
        assert 0.15 <= r.elapsed.total_seconds() < 1.0  # ceil(10/4) rounds of 0.05 s
        assert sb.stats()["max_concurrency"]["outlook"][EMAIL] == 4


def test_mailbox_concurrency(client: httpx2.Client) -> None:
    with Sandbox(latency=0.3, outlook_mailbox_concurrency=2) as sb:
        sb.add_account("outlook", EMAIL)
        h = auth(sb)
        results: list[int] = []
        barrier = threading.Barrier(2)

        def hold() -> None:
            with httpx2.Client(timeout=5) as c:
                barrier.wait()
                results.append(c.get(f"{graph(sb)}/me/calendar", headers=h).status_code)

        threads = [threading.Thread(target=hold) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = 0
        while sb.stats()["max_concurrency"].get("outlook", {}).get(EMAIL, 0) < 2 and deadline < 200:
            threading.Event().wait(0.005)
            deadline += 1
        r = client.get(f"{graph(sb)}/me/calendar", headers=h)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert code(r) == "ApplicationThrottled"
        assert r.json()["error"]["innerError"]["code"] == "MailboxConcurrency"
        reqs = [{"id": str(i), "method": "GET", "url": "/me/calendar"} for i in range(2)]
        b = client.post(f"{graph(sb)}/$batch", json={"requests": reqs}, headers=h).json()
        statuses = [x["status"] for x in b["responses"]]
        assert 429 in statuses
        throttled = [x for x in b["responses"] if x["status"] == 429][0]
        assert throttled["headers"]["Retry-After"] == "1"
        for t in threads:
            t.join()
        assert results == [200, 200]
        assert sb.stats()["max_concurrency"]["outlook"][EMAIL] == 2
        assert sb.stats()["throttled"]["outlook"][EMAIL] >= 2
