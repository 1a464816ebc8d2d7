"""Sign-in (authorization code + PKCE over a loopback redirect), refresh, and revocation.

Authlib's OAuth 2 client over httpx2 does the protocol mechanics: the authorization URL with
``state`` and an S256 code challenge, the code exchange with the code verifier, the refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx2
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from calsync_cli.apps import connect_command
from calsync_cli.auth.apps import OAuthApp
from calsync_cli.auth.grants import SignIn, oauth_client, redeem_code
from calsync_cli.auth.loopback import DEFAULT_TIMEOUT, LoopbackListener, aadsts_code
from calsync_cli.auth.tokens import Tokens, TokenSlot, TokenStorage, held, utcnow
from calsync_cli.providers._http import client_options
from calsync_cli.providers.base import (
    RateLimited,
    ReauthRequired,
    TokenSource,
    Unavailable,
)

#: seconds before expiry at which an access token counts as expired
REFRESH_LEEWAY = 60.0
#: the refresh errors that mean the grant is gone and only a new sign-in helps
REAUTH_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required"})
MICROSOFT_CONSENT_PAGES = (
    "https://account.live.com/consent/Manage (personal account) or "
    "https://myapplications.microsoft.com (work or school account)"
)


def _error_code(exc: OAuthError) -> str:
    code = str(exc.error or "oauth_error")
    return "".join(ch for ch in code if ch.isalnum() or ch in "_-.")[:60] or "oauth_error"


def reconnect_hint(app: OAuthApp | str, provider_id: str | None) -> str:
    name = app.name if isinstance(app, OAuthApp) else app
    return f"Run: {connect_command(name, provider_id)}"


# -- sign-in ---------------------------------------------------------------------------------


def sign_in(
    app: OAuthApp,
    *,
    port: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    open_browser: Callable[[str], bool] | None,
    announce_url: Callable[[str], None],
    login_hint: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = utcnow,
    transport: httpx2.BaseTransport | None = None,
) -> SignIn:
    """Run the loopback sign-in and return the new tokens (nothing is stored).

    Binds 127.0.0.1:``port`` (0: any free port), builds the authorization URL, calls
    ``announce_url(url)`` and then ``open_browser(url)`` when given, waits up to ``timeout``
    seconds for the redirect, and exchanges the code. Raises ``AuthError`` for a busy port, a
    declined consent, a missing code, a timeout or a refused exchange (a local request with a
    wrong state is answered 400 and ignored). ``clock`` measures the timeout; ``now`` dates the
    token expiry; ``transport`` replaces the network for the token request (tests).
    """
    with LoopbackListener(port, app_title=app.title) as listener:
        redirect_uri = app.redirect_uri(listener.port)
        with oauth_client(app, redirect_uri, transport) as client:
            url, state, code_verifier = authorization_url(app, client, login_hint)
            listener.expect(state)
            announce_url(url)
            if open_browser is not None:
                # A browser that fails to start is no failure: the URL was announced.
                with contextlib.suppress(Exception):
                    open_browser(url)
            code = listener.wait(timeout, clock=clock)
            return redeem_code(
                app,
                client,
                code=code,
                code_verifier=code_verifier,
                redirect_uri=redirect_uri,
                now=now(),
            )


def authorization_url(app: OAuthApp, client: Any, login_hint: str | None) -> tuple[str, str, str]:
    """The sign-in address (PKCE S256 + state) and its ``state`` and code verifier."""
    code_verifier = generate_token(64)  # RFC 7636: 43..128 unreserved characters
    extra: dict[str, str] = dict(app.extra_authorize_params)
    if login_hint:
        extra["login_hint"] = login_hint
    url, state = client.create_authorization_url(
        app.authorize_url, code_verifier=code_verifier, **extra
    )
    return url, state, code_verifier


# -- refresh ---------------------------------------------------------------------------------


class KeyringTokenSource(TokenSource):
    """Access tokens for one integration, refreshed through the token endpoint when due.

    Reads the keyring once (and again before each refresh, in case another process rotated the
    refresh token), refreshes when the access token has expired or expires within 60 s, and
    stores the answer, including a rotated refresh token. Concurrent callers share one refresh.

    Raises ``ReauthRequired`` ("reconnect needed") when there are no tokens or the provider
    answers ``invalid_grant`` / ``interaction_required`` / ``consent_required``;
    ``Unavailable`` / ``RateLimited`` when the token endpoint is unreachable, failing,
    throttling or answers any other error; ``KeyringError`` when the keyring fails.
    """

    def __init__(
        self,
        app: OAuthApp,
        store: TokenStorage,
        integration_id: int | str,
        *,
        provider_id: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        leeway: float = REFRESH_LEEWAY,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.integration_id = integration_id
        self.provider_id = provider_id
        self.clock = clock
        self.leeway = leeway
        self._transport = transport
        self._tokens: Tokens | None = None
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        #: how many refreshes this source made (observability and tests)
        self.refresh_count = 0

    def __repr__(self) -> str:
        return f"KeyringTokenSource(app={self.app.name!r}, integration_id={self.integration_id!r})"

    @property
    def _lock(self) -> asyncio.Lock:
        """One lock per event loop, so a source may serve several ``asyncio.run`` calls."""
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            self._locks = {k: v for k, v in self._locks.items() if not k.is_closed()}
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def access_token(self) -> str:
        async with self._lock:
            tokens = self._tokens or await self._load()
            if tokens.expires_within(self.clock(), self.leeway):
                tokens = await self._refresh_locked(tokens)
            return tokens.access_token

    async def refresh(self) -> str:
        seen = self._tokens.access_token if self._tokens else None
        async with self._lock:
            if self._tokens is not None and seen is not None and self._tokens.access_token != seen:
                return self._tokens.access_token  # another caller refreshed while we waited
            tokens = self._tokens or await self._load()
            return (await self._refresh_locked(tokens, force=True)).access_token

    async def _load(self) -> Tokens:
        tokens = await asyncio.to_thread(self.store.get, self.integration_id)
        if tokens is None:
            raise ReauthRequired(
                "reconnect needed: no stored sign-in for this integration",
                hint=reconnect_hint(self.app, self.provider_id),
            )
        self._tokens = tokens
        return tokens

    async def _refresh_locked(self, tokens: Tokens, *, force: bool = False) -> Tokens:
        # The store's hold on this grant (a row lock in the database) spans read, refresh and
        # write: two processes or hosts never spend one refresh token at once.
        async with held(self.store, self.integration_id) as slot:
            return await self._refresh_held(tokens, slot, force=force)

    async def _refresh_held(self, tokens: Tokens, slot: TokenSlot, *, force: bool) -> Tokens:
        # Another process or host may have refreshed (and rotated) meanwhile.
        stored = slot.tokens
        if stored is None:
            self._tokens = None
            raise ReauthRequired(
                "reconnect needed: no stored sign-in for this integration",
                hint=reconnect_hint(self.app, self.provider_id),
            )
        if stored != tokens:
            previous_access = tokens.access_token
            self._tokens = tokens = stored
            if stored.access_token != previous_access and not stored.expires_within(
                self.clock(), self.leeway
            ):
                return stored  # a fresh token that is not the one just refused
        if not tokens.refresh_token:
            raise ReauthRequired(
                "reconnect needed: no refresh token stored",
                hint=reconnect_hint(self.app, self.provider_id),
            )
        response = await self._call_token_endpoint(tokens.refresh_token, self._scope(tokens))
        try:
            fresh = Tokens.from_token_response(response, self.clock(), previous=tokens)
        except ValueError:
            raise Unavailable(
                f"{self.app.title}'s token endpoint answered without an access token"
            ) from None
        if not await asyncio.to_thread(slot.replace, fresh):  # disconnected meanwhile: stay so
            self._tokens = None
            raise ReauthRequired(
                "reconnect needed: no stored sign-in for this integration",
                hint=reconnect_hint(self.app, self.provider_id),
            )
        self._tokens = fresh
        self.refresh_count += 1
        return fresh

    def _scope(self, tokens: Tokens) -> str:
        """The scopes a refresh asks for: Google's granted ones (granular consent may have
        left some out, and a refresh asking for more answers invalid_scope); the sign-in's
        for Microsoft, whose answer leaves out ``offline_access``."""
        if self.app.name == "google" and tokens.scope:
            return tokens.scope
        return self.app.scope

    async def _call_token_endpoint(self, refresh_token: str, scope: str) -> dict[str, Any]:
        title = self.app.title
        seen: list[httpx2.Response] = []

        def remember(response: httpx2.Response) -> httpx2.Response:
            seen.append(response)
            return response

        try:
            async with AsyncOAuth2Client(
                client_id=self.app.client_id,
                client_secret=self.app.client_secret,
                token_endpoint_auth_method=self.app.token_endpoint_auth_method,
                scope=scope,
                **client_options(self._transport),
            ) as client:
                client.register_compliance_hook("refresh_token_response", remember)
                token = await client.refresh_token(self.app.token_url, refresh_token=refresh_token)
        except OAuthError as exc:
            raise self._refusal(exc, seen[-1] if seen else None) from None
        except httpx2.HTTPStatusError as exc:
            status = exc.response.status_code
            retry_after = _retry_after(exc.response.headers.get("Retry-After"))
            if status == 429:
                raise RateLimited(
                    f"{title}'s token endpoint throttled the refresh",
                    retry_after=retry_after,
                    status=status,
                ) from None
            raise Unavailable(
                f"{title}'s token endpoint answered HTTP {status} to the refresh",
                status=status,
                retry_after=retry_after,
            ) from None
        except httpx2.HTTPError as exc:
            raise Unavailable(
                f"could not reach {title}'s token endpoint ({type(exc).__name__})"
            ) from None
        except ValueError:
            raise Unavailable(f"{title}'s token endpoint answered something not a token") from None
        return dict(token)

    def _refusal(self, exc: OAuthError, response: httpx2.Response | None) -> Exception:
        """A JSON error answer to a refresh. Only a dead grant means "reconnect needed"
        (``invalid_grant``, or Microsoft's ``interaction_required`` / ``consent_required``);
        Microsoft's 400 ``temporarily_unavailable`` / ``server_error`` ("Retry the request",
        Microsoft identity platform and OAuth 2.0 authorization code flow, Error codes), a JSON
        429 and anything else are retried later."""
        title = self.app.title
        code = _error_code(exc)
        aad = aadsts_code(exc.description)
        status = response.status_code if response is not None else None
        if code in REAUTH_ERRORS:
            if code == "consent_required" or aad == 65001:
                message = (
                    f"reconnect needed: {title} wants consent again (AADSTS65001); "
                    "an administrator may have to approve calsync"
                )
            elif code == "invalid_grant":
                message = "reconnect needed"
            else:
                message = f"reconnect needed: {title} refused the refresh ({code})"
            return ReauthRequired(
                message, status=status or 400, hint=reconnect_hint(self.app, self.provider_id)
            )
        retry_after = (
            _retry_after(response.headers.get("Retry-After")) if response is not None else None
        )
        if status == 429 or code in ("rate_limit_exceeded", "slow_down"):
            return RateLimited(
                f"{title}'s token endpoint throttled the refresh ({code})",
                retry_after=retry_after,
                status=status,
            )
        return Unavailable(
            f"{title}'s token endpoint could not refresh the sign-in now ({code}"
            + (f", HTTP {status}" if status else "")
            + ")",
            status=status,
            retry_after=retry_after,
        )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# -- revocation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokeOutcome:
    """What revocation achieved. ``status``: ``revoked`` (the provider confirmed),
    ``unsupported`` (the provider has no endpoint; the user must act), ``unconfirmed`` (the
    request failed). ``message`` is one line for the user. Local tokens are the caller's to
    delete in every case."""

    status: Literal["revoked", "unsupported", "unconfirmed"]
    message: str

    @property
    def revoked(self) -> bool:
        return self.status == "revoked"


def revoke(
    app: OAuthApp, tokens: Tokens, *, transport: httpx2.BaseTransport | None = None
) -> RevokeOutcome:
    """Withdraw the grant at the provider where it can be withdrawn; never raises for the
    network."""
    if app.name != "google" or not app.revoke_url:
        return RevokeOutcome(
            "unsupported",
            "Microsoft has no endpoint to revoke one sign-in: calsync deleted its tokens "
            "locally; to remove calsync's access, visit " + MICROSOFT_CONSENT_PAGES,
        )
    token = tokens.refresh_token or tokens.access_token
    try:
        with httpx2.Client(**client_options(transport)) as client:
            response = client.post(
                app.revoke_url,
                data={"token": token},
                headers={"Accept": "application/json"},
            )
    except httpx2.HTTPError as exc:
        return RevokeOutcome(
            "unconfirmed",
            f"could not reach Google to revoke the grant ({type(exc).__name__}); revocation "
            "could not be confirmed. Remove calsync at https://myaccount.google.com/permissions",
        )
    note = (
        "Google withdraws the whole grant this account gave the client project, so other "
        "calsync integrations of the same account and client need connecting again"
    )
    if response.status_code == 200:
        return RevokeOutcome("revoked", f"Google revoked the grant. {note}")
    if response.status_code == 400 and _json_error(response) == "invalid_token":
        return RevokeOutcome(
            "revoked", f"Google no longer knew the token: the grant was already withdrawn. {note}"
        )
    return RevokeOutcome(
        "unconfirmed",
        f"Google answered HTTP {response.status_code} to the revocation; revocation could not "
        "be confirmed. Remove calsync at https://myaccount.google.com/permissions",
    )


def _json_error(response: httpx2.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None
