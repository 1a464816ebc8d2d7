"""Sealed tokens in the database (``CALSYNC_TOKEN_STORE=database``): the queries.

Rows of ``sealed_token`` hold ciphertext only; sealing and opening are
``calsync_cli.auth.sealed``'s. ``calsync_meta`` records the fingerprint of the key the tokens
are sealed with (``token_key_fingerprint``), never the key.

Locking for a refresh: ``get(..., for_update=True)`` is ``SELECT ... FOR UPDATE`` on
PostgreSQL, so a second host's refresh of the same grant waits for the first to commit and then
reads its answer. SQLite serves one host: there a refresh locks its integration's byte of
``refresh_lock_file`` instead, because holding SQLite's only write lock across the call to the
token endpoint would stall every other writer (the worker's job completions) meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, col, select

from calsync_cli.store.models import DISCONNECTED, Integration, Meta, SealedToken

FINGERPRINT_KEY = "token_key_fingerprint"


@dataclass(frozen=True)
class SealedRow:
    integration_id: int
    ciphertext: str
    key_fingerprint: str


def get(session: Session, integration_id: int, *, for_update: bool = False) -> SealedRow | None:
    """The sealed row of an integration; ``for_update`` locks it until the transaction ends."""
    stmt = select(SealedToken).where(SealedToken.integration_id == integration_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = session.exec(stmt).first()
    if row is None:
        return None
    return SealedRow(row.integration_id, row.ciphertext, row.key_fingerprint)


def put(
    session: Session, integration_id: int, ciphertext: str, fingerprint: str, *, now: datetime
) -> None:
    """Create or overwrite the row (a sign-in)."""
    row = session.get(SealedToken, integration_id, with_for_update=True)
    if row is None:
        row = SealedToken(integration_id=integration_id, ciphertext="", key_fingerprint="")
    row.ciphertext, row.key_fingerprint, row.updated_at = ciphertext, fingerprint, now
    session.add(row)
    session.flush()


def replace(
    session: Session, integration_id: int, ciphertext: str, fingerprint: str, *, now: datetime
) -> bool:
    """UPDATE an existing row only (a refresh's answer): False when the row is gone."""
    table = SealedToken.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.update(table)
        .where(table.c.integration_id == integration_id)
        .values(ciphertext=ciphertext, key_fingerprint=fingerprint, updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def delete(session: Session, integration_id: int) -> bool:
    table = SealedToken.__table__  # type: ignore[attr-defined]
    result = session.execute(sa.delete(table).where(table.c.integration_id == integration_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def integration_ids(session: Session) -> list[int]:
    return list(
        session.exec(select(SealedToken.integration_id).order_by(col(SealedToken.integration_id)))
    )


def fingerprints(session: Session) -> dict[str, int]:
    """How many rows are sealed under each key fingerprint."""
    stmt = select(SealedToken.key_fingerprint, sa.func.count()).group_by(
        col(SealedToken.key_fingerprint)
    )
    return {fp: int(n) for fp, n in session.exec(stmt)}


def recorded_fingerprint(session: Session) -> str | None:
    row = session.get(Meta, FINGERPRINT_KEY)
    return row.value if row is not None else None


def record_fingerprint(session: Session, fingerprint: str) -> str:
    """Record ``fingerprint`` unless one is recorded already; return the one recorded (two
    hosts writing their first token at once: the first INSERT wins, the other reads it)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = Meta.__table__  # type: ignore[attr-defined]
    session.execute(
        insert(table)
        .values(key=FINGERPRINT_KEY, value=fingerprint)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    recorded = session.exec(select(Meta.value).where(Meta.key == FINGERPRINT_KEY)).one()
    return recorded


def signed_in_ids(session: Session) -> list[int]:
    """Integrations that should have tokens somewhere: every one not disconnected."""
    stmt = (
        select(Integration.id)
        .where(Integration.status != DISCONNECTED)
        .order_by(col(Integration.id))
    )
    return [iid for iid in session.exec(stmt) if iid is not None]


def refresh_lock_file(url: str) -> Path | None:
    """SQLite: the file beside the database whose byte N a refresh of integration N locks
    (``fcntl.lockf``), so two calsync processes never refresh one grant at once without
    holding the database's single write lock across a network call. None for PostgreSQL (it
    locks the row) and for a database without a file."""
    from calsync_cli.store.db import _sqlite_path

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    path = _sqlite_path(parsed)
    return path.with_name(path.name + ".token-lock") if path is not None else None
