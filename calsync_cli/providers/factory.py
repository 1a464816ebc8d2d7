"""Build provider clients: the shared async HTTP client, and the ``CalendarProvider`` of an app."""

from __future__ import annotations

from typing import Any

import httpx2

from calsync_cli.apps import App
from calsync_cli.config import Settings
from calsync_cli.providers._http import client_options
from calsync_cli.providers.base import CalendarProvider, TokenSource
from calsync_cli.providers.google import GoogleCalendarProvider
from calsync_cli.providers.microsoft import OutlookCalendarProvider

#: one API exchange: 30 s in all, 10 s to connect
API_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)

HttpClient = httpx2.AsyncClient


def http_client(max_connections: int = 100) -> httpx2.AsyncClient:
    """The async HTTP client the providers share (one per run)."""
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx2.AsyncClient(limits=limits, **client_options(timeout=API_TIMEOUT))


def provider_class(app: str) -> type[CalendarProvider]:
    """The provider class of ``app``: its capabilities, without a client or a sign-in."""
    classes: dict[str, type[CalendarProvider]] = {
        "google": GoogleCalendarProvider,
        "outlook": OutlookCalendarProvider,
    }
    if app not in classes:
        raise ValueError(f"unknown calendar app {app!r} (expected google or outlook)")
    return classes[app]


def make_provider(
    app: App,
    client: httpx2.AsyncClient,
    tokens: TokenSource,
    settings: Settings,
    **kw: Any,
) -> CalendarProvider:
    """The provider client for ``app``, pointed at the URLs in ``settings``.

    ``kw`` goes to the constructor: ``retry_budget``, ``sleep``, ``clock`` (and ``batch_chunk``
    for Google). Raises ``ValueError`` for an unknown app.
    """
    if app == "google":
        return GoogleCalendarProvider(
            client,
            tokens,
            api_url=settings.google_api_url,
            batch_url=settings.google_batch_url,
            **kw,
        )
    if app == "outlook":
        return OutlookCalendarProvider(client, tokens, graph_url=settings.microsoft_graph_url, **kw)
    raise ValueError(f"unknown calendar app {app!r} (expected google or outlook)")
