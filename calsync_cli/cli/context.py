"""Lazily built settings, store and clock for the commands (heavy imports happen here)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calsync_cli.config import Settings
    from calsync_cli.store.db import Store


@cache
def settings() -> Settings:
    from calsync_cli.config import load_settings

    return load_settings()


@cache
def store() -> Store:
    from calsync_cli.cli import output
    from calsync_cli.store.db import Store

    opened = Store(settings().db_url)
    for notice in opened.notices:  # e.g. permissions tightened: said once, then they are right
        output.warn(notice)
    return opened


def now() -> datetime:
    return datetime.now(UTC)


def reset() -> None:
    """Forget settings and store between invocations (tests run many in one process)."""
    if store.cache_info().currsize:
        store().close()
    store.cache_clear()
    settings.cache_clear()
