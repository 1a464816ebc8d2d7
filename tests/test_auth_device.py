"""The device authorization grant (RFC 8628) against the sandbox's Microsoft /devicecode, and
the loopback listener under hostile local clients. No sleeping: the poll pause is injected."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from calsync_cli.auth import DeviceCode, LoopbackListener, OAuthApp, device_sign_in
from calsync_cli.config import load_settings
from calsync_cli.errors import AuthError, InputError
from calsync_cli.sandbox import Sandbox
from calsync_cli.services import connections
from calsync_cli.store.db import Store
from tests.conftest import PROVIDERS
from tests.engine_support import sandbox_app

OUTLOOK = "dr@contoso.example"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(port=0, auto_approve=True) as sandbox:
        sandbox.add_account("outlook", OUTLOOK)
        yield sandbox


def app_of(sb: Sandbox, name: str, tmp_path: Path) -> OAuthApp:
    return sandbox_app(sb, name, tmp_path)


def test_slow_down_adds_five_seconds_to_the_interval(sb: Sandbox, tmp_path: Path) -> None:
    """RFC 8628 §3.5: on slow_down "the interval MUST be increased by 5 seconds for this and
    all subsequent requests". The pause is injected, so the client polls at once and the
    sandbox (interval 5, real clock) answers slow_down."""
    waits: list[float] = []
    shown: list[DeviceCode] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            # the client slowed down; from now on the sandbox lets it poll at once
            sb.device_code_settings(interval=0)
            sb.answer_device_code(shown[0].user_code, "allow")
        if len(waits) > 10:
            pytest.fail("polled forever")

    signed = device_sign_in(
        app_of(sb, "outlook", tmp_path), timeout=900, announce=shown.append, wait=wait
    )
    assert signed.tokens.refresh_token
    assert shown[0].interval == 5 and shown[0].expires_in == 900
    # pending, then slow_down (polled too soon): 5 s more from then on
    assert waits == [5, 5, 10]


def test_the_timeout_is_measured_by_the_injected_clock(sb: Sandbox, tmp_path: Path) -> None:
    sb.device_code_settings(interval=0)
    now = [0.0]

    def wait(seconds: float) -> None:
        now[0] += 40

    with pytest.raises(AuthError, match="no sign-in within 100 s"):
        device_sign_in(
            app_of(sb, "outlook", tmp_path),
            timeout=100,
            announce=lambda code: None,
            wait=wait,
            clock=lambda: now[0],
        )
    assert sb.stats()["code_exchanges"] == {}


def test_google_has_no_device_code_sign_in(sb: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        device_sign_in(app_of(sb, "google", tmp_path), timeout=10, announce=lambda c: None)
    assert "--remote" in info.value.one_line()


def test_ctrl_c_while_polling_stores_nothing(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    for key, value in sb.env().items():
        monkeypatch.setenv(key, value)
    (tmp_path / "providers.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROVIDERS))
    from typer.testing import CliRunner

    from calsync_cli.cli.app import app

    assert (
        CliRunner()
        .invoke(app, ["providers", "import", str(tmp_path / "providers.jsonl")])
        .exit_code
        == 0
    )
    sb.device_code_settings(interval=0)
    store = Store(load_settings().db_url)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    opts = connections.ConnectOptions(
        app="outlook", provider_id="dr-patel", method="device_code", wait=interrupted
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            connections.connect(load_settings(), store, opts, now=lambda: None)  # type: ignore[arg-type,return-value]
        with store.read() as session:
            from sqlmodel import select

            from calsync_cli.store.models import Integration

            assert list(session.exec(select(Integration))) == []
    finally:
        store.close()
    assert sb.stats()["code_exchanges"] == {}


# -- the loopback listener (issue 13 class 6) --------------------------------------------------


def test_a_trickling_client_cannot_hold_the_sign_in_past_its_timeout() -> None:
    """A local client sending one byte every 50 ms never trips a per-read timeout; the
    per-connection deadline and cutting connections at close end it anyway."""
    stop = threading.Event()
    started = time.monotonic()
    with LoopbackListener(0, read_deadline=0.3) as listener:
        listener.expect("s")
        port = listener.port

        def trickle() -> None:
            with socket.create_connection(("127.0.0.1", port)) as conn:
                for byte in b"GET /?code=x&state=s HTTP/1.1\r\nHost: x\r\n" * 100:
                    if stop.wait(0.05):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return

        slow = threading.Thread(target=trickle, daemon=True)
        slow.start()
        with pytest.raises(AuthError, match="no sign-in within 0.5 s"):
            listener.wait(0.5)
    elapsed = time.monotonic() - started
    stop.set()
    slow.join(5)
    assert elapsed < 2.0, f"the listener took {elapsed:.1f} s to close"


def test_a_trickling_client_does_not_block_the_real_redirect() -> None:
    with LoopbackListener(0, read_deadline=5) as listener:
        listener.expect("s")
        with socket.create_connection(("127.0.0.1", listener.port)) as idle:
            idle.sendall(b"GET /?co")  # and nothing more
            with httpx2.Client(trust_env=False) as browser:
                ok = browser.get(f"http://127.0.0.1:{listener.port}/?code=real&state=s")
            assert ok.status_code == 200
            assert listener.wait(1) == "real"


def test_the_control_api_approves_a_user_code_for_a_sandbox_in_another_process(
    sb: Sandbox, tmp_path: Path
) -> None:
    """What a test driving ``calsync`` in a subprocess does: read the pending code and approve
    it over HTTP (``/_sandbox/devicecodes``)."""
    with httpx2.Client(base_url=sb.url, trust_env=False) as control:
        assert control.post("/_sandbox/devicecodes/settings", json={"interval": 0}).is_success

        def wait(seconds: float) -> None:
            pending = control.get("/_sandbox/devicecodes").json()["device_codes"]
            code = pending[-1]["user_code"]
            answer = {"user_code": code, "decision": "allow", "account": OUTLOOK}
            assert control.post("/_sandbox/devicecodes", json=answer).is_success

        signed = device_sign_in(
            app_of(sb, "outlook", tmp_path), timeout=60, announce=lambda c: None, wait=wait
        )
        assert signed.tokens.refresh_token
        (done,) = control.get("/_sandbox/devicecodes").json()["device_codes"]
        assert done["redeemed"] is True and done["account"] == OUTLOOK
        unknown = control.post("/_sandbox/devicecodes", json={"user_code": "NOPE"})
        assert unknown.status_code == 404


def test_the_devicecode_endpoint_answers_like_microsoft(sb: Sandbox) -> None:
    url = f"{sb.url}/microsoft/common/oauth2/v2.0/devicecode"
    client_id = sb.env()["CALSYNC_MICROSOFT_CLIENT_ID"]
    with httpx2.Client(trust_env=False) as http:
        ok = http.post(url, data={"client_id": client_id, "scope": "Calendars.ReadWrite"})
        assert ok.status_code == 200
        body = ok.json()
        assert set(body) >= {"device_code", "user_code", "verification_uri", "expires_in"}
        assert body["expires_in"] == 900 and body["interval"] == 5
        unknown = http.post(url, data={"client_id": "nobody", "scope": "Calendars.ReadWrite"})
        assert unknown.status_code == 400 and unknown.json()["error"] == "unauthorized_client"
        no_scope = http.post(url, data={"client_id": client_id})
        assert no_scope.json()["error_codes"] == [900144]
        sb.register_app("outlook", single_tenant="t-1")
        common = http.post(url, data={"client_id": client_id, "scope": "Calendars.ReadWrite"})
        assert common.status_code == 400 and common.json()["error_codes"] == [50194]
        tenant = http.post(
            f"{sb.url}/microsoft/t-1/oauth2/v2.0/devicecode",
            data={"client_id": client_id, "scope": "Calendars.ReadWrite"},
        )
        assert tenant.status_code == 200
