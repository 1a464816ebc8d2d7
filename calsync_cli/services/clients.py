"""Provider clients for a stored integration: its tokens + the shared HTTP client + the app's API.

This is where the pieces meet (the composition root): the engine receives ``open_provider`` and
``token_source`` from here and never imports ``auth`` itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from calsync_cli.auth.apps import oauth_app
from calsync_cli.auth.oauth import KeyringTokenSource
from calsync_cli.auth.tokens import TokenStore
from calsync_cli.config import Settings
from calsync_cli.providers.base import CalendarProvider
from calsync_cli.providers.factory import HttpClient, http_client, make_provider

__all__ = ["http_client", "open_provider", "token_source"]


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
