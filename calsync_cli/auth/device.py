"""Sign-in with a device code (OAuth 2.0 device authorization grant, RFC 8628), for Microsoft.

calsync asks the identity platform's ``/devicecode`` endpoint for a user code, shows the
clinician where to enter it (any browser, any machine), and polls the token endpoint at the
interval the answer names until the clinician approves, declines, or the code expires
("Microsoft identity platform and the OAuth 2.0 device authorization grant flow"). Google's
device flow does not allow Calendar scopes ("OAuth 2.0 for TV and Limited-Input Device
Applications", Allowed scopes), so Google signs in remotely with a pasted address instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx2

from calsync_cli.auth.apps import OAuthApp
from calsync_cli.auth.grants import SignIn, accept_token_answer, number_of_seconds
from calsync_cli.auth.loopback import aadsts_code, provider_error, safe_code
from calsync_cli.auth.tokens import utcnow
from calsync_cli.errors import AuthError, InputError
from calsync_cli.providers._http import client_options

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: RFC 8628 §3.2: "If no value is provided, clients MUST use 5 as the default."
DEFAULT_INTERVAL = 5.0
#: RFC 8628 §3.5: on ``slow_down`` "the interval MUST be increased by 5 seconds"
SLOW_DOWN_STEP = 5.0


@dataclass(frozen=True)
class DeviceCode:
    """What the clinician needs: where to go and the code to type there."""

    user_code: str
    verification_uri: str
    expires_in: float
    interval: float
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "device_code",
            "user_code": self.user_code,
            "verification_uri": self.verification_uri,
            "expires_in": int(self.expires_in),
        }


def device_sign_in(
    app: OAuthApp,
    *,
    timeout: float,
    announce: Callable[[DeviceCode], None],
    wait: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = utcnow,
    transport: httpx2.BaseTransport | None = None,
) -> SignIn:
    """Get a device code, ``announce`` it, and poll until the sign-in completes.

    Raises ``InputError`` when the app has no device flow (Google), ``AuthError`` when the
    clinician declines, the code expires, ``timeout`` seconds pass first, or the identity
    platform refuses. ``wait(seconds)`` pauses between polls (tests pass one that does not
    sleep); a ``KeyboardInterrupt`` during it ends the sign-in, and nothing was stored.
    """
    if app.device_code_url is None:
        raise InputError(
            "Google does not allow calendar access through a device code",
            hint=f"Use: calsync connect {app.name} --provider ID --remote",
        )
    deadline = clock() + timeout
    with httpx2.Client(**client_options(transport)) as http:
        start = _post(
            app, http, app.device_code_url, {"client_id": app.client_id, "scope": app.scope}
        )
        if "error" in start:
            raise _refused(app, start)
        device_code = start.get("device_code")
        user_code = start.get("user_code")
        uri = start.get("verification_uri") or start.get("verification_url")
        if not all(isinstance(v, str) and v for v in (device_code, user_code, uri)):
            raise AuthError(
                f"{app.title}'s device code endpoint answered without a code",
                hint="Check CALSYNC_MICROSOFT_AUTHORITY and run the command again",
            )
        assert isinstance(device_code, str)
        expires_in = _number(start.get("expires_in"), 900.0)
        interval = max(0.0, _number(start.get("interval"), DEFAULT_INTERVAL))
        message = start.get("message")
        announce(
            DeviceCode(
                user_code=str(user_code),
                verification_uri=str(uri),
                expires_in=expires_in,
                interval=interval,
                message=message if isinstance(message, str) else None,
            )
        )
        expires_at = clock() + expires_in
        form = {"grant_type": DEVICE_GRANT, "client_id": app.client_id, "device_code": device_code}
        while True:
            left = deadline - clock()
            if left <= 0:
                raise AuthError(
                    f"no sign-in within {timeout:g} s",
                    hint="Rerun with a longer --timeout, and enter the code promptly",
                )
            wait(min(interval, left))
            if clock() >= deadline:
                continue  # the loop's first check says it
            answer = _post(app, http, app.token_url, form)
            error = answer.get("error")
            if error is None:
                return accept_token_answer(app, answer, now())
            if error == "authorization_pending":
                if clock() >= expires_at + interval:
                    raise _expired(app)
                continue
            if error == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            if error in ("expired_token", "code_expired"):
                raise _expired(app)
            if error in ("access_denied", "authorization_declined"):
                raise AuthError(
                    f"sign-in declined: the {app.title} account did not grant calsync access",
                    hint="Run the command again and approve the request to connect the calendar",
                )
            if error == "bad_verification_code":
                raise AuthError(
                    f"{app.title} did not recognise the device code",
                    hint="Run the command again",
                )
            raise _refused(app, answer)


def _post(app: OAuthApp, http: httpx2.Client, url: str, form: dict[str, str]) -> dict[str, Any]:
    try:
        response = http.post(url, data=form, headers={"Accept": "application/json"})
    except httpx2.HTTPError as exc:
        raise AuthError(
            f"could not reach {app.title}'s sign-in service ({type(exc).__name__})",
            hint="Check the network connection and run the command again",
        ) from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise AuthError(
            f"{app.title}'s sign-in service answered HTTP {response.status_code} without JSON",
            hint="Check CALSYNC_MICROSOFT_AUTHORITY, or try again in a minute",
        )
    if response.status_code >= 400 and "error" not in data:
        raise AuthError(
            f"{app.title}'s sign-in service answered HTTP {response.status_code}",
            hint="Try again in a minute",
        )
    return data


def _refused(app: OAuthApp, answer: dict[str, Any]) -> AuthError:
    code = safe_code(str(answer.get("error")))
    description = answer.get("error_description")
    description = description if isinstance(description, str) else None
    aad = aadsts_code(description)
    if aad in (50194, 65001, 90094, 90095) or code == "consent_required":
        return provider_error(app.title, code, description)
    if aad == 7000218 or code == "invalid_client":
        return AuthError(
            f"{app.title} refused the device code sign-in: the app registration does not allow "
            f"public client flows ({code}" + (f", AADSTS{aad}" if aad else "") + ")",
            hint="In Entra, App registrations > calsync > Authentication > Advanced settings, set "
            "'Allow public client flows' to Yes",
        )
    return AuthError(
        f"{app.title} refused the device code sign-in ({code}"
        + (f", AADSTS{aad}" if aad else "")
        + ")",
        hint="Run the command again; check the app registration if it repeats",
    )


def _expired(app: OAuthApp) -> AuthError:
    return AuthError(
        f"the {app.title} code expired before anyone entered it",
        hint="Run the command again and enter the new code within its time",
    )


def _number(value: object, default: float) -> float:
    seconds = number_of_seconds(value)
    return default if seconds is None else seconds
