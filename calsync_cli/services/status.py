"""What ``calsync status`` shows: the fast read when it can answer, the full store otherwise.

``status_rows`` first asks ``store.fast_status`` (a read-only query with the database driver
alone, no ORM: ``status`` runs often, from scripts and support desks, and should start fast);
when that cannot answer (an older schema, an unreachable database, a backend it does not know)
the full store answers, creating or upgrading the schema as every command does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from calsync_cli.store import fast_status

if TYPE_CHECKING:
    from calsync_cli.store.db import Store


def status_rows(
    db_url: str, open_store: Callable[[], Store], integration_id: int | None = None
) -> list[dict[str, Any]]:
    """One dict per integration (the ``status --json`` item); for one integration also its
    latest failures. ``open_store`` is called only when the fast read cannot answer."""
    rows = fast_status.status_rows(db_url, integration_id)
    if rows is not None:
        return rows
    from calsync_cli.services import integrations

    return integrations.status_rows(open_store(), integration_id)


def store_counts(open_store: Callable[[], Store]) -> dict[str, int]:
    """How many practices, providers and visits are stored (for the getting-started hint)."""
    from calsync_cli.services import integrations

    return integrations.store_counts(open_store())
