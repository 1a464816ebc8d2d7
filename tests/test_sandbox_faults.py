"""Fault injection, statistics, the control API and the foreground runner of the sandbox."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from calsync_cli.sandbox import GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, Sandbox, run_foreground
from calsync_cli.sandbox.testing import google_sign_in

G = "doc@example.com"
M = "doc@contoso.example"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        sandbox.add_account("google", G)
        sandbox.add_account("outlook", M)
        yield sandbox


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5) as c:
        yield c


def gcal(sb: Sandbox, client: httpx2.Client, token: str | None = None) -> httpx2.Response:
    token = token or sb.issue_token("google", G)
    return client.get(
        f"{sb.env()['CALSYNC_GOOGLE_API_URL']}/users/me/calendarList",
        headers={"Authorization": f"Bearer {token}"},
    )


def mcal(sb: Sandbox, client: httpx2.Client) -> httpx2.Response:
    return client.get(
        f"{sb.env()['CALSYNC_MICROSOFT_GRAPH_URL']}/me/calendar",
        headers={"Authorization": "Bearer " + sb.issue_token("outlook", M)},
    )


def greason(resp: httpx2.Response) -> str:
    return str(resp.json()["error"]["errors"][0]["reason"])


def test_google_fail_next(sb: Sandbox, client: httpx2.Client) -> None:
    f = sb.faults("google", G)
    f.fail_next(1, 503)
    r = gcal(sb, client)
    assert r.status_code == 503 and greason(r) == "backendError"
    assert gcal(sb, client).status_code == 200
    f.fail_next(1, 403, reason="userRateLimitExceeded")
    r = gcal(sb, client)
    assert r.status_code == 403 and greason(r) == "userRateLimitExceeded"
    assert r.json()["error"]["errors"][0]["domain"] == "usageLimits"
    f.fail_next(1, 403)
    assert greason(gcal(sb, client)) == "rateLimitExceeded"
    f.fail_next(1, 429, retry_after=7)
    r = gcal(sb, client)
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    f.fail_next(1, 500)
    assert gcal(sb, client).status_code == 500
    f.fail_next(3, 503).clear()
    assert gcal(sb, client).status_code == 200
    assert sb.stats()["faults_injected"]["google"][G] == 5


def test_outlook_fail_next(sb: Sandbox, client: httpx2.Client) -> None:
    f = sb.faults("outlook", M)
    f.fail_next(1, 429)
    r = mcal(sb, client)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "ApplicationThrottled"
    f.fail_next(1, 503, retry_after=3)
    r = mcal(sb, client)
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["code"] == "ServiceNotAvailable"
    assert mcal(sb, client).status_code == 200


def test_drop_next(sb: Sandbox, client: httpx2.Client) -> None:
    sb.faults("google", G).drop_next(1)
    with pytest.raises(httpx2.TransportError):
        gcal(sb, client)
    assert gcal(sb, client).status_code == 200
    sb.faults("outlook", M).drop_next(1)
    with pytest.raises(httpx2.TransportError):
        mcal(sb, client)
    assert mcal(sb, client).status_code == 200


def test_latency(sb: Sandbox, client: httpx2.Client) -> None:
    sb.faults("google", G).latency(0.05)
    assert gcal(sb, client).elapsed.total_seconds() >= 0.05
    assert mcal(sb, client).elapsed.total_seconds() < 0.05
    sb.faults("google", G).clear()
    sb.latency = 0.05
    assert mcal(sb, client).elapsed.total_seconds() >= 0.05
    # OAuth endpoints have no latency
    r = client.post(f"{sb.url}/google/token", data={"grant_type": "x"})
    assert r.elapsed.total_seconds() < 0.05


def refresh(sb: Sandbox, client: httpx2.Client, token: str) -> httpx2.Response:
    return client.post(
        sb.env()["CALSYNC_GOOGLE_TOKEN_URL"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": GOOGLE_CLIENT_ID,
            "client_secret": GOOGLE_CLIENT_SECRET,
        },
    )


def test_expire_and_revoke(sb: Sandbox, client: httpx2.Client) -> None:
    tokens = google_sign_in(client, sb.url, G)
    assert gcal(sb, client, tokens["access_token"]).status_code == 200
    sb.faults("google", G).expire_access_tokens()
    assert gcal(sb, client, tokens["access_token"]).status_code == 401
    fresh = refresh(sb, client, tokens["refresh_token"])
    assert fresh.status_code == 200
    assert gcal(sb, client, fresh.json()["access_token"]).status_code == 200
    sb.faults("google", G).revoke_grant()
    assert gcal(sb, client, fresh.json()["access_token"]).status_code == 401
    r = refresh(sb, client, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_faults_apply_inside_batches(sb: Sandbox, client: httpx2.Client) -> None:
    boundary = "bnd"
    part = (
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{{i}}>\r\n\r\n"
        "GET /calendar/v3/users/me/calendarList HTTP/1.1\r\n\r\n\r\n"
    )
    body = ("".join(part.replace("{i}", str(i)) for i in range(3)) + f"--{boundary}--\r\n").encode()
    headers = {
        "Authorization": "Bearer " + sb.issue_token("google", G),
        "Content-Type": f"multipart/mixed; boundary={boundary}",
    }
    url = sb.env()["CALSYNC_GOOGLE_BATCH_URL"]
    sb.faults("google", G).fail_next(1, 403, reason="rateLimitExceeded")
    r = client.post(url, content=body, headers=headers)
    assert r.status_code == 200
    assert r.text.count("HTTP/1.1 403 Forbidden") == 1 and r.text.count("HTTP/1.1 200 OK") == 2
    sb.faults("google", G).drop_next(1)
    with pytest.raises(httpx2.TransportError):
        client.post(url, content=body, headers=headers)

    sb.faults("outlook", M).fail_next(1, 429, retry_after=5)
    reqs = [{"id": str(i), "method": "GET", "url": "/me/calendar"} for i in range(3)]
    r = client.post(
        f"{sb.env()['CALSYNC_MICROSOFT_GRAPH_URL']}/$batch",
        json={"requests": reqs},
        headers={"Authorization": "Bearer " + sb.issue_token("outlook", M)},
    )
    answers = r.json()["responses"]
    throttled = [a for a in answers if a["status"] == 429]
    assert len(throttled) == 1 and throttled[0]["headers"]["Retry-After"] == "5"
    assert sorted(a["status"] for a in answers) == [200, 200, 429]


def test_stats_and_reset(sb: Sandbox, client: httpx2.Client) -> None:
    gcal(sb, client)
    mcal(sb, client)
    stats = sb.stats()
    assert stats["requests"]["google"][G] == {"GET calendarList.list": 1}
    assert stats["requests"]["outlook"][M] == {"GET calendar.get": 1}
    assert stats["calls"] == {"google": {G: 1}, "outlook": {M: 1}}
    assert stats["max_concurrency"]["outlook"][M] == 1
    sb.reset_stats()
    assert sb.stats()["requests"] == {}


def test_control_api(client: httpx2.Client) -> None:
    with Sandbox() as sb:
        ctl = f"{sb.url}/_sandbox"
        r = client.post(
            f"{ctl}/accounts", json={"app": "google", "email": G, "calendars": [{"name": "Team"}]}
        )
        assert r.status_code == 201 and len(r.json()["calendars"]) == 2
        assert client.post(f"{ctl}/accounts", json={"app": "google", "email": G}).status_code == 400
        assert client.post(f"{ctl}/accounts", json={"app": "yahoo", "email": G}).status_code == 400
        assert client.get(f"{ctl}/env").json() == sb.env()
        assert (
            client.get(f"{ctl}/accounts", params={"app": "google", "email": G}).json()["email"] == G
        )
        token = client.post(f"{ctl}/tokens", json={"app": "google", "email": G}).json()[
            "access_token"
        ]
        api = sb.env()["CALSYNC_GOOGLE_API_URL"]
        body: dict[str, Any] = {
            "id": "ctl00001",
            "start": {"dateTime": "2026-12-01T09:00:00Z"},
            "end": {"dateTime": "2026-12-01T10:00:00Z"},
        }
        h = {"Authorization": f"Bearer {token}"}
        assert (
            client.post(f"{api}/calendars/primary/events", json=body, headers=h).status_code == 200
        )
        events = client.get(
            f"{ctl}/events", params={"app": "google", "email": G, "calendar": G}
        ).json()
        assert [e["id"] for e in events["events"]] == ["ctl00001"]
        fault = {"app": "google", "email": G, "action": "fail_next", "n": 1, "status": 503}
        assert client.post(f"{ctl}/faults", json=fault).status_code == 200
        assert client.get(f"{api}/users/me/calendarList", headers=h).status_code == 503
        assert client.post(f"{ctl}/faults", json={**fault, "action": "bogus"}).status_code == 400
        assert client.post(f"{ctl}/faults", json={**fault, "email": "x@y"}).status_code == 404
        stats = client.get(f"{ctl}/stats").json()
        assert stats["faults_injected"]["google"][G] == 1
        assert client.post(f"{ctl}/stats/reset").status_code == 200
        assert client.get(f"{ctl}/stats").json()["requests"] == {}
        assert client.post(f"{ctl}/consent", json={"decision": "deny"}).status_code == 200
        assert sb._state.consent.decision == "deny"
        assert client.get(f"{ctl}/revocations", params={"app": "google", "email": G}).json() == {
            "revocations": 0
        }
        assert client.post(f"{ctl}/latency", json={"seconds": 0.01}).json() == {"latency": 0.01}


def test_run_foreground_seeds_and_announces() -> None:
    lines: list[str] = []
    stop = threading.Event()
    runner = threading.Thread(
        target=run_foreground,
        args=("127.0.0.1", 0),
        kwargs={"latency": 0.0, "announce": lines.append, "stop_event": stop},
    )
    runner.start()
    try:
        for _ in range(400):
            if any(line.startswith("export CALSYNC_MICROSOFT_GRAPH_URL=") for line in lines):
                break
            threading.Event().wait(0.005)
        url = lines[0].rsplit(" ", 1)[1]
        with httpx2.Client(timeout=5) as c:
            accounts = c.get(f"{url}/_sandbox/accounts").json()["accounts"]
        assert {a["app"] for a in accounts} == {"google", "outlook"}
        assert any(line.startswith(f"export CALSYNC_GOOGLE_API_URL={url}/") for line in lines)
    finally:
        stop.set()
        runner.join(timeout=5)
    assert not runner.is_alive()


def test_a_client_hanging_up_mid_request_prints_nothing(
    sb: Sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    """A worker killed mid-request resets its connection: ``sandbox serve`` stays quiet about
    that, and still prints the traceback of a real failure."""
    import socket
    import struct
    from urllib.parse import urlsplit

    parts = urlsplit(sb.url)
    assert parts.hostname is not None and parts.port is not None
    conn = socket.create_connection((parts.hostname, parts.port))
    conn.sendall(b"GET /_sandbox/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.recv(100).startswith(b"HTTP/1.1 200")  # answered: it waits for the next one
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # a reset, as from a killed process
    with httpx2.Client(timeout=5) as c:  # still serving
        assert c.get(f"{sb.url}/_sandbox/stats").status_code == 200

    server = sb._server  # the contract itself, without racing the handler thread
    for exc in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe"), TimeoutError()):
        try:
            raise exc
        except OSError:
            server.handle_error(None, ("127.0.0.1", 1))
    assert "Traceback" not in capfd.readouterr().err
    try:
        raise ValueError("a sandbox bug")
    except ValueError:
        server.handle_error(None, ("127.0.0.1", 1))
    assert "ValueError: a sandbox bug" in capfd.readouterr().err
