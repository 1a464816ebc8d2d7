"""KeyringTokenSource (refresh with an injected clock) and revocation, against fake endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx2
import keyring
import pytest

from calsync_cli.auth import (
    GOOGLE_SCOPES,
    MICROSOFT_SCOPES,
    KeyringTokenSource,
    OAuthApp,
    Tokens,
    TokenStore,
    revoke,
)
from calsync_cli.cli.output import exit_code_of
from calsync_cli.errors import KeyringError
from calsync_cli.providers.base import RateLimited, ReauthRequired, TokenSource, Unavailable

START = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)

GOOGLE = OAuthApp(
    name="google",
    client_id="123.apps.googleusercontent.com",
    client_secret="GOCSPX-client-secret",
    authorize_url="https://accounts.example/auth",
    token_url="https://oauth2.example/token",
    revoke_url="https://oauth2.example/revoke",
    scopes=GOOGLE_SCOPES,
    redirect_host="127.0.0.1",
    token_endpoint_auth_method="client_secret_post",
)
OUTLOOK = OAuthApp(
    name="outlook",
    client_id="ms-client",
    client_secret=None,
    authorize_url="https://login.example/common/oauth2/v2.0/authorize",
    token_url="https://login.example/common/oauth2/v2.0/token",
    revoke_url=None,
    scopes=MICROSOFT_SCOPES,
    redirect_host="localhost",
    redirect_path="",
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class TokenEndpoint:
    """A token endpoint that numbers its access tokens and may rotate refresh tokens."""

    def __init__(self, *, rotate: bool = False) -> None:
        self.rotate = rotate
        self.forms: list[dict[str, str]] = []
        self.headers: list[httpx2.Headers] = []
        self.fail: Callable[[httpx2.Request], httpx2.Response] | None = None
        self.delay = 0.0

    async def handler(self, request: httpx2.Request) -> httpx2.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        form = {k: v[0] for k, v in parse_qs((await request.aread()).decode()).items()}
        self.forms.append(form)
        self.headers.append(request.headers)
        if self.fail is not None:
            return self.fail(request)
        n = len(self.forms)
        payload: dict[str, Any] = {
            "access_token": f"access-{n}",
            "expires_in": 3600,
            "token_type": "Bearer",
        }
        if self.rotate:
            payload["refresh_token"] = f"refresh-{n}"
        return httpx2.Response(200, json=payload)

    @property
    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self.handler)


def stored(expires_in: float = 3600, refresh: str | None = "refresh-0") -> Tokens:
    return Tokens(
        access_token="access-0",
        refresh_token=refresh,
        expires_at=START + timedelta(seconds=expires_in),
        scope=" ".join(GOOGLE_SCOPES),
    )


def source(
    app: OAuthApp, endpoint: TokenEndpoint, clock: Clock, **kwargs: Any
) -> KeyringTokenSource:
    return KeyringTokenSource(
        app,
        TokenStore(),
        42,
        provider_id="P7",
        clock=clock,
        transport=endpoint.transport,
        **kwargs,
    )


def test_it_is_a_token_source() -> None:
    assert issubclass(KeyringTokenSource, TokenSource)


def test_a_fresh_token_is_used_without_refreshing() -> None:
    TokenStore().put(42, stored())
    endpoint, clock = TokenEndpoint(), Clock()
    src = source(GOOGLE, endpoint, clock)
    assert asyncio.run(src.access_token()) == "access-0"
    assert endpoint.forms == []
    assert "refresh-0" not in repr(src)


def test_a_token_expiring_within_60_s_is_refreshed_and_google_keeps_its_refresh_token() -> None:
    TokenStore().put(42, stored(expires_in=59))
    endpoint, clock = TokenEndpoint(), Clock()
    src = source(GOOGLE, endpoint, clock)
    assert asyncio.run(src.access_token()) == "access-1"
    (form,) = endpoint.forms
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == "refresh-0"
    assert form["client_id"] == GOOGLE.client_id
    assert form["client_secret"] == "GOCSPX-client-secret"
    assert form["scope"].split() == list(GOOGLE_SCOPES)  # the same scopes as the sign-in
    saved = TokenStore().get(42)
    assert saved is not None
    assert saved.access_token == "access-1"
    assert saved.refresh_token == "refresh-0"
    assert saved.expires_at == START + timedelta(seconds=3600)
    assert saved.scope == " ".join(GOOGLE_SCOPES)


def test_expiry_follows_the_injected_clock_and_microsoft_rotation_is_stored() -> None:
    TokenStore().put(42, stored(expires_in=3600))
    endpoint, clock = TokenEndpoint(rotate=True), Clock()
    src = source(OUTLOOK, endpoint, clock)

    async def run() -> list[str]:
        seen = [await src.access_token()]
        clock.advance(3600 - 61)
        seen.append(await src.access_token())
        clock.advance(2)
        seen.append(await src.access_token())
        clock.advance(3600)
        seen.append(await src.access_token())
        return seen

    assert asyncio.run(run()) == ["access-0", "access-0", "access-1", "access-2"]
    assert [f["refresh_token"] for f in endpoint.forms] == ["refresh-0", "refresh-1"]
    assert "client_secret" not in endpoint.forms[0]
    assert endpoint.forms[0]["client_id"] == "ms-client"
    assert endpoint.forms[0]["scope"] == "Calendars.ReadWrite offline_access"
    assert "authorization" not in endpoint.headers[0]
    saved = TokenStore().get(42)
    assert saved is not None and saved.refresh_token == "refresh-2"
    assert src.refresh_count == 2


def test_concurrent_callers_share_one_refresh() -> None:
    TokenStore().put(42, stored(expires_in=0))
    endpoint, clock = TokenEndpoint(rotate=True), Clock()
    endpoint.delay = 0.05
    src = source(OUTLOOK, endpoint, clock)

    async def run() -> list[str]:
        return list(await asyncio.gather(*(src.access_token() for _ in range(8))))

    assert asyncio.run(run()) == ["access-1"] * 8
    assert len(endpoint.forms) == 1


def test_forced_refreshes_after_one_refused_token_share_one_refresh() -> None:
    TokenStore().put(42, stored())
    endpoint, clock = TokenEndpoint(), Clock()
    endpoint.delay = 0.05
    src = source(GOOGLE, endpoint, clock)

    async def run() -> list[str]:
        await src.access_token()
        return list(await asyncio.gather(*(src.refresh() for _ in range(4))))

    assert asyncio.run(run()) == ["access-1"] * 4
    assert len(endpoint.forms) == 1


def test_refresh_forces_even_a_fresh_token() -> None:
    TokenStore().put(42, stored())
    endpoint, clock = TokenEndpoint(), Clock()
    src = source(GOOGLE, endpoint, clock)
    assert asyncio.run(src.refresh()) == "access-1"
    assert len(endpoint.forms) == 1


def test_a_rotation_by_another_process_is_picked_up_before_refreshing() -> None:
    TokenStore().put(42, stored(expires_in=120))
    endpoint, clock = TokenEndpoint(rotate=True), Clock()
    src = source(OUTLOOK, endpoint, clock)

    async def run() -> str:
        assert await src.access_token() == "access-0"
        # another calsync process refreshed and rotated meanwhile
        TokenStore().put(
            42,
            Tokens("other-access", "other-refresh", START + timedelta(hours=2), "scope"),
        )
        clock.advance(90)
        return await src.access_token()

    assert asyncio.run(run()) == "other-access"
    assert endpoint.forms == []


def test_invalid_grant_means_reconnect() -> None:
    TokenStore().put(42, stored(expires_in=0))
    endpoint, clock = TokenEndpoint(), Clock()
    endpoint.fail = lambda request: httpx2.Response(
        400, json={"error": "invalid_grant", "error_description": "Token has been revoked."}
    )
    with pytest.raises(ReauthRequired) as info:
        asyncio.run(source(GOOGLE, endpoint, clock).access_token())
    assert info.value.message == "reconnect needed"
    assert info.value.hint == "Run: calsync connect google --provider P7"
    assert exit_code_of(info.value) == 4  # the CLI maps it to "sign in again"
    assert info.value.retryable is False
    assert info.value.__cause__ is None
    assert TokenStore().get(42) == stored(expires_in=0)  # kept for disconnect to revoke/delete


@pytest.mark.parametrize(
    ("code", "description"),
    [
        ("interaction_required", "AADSTS50076: multi-factor authentication is required."),
        ("consent_required", "AADSTS65001: The user or administrator has not consented."),
        ("invalid_grant", "AADSTS65001: The user or administrator has not consented."),
    ],
)
def test_microsoft_refusals_that_need_a_person_mean_reconnect(code: str, description: str) -> None:
    TokenStore().put(42, stored(expires_in=0))
    endpoint, clock = TokenEndpoint(), Clock()
    endpoint.fail = lambda request: httpx2.Response(
        400, json={"error": code, "error_description": description}
    )
    with pytest.raises(ReauthRequired) as info:
        asyncio.run(source(OUTLOOK, endpoint, clock).access_token())
    assert info.value.message.startswith("reconnect needed")
    if "65001" in description:
        assert "administrator" in info.value.message
    assert info.value.hint == "Run: calsync connect outlook --provider P7"


@pytest.mark.parametrize(
    ("app", "status", "body", "error"),
    [
        # Google and Microsoft throttling with a JSON body: Authlib raises OAuthError for it
        (GOOGLE, 429, {"error": "rate_limit_exceeded"}, RateLimited),
        (OUTLOOK, 429, {"error": "temporarily_unavailable"}, RateLimited),
        # "temporarily_unavailable: The server is temporarily too busy ... Retry the request"
        # and "server_error: ... Retry the request" (Microsoft identity platform and OAuth 2.0
        # authorization code flow, Error codes for token endpoint errors)
        (
            OUTLOOK,
            400,
            {"error": "temporarily_unavailable", "error_description": "AADSTS"},
            Unavailable,
        ),
        (OUTLOOK, 400, {"error": "server_error"}, Unavailable),
        (GOOGLE, 500, {"error": "internal_failure"}, Unavailable),
        (OUTLOOK, 503, {"error": "temporarily_unavailable"}, Unavailable),
        # not a dead grant either: a configuration problem is retried, not "reconnect needed"
        (OUTLOOK, 401, {"error": "invalid_client"}, Unavailable),
    ],
)
def test_transient_json_token_errors_reschedule_instead_of_reconnect(
    app: OAuthApp, status: int, body: dict[str, str], error: type[Exception]
) -> None:
    """Issue 9 item 1: before, every JSON error body meant "reconnect needed"."""
    TokenStore().put(42, stored(expires_in=0))
    endpoint, clock = TokenEndpoint(), Clock()
    endpoint.fail = lambda request: httpx2.Response(
        status, json=body, headers={"Retry-After": "30"}
    )
    with pytest.raises(error) as info:
        asyncio.run(source(app, endpoint, clock).access_token())
    assert not isinstance(info.value, ReauthRequired)
    assert getattr(info.value, "retryable", False) is True
    assert body["error"] in str(info.value) or f"HTTP {status}" in str(info.value)
    assert getattr(info.value, "retry_after", None) == 30
    assert TokenStore().get(42) == stored(expires_in=0)


def test_a_google_refresh_asks_only_for_the_granted_scopes() -> None:
    """Issue 9 item 2: granular consent may grant fewer scopes than asked; a refresh asking for
    more answers invalid_scope."""
    events_only = GOOGLE_SCOPES[0]
    TokenStore().put(42, Tokens("access-0", "refresh-0", START, scope=events_only))
    endpoint, clock = TokenEndpoint(), Clock()
    asyncio.run(source(GOOGLE, endpoint, clock).access_token())
    assert endpoint.forms[0]["scope"] == events_only


def test_no_stored_tokens_means_reconnect() -> None:
    endpoint, clock = TokenEndpoint(), Clock()
    with pytest.raises(ReauthRequired, match="no stored sign-in"):
        asyncio.run(source(GOOGLE, endpoint, clock).access_token())


def test_no_refresh_token_means_reconnect() -> None:
    TokenStore().put(42, stored(expires_in=0, refresh=None))
    with pytest.raises(ReauthRequired, match="no refresh token"):
        asyncio.run(source(GOOGLE, TokenEndpoint(), Clock()).access_token())


@pytest.mark.parametrize(
    ("response", "error", "text"),
    [
        (lambda r: httpx2.Response(503, text="down"), Unavailable, "HTTP 503"),
        (
            lambda r: httpx2.Response(429, text="slow down", headers={"Retry-After": "7"}),
            RateLimited,
            "throttled",
        ),
        (lambda r: httpx2.Response(200, json={"token_type": "Bearer"}), Unavailable, "without"),
    ],
)
def test_transient_token_endpoint_failures_are_retryable(
    response: Callable[[httpx2.Request], httpx2.Response], error: type[Exception], text: str
) -> None:
    TokenStore().put(42, stored(expires_in=0))
    endpoint = TokenEndpoint()
    endpoint.fail = response
    with pytest.raises(error) as info:
        asyncio.run(source(GOOGLE, endpoint, Clock()).access_token())
    assert text in str(info.value)
    assert getattr(info.value, "retryable", False) is True
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 7


def test_an_unreachable_token_endpoint_is_unavailable() -> None:
    TokenStore().put(42, stored(expires_in=0))

    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    src = KeyringTokenSource(
        GOOGLE, TokenStore(), 42, clock=Clock(), transport=httpx2.MockTransport(down)
    )
    with pytest.raises(Unavailable, match="could not reach Google's token endpoint"):
        asyncio.run(src.access_token())


def test_a_broken_keyring_surfaces_as_keyring_error() -> None:
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]
    with pytest.raises(KeyringError, match="no usable keyring backend"):
        asyncio.run(source(GOOGLE, TokenEndpoint(), Clock()).access_token())


# -- revoke ----------------------------------------------------------------------------------


def test_google_revoke_posts_the_refresh_token() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={})

    outcome = revoke(GOOGLE, stored(), transport=httpx2.MockTransport(handler))
    assert outcome.revoked and outcome.status == "revoked"
    assert "whole grant" in outcome.message and "client project" in outcome.message
    (request,) = seen
    assert str(request.url) == "https://oauth2.example/revoke"
    assert request.method == "POST"
    assert parse_qs(request.content.decode()) == {"token": ["refresh-0"]}
    assert "refresh-0" not in outcome.message


def test_google_revoke_falls_back_to_the_access_token() -> None:
    seen: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.content)
        return httpx2.Response(200)

    revoke(GOOGLE, stored(refresh=None), transport=httpx2.MockTransport(handler))
    assert parse_qs(seen[0].decode()) == {"token": ["access-0"]}


def test_google_revoke_of_an_already_dead_token_counts_as_revoked() -> None:
    outcome = revoke(
        GOOGLE,
        stored(),
        transport=httpx2.MockTransport(
            lambda request: httpx2.Response(400, json={"error": "invalid_token"})
        ),
    )
    assert outcome.revoked and "already withdrawn" in outcome.message


@pytest.mark.parametrize(
    "handler",
    [
        lambda request: httpx2.Response(500, text="oops"),
        lambda request: (_ for _ in ()).throw(httpx2.ConnectTimeout("slow", request=request)),
    ],
)
def test_google_revoke_failure_is_unconfirmed_not_raised(
    handler: Callable[[httpx2.Request], httpx2.Response],
) -> None:
    outcome = revoke(GOOGLE, stored(), transport=httpx2.MockTransport(handler))
    assert outcome.status == "unconfirmed" and not outcome.revoked
    assert "could not be confirmed" in outcome.message
    assert "refresh-0" not in outcome.message


def test_microsoft_has_no_revocation_endpoint() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("no request expected")

    outcome = revoke(OUTLOOK, stored(), transport=httpx2.MockTransport(handler))
    assert outcome.status == "unsupported" and not outcome.revoked
    assert "deleted its tokens locally" in outcome.message
    assert "https://account.live.com/consent/Manage" in outcome.message
    assert "https://myapplications.microsoft.com" in outcome.message


def test_one_source_serves_several_event_loops() -> None:
    TokenStore().put(42, stored(expires_in=0))
    endpoint, clock = TokenEndpoint(rotate=True), Clock()
    endpoint.delay = 0.02
    src = source(OUTLOOK, endpoint, clock)

    async def burst() -> set[str]:
        return set(await asyncio.gather(*(src.access_token() for _ in range(4))))

    assert asyncio.run(burst()) == {"access-1"}
    clock.advance(3600)
    assert asyncio.run(burst()) == {"access-2"}
    assert len(endpoint.forms) == 2
