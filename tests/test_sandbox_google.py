"""The sandbox's Google side over real loopback HTTP: OAuth, Calendar v3, batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from calsync_cli.sandbox import GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, Sandbox
from calsync_cli.sandbox.testing import google_code, google_sign_in, pkce, redirect_params

EMAIL = "dr.jones@example.com"
CAL = "https://www.googleapis.com/auth/calendar"
EVENTS = "https://www.googleapis.com/auth/calendar.events"
LIST_RO = "https://www.googleapis.com/auth/calendar.calendarlist.readonly"
FREEBUSY = "https://www.googleapis.com/auth/calendar.freebusy"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        sandbox.add_account("google", EMAIL, calendars=[{"name": "Holidays", "writable": False}])
        yield sandbox


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5) as c:
        yield c


def api(sb: Sandbox) -> str:
    return sb.env()["CALSYNC_GOOGLE_API_URL"]


def auth(sb: Sandbox, scopes: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + sb.issue_token("google", EMAIL, scopes)}


def event(
    eid: str | None = "visit00001", start: str = "09:00", end: str = "10:00", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "summary": "Jane Doe - Follow Up",
        "start": {"dateTime": f"2026-12-01T{start}:00-06:00", "timeZone": "America/Chicago"},
        "end": {"dateTime": f"2026-12-01T{end}:00-06:00", "timeZone": "America/Chicago"},
        "extendedProperties": {"private": {"calsync": "tag1"}},
    }
    if eid is not None:
        body["id"] = eid
    body.update(extra)
    return body


def error_reason(resp: httpx2.Response) -> str:
    body = resp.json()["error"]
    assert body["code"] == resp.status_code
    return str(body["errors"][0]["reason"])


# ---------------------------------------------------------------------------------- OAuth
def token_request(client: httpx2.Client, sb: Sandbox, **data: str) -> httpx2.Response:
    form = {"client_id": GOOGLE_CLIENT_ID, "client_secret": GOOGLE_CLIENT_SECRET, **data}
    return client.post(sb.env()["CALSYNC_GOOGLE_TOKEN_URL"], data=form)


def test_code_flow_with_pkce_and_refresh(sb: Sandbox, client: httpx2.Client) -> None:
    verifier, challenge = pkce()
    redirect_uri = "http://127.0.0.1:53123/"
    resp = google_code(client, sb.url, redirect_uri=redirect_uri, challenge=challenge, state="s1")
    params = redirect_params(resp)
    assert resp.headers["location"].startswith(redirect_uri)
    assert params["state"] == "s1"
    code = params["code"]

    bad = token_request(
        client,
        sb,
        grant_type="authorization_code",
        code=code,
        code_verifier="x" * 50,
        redirect_uri=redirect_uri,
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"

    wrong_uri = token_request(
        client,
        sb,
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        redirect_uri="http://127.0.0.1:53123",
    )
    assert wrong_uri.status_code == 400
    assert wrong_uri.json()["error"] == "redirect_uri_mismatch"

    good = token_request(
        client,
        sb,
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        redirect_uri=redirect_uri,
    )
    assert good.status_code == 200
    tokens = good.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert tokens["scope"] == CAL and tokens["refresh_token"]

    again = token_request(
        client,
        sb,
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        redirect_uri=redirect_uri,
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    refreshed = token_request(
        client, sb, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert refreshed.status_code == 200
    assert "refresh_token" not in refreshed.json()
    h = {"Authorization": "Bearer " + refreshed.json()["access_token"]}
    assert client.get(f"{api(sb)}/users/me/calendarList", headers=h).status_code == 200

    wider = token_request(
        client,
        sb,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        scope=f"{CAL} https://www.googleapis.com/auth/calendar.settings.readonly",
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    assert sb.stats()["token_refreshes"]["google"][EMAIL] == 1


def test_client_authentication(sb: Sandbox, client: httpx2.Client) -> None:
    resp = client.post(
        sb.env()["CALSYNC_GOOGLE_TOKEN_URL"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": GOOGLE_CLIENT_ID,
            "client_secret": "wrong",
        },
    )
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    resp = token_request(client, sb, grant_type="password")
    assert resp.status_code == 400 and resp.json()["error"] == "unsupported_grant_type"
    resp = token_request(client, sb, grant_type="refresh_token", refresh_token="1//nope")
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def test_refresh_token_only_at_first_consent_or_prompt(sb: Sandbox, client: httpx2.Client) -> None:
    first = google_sign_in(client, sb.url, EMAIL, prompt_consent=False)
    assert "refresh_token" in first
    second = google_sign_in(client, sb.url, EMAIL, prompt_consent=False)
    assert "refresh_token" not in second
    third = google_sign_in(client, sb.url, EMAIL, prompt_consent=True)
    assert "refresh_token" in third
    online = google_sign_in(client, sb.url, EMAIL, offline=False)
    assert "refresh_token" not in online
    # both refresh tokens stay valid
    for rt in (first["refresh_token"], third["refresh_token"]):
        assert (
            token_request(client, sb, grant_type="refresh_token", refresh_token=rt).status_code
            == 200
        )


def test_authorize_rejects_bad_requests(sb: Sandbox, client: httpx2.Client) -> None:
    _, challenge = pkce()
    resp = google_code(client, sb.url, redirect_uri="https://evil.example/cb", challenge=challenge)
    assert resp.status_code == 400 and "redirect_uri_mismatch" in resp.text
    resp = client.get(
        f"{sb.url}/google/o/oauth2/v2/auth",
        params={
            "client_id": "nobody",
            "redirect_uri": "http://127.0.0.1:1/",
            "response_type": "code",
        },
    )
    assert resp.status_code == 401
    resp = client.get(
        f"{sb.url}/google/o/oauth2/v2/auth",
        params={
            "client_id": GOOGLE_CLIENT_ID,
            "redirect_uri": "http://[::1]:9/",
            "response_type": "code",
            "scope": CAL,
            "state": "st",
        },
    )
    params = redirect_params(resp)  # no PKCE challenge
    assert params == {
        "error": "invalid_request",
        "error_description": params["error_description"],
        "state": "st",
    }
    resp = google_code(client, sb.url, challenge=challenge, scopes=("https://bogus/scope",))
    assert redirect_params(resp)["error"] == "invalid_scope"


def test_consent_deny_and_account_choice(sb: Sandbox, client: httpx2.Client) -> None:
    sb.add_account("google", "other@example.com")
    _, challenge = pkce()
    sb.consent("deny")
    params = redirect_params(google_code(client, sb.url, challenge=challenge, state="q"))
    assert params == {"error": "access_denied", "state": "q"}
    sb.consent("allow", account="other@example.com")
    tokens = google_sign_in(client, sb.url)
    h = {"Authorization": "Bearer " + tokens["access_token"]}
    items = client.get(f"{api(sb)}/users/me/calendarList", headers=h).json()["items"]
    assert items[0]["id"] == "other@example.com"


def test_consent_page_when_not_auto_approved(client: httpx2.Client) -> None:
    with Sandbox(auto_approve=False) as sb:
        sb.add_account("google", "<b>x</b>@example.com")
        verifier, challenge = pkce()
        resp = google_code(client, sb.url, challenge=challenge, state='"><script>')
        assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
        assert "<script>" not in resp.text and "&lt;b&gt;" in resp.text
        form = {
            "client_id": GOOGLE_CLIENT_ID,
            "redirect_uri": "http://127.0.0.1:8765/",
            "response_type": "code",
            "scope": CAL,
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "decision": "allow",
        }
        resp = client.post(f"{sb.url}/google/o/oauth2/v2/auth", data=form)
        assert "code" in redirect_params(resp)
        resp = client.post(f"{sb.url}/google/o/oauth2/v2/auth", data={**form, "decision": "deny"})
        assert redirect_params(resp)["error"] == "access_denied"
        assert verifier


def test_revoke_withdraws_the_grant(sb: Sandbox, client: httpx2.Client) -> None:
    a = google_sign_in(client, sb.url, EMAIL)
    b = google_sign_in(client, sb.url, EMAIL)  # same grant, a second access token
    revoke = sb.env()["CALSYNC_GOOGLE_REVOKE_URL"]
    assert client.post(revoke, data={"token": a["refresh_token"]}).status_code == 200
    for tok in (a["access_token"], b["access_token"]):
        r = client.get(
            f"{api(sb)}/users/me/calendarList", headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 401 and error_reason(r) == "authError"
    r = token_request(client, sb, grant_type="refresh_token", refresh_token=a["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    again = client.post(revoke, data={"token": a["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_token"
    assert sb.revocations("google", EMAIL) == 1
    # after revocation, signing in again is a first consent: a refresh token again
    assert "refresh_token" in google_sign_in(client, sb.url, EMAIL, prompt_consent=False)


# ---------------------------------------------------------------------------------- API
def test_auth_and_scope_errors(sb: Sandbox, client: httpx2.Client) -> None:
    r = client.get(f"{api(sb)}/users/me/calendarList")
    assert r.status_code == 401 and error_reason(r) == "required"
    r = client.get(f"{api(sb)}/users/me/calendarList", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and error_reason(r) == "authError"
    h = auth(sb, [EVENTS])
    r = client.get(f"{api(sb)}/users/me/calendarList", headers=h)
    assert r.status_code == 403 and error_reason(r) == "insufficientPermissions"
    assert (
        client.post(f"{api(sb)}/calendars/primary/events", json=event(), headers=h).status_code
        == 200
    )
    h = auth(sb, [LIST_RO])
    assert client.get(f"{api(sb)}/users/me/calendarList", headers=h).status_code == 200
    r = client.get(f"{api(sb)}/calendars/primary/events", headers=h)
    assert r.status_code == 403
    fb = {
        "timeMin": "2026-12-01T00:00:00Z",
        "timeMax": "2026-12-02T00:00:00Z",
        "items": [{"id": EMAIL}],
    }
    assert (
        client.post(f"{api(sb)}/freeBusy", json=fb, headers=auth(sb, [FREEBUSY])).status_code == 200
    )


def test_calendar_list_roles(sb: Sandbox, client: httpx2.Client) -> None:
    items = client.get(f"{api(sb)}/users/me/calendarList", headers=auth(sb)).json()["items"]
    assert [(i["summary"], i["accessRole"], i.get("primary", False)) for i in items] == [
        (EMAIL, "owner", True),
        ("Holidays", "reader", False),
    ]
    assert items[0]["id"] == EMAIL


def test_event_crud_and_errors(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    base = f"{api(sb)}/calendars/{EMAIL}/events"
    r = client.post(base, json=event("UPPERCASE1"), headers=h)
    assert r.status_code == 400 and error_reason(r) == "invalid"
    r = client.post(base, json=event("abcw1"), headers=h)  # w is not base32hex
    assert r.status_code == 400
    r = client.post(base, json=event("abcd"), headers=h)  # too short
    assert r.status_code == 400
    created = client.post(base, json=event(), headers=h)
    assert created.status_code == 200
    ev = created.json()
    assert ev["id"] == "visit00001" and ev["status"] == "confirmed"
    assert ev["extendedProperties"]["private"] == {"calsync": "tag1"}
    for key in ("etag", "created", "updated", "iCalUID", "htmlLink", "sequence"):
        assert key in ev
    dup = client.post(base, json=event(), headers=h)
    assert dup.status_code == 409 and error_reason(dup) == "duplicate"

    got = client.get(f"{base}/visit00001", headers=h).json()
    assert got == ev
    patched = client.patch(f"{base}/visit00001", json={"summary": "New"}, headers=h).json()
    assert patched["summary"] == "New" and patched["start"] == ev["start"]
    assert patched["etag"] != ev["etag"]
    assert patched["extendedProperties"]["private"] == {"calsync": "tag1"}
    put = client.put(
        f"{base}/visit00001", json=event(None, "11:00", "12:00", summary="Put"), headers=h
    )
    assert put.status_code == 200 and put.json()["summary"] == "Put"
    assert put.json()["sequence"] == 1

    bad_range = client.patch(
        f"{base}/visit00001", json={"end": {"dateTime": "2026-12-01T08:00:00-06:00"}}, headers=h
    )
    assert bad_range.status_code == 400 and error_reason(bad_range) == "timeRangeEmpty"

    assert client.delete(f"{base}/visit00001", headers=h).status_code == 204
    gone = client.delete(f"{base}/visit00001", headers=h)
    assert gone.status_code == 410 and error_reason(gone) == "deleted"
    missing = client.delete(f"{base}/nosuchevent", headers=h)
    assert missing.status_code == 404 and error_reason(missing) == "notFound"
    assert client.get(f"{base}/visit00001", headers=h).json()["status"] == "cancelled"
    # the deleted id cannot be inserted again
    again = client.post(base, json=event(), headers=h)
    assert again.status_code == 409 and error_reason(again) == "duplicate"
    assert sb.events("google", EMAIL, EMAIL) == []
    assert sb.events("google", EMAIL, EMAIL, include_deleted=True)[0]["status"] == "cancelled"

    r = client.get(f"{api(sb)}/calendars/nobody@example.com/events", headers=h)
    assert r.status_code == 404 and error_reason(r) == "notFound"


def test_update_restores_a_deleted_event(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    base = f"{api(sb)}/calendars/primary/events"
    client.post(base, json=event(), headers=h)
    client.delete(f"{base}/visit00001", headers=h)
    r = client.patch(f"{base}/visit00001", json={"summary": "still gone"}, headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.patch(
        f"{base}/visit00001", json={"status": "confirmed", "summary": "Back"}, headers=h
    )
    assert r.status_code == 200 and r.json()["status"] == "confirmed"
    assert [e["summary"] for e in sb.events("google", EMAIL, EMAIL)] == ["Back"]


def test_read_only_calendar(sb: Sandbox, client: httpx2.Client) -> None:
    holidays = sb.account("google", EMAIL).calendar_id("Holidays")
    r = client.post(f"{api(sb)}/calendars/{holidays}/events", json=event(), headers=auth(sb))
    assert r.status_code == 403 and error_reason(r) == "requiredAccessLevel"


def test_list_filters_paging_and_sync(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    base = f"{api(sb)}/calendars/primary/events"
    for i, (s, e) in enumerate([("08:00", "09:00"), ("10:00", "11:00"), ("12:00", "13:00")]):
        body = event(f"ev{i:05d}", s, e)
        body["extendedProperties"]["private"]["n"] = str(i)
        assert client.post(base, json=body, headers=h).status_code == 200
    window = {
        "timeMin": "2026-12-01T15:30:00Z",
        "timeMax": "2026-12-01T18:00:00Z",
    }  # 09:30-12:00 CST
    items = client.get(base, params=window, headers=h).json()["items"]
    assert [i["id"] for i in items] == ["ev00001"]
    by_prop = client.get(base, params={"privateExtendedProperty": "n=2"}, headers=h).json()["items"]
    assert [i["id"] for i in by_prop] == ["ev00002"]
    r = client.get(base, params={"orderBy": "startTime"}, headers=h)
    assert r.status_code == 400
    ordered = client.get(base, params={"orderBy": "startTime", "singleEvents": "true"}, headers=h)
    assert [i["id"] for i in ordered.json()["items"]] == ["ev00000", "ev00001", "ev00002"]

    page1 = client.get(base, params={"maxResults": 2}, headers=h).json()
    assert len(page1["items"]) == 2 and "nextSyncToken" not in page1
    page2 = client.get(
        base, params={"maxResults": 2, "pageToken": page1["nextPageToken"]}, headers=h
    ).json()
    assert [i["id"] for i in page2["items"]] == ["ev00002"]
    sync = page2["nextSyncToken"]

    nothing = client.get(base, params={"syncToken": sync}, headers=h).json()
    assert nothing["items"] == []
    client.delete(f"{base}/ev00000", headers=h)
    client.patch(f"{base}/ev00001", json={"summary": "moved"}, headers=h)
    changed = client.get(base, params={"syncToken": nothing["nextSyncToken"]}, headers=h).json()
    assert {(i["id"], i["status"]) for i in changed["items"]} == {
        ("ev00000", "cancelled"),
        ("ev00001", "confirmed"),
    }
    r = client.get(base, params={"syncToken": sync, "timeMin": "2026-12-01T00:00:00Z"}, headers=h)
    assert r.status_code == 400
    sb.faults("google", EMAIL).invalidate_sync_tokens()
    r = client.get(base, params={"syncToken": changed["nextSyncToken"]}, headers=h)
    assert r.status_code == 410 and error_reason(r) == "fullSyncRequired"
    r = client.get(base, params={"syncToken": "made-up"}, headers=h)
    assert r.status_code == 410
    shown = client.get(base, params={"showDeleted": "true"}, headers=h).json()["items"]
    assert len(shown) == 3
    assert client.get(base, params={"maxResults": 0}, headers=h).status_code == 400


def test_freebusy(sb: Sandbox, client: httpx2.Client) -> None:
    h = auth(sb)
    base = f"{api(sb)}/calendars/primary/events"
    client.post(base, json=event("bb0000001", "09:00", "10:00"), headers=h)
    client.post(base, json=event("bb0000002", "09:30", "11:00"), headers=h)
    client.post(
        base, json=event("free00001", "13:00", "14:00", transparency="transparent"), headers=h
    )
    client.post(base, json=event("gone00001", "15:00", "16:00"), headers=h)
    client.delete(f"{base}/gone00001", headers=h)
    body = {
        "timeMin": "2026-12-01T00:00:00Z",
        "timeMax": "2026-12-02T00:00:00Z",
        "items": [{"id": EMAIL}, {"id": "stranger@example.com"}],
    }
    r = client.post(f"{api(sb)}/freeBusy", json=body, headers=h)
    assert r.status_code == 200
    cals = r.json()["calendars"]
    assert cals[EMAIL]["busy"] == [{"start": "2026-12-01T15:00:00Z", "end": "2026-12-01T17:00:00Z"}]
    assert cals["stranger@example.com"]["errors"][0]["reason"] == "notFound"
    too_many = {**body, "items": [{"id": f"c{i}"} for i in range(51)]}
    assert client.post(f"{api(sb)}/freeBusy", json=too_many, headers=h).status_code == 400


# ---------------------------------------------------------------------------------- batch
def multipart(boundary: str, parts: list[tuple[str, str, str, dict[str, Any] | None]]) -> bytes:
    chunks = []
    for cid, method, path, body in parts:
        inner = f"{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
        if body is not None:
            inner += json.dumps(body)
        chunks.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{cid}>\r\n\r\n{inner}\r\n"
        )
    return ("".join(chunks) + f"--{boundary}--\r\n").encode()


def parse_multipart(resp: httpx2.Response) -> dict[str, tuple[int, Any]]:
    ctype = resp.headers["content-type"]
    assert ctype.startswith("multipart/mixed; boundary=")
    boundary = ctype.split("boundary=")[1]
    out = {}
    for part in resp.content.split(f"--{boundary}".encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, http = part.strip(b"\r\n").partition(b"\r\n\r\n")
        cid = [
            line.split(b": ", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-id")
        ][0]
        status_line, _, rest = http.partition(b"\r\n")
        _, _, body = rest.partition(b"\r\n\r\n")
        out[cid.decode()] = (
            int(status_line.split()[1]),
            json.loads(body) if body.strip() else None,
        )
    return out


def test_batch(sb: Sandbox, client: httpx2.Client) -> None:
    h = {**auth(sb), "Content-Type": "multipart/mixed; boundary=xyz"}
    parts = [
        ("a1", "POST", "/calendar/v3/calendars/primary/events", event("batch00001")),
        ("a2", "POST", "/calendar/v3/calendars/primary/events", event("batch00002")),
        ("a3", "POST", "/calendar/v3/calendars/primary/events", event("batch00001")),
        ("a4", "DELETE", "/calendar/v3/calendars/primary/events/nosuch00001", None),
    ]
    r = client.post(
        sb.env()["CALSYNC_GOOGLE_BATCH_URL"], content=multipart("xyz", parts), headers=h
    )
    assert r.status_code == 200
    answers = parse_multipart(r)
    assert answers["<response-a1>"][0] == 200 and answers["<response-a1>"][1]["id"] == "batch00001"
    assert answers["<response-a2>"][0] == 200
    assert answers["<response-a3>"][0] == 409
    assert answers["<response-a3>"][1]["error"]["errors"][0]["reason"] == "duplicate"
    assert answers["<response-a4>"][0] == 404
    stats = sb.stats()
    assert stats["batch_calls"]["google"][EMAIL] == 4
    assert stats["requests"]["google"][EMAIL]["POST events.insert"] == 3
    assert stats["batches"]["google"] == 1


def test_batch_limits_and_latency(client: httpx2.Client) -> None:
    with Sandbox(latency=0.05) as sb:
        sb.add_account("google", EMAIL)
        h = {**auth(sb), "Content-Type": "multipart/mixed; boundary=b"}
        url = sb.env()["CALSYNC_GOOGLE_BATCH_URL"]
        parts = [(f"i{i}", "GET", "/calendar/v3/users/me/calendarList", None) for i in range(1001)]
        r = client.post(url, content=multipart("b", parts), headers=h)
        assert r.status_code == 400
        r = client.post(url, content=multipart("b", parts[:1000]), headers=h)
        assert r.status_code == 200 and len(parse_multipart(r)) == 1000
        assert r.elapsed.total_seconds() < 2  # inner calls wait together, not one by one
        assert r.elapsed.total_seconds() >= 0.05
