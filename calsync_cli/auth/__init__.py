"""OAuth for calsync: loopback sign-in (PKCE S256 + state, via Authlib over httpx2), the
token stores (the keyring; sealed in the database: ``auth.sealed``), the refreshing token
source, and revocation.

Typical use by ``calsync connect``::

    app = oauth_app("google", settings)                 # ConfigError when the client is unset
    tokens = sign_in(app, port=0, timeout=300, open_browser=webbrowser.open,
                     announce_url=lambda url: print(url, file=sys.stderr))
    TokenStore().put(integration_id, tokens)            # KeyringError when no usable keyring
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
from calsync_cli.auth.loopback import DEFAULT_TIMEOUT, LoopbackListener
from calsync_cli.auth.oauth import (
    KeyringTokenSource,
    RevokeOutcome,
    reconnect_hint,
    revoke,
    sign_in,
)
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
