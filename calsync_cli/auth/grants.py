"""What every sign-in shares once the provider has answered: redeeming an authorization code,
reading the token answer, and explaining a refusal.

The three ways to sign in (loopback redirect, device code, a pasted address) differ only in how
they get to the token answer; from there :func:`accept_token_answer` turns it into
:class:`SignIn` (the tokens, and warnings for the user) or an ``AuthError`` that says what to
do. Nothing here stores anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx2
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from calsync_cli.auth.apps import GOOGLE_EVENTS_SCOPE, GOOGLE_SCOPE_LABELS, OAuthApp
from calsync_cli.auth.loopback import aadsts_code, provider_error, safe_code
from calsync_cli.auth.tokens import Tokens
from calsync_cli.errors import AuthError
from calsync_cli.providers._http import client_options

#: a refresh token that dies within this many seconds is a Google "Testing" app's (7 days)
SHORT_REFRESH_LIFETIME = 8 * 24 * 3600

TESTING_APP_FIX = (
    "publish the OAuth app (Google Cloud console > Google Auth Platform > Audience > "
    "Publish app, status 'In production') or make it Internal (Google Workspace), then run "
    "calsync connect again"
)


@dataclass(frozen=True)
class SignIn:
    """A completed sign-in: the tokens, and what the user should hear about them."""

    tokens: Tokens
    warnings: tuple[str, ...] = ()


def accept_token_answer(app: OAuthApp, response: Mapping[str, Any], now: datetime) -> SignIn:
    """The sign-in the token endpoint's answer holds, or ``AuthError`` when calsync cannot
    keep syncing with it (no access token, no refresh token, a Google permission left
    unticked)."""
    try:
        tokens = Tokens.from_token_response(dict(response), now)
    except ValueError:
        raise AuthError(
            f"{app.title}'s token endpoint answered without an access token",
            hint="Run the command again",
        ) from None
    if not tokens.refresh_token:
        raise AuthError(
            f"{app.title} issued no refresh token, so calsync could not keep syncing",
            hint="Run the command again and grant offline access",
        )
    warnings: list[str] = []
    if app.name == "google":
        _check_google_scopes(tokens)
        lifetime = number_of_seconds(response.get("refresh_token_expires_in"))
        if lifetime is not None and lifetime <= SHORT_REFRESH_LIFETIME:
            # Google: "A Google Cloud Platform project with an OAuth consent screen configured
            # for an external user type and a publishing status of 'Testing' is issued a
            # refresh token expiring in 7 days" (Using OAuth 2.0 to Access Google APIs,
            # Refresh token expiration).
            days = max(1, round(lifetime / 86400))
            warnings.append(
                f"warning: Google will end this sign-in in {days} days (the OAuth app is in "
                f"'Testing' status); to keep syncing, {TESTING_APP_FIX}"
            )
    return SignIn(tokens, tuple(warnings))


def _check_google_scopes(tokens: Tokens) -> None:
    """Google's granular consent lets the user untick each permission; the answer's ``scope``
    says what was granted ("How to handle granular permissions", Google Identity)."""
    if tokens.scope is None:
        return  # Google always says; a provider that does not granted what was asked
    granted = set(tokens.scope.split())
    missing = [s for s in GOOGLE_SCOPE_LABELS if s not in granted]
    if not missing:
        return
    names = "; ".join(f"'{GOOGLE_SCOPE_LABELS[s]}' ({s.rsplit('/', 1)[-1]})" for s in missing)
    what = (
        "add, change and remove the visits' events"
        if GOOGLE_EVENTS_SCOPE in missing
        else "list the calendars to choose one"
    )
    raise AuthError(
        f"Google did not grant calsync the permission it needs to {what}: {names} was left "
        "unticked on the consent screen; nothing was stored",
        hint="Run the command again and, on Google's consent screen, tick that permission (or "
        "'Select all')",
    )


def number_of_seconds(value: object) -> float | None:
    """A number of seconds from a token answer (a number, or a numeric string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def exchange_error(app: OAuthApp, exc: OAuthError) -> AuthError:
    """The refusal of a code exchange or device-code poll, explained."""
    code = safe_code(str(exc.error or "oauth_error"))
    aad = aadsts_code(exc.description)
    if aad in (50194, 65001, 90094, 90095) or code == "consent_required":
        return provider_error(app.title, code, exc.description)
    if code == "invalid_client" or aad in (7000218, 700016):
        return AuthError(
            f"{app.title} does not accept calsync's OAuth client ({code}"
            + (f", AADSTS{aad}" if aad else "")
            + ")",
            hint=(
                "Check CALSYNC_MICROSOFT_CLIENT_ID, and that the registration allows public "
                "client flows (Authentication > Advanced settings)"
                if app.name == "outlook"
                else "Check CALSYNC_GOOGLE_CLIENT_ID and CALSYNC_GOOGLE_CLIENT_SECRET (a "
                "'Desktop app' client)"
            ),
        )
    return AuthError(
        f"{app.title} refused the code exchange ({code}" + (f", AADSTS{aad}" if aad else "") + ")",
        hint="Run the command again; check the client id and secret if it repeats",
    )


def oauth_client(
    app: OAuthApp, redirect_uri: str | None, transport: httpx2.BaseTransport | None
) -> Any:
    """Authlib's OAuth 2 client for ``app`` (PKCE S256), over httpx2."""
    return OAuth2Client(
        client_id=app.client_id,
        client_secret=app.client_secret,
        token_endpoint_auth_method=app.token_endpoint_auth_method,
        scope=app.scope,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        **client_options(transport),
    )


def redeem_code(
    app: OAuthApp,
    client: Any,
    *,
    code: str,
    code_verifier: str,
    redirect_uri: str,
    now: datetime,
) -> SignIn:
    """Exchange an authorization code (with the PKCE verifier kept in memory)."""
    try:
        response = client.fetch_token(
            app.token_url,
            grant_type="authorization_code",
            code=code,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,  # exactly the string of the authorization request
        )
    except OAuthError as exc:
        raise exchange_error(app, exc) from None
    except httpx2.HTTPStatusError as exc:
        raise AuthError(
            f"{app.title}'s token endpoint answered HTTP {exc.response.status_code}",
            hint="Try again in a minute",
        ) from None
    except httpx2.HTTPError as exc:
        raise AuthError(
            f"could not reach {app.title}'s token endpoint ({type(exc).__name__})",
            hint="Check the network connection and run the command again",
        ) from None
    except ValueError:
        raise AuthError(
            f"{app.title}'s token endpoint answered something that is not a token",
            hint="Check CALSYNC_* endpoint settings",
        ) from None
    return accept_token_answer(app, dict(response), now)
