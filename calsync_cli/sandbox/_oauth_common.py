"""Pieces both OAuth servers share: the consent page and decision, client credentials, PKCE."""

from __future__ import annotations

import base64
import hmac
from html import escape
from typing import Literal
from urllib.parse import unquote

from calsync_cli.sandbox._core import REASONS, Request, Response, html_response, s256
from calsync_cli.sandbox._state import App, State


def reason(status: int) -> str:
    return REASONS.get(status, "Unknown")


def s256_matches(verifier: str, challenge: str) -> bool:
    return hmac.compare_digest(s256(verifier), challenge)


def client_credentials(req: Request, form: dict[str, str]) -> tuple[str, str | None]:
    """client_id and client_secret from the form, or from HTTP Basic authentication."""
    auth = req.headers.get("authorization", "")
    scheme, _, blob = auth.partition(" ")
    if scheme.lower() == "basic" and blob:
        try:
            user, _, password = base64.b64decode(blob).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return "", None
        return unquote(user), unquote(password)
    return form.get("client_id", ""), form.get("client_secret")


def pick_account(state: State, app: App, wanted: str | None, login_hint: str | None) -> str | None:
    with state.lock:
        for candidate in (wanted, login_hint):
            if candidate and (app, candidate.lower()) in state.accounts:
                return state.accounts[(app, candidate.lower())].email
        first = state.first_account(app)
        return first.email if first is not None else None


def decide(
    state: State, app: App, params: dict[str, str]
) -> tuple[Literal["allow", "deny"], str | None]:
    """The user's answer: from the consent form when it was posted, else the preset choice."""
    if "decision" in params:
        decision: Literal["allow", "deny"] = "allow" if params["decision"] == "allow" else "deny"
        return decision, pick_account(state, app, params.get("account"), params.get("login_hint"))
    with state.lock:
        choice = state.consent
    return choice.decision, pick_account(state, app, choice.account, params.get("login_hint"))


def consent_page(
    provider: str, action: str, params: dict[str, str], state: State, app: App
) -> Response:
    with state.lock:
        emails = [rec.email for (a, _), rec in state.accounts.items() if a == app]
    hint = params.get("login_hint", "")
    options = "".join(
        f'<option value="{escape(e)}"{" selected" if e.lower() == hint.lower() else ""}>'
        f"{escape(e)}</option>"
        for e in emails
    )
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in params.items()
        if k not in ("decision", "account")
    )
    scopes = "".join(f"<li>{escape(s)}</li>" for s in params.get("scope", "").split())
    body = (
        f"<h1>{escape(provider)} sandbox: sign in and consent</h1>"
        f"<p>The application <code>{escape(params.get('client_id', ''))}</code> asks for:</p>"
        f"<ul>{scopes}</ul>"
        f'<form method="post" action="{escape(action)}">{hidden}'
        f'<label>Account <select name="account">{options}</select></label> '
        '<button type="submit" name="decision" value="allow">Allow</button> '
        '<button type="submit" name="decision" value="deny">Deny</button>'
        "</form>"
    )
    return html_response(200, f"{provider} sandbox consent", body)
