"""Helpers for tests that sign in against the sandbox without a browser."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2

from calsync_cli.sandbox._state import GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, MICROSOFT_CLIENT_ID

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/calendar",)
MICROSOFT_SCOPES = ("offline_access", "https://graph.microsoft.com/Calendars.ReadWrite")


def pkce() -> tuple[str, str]:
    """A (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def redirect_params(resp: httpx2.Response) -> dict[str, str]:
    """The query parameters of a 302 answer's Location."""
    assert resp.status_code == 302, (resp.status_code, resp.text)
    query = urlsplit(resp.headers["location"]).query
    return {k: v[0] for k, v in parse_qs(query).items()}


def google_code(
    client: httpx2.Client,
    base_url: str,
    *,
    redirect_uri: str = "http://127.0.0.1:8765/",
    scopes: tuple[str, ...] = GOOGLE_SCOPES,
    challenge: str,
    login_hint: str | None = None,
    offline: bool = True,
    prompt_consent: bool = True,
    state: str = "xyz",
) -> httpx2.Response:
    params = {
        "client_id": GOOGLE_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": " ".join(scopes),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if offline:
        params["access_type"] = "offline"
    if prompt_consent:
        params["prompt"] = "consent"
    if login_hint:
        params["login_hint"] = login_hint
    return client.get(f"{base_url}/google/o/oauth2/v2/auth", params=params)


def google_sign_in(
    client: httpx2.Client, base_url: str, email: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """The whole code flow with PKCE; returns the token endpoint's JSON answer."""
    redirect_uri = kwargs.pop("redirect_uri", "http://127.0.0.1:8765/")
    verifier, challenge = pkce()
    resp = google_code(
        client, base_url, redirect_uri=redirect_uri, challenge=challenge, login_hint=email, **kwargs
    )
    code = redirect_params(resp)["code"]
    token = client.post(
        f"{base_url}/google/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": redirect_uri,
            "client_id": GOOGLE_CLIENT_ID,
            "client_secret": GOOGLE_CLIENT_SECRET,
        },
    )
    assert token.status_code == 200, token.text
    result: dict[str, Any] = token.json()
    return result


def microsoft_code(
    client: httpx2.Client,
    base_url: str,
    *,
    redirect_uri: str = "http://localhost:8765",
    scopes: tuple[str, ...] = MICROSOFT_SCOPES,
    challenge: str,
    login_hint: str | None = None,
    state: str = "xyz",
) -> httpx2.Response:
    params = {
        "client_id": MICROSOFT_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": " ".join(scopes),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if login_hint:
        params["login_hint"] = login_hint
    return client.get(f"{base_url}/microsoft/common/oauth2/v2.0/authorize", params=params)


def microsoft_sign_in(
    client: httpx2.Client, base_url: str, email: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    redirect_uri = kwargs.pop("redirect_uri", "http://localhost:8765")
    verifier, challenge = pkce()
    resp = microsoft_code(
        client, base_url, redirect_uri=redirect_uri, challenge=challenge, login_hint=email, **kwargs
    )
    code = redirect_params(resp)["code"]
    token = client.post(
        f"{base_url}/microsoft/common/oauth2/v2.0/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": redirect_uri,
            "client_id": MICROSOFT_CLIENT_ID,
        },
    )
    assert token.status_code == 200, token.text
    result: dict[str, Any] = token.json()
    return result
