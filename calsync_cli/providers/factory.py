"""Build the ``CalendarProvider`` for an integration's app from the settings."""

from __future__ import annotations

from typing import Any, Literal

import httpx2

from calsync_cli.config import Settings
from calsync_cli.providers.base import CalendarProvider, TokenSource
from calsync_cli.providers.google import GoogleCalendarProvider
from calsync_cli.providers.microsoft import OutlookCalendarProvider

App = Literal["google", "outlook"]
APPS: tuple[App, ...] = ("google", "outlook")


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
