"""Open a provider client for a stored integration: keyring tokens + httpx2 + the app's API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2

from calsync_cli.auth.apps import oauth_app
from calsync_cli.auth.oauth import KeyringTokenSource, client_options
from calsync_cli.auth.tokens import TokenStore
from calsync_cli.config import Settings
from calsync_cli.providers.base import CalendarProvider
from calsync_cli.providers.factory import make_provider

HTTP_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)


def http_client(max_connections: int = 100) -> httpx2.AsyncClient:
    """The async HTTP client the providers share (one per run)."""
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx2.AsyncClient(limits=limits, **client_options(timeout=HTTP_TIMEOUT))


def token_source(
    settings: Settings, app: str, integration_id: int, provider_id: str, **kw: Any
) -> KeyringTokenSource:
    return KeyringTokenSource(
        oauth_app(app, settings), TokenStore(), integration_id, provider_id=provider_id, **kw
    )


@asynccontextmanager
async def open_provider(
    settings: Settings,
    app: str,
    integration_id: int,
    provider_id: str,
    *,
    client: httpx2.AsyncClient | None = None,
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
