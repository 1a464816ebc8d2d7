"""OAuth for calsync: three ways to sign in (loopback redirect with PKCE S256 + state via
Authlib over httpx2; a device code for Microsoft; a sign-in address opened on another machine
and pasted back), the token stores (the keyring; sealed in the database: ``auth.sealed``), the
refreshing token source, and revocation.

Typical use by ``calsync connect``::

    app = oauth_app("google", settings)                 # ConfigError when the client is unset
    signed = sign_in(app, port=0, timeout=300, open_browser=webbrowser.open,
                     announce_url=lambda url: print(url, file=sys.stderr))
    # or device_sign_in(app, ...) / remote_sign_in(app, ...): the same SignIn comes back
    TokenStore().put(integration_id, signed.tokens)     # KeyringError when no usable keyring
    source = KeyringTokenSource(app, TokenStore(), integration_id, provider_id="P1")

and by ``calsync disconnect``::

    tokens = store.get(integration_id)
    outcome = revoke(app, tokens) if tokens else None   # never raises for the network
    store.delete(integration_id)
"""

from calsync_cli.auth.apps import (
    GOOGLE_SCOPES,
    MICROSOFT_SCOPES,
    OAuthApp,
    oauth_app,
)
from calsync_cli.auth.device import DeviceCode, device_sign_in
from calsync_cli.auth.grants import SignIn
from calsync_cli.auth.loopback import DEFAULT_TIMEOUT, LoopbackListener
from calsync_cli.auth.oauth import (
    KeyringTokenSource,
    RevokeOutcome,
    reconnect_hint,
    revoke,
    sign_in,
)
from calsync_cli.auth.remote import RemoteSignIn, remote_sign_in
from calsync_cli.auth.tokens import (
    DEFAULT_KEYRING_TIMEOUT,
    SERVICE,
    KeyringTokenStore,
    Tokens,
    TokenSlot,
    TokenStorage,
    TokenStore,
    held,
    keyring_username,
)

__all__ = [
    "DEFAULT_KEYRING_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DeviceCode",
    "RemoteSignIn",
    "SignIn",
    "device_sign_in",
    "remote_sign_in",
    "GOOGLE_SCOPES",
    "MICROSOFT_SCOPES",
    "SERVICE",
    "KeyringTokenSource",
    "KeyringTokenStore",
    "LoopbackListener",
    "OAuthApp",
    "RevokeOutcome",
    "TokenSlot",
    "TokenStorage",
    "TokenStore",
    "Tokens",
    "held",
    "keyring_username",
    "oauth_app",
    "reconnect_hint",
    "revoke",
    "sign_in",
]
