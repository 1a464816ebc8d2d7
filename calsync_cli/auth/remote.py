"""Sign-in on another machine: a sign-in address to open anywhere, and the address the browser
ended on, pasted back.

The address carries PKCE S256, a ``state`` and the loopback redirect of the ordinary sign-in.
After approving, the clinician's browser goes to ``http://127.0.0.1:PORT/?code=...&state=...``
(or ``http://localhost:PORT``), where nothing answers on their machine; they copy that
address from the address bar and send it back. calsync checks the state and redeems the code
with the verifier it kept in memory, so the address is useless to anyone else. Google's
out-of-band copy-paste flow is gone and its device flow does not allow Calendar scopes; this
works for both providers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2

from calsync_cli.auth.apps import OAuthApp
from calsync_cli.auth.grants import SignIn, oauth_client, redeem_code
from calsync_cli.auth.loopback import LISTEN_HOST, interpret, state_matches
from calsync_cli.auth.oauth import authorization_url
from calsync_cli.auth.tokens import utcnow
from calsync_cli.errors import AuthError, InputError

PASTE_HINT = (
    "Paste the whole address from the browser's address bar after approving; it starts with http://"
)


@dataclass(frozen=True)
class RemoteSignIn:
    """What to send the clinician, and what will come back."""

    app: str
    url: str
    redirect_uri: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "remote_sign_in",
            "app": self.app,
            "sign_in_url": self.url,
            "redirect_uri": self.redirect_uri,
        }


def free_port() -> int:
    """A port nothing listens on here now; only its number matters (the browser that lands on
    it is on another machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LISTEN_HOST, 0))
        return int(s.getsockname()[1])


def remote_sign_in(
    app: OAuthApp,
    *,
    announce: Callable[[RemoteSignIn], None],
    read_answer: Callable[[], str | None],
    port: int = 0,
    login_hint: str | None = None,
    now: Callable[[], datetime] = utcnow,
    transport: httpx2.BaseTransport | None = None,
) -> SignIn:
    """Announce the sign-in address, read back the address the browser ended on, redeem it.

    ``read_answer()`` returns the pasted text, or None when there is none (end of input, or
    the caller's timeout). Raises ``InputError`` when the text is not an address, and
    ``AuthError`` when it belongs to another sign-in, carries an error, or the exchange fails;
    no code is redeemed in those cases.
    """
    redirect_uri = app.redirect_uri(port or free_port())
    with oauth_client(app, redirect_uri, transport) as client:
        url, state, code_verifier = authorization_url(app, client, login_hint)
        announce(RemoteSignIn(app=app.name, url=url, redirect_uri=redirect_uri))
        text = read_answer()
        if text is None or not text.strip():
            raise AuthError(
                "no address was pasted back, so the sign-in did not complete",
                hint="Run the command again and paste the address the browser ended on",
            )
        query = parse_answer(text, redirect_uri)
        if not state_matches(query.get("state", []), state):
            raise AuthError(
                "sign-in failed: the pasted address belongs to another sign-in (state mismatch)",
                hint="Paste the address from the sign-in link this command printed, or run it "
                "again",
            )
        result = interpret(query, app.title)
        if result.error is not None:
            raise result.error
        assert result.code is not None
        return redeem_code(
            app,
            client,
            code=result.code,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
            now=now(),
        )


def parse_answer(text: str, redirect_uri: str) -> dict[str, list[str]]:
    """The query of the pasted address; ``InputError`` when it is not the redirect address.

    Surrounding spaces, quotes and angle brackets (mail programs add them) are dropped. The
    text is never quoted back: it may hold an authorization code.
    """
    cleaned = text.strip().strip("\"'<>").strip()
    try:
        parts = urlsplit(cleaned)
        expected = urlsplit(redirect_uri)
        port_ok = parts.port == expected.port
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError("what was pasted is not a web address", hint=PASTE_HINT)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or not port_ok:
        raise InputError(
            "the pasted address is not the one the sign-in ends on "
            f"({expected.scheme}://{expected.netloc}/...)",
            hint=PASTE_HINT,
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    if not query:
        raise InputError(
            "the pasted address has nothing after its '?': it was cut short", hint=PASTE_HINT
        )
    return query
