"""Provider clients for a stored integration: its tokens + the shared HTTP client + the app's API.

This is where the pieces meet (the composition root): the engine receives ``open_provider`` and
``token_source`` from here and never imports ``auth`` itself. ``token_store`` is the one place
that chooses where tokens live (``CALSYNC_TOKEN_STORE``): the keyring, or sealed in the
database.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from calsync_cli.auth.apps import oauth_app
from calsync_cli.auth.oauth import KeyringTokenSource
from calsync_cli.auth.tokens import TokenStorage, TokenStore
from calsync_cli.config import Settings
from calsync_cli.providers.base import CalendarProvider
from calsync_cli.providers.factory import HttpClient, http_client, make_provider

if TYPE_CHECKING:
    from calsync_cli.auth.sealed import SealedTokenStore
    from calsync_cli.store.db import Store

__all__ = [
    "check_token_store",
    "close_shared",
    "http_client",
    "open_provider",
    "token_source",
    "token_store",
]

#: database token stores shared by every token source of this process, per (URL, key file):
#: one engine and one resolved key, not one per integration and round
_SHARED: dict[tuple[str, str | None], SealedTokenStore] = {}
_SHARED_LOCK = threading.Lock()


def token_store(settings: Settings, store: Store | None = None) -> TokenStorage:
    """Where this installation keeps tokens (``CALSYNC_TOKEN_STORE``).

    ``keyring``: the OS keyring. ``database``: sealed in the calsync database, in ``store``
    when given (a caller that has the database open), else in a store this module opens once
    per process for ``settings.db_url``.
    """
    if settings.token_store != "database":
        return TokenStore()
    from calsync_cli.auth.sealed import SealedTokenStore

    if store is not None:
        return SealedTokenStore(store, key_file=settings.secret_key_file)
    with _SHARED_LOCK:
        shared = _SHARED.get((settings.db_url, settings.secret_key_file))
        if shared is None:
            from calsync_cli.store.db import Store

            if not _SHARED:
                atexit.register(close_shared)
            shared = SealedTokenStore(Store(settings.db_url), key_file=settings.secret_key_file)
            _SHARED[(settings.db_url, settings.secret_key_file)] = shared
        return shared


def check_token_store(settings: Settings, store: Store) -> None:
    """Fail early, before claiming work, on a host whose sealing key is missing or is not the
    one the database's tokens were sealed with (``TokenKeyError``, exit 2). No-op for the
    keyring."""
    chosen = token_store(settings, store)
    check = getattr(chosen, "check", None)
    if check is not None:
        check()


def close_shared() -> None:
    """Close the database connections of the shared token stores (at exit; tests)."""
    with _SHARED_LOCK:
        for shared in _SHARED.values():
            shared.store.close()
        _SHARED.clear()


def token_source(
    settings: Settings, app: str, integration_id: int, provider_id: str, **kw: Any
) -> KeyringTokenSource:
    return KeyringTokenSource(
        oauth_app(app, settings),
        token_store(settings),
        integration_id,
        provider_id=provider_id,
        **kw,
    )


@asynccontextmanager
async def open_provider(
    settings: Settings,
    app: str,
    integration_id: int,
    provider_id: str,
    *,
    client: HttpClient | None = None,
    **kw: Any,
) -> AsyncIterator[CalendarProvider]:
    """A provider client for one integration; closes the HTTP client when it made it."""
    own = client is None
    http = client or http_client()
    try:
        tokens = token_source(settings, app, integration_id, provider_id)
        yield make_provider(app, http, tokens, settings, **kw)  # type: ignore[arg-type]
    finally:
        if own:
            await http.aclose()
