"""Lazily built settings, store and clock for the commands (heavy imports happen here)."""

from __future__ import annotations

import os
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
    from calsync_cli.store.db import Store

    opened = Store(settings().db_url)
    if not opened.read_only:
        private(settings().db_url)
    return opened


def private(url: str) -> None:
    """Make a calsync SQLite file that other users can read 0600, and say so (once: then it is
    right). Commands do it when they open the store; ``doctor`` only reports."""
    from calsync_cli.cli import output
    from calsync_cli.store.files import sqlite_file, tighten_permissions

    path = sqlite_file(url)
    if path is not None and os.access(path, os.W_OK):
        for notice in tighten_permissions(path):
            output.warn(notice)


def now() -> datetime:
    return datetime.now(UTC)


def reset() -> None:
    """Forget settings and store between invocations (tests run many in one process)."""
    if store.cache_info().currsize:
        store().close()
    store.cache_clear()
    settings.cache_clear()
