"""Writing imported records (practices, providers, visits) in bulk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from calsync_cli.store.jobs import CHUNK


def existing(
    session: Session, model: Any, columns: Sequence[str], ids: Sequence[str]
) -> dict[str, Any]:
    """The stored rows (only ``columns``, the first being ``id``) of these ids, by id."""
    table = model.__table__
    found: dict[str, Any] = {}
    for first in range(0, len(ids), CHUNK):
        stmt = sa.select(*(table.c[c] for c in columns)).where(
            table.c.id.in_(ids[first : first + CHUNK])
        )
        for row in session.execute(stmt):
            found[row[0]] = row
    return found


def insert(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(sa.insert(model), list(rows))


def update(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Update by primary key (each row carries its ``id``)."""
    if rows:
        session.execute(sa.update(model), list(rows))
