"""Loopback sign-in against a fake token endpoint; the test plays the browser's redirect.

The token endpoint is an ``httpx2.MockTransport``; the authorization server is replaced by the
test itself, which reads the announced URL and calls the listener the way a browser follows
the provider's redirect. End-to-end runs against the sandbox live in test_auth_sandbox.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest

from calsync_cli.auth import (
    GOOGLE_SCOPES,
    LoopbackListener,
    OAuthApp,
    SignIn,
    Tokens,
    TokenStore,
    oauth_app,
    sign_in,
)
from calsync_cli.config import load_settings
from calsync_cli.errors import AuthError, ConfigError, InputError

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
CODE = "4/0AUTH-CODE-SECRET"


ENV = {
    "CALSYNC_DB_URL": "sqlite://",
    "CALSYNC_CONFIG": "",
    "CALSYNC_GOOGLE_CLIENT_ID": "123.apps.googleusercontent.com",
    "CALSYNC_GOOGLE_CLIENT_SECRET": "GOCSPX-client-secret",
    "CALSYNC_GOOGLE_AUTH_URL": "https://accounts.example/o/oauth2/v2/auth",
    "CALSYNC_GOOGLE_TOKEN_URL": "https://oauth2.example/token",
    "CALSYNC_MICROSOFT_CLIENT_ID": "00000000-aaaa-bbbb-cccc-000000000000",
    "CALSYNC_MICROSOFT_AUTHORITY": "https://login.example/common",
}


def app_for(name: str, tmp_path: Path, **env: str) -> OAuthApp:
    config = tmp_path / "config.toml"
    config.write_text("")
    return oauth_app(name, load_settings({**ENV, "CALSYNC_CONFIG": str(config), **env}))


@dataclass
class FakeTokenEndpoint:
    status: int = 200
    payload: dict[str, Any] = field(
        default_factory=lambda: {
            "access_token": "ACCESS-SECRET",
            "refresh_token": "REFRESH-SECRET",
            "expires_in": 3599,
            "token_type": "Bearer",
            "scope": " ".join(GOOGLE_SCOPES),
        }
    )
    requests: list[httpx2.Request] = field(default_factory=list)

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return httpx2.Response(self.status, json=self.payload)

    @property
    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self.handler)

    def form(self, index: int = 0) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.requests[index].content.decode()).items()}


class Flow:
    """``sign_in`` running in a thread; ``url`` is the announced authorization URL."""

    def __init__(
        self,
        app: OAuthApp,
        endpoint: FakeTokenEndpoint,
        *,
        open_browser: Callable[[str], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        self._announced: queue.Queue[str] = queue.Queue()
        self._url: str | None = None
        self._pool = ThreadPoolExecutor(1)
        self.future: Future[SignIn] = self._pool.submit(
            sign_in,
            app,
            open_browser=open_browser,
            announce_url=self._announced.put,
            transport=endpoint.transport,
            now=lambda: NOW,
            **kwargs,
        )

    def __enter__(self) -> Flow:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    @property
    def url(self) -> str:
        if self._url is None:
            try:
                self._url = self._announced.get(timeout=5)
            except queue.Empty:
                # sign_in failed before announcing: surface its error
                self.future.result(timeout=5)
                raise
        return self._url

    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    def callback(self, **query: str) -> httpx2.Response:
        """What the browser does when the provider redirects it back."""
        params = self.params()
        redirect = params["redirect_uri"]
        with httpx2.Client(trust_env=False) as browser:
            return browser.get(redirect + ("?" + urlencode(query) if query else ""))

    def result(self) -> Tokens:
        return self.future.result(timeout=10).tokens


def test_google_sign_in_builds_the_request_and_exchanges_the_code(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    app = app_for("google", tmp_path)
    endpoint = FakeTokenEndpoint()
    opened: list[str] = []

    def browser(url: str) -> bool:
        opened.append(url)
        return True

    with Flow(app, endpoint, open_browser=browser, login_hint="dr@example.com") as flow:
        params = flow.params()
        assert flow.url.startswith("https://accounts.example/o/oauth2/v2/auth?")
        assert params["response_type"] == "code"
        assert params["client_id"] == "123.apps.googleusercontent.com"
        assert params["access_type"] == "offline"
        assert params["prompt"] == "consent"
        assert params["login_hint"] == "dr@example.com"
        assert params["scope"].split() == list(GOOGLE_SCOPES)
        assert params["code_challenge_method"] == "S256"
        assert len(params["state"]) >= 20
        redirect = params["redirect_uri"]
        assert redirect.startswith("http://127.0.0.1:") and redirect.endswith("/")
        assert int(urlsplit(redirect).port or 0) > 0
        assert "client_secret" not in params
        response = flow.callback(code=CODE, state=params["state"])
        assert response.status_code == 200
        assert "Signed in" in response.text
        assert CODE not in response.text
        assert response.headers["cache-control"] == "no-store"
        tokens = flow.result()
    assert opened and opened[0].startswith("https://accounts.example/")
    assert tokens.access_token == "ACCESS-SECRET"
    assert tokens.refresh_token == "REFRESH-SECRET"
    assert tokens.expires_at == NOW + timedelta(seconds=3599)

    (request,) = endpoint.requests
    assert str(request.url) == "https://oauth2.example/token"
    form = endpoint.form()
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == CODE
    assert form["redirect_uri"] == redirect  # exactly the authorization request's string
    assert form["client_id"] == "123.apps.googleusercontent.com"
    assert form["client_secret"] == "GOCSPX-client-secret"
    verifier = form["code_verifier"]
    assert 43 <= len(verifier) <= 128
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert challenge.rstrip(b"=").decode() == params["code_challenge"]

    out, err = capfd.readouterr()
    assert CODE not in out + err  # no access log
    assert "GET /" not in err


def test_outlook_sign_in_is_a_public_client_on_localhost(tmp_path: Path) -> None:
    app = app_for("outlook", tmp_path)
    endpoint = FakeTokenEndpoint(
        payload={
            "access_token": "EwB-ACCESS",
            "refresh_token": "M.R3-REFRESH",
            "expires_in": 3600,
            "token_type": "Bearer",
            "scope": "https://graph.microsoft.com/Calendars.ReadWrite",
        }
    )
    with Flow(app, endpoint) as flow:
        params = flow.params()
        assert flow.url.startswith("https://login.example/common/oauth2/v2.0/authorize?")
        assert params["scope"] == "Calendars.ReadWrite offline_access"
        assert "access_type" not in params and params["prompt"] == "select_account"
        redirect = params["redirect_uri"]
        assert redirect.startswith("http://localhost:")
        assert not redirect.endswith("/")
        response = flow.callback(code=CODE, state=params["state"])
        assert response.status_code == 200
        tokens = flow.result()
    assert tokens.refresh_token == "M.R3-REFRESH"
    form = endpoint.form()
    assert form["redirect_uri"] == redirect
    assert form["client_id"] == app.client_id
    assert "client_secret" not in form
    assert "authorization" not in endpoint.requests[0].headers
    assert form["code_verifier"]


def test_wrong_or_missing_state_is_refused_and_the_sign_in_keeps_waiting(
    tmp_path: Path,
) -> None:
    """Issue 13 class 6: a local request without the expected state gets 400 and is ignored;
    the real redirect still completes the sign-in."""
    endpoint = FakeTokenEndpoint()
    with Flow(app_for("google", tmp_path), endpoint) as flow:
        for query in (
            {"code": "forged", "state": "forged-state"},
            {"code": "forged"},
            {"error": "access_denied"},
            {"error": "access_denied", "state": "forged-state"},
        ):
            response = flow.callback(**query)
            assert response.status_code == 400
            assert "does not belong" in response.text
            assert not flow.future.done()
        assert endpoint.requests == []
        done = flow.callback(code=CODE, state=flow.params()["state"])
        assert done.status_code == 200
        assert flow.result().access_token == "ACCESS-SECRET"
    assert endpoint.form()["code"] == CODE


def test_a_request_without_state_times_out_like_no_request(tmp_path: Path) -> None:
    endpoint = FakeTokenEndpoint()
    with Flow(app_for("google", tmp_path), endpoint, timeout=0.5) as flow:
        assert flow.callback(code=CODE).status_code == 400
        with pytest.raises(AuthError, match="no sign-in within"):
            flow.result()
    assert endpoint.requests == []


def test_missing_code_fails(tmp_path: Path) -> None:
    endpoint = FakeTokenEndpoint()
    with Flow(app_for("google", tmp_path), endpoint) as flow:
        response = flow.callback(state=flow.params()["state"], scope="x")
        assert response.status_code == 400
        with pytest.raises(AuthError) as info:
            flow.result()
    assert "no authorization code" in info.value.message
    assert endpoint.requests == []


def test_consent_denied_says_the_user_declined(tmp_path: Path) -> None:
    endpoint = FakeTokenEndpoint()
    with Flow(app_for("outlook", tmp_path), endpoint) as flow:
        response = flow.callback(
            error="access_denied",
            error_description="<script>alert(1)</script>",
            state=flow.params()["state"],
        )
        assert "declined" in response.text
        assert "<script>" not in response.text
        with pytest.raises(AuthError) as info:
            flow.result()
    assert "declined" in info.value.message
    assert endpoint.requests == []


def test_other_provider_errors_are_named_and_sanitised(tmp_path: Path) -> None:
    with Flow(app_for("google", tmp_path), FakeTokenEndpoint()) as flow:
        response = flow.callback(error="invalid_scope<b>", state=flow.params()["state"])
        assert "<b>" not in response.text
        with pytest.raises(AuthError) as info:
            flow.result()
    assert "invalid_scopeb" in info.value.message


def test_a_second_callback_gets_already_done_and_is_ignored(tmp_path: Path) -> None:
    endpoint = FakeTokenEndpoint()
    with LoopbackListener(0, app_title="Google") as listener:
        listener.expect("the-state")
        base = f"http://127.0.0.1:{listener.port}/"
        with httpx2.Client(trust_env=False) as browser:
            first = browser.get(base, params={"code": CODE, "state": "the-state"})
            second = browser.get(base, params={"code": "other", "state": "forged"})
            assert first.status_code == 200 and "Signed in" in first.text
            assert second.status_code == 200 and "already" in second.text
            assert listener.wait(1) == CODE
            third = browser.get(base, params={"error": "access_denied", "state": "the-state"})
            assert "already" in third.text
            assert listener.wait(1) == CODE
    assert endpoint.requests == []


def test_other_paths_favicon_and_bare_visits_keep_waiting() -> None:
    with LoopbackListener(0) as listener:
        listener.expect("s")
        base = f"http://127.0.0.1:{listener.port}"
        with httpx2.Client(trust_env=False) as browser:
            assert browser.get(base + "/favicon.ico").status_code == 404
            missing = browser.get(base + "/admin?code=x&state=s")
            assert missing.status_code == 404
            bare = browser.get(base + "/")
            assert bare.status_code == 400
            assert "sign-in link" in bare.text
            assert browser.post(base + "/", data={"code": "x"}).status_code == 405
            # none of these ended the flow
            done = browser.get(base + "/", params={"code": "real", "state": "s"})
            assert done.status_code == 200
        assert listener.wait(1) == "real"


def test_timeout_names_the_options(tmp_path: Path) -> None:
    endpoint = FakeTokenEndpoint()
    with Flow(app_for("google", tmp_path), endpoint, timeout=0.3) as flow:
        assert flow.url
        with pytest.raises(AuthError) as info:
            flow.result()
    line = info.value.one_line()
    assert "no sign-in within 0.3 s" in line
    assert "--timeout" in line and "--no-browser" in line
    assert endpoint.requests == []


def test_timeout_is_measured_by_the_injected_clock() -> None:
    ticks = iter([0.0, 10.0, 400.0, 400.0, 400.0])
    with LoopbackListener(0) as listener:
        listener.expect("s")
        with pytest.raises(AuthError, match="no sign-in within 300 s"):
            listener.wait(300, clock=lambda: next(ticks), tick=0.01)


def test_a_port_in_use_is_an_auth_error_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        announced: list[str] = []
        with pytest.raises(AuthError) as info:
            sign_in(
                app_for("google", tmp_path),
                port=port,
                open_browser=None,
                announce_url=announced.append,
            )
    assert f"port {port}" in info.value.message
    assert "already in use" in info.value.message
    assert "--port" in info.value.one_line()
    assert announced == []


def test_a_fixed_port_is_used_for_the_redirect(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Flow(app_for("outlook", tmp_path), FakeTokenEndpoint(), port=port) as flow:
        params = flow.params()
        assert params["redirect_uri"] == f"http://localhost:{port}"
        flow.callback(code=CODE, state=params["state"])
        assert flow.result().access_token == "ACCESS-SECRET"


def test_listener_binds_loopback_only() -> None:
    with LoopbackListener(0) as listener:
        assert listener._server.server_address[0] == "127.0.0.1"


def test_a_browser_that_fails_to_open_is_not_fatal(tmp_path: Path) -> None:
    def broken(url: str) -> bool:
        raise RuntimeError("no display")

    with Flow(app_for("google", tmp_path), FakeTokenEndpoint(), open_browser=broken) as flow:
        flow.callback(code=CODE, state=flow.params()["state"])
        assert flow.result().refresh_token == "REFRESH-SECRET"


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (400, {"error": "invalid_grant", "error_description": "Bad code"}, "(invalid_grant)"),
        (502, {"error": "bad gateway"}, "HTTP 502"),
        (200, {"token_type": "Bearer"}, "without an access token"),
        (200, {"access_token": "a", "expires_in": 3600}, "no refresh token"),
    ],
)
def test_a_failed_exchange_is_an_auth_error_without_the_code(
    tmp_path: Path, status: int, payload: dict[str, Any], expected: str
) -> None:
    endpoint = FakeTokenEndpoint(status=status, payload=payload)
    with Flow(app_for("google", tmp_path), endpoint) as flow:
        flow.callback(code=CODE, state=flow.params()["state"])
        with pytest.raises(AuthError) as info:
            flow.result()
    assert expected in info.value.message
    assert CODE not in info.value.one_line()
    assert info.value.__cause__ is None


def test_an_unreachable_token_endpoint_is_an_auth_error(tmp_path: Path) -> None:
    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    app = app_for("google", tmp_path)
    announced: queue.Queue[str] = queue.Queue()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            sign_in,
            app,
            open_browser=None,
            announce_url=announced.put,
            transport=httpx2.MockTransport(down),
        )
        params = {k: v[0] for k, v in parse_qs(urlsplit(announced.get(timeout=5)).query).items()}
        with httpx2.Client(trust_env=False) as browser:
            browser.get(params["redirect_uri"], params={"code": CODE, "state": params["state"]})
        with pytest.raises(AuthError, match="could not reach Google's token endpoint"):
            future.result(timeout=10)


def test_tokens_are_not_stored_by_sign_in(tmp_path: Path) -> None:
    with Flow(app_for("google", tmp_path), FakeTokenEndpoint()) as flow:
        flow.callback(code=CODE, state=flow.params()["state"])
        flow.result()
    assert TokenStore().get(1) is None


# -- oauth_app -------------------------------------------------------------------------------


def test_oauth_app_explains_a_missing_google_client(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        app_for("google", tmp_path, CALSYNC_GOOGLE_CLIENT_ID="")
    line = info.value.one_line()
    assert "CALSYNC_GOOGLE_CLIENT_ID" in line and "CALSYNC_GOOGLE_CLIENT_SECRET" in line
    assert "Desktop app" in line
    with pytest.raises(ConfigError, match="CALSYNC_GOOGLE_CLIENT_SECRET"):
        app_for("google", tmp_path, CALSYNC_GOOGLE_CLIENT_SECRET="")


def test_oauth_app_explains_a_missing_microsoft_client(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        app_for("outlook", tmp_path, CALSYNC_MICROSOFT_CLIENT_ID="")
    line = info.value.one_line()
    assert "CALSYNC_MICROSOFT_CLIENT_ID" in line and "http://localhost" in line


def test_oauth_app_urls_and_names(tmp_path: Path) -> None:
    google = app_for("google", tmp_path)
    assert google.token_url == "https://oauth2.example/token"
    assert google.revoke_url == "https://oauth2.googleapis.com/revoke"
    assert google.redirect_uri(8080) == "http://127.0.0.1:8080/"
    assert "GOCSPX" not in repr(google)
    outlook = app_for("microsoft", tmp_path)
    assert outlook.name == "outlook"
    assert outlook.token_url == "https://login.example/common/oauth2/v2.0/token"
    assert outlook.redirect_uri(8080) == "http://localhost:8080"
    assert outlook.client_secret is None and outlook.revoke_url is None
    with pytest.raises(InputError, match="unknown calendar app"):
        app_for("yahoo", tmp_path)


def test_token_json_never_holds_the_code(tmp_path: Path) -> None:
    with Flow(app_for("google", tmp_path), FakeTokenEndpoint()) as flow:
        flow.callback(code=CODE, state=flow.params()["state"])
        tokens = flow.result()
    assert CODE not in json.dumps(tokens.to_json())


def test_the_code_reaches_no_log_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG")
    with Flow(app_for("google", tmp_path), FakeTokenEndpoint()) as flow:
        state = flow.params()["state"]
        flow.callback(code=CODE, state=state)
        flow.result()
    with Flow(app_for("google", tmp_path), FakeTokenEndpoint(), timeout=0.5) as flow:
        flow.callback(code=CODE, state="forged")
        with pytest.raises(AuthError):  # ignored, then the timeout
            flow.result()
    out, err = capfd.readouterr()
    # The test's own browser (httpx2) logs the URL it visits; a real browser's history is not
    # calsync's log. Everything else must be free of the code.
    ours = [
        r.getMessage()
        for r in caplog.records
        if not r.getMessage().startswith("HTTP Request: GET http://127.0.0.1")
        and not r.name.startswith("httpcore2")
    ]
    encoded = CODE.replace("/", "%2F")
    for text in (*ours, out, err):
        assert CODE not in text and encoded not in text
        assert "code=" not in text
