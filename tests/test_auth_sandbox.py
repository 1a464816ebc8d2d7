"""End to end over real loopback: sign_in against the sandbox's OAuth servers, a client that
follows redirects like a browser, then refresh, invalid_grant and revocation."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from calsync_cli.auth import (
    KeyringTokenSource,
    OAuthApp,
    SignIn,
    Tokens,
    TokenStore,
    revoke,
    sign_in,
)
from calsync_cli.errors import AuthError
from calsync_cli.providers.base import ReauthRequired
from calsync_cli.sandbox import Sandbox
from tests.engine_support import sandbox_app

GOOGLE_EMAIL = "dr@example.com"
OUTLOOK_EMAIL = "dr@contoso.com"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(port=0, auto_approve=True) as sandbox:
        sandbox.add_account("google", GOOGLE_EMAIL)
        sandbox.add_account("outlook", OUTLOOK_EMAIL)
        yield sandbox


def app_of(sb: Sandbox, name: str, tmp_path: Path) -> OAuthApp:
    return sandbox_app(sb, name, tmp_path)


class Browser:
    """sign_in in a thread; ``visit()`` follows the announced URL like a browser would."""

    def __init__(self, app: OAuthApp, **kwargs: Any) -> None:
        self._urls: queue.Queue[str] = queue.Queue()
        self._pool = ThreadPoolExecutor(1)
        self.future: Future[SignIn] = self._pool.submit(
            sign_in, app, open_browser=None, announce_url=self._urls.put, **kwargs
        )
        self.url = ""

    def __enter__(self) -> Browser:
        self.url = self._urls.get(timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def visit(self) -> httpx2.Response:
        with httpx2.Client(follow_redirects=True, trust_env=False) as browser:
            return browser.get(self.url)

    def tokens(self) -> Tokens:
        return self.future.result(timeout=10).tokens


def test_google_sign_in_refresh_reauth_and_revoke(sb: Sandbox, tmp_path: Path) -> None:
    app = app_of(sb, "google", tmp_path)
    with Browser(app, login_hint=GOOGLE_EMAIL) as browser:
        page = browser.visit()
        assert page.status_code == 200
        assert "Signed in" in page.text
        assert urlsplit(str(page.url)).hostname == "127.0.0.1"
        tokens = browser.tokens()
    assert tokens.refresh_token and tokens.access_token
    assert tokens.expires_at is not None and tokens.expires_at > datetime.now(UTC)

    store = TokenStore()
    store.put(1, tokens)
    source = KeyringTokenSource(app, store, 1, provider_id="P1")
    assert asyncio.run(source.access_token()) == tokens.access_token
    refreshed = asyncio.run(source.refresh())
    assert refreshed != tokens.access_token
    saved = store.get(1)
    assert saved is not None and saved.access_token == refreshed
    assert saved.refresh_token == tokens.refresh_token  # Google does not rotate

    sb.faults("google", GOOGLE_EMAIL).revoke_grant()
    with pytest.raises(ReauthRequired) as info:
        asyncio.run(source.refresh())
    assert info.value.message == "reconnect needed"
    assert info.value.hint == "Run: calsync connect google --provider P1"


def test_google_revoke_is_counted_by_the_sandbox(sb: Sandbox, tmp_path: Path) -> None:
    app = app_of(sb, "google", tmp_path)
    with Browser(app, login_hint=GOOGLE_EMAIL) as browser:
        browser.visit()
        tokens = browser.tokens()
    assert sb.revocations("google", GOOGLE_EMAIL) == 0
    outcome = revoke(app, tokens)
    assert outcome.revoked, outcome.message
    assert sb.revocations("google", GOOGLE_EMAIL) == 1
    # the grant is gone: a refresh now needs a new sign-in
    store = TokenStore()
    store.put(2, tokens)
    with pytest.raises(ReauthRequired):
        asyncio.run(KeyringTokenSource(app, store, 2, provider_id="P1").refresh())


def test_outlook_sign_in_and_rotated_refresh_on_expiry(sb: Sandbox, tmp_path: Path) -> None:
    app = app_of(sb, "outlook", tmp_path)
    with Browser(app, login_hint=OUTLOOK_EMAIL) as browser:
        page = browser.visit()
        assert page.status_code == 200 and "Signed in" in page.text
        assert urlsplit(str(page.url)).hostname == "localhost"
        tokens = browser.tokens()
    assert tokens.refresh_token

    store = TokenStore()
    store.put(3, tokens)
    assert tokens.expires_at is not None
    later = tokens.expires_at + timedelta(seconds=1)
    source = KeyringTokenSource(app, store, 3, provider_id="P2", clock=lambda: later)
    sb.faults("outlook", OUTLOOK_EMAIL).expire_access_tokens()
    fresh = asyncio.run(source.access_token())
    assert fresh != tokens.access_token
    saved = store.get(3)
    assert saved is not None
    assert saved.access_token == fresh
    assert saved.refresh_token and saved.refresh_token != tokens.refresh_token  # rotated

    outcome = revoke(app, saved)
    assert outcome.status == "unsupported"
    assert "https://account.live.com/consent/Manage" in outcome.message

    sb.faults("outlook", OUTLOOK_EMAIL).revoke_grant()
    with pytest.raises(ReauthRequired) as info:
        asyncio.run(source.refresh())
    assert info.value.hint == "Run: calsync connect outlook --provider P2"


@pytest.mark.parametrize("name", ["google", "outlook"])
def test_consent_denied_is_an_auth_error(sb: Sandbox, tmp_path: Path, name: str) -> None:
    sb.consent("deny")
    app = app_of(sb, name, tmp_path)
    with Browser(app) as browser:
        page = browser.visit()
        assert "declined" in page.text
        with pytest.raises(AuthError, match="declined"):
            browser.tokens()
    assert TokenStore().get(1) is None


def test_a_forged_callback_is_refused_and_the_real_one_still_signs_in(
    sb: Sandbox, tmp_path: Path
) -> None:
    app = app_of(sb, "google", tmp_path)
    with Browser(app, login_hint=GOOGLE_EMAIL) as browser:
        redirect = parse_qs(urlsplit(browser.url).query)["redirect_uri"][0]
        with httpx2.Client(trust_env=False) as attacker:
            forged = attacker.get(redirect, params={"code": "stolen", "state": "guess"})
            missing = attacker.get(redirect, params={"error": "access_denied"})
        assert forged.status_code == 400 and missing.status_code == 400
        assert browser.visit().status_code == 200
        assert browser.tokens().refresh_token


def test_a_timeout_against_the_sandbox(sb: Sandbox, tmp_path: Path) -> None:
    app = app_of(sb, "outlook", tmp_path)
    with Browser(app, timeout=0.3) as browser, pytest.raises(AuthError, match="no sign-in"):
        browser.tokens()
