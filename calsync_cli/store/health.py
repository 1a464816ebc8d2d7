"""What ``calsync doctor`` asks the database, without creating or upgrading anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select

from calsync_cli.store.db import create_db_engine
from calsync_cli.store.models import SCHEMA_VERSION, Integration, Meta


@dataclass(frozen=True)
class DatabaseProbe:
    dialect: str
    #: the SQLite file (None for PostgreSQL and in-memory databases)
    sqlite_path: Path | None
    #: the stamped schema version; None for an empty database (no calsync tables yet)
    version: int | None
    current: int = SCHEMA_VERSION


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None (another backend, in memory, or not a URL)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def probe(url: str) -> DatabaseProbe:
    """Connect and read the schema version. Raises ``StoreError`` for an unusable URL and
    ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot be reached."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            version: int | None = None
            if sa.inspect(conn).has_table(Meta.__tablename__):
                table = SQLModel.metadata.tables[Meta.__tablename__]
                raw = conn.execute(
                    sa.select(table.c.value).where(table.c.key == "schema_version")
                ).scalar_one_or_none()
                version = int(raw) if raw is not None else None
        return DatabaseProbe(engine.dialect.name, sqlite_path(url), version)
    finally:
        engine.dispose()


def integrations(session: Session) -> list[Integration]:
    """Every integration, by id."""
    return list(session.exec(select(Integration).order_by(Integration.id)))  # type: ignore[arg-type]
