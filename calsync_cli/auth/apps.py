"""The two OAuth client registrations calsync signs in with: Google and Microsoft (Outlook).

``oauth_app(name, settings)`` builds an :class:`OAuthApp` from the settings and explains how to
register a desktop client when the client id is not configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from calsync_cli.apps import App
from calsync_cli.config import Settings
from calsync_cli.errors import ConfigError, InputError

GOOGLE_EVENTS_SCOPE = "https://www.googleapis.com/auth/calendar.events"
GOOGLE_CALENDARLIST_SCOPE = "https://www.googleapis.com/auth/calendar.calendarlist.readonly"
GOOGLE_SCOPES: tuple[str, ...] = (
    # create, update and delete events; also read them, which pull mode uses for busy time
    GOOGLE_EVENTS_SCOPE,
    # list the account's calendars so the user can choose one
    GOOGLE_CALENDARLIST_SCOPE,
)
#: each Google scope calsync needs, as the consent screen's checkbox describes it
GOOGLE_SCOPE_LABELS: dict[str, str] = {
    GOOGLE_EVENTS_SCOPE: "View and edit events on all your calendars",
    GOOGLE_CALENDARLIST_SCOPE: "See the list of Google calendars you're subscribed to",
}
MICROSOFT_SCOPES: tuple[str, ...] = ("Calendars.ReadWrite", "offline_access")

GOOGLE_SETUP_HINT = (
    "Create an OAuth client of type 'Desktop app' in the Google Cloud console "
    "(APIs & Services > Credentials, with the Google Calendar API enabled), publish the app "
    "('In production') or make it Internal, since apps in 'Testing' get sign-ins that end "
    "after 7 days, then set CALSYNC_GOOGLE_CLIENT_ID and CALSYNC_GOOGLE_CLIENT_SECRET (or "
    "google_client_id and google_client_secret in config.toml); see the README, 'Before you "
    "connect real accounts'"
)
MICROSOFT_SETUP_HINT = (
    "Register an app in the Microsoft Entra admin center (App registrations) with the platform "
    "'Mobile and desktop applications', redirect URI http://localhost, public client flows "
    "allowed, the delegated permission Calendars.ReadWrite and the supported account types "
    "'Accounts in any organizational directory and personal Microsoft accounts' (for a "
    "single-tenant registration also set CALSYNC_MICROSOFT_AUTHORITY="
    "https://login.microsoftonline.com/<tenant id>), then set CALSYNC_MICROSOFT_CLIENT_ID (or "
    "microsoft_client_id in config.toml); see the README, 'Before you connect real accounts'"
)


@dataclass(frozen=True)
class OAuthApp:
    """One OAuth client: where to send the user, where to exchange and refresh tokens.

    ``redirect_host`` is the host name written into the redirect URI; the loopback listener
    always binds 127.0.0.1. Google wants ``http://127.0.0.1:PORT/``; Microsoft Entra matches
    ``http://localhost`` whatever the port, so Outlook uses ``http://localhost:PORT``.
    """

    name: App
    client_id: str
    client_secret: str | None
    authorize_url: str
    token_url: str
    revoke_url: str | None
    scopes: tuple[str, ...]
    redirect_host: Literal["127.0.0.1", "localhost"]
    redirect_path: str = "/"
    extra_authorize_params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: how the client authenticates at the token endpoint (Authlib's method names)
    token_endpoint_auth_method: Literal["client_secret_post", "none"] = "none"
    #: the device authorization endpoint (RFC 8628); None where calsync cannot use one
    device_code_url: str | None = None

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)

    @property
    def title(self) -> str:
        return "Google" if self.name == "google" else "Microsoft"

    def redirect_uri(self, port: int) -> str:
        """The exact redirect URI for a listener on ``port``; the token request repeats it."""
        return f"http://{self.redirect_host}:{port}{self.redirect_path}"

    def __repr__(self) -> str:  # the client secret stays out of logs
        return f"OAuthApp(name={self.name!r}, client_id={self.client_id!r})"


def oauth_app(app: str, settings: Settings) -> OAuthApp:
    """The OAuth client for ``app`` (``google`` or ``outlook``; ``microsoft`` is accepted too).

    Raises ``ConfigError`` when the client id (or Google's client secret) is not set.
    """
    name = app.strip().lower()
    if name == "google":
        if not settings.google_client_id:
            raise ConfigError(
                "Google sign-in needs an OAuth client: CALSYNC_GOOGLE_CLIENT_ID is not set",
                hint=GOOGLE_SETUP_HINT,
            )
        if not settings.google_client_secret:
            raise ConfigError(
                "Google sign-in needs the client's secret: CALSYNC_GOOGLE_CLIENT_SECRET is not set",
                hint=GOOGLE_SETUP_HINT,
            )
        return OAuthApp(
            name="google",
            client_id=settings.google_client_id,
            client_secret=settings.google_client_secret,
            authorize_url=settings.google_auth_url,
            token_url=settings.google_token_url,
            revoke_url=settings.google_revoke_url,
            scopes=GOOGLE_SCOPES,
            redirect_host="127.0.0.1",
            redirect_path="/",
            # Google issues a refresh token only at first consent unless both are sent.
            extra_authorize_params=MappingProxyType(
                {"access_type": "offline", "prompt": "consent"}
            ),
            # Desktop clients send their (not really secret) secret in the token request body.
            token_endpoint_auth_method="client_secret_post",
        )
    if name in ("outlook", "microsoft"):
        if not settings.microsoft_client_id:
            raise ConfigError(
                "Outlook sign-in needs an app registration: CALSYNC_MICROSOFT_CLIENT_ID is not set",
                hint=MICROSOFT_SETUP_HINT,
            )
        return OAuthApp(
            name="outlook",
            client_id=settings.microsoft_client_id,
            client_secret=None,  # a public client: PKCE instead of a secret
            authorize_url=settings.microsoft_authorize_url,
            token_url=settings.microsoft_token_url,
            revoke_url=None,  # the Microsoft identity platform cannot revoke one refresh token
            scopes=MICROSOFT_SCOPES,
            redirect_host="localhost",
            redirect_path="",
            # Without it the browser's current Microsoft session silently picks the mailbox
            # ("prompt=select_account interrupts single sign-on", Microsoft identity platform
            # and OAuth 2.0 authorization code flow).
            extra_authorize_params=MappingProxyType({"prompt": "select_account"}),
            token_endpoint_auth_method="none",
            device_code_url=settings.microsoft_authority.rstrip("/") + "/oauth2/v2.0/devicecode",
        )
    raise InputError(f"unknown calendar app {app!r}", hint="Use google or outlook")
