"""The sandbox's OAuth switches: how each app is registered, what each account ticks on the
consent screen, pending device codes, and token endpoint faults.

Where the real service's behaviour depends on the app registration or the account, the sandbox
has a switch, and its default is what a correctly registered app sees. Each switch cites the
document it follows. Guarded by ``State.lock`` like the rest of the sandbox's state.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

#: Microsoft: "the user has 15 minutes to sign in" and the interval defaults to 5 seconds
#: ("Microsoft identity platform and the OAuth 2.0 device authorization grant flow",
#: Device authorization response: expires_in 900, interval 5)
DEVICE_CODE_TTL = 900.0
DEVICE_INTERVAL = 5.0
#: RFC 8628 §6.1: user codes from a restricted alphabet, without look-alike characters
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
#: Google: "an OAuth consent screen configured for an external user type and a publishing
#: status of 'Testing' is issued a refresh token expiring in 7 days" (Using OAuth 2.0 to Access
#: Google APIs, Refresh token expiration); the answer says so in refresh_token_expires_in
TESTING_REFRESH_LIFETIME = 7 * 24 * 3600 - 1
MULTI_TENANT_PATHS = frozenset({"common", "organizations", "consumers"})


@dataclass
class AppRegistration:
    """How the OAuth client is registered (the Google Cloud project / the Entra app)."""

    #: Google: "production" or "testing" (OAuth consent screen publishing status)
    publishing: Literal["production", "testing"] = "production"
    #: Microsoft: a tenant id when the registration is single-tenant ("Accounts in this
    #: organizational directory only", Entra's default); None: any organisation + personal
    single_tenant: str | None = None
    #: Microsoft: False when the tenant lets only administrators consent to apps
    #: ("Configure how users consent to applications", Microsoft Entra) and no admin has yet
    user_consent: bool = True


@dataclass
class DeviceCodeRec:
    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    expires_at: float
    interval: float
    last_poll: float | None = None
    decision: Literal["allow", "deny"] | None = None
    email: str | None = None
    redeemed: bool = False


@dataclass
class TokenFault:
    status: int
    error: str


@dataclass
class OAuthState:
    apps: dict[str, AppRegistration] = field(
        default_factory=lambda: {"google": AppRegistration(), "outlook": AppRegistration()}
    )
    #: (app, email lower) -> the scopes the account leaves unticked on Google's consent screen
    withheld: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: app -> the account the browser is already signed in to (single sign-on)
    browser_session: dict[str, str] = field(default_factory=dict)
    device_codes: dict[str, DeviceCodeRec] = field(default_factory=dict)
    device_interval: float = DEVICE_INTERVAL
    device_ttl: float = DEVICE_CODE_TTL
    #: app -> the next token endpoint answers to fail
    token_faults: dict[str, list[TokenFault]] = field(default_factory=dict)
    #: refresh token -> monotonic instant it dies (Google "Testing" apps)
    refresh_deadlines: dict[str, float] = field(default_factory=dict)

    def new_user_code(self) -> str:
        while True:
            code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
            if not any(d.user_code == code for d in self.device_codes.values()):
                return code

    def by_user_code(self, user_code: str) -> DeviceCodeRec:
        wanted = user_code.replace("-", "").strip().upper()
        for rec in self.device_codes.values():
            if rec.user_code == wanted:
                return rec
        raise KeyError(f"no device code with user code {user_code}")

    def take_token_fault(self, app: str) -> TokenFault | None:
        queue = self.token_faults.get(app)
        return queue.pop(0) if queue else None
