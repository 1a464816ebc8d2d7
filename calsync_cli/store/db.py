"""Open the database, keep its schema current, and hand out explicit transactions.

SQLite: the file is created with mode 0600 (patient names live in it), WAL journal mode, a busy
timeout, foreign keys on. Write transactions start with ``BEGIN IMMEDIATE`` so two processes
never deadlock upgrading a read lock; reads use a deferred ``BEGIN`` and never block writers.
PostgreSQL: any SQLAlchemy URL (``postgresql+psycopg://...``); job claims use
``FOR UPDATE SKIP LOCKED``.

Schema versions: a new database gets the current tables and is stamped with
``SCHEMA_VERSION``. An existing one is upgraded step by step through ``MIGRATIONS`` (each step
runs in its own transaction and records the version it reaches). A database written by a newer
calsync is refused rather than damaged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel

from calsync_cli.errors import StoreError
from calsync_cli.store import models
from calsync_cli.store.models import SCHEMA_VERSION

BUSY_TIMEOUT_MS = 30_000


def _v2_job_counts_index(conn: Connection) -> None:
    """``status`` counts jobs per integration and state; index it (a covering index scan)."""
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_job_integration_state ON job (integration_id, state)"
    )


def _v3_states_filters_render_inputs(conn: Connection) -> None:
    """The integration's "needs reconnect" flag (was a prefix of ``status_detail``), the private
    and reminders filters, a filter version, each link's render inputs, and sealed tokens.
    Google links keep generation 0 (a create with a deleted event's id restores it)."""
    false, true = ("false", "true") if conn.dialect.name == "postgresql" else ("0", "1")
    for ddl in (
        f"ALTER TABLE integration ADD COLUMN needs_reauth BOOLEAN NOT NULL DEFAULT {false}",
        "ALTER TABLE integration ADD COLUMN error_source VARCHAR",
        f"ALTER TABLE integration ADD COLUMN needs_calendar BOOLEAN NOT NULL DEFAULT {false}",
        f"ALTER TABLE integration ADD COLUMN f_private BOOLEAN NOT NULL DEFAULT {true}",
        "ALTER TABLE integration ADD COLUMN f_reminders BOOLEAN",
        "ALTER TABLE integration ADD COLUMN filter_version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE event_link ADD COLUMN visit_hash VARCHAR",
        "ALTER TABLE event_link ADD COLUMN filter_version INTEGER",
    ):
        conn.exec_driver_sql(ddl)
    conn.execute(
        sa.text(
            f"UPDATE integration SET needs_reauth = {true} "
            "WHERE status = 'Error' AND status_detail LIKE :prefix"
        ),
        {"prefix": "reconnect needed%"},
    )
    conn.exec_driver_sql(
        "UPDATE event_link SET generation = 0 WHERE integration_id IN "
        "(SELECT id FROM integration WHERE app = 'google')"
    )
    for table in (models.SealedToken, models.WorkerSeen):
        SQLModel.metadata.tables[table.__tablename__].create(conn, checkfirst=True)


#: version reached -> step that upgrades from the version before it
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _v2_job_counts_index,
    3: _v3_states_filters_render_inputs,
}


def _sqlite_path(url: sa.URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _prepare_sqlite_file(path: Path) -> None:
    """Create the directory and an empty 0600 file before SQLite opens it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"cannot create the database file {path}: {exc.strerror}",
            hint="Set CALSYNC_DB_URL to a writable location",
        ) from None


def _install_sqlite_hooks(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy (not pysqlite) decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("calsync_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; raises StoreError with a fix for a URL it cannot use."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(
            f"CALSYNC_DB_URL is not a database URL: {url!r}",
            hint="Use sqlite:///path/to/calsync.db or postgresql+psycopg://user@host/db",
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            path = _sqlite_path(parsed)
            if path is not None:
                _prepare_sqlite_file(path)
            engine = sa.create_engine(
                parsed,
                connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                hide_parameters=True,  # parameters hold patient names: keep them out of errors
            )
            _install_sqlite_hooks(engine)
        else:
            engine = sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(
            f"no database driver for {parsed.drivername}: {exc}",
            hint="For PostgreSQL install calsync[postgres] (psycopg)",
        ) from None
    return engine


def _read_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table(models.Meta.__tablename__):
        return None
    table = SQLModel.metadata.tables[models.Meta.__tablename__]
    row = conn.execute(
        sa.select(table.c.value).where(table.c.key == "schema_version")
    ).scalar_one_or_none()
    return int(row) if row is not None else None


def _write_version(conn: Connection, version: int) -> None:
    table = SQLModel.metadata.tables[models.Meta.__tablename__]
    conn.execute(table.delete().where(table.c.key == "schema_version"))
    conn.execute(table.insert().values(key="schema_version", value=str(version)))


def ensure_schema(engine: Engine) -> None:
    """Create or upgrade the schema. Safe to call from several processes at once."""
    try:
        with engine.connect().execution_options(calsync_begin="IMMEDIATE") as conn:
            with conn.begin():
                version = _read_version(conn)
                if version == SCHEMA_VERSION:
                    return
                if version is None:
                    if engine.dialect.name == "postgresql":
                        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
                        if _read_version(conn) == SCHEMA_VERSION:
                            return
                    SQLModel.metadata.create_all(conn)
                    _write_version(conn, SCHEMA_VERSION)
                    return
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"the database is at schema version {version}, newer than this calsync "
                        f"understands ({SCHEMA_VERSION})",
                        hint="Upgrade calsync, or point CALSYNC_DB_URL at another database",
                    )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                with conn.begin():
                    if (_read_version(conn) or 0) >= target:
                        continue
                    MIGRATIONS[target](conn)
                    _write_version(conn, target)
    except sa.exc.OperationalError as exc:
        raise StoreError(
            f"cannot open the database: {exc.orig}",
            hint="Check CALSYNC_DB_URL and that the database server is running",
        ) from None


class Store:
    """The database of one calsync installation."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        try:
            ensure_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite): commit, or roll back on error."""
        with self._session("IMMEDIATE") as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only transaction."""
        with self._session("DEFERRED") as session:
            yield session

    @contextmanager
    def _session(self, begin: str) -> Iterator[Session]:
        try:
            with (
                self.engine.connect().execution_options(calsync_begin=begin) as conn,
                Session(bind=conn, expire_on_commit=False) as session,
            ):
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
        except sa.exc.OperationalError as exc:
            raise StoreError(
                f"database error: {exc.orig}",
                hint="Check CALSYNC_DB_URL; if the file is locked, another calsync may be stuck",
            ) from None

    def close(self) -> None:
        self.engine.dispose()
