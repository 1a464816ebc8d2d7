"""The disclosure log: read the audit trail as a stream, and prune it for retention.

The core of ``calsync audit``. Entries are streamed (``store.audit.stream`` fetches a batch at a
time through a server-side cursor), so exporting a million rows holds one batch in memory.
Each entry names fields, never their values: the trail holds no patient data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from calsync_cli.errors import InputError
from calsync_cli.store import audit as store_audit
from calsync_cli.store.db import Store

COLUMNS = store_audit.COLUMNS

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_when(text: str, *, now: datetime) -> datetime:
    """An instant from ``text``: an ISO date (midnight UTC), an ISO instant (UTC when it has
    no offset), or a duration back from ``now`` (``30d``, ``12h``, ``90m``).
    Raises ``InputError`` naming the accepted forms."""
    from calsync_cli.engine.sweep import parse_duration  # the sweep's --lookback syntax

    value = text.strip()
    hint = "Use an ISO date (2026-11-01), an instant (2026-11-01T09:00:00+00:00) or an age (30d)"
    if not value:
        raise InputError("an empty time was given", hint=hint)
    if value[-1:].lower() in ("s", "m", "h", "d") and value[:1].isdigit() and "-" not in value:
        try:
            return now - parse_duration(value)
        except InputError:
            raise InputError(f"cannot read the time {text!r}", hint=hint) from None
    try:
        if _DATE.fullmatch(value):
            return datetime.combine(date.fromisoformat(value), time(0), tzinfo=UTC)
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(f"cannot read the time {text!r}", hint=hint) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


@dataclass(frozen=True)
class AuditQuery:
    integration_id: int | None = None
    visit_id: str | None = None
    since: datetime | None = None


def entry_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """One streamed row as a JSON-ready object (``at`` in ISO 8601, UTC)."""
    data = dict(zip(COLUMNS, row, strict=True))
    at = data["at"]
    data["at"] = at.isoformat() if isinstance(at, datetime) else at
    data["fields"] = list(data["fields"] or [])
    return data


@contextmanager
def entries(store: Store, query: AuditQuery) -> Iterator[Iterator[tuple[Any, ...]]]:
    """The matching entries, oldest first, as tuples of ``COLUMNS``, read in one read
    transaction that stays open while the caller consumes them."""
    with store.read() as session:
        yield store_audit.stream(
            session,
            integration_id=query.integration_id,
            visit_id=query.visit_id,
            since=query.since,
        )


@dataclass(frozen=True)
class PruneResult:
    before: datetime
    deleted: int

    def to_json(self) -> dict[str, Any]:
        return {"pruned_before": self.before.isoformat(), "deleted": self.deleted}


def prune(store: Store, before: datetime, *, now: datetime) -> PruneResult:
    """Delete the entries recorded before ``before`` and record that it happened (the new
    entry is after ``before`` unless ``before`` lies in the future, when it is kept anyway)."""
    if before > now:
        raise InputError(
            f"--prune-before {before.isoformat()} is in the future",
            hint="Give a past date or an age such as 365d",
        )
    with store.write() as session:
        deleted = store_audit.prune_before(session, before)
        store_audit.record(
            session,
            "audit_prune",
            now=now,
            detail=f"deleted {deleted} entries recorded before {before.isoformat()}",
        )
    return PruneResult(before, deleted)
