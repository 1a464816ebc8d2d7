"""A read-only fast path for ``calsync status``: the database driver alone, no ORM.

``status`` is what support staff and monitoring run most, and importing SQLAlchemy and pydantic
costs more than the whole answer. When the store is an existing SQLite file, or a PostgreSQL
database reachable with psycopg, at the current schema version, these functions answer from it
directly; otherwise (or on any database error) they return None and the caller uses the full
store, which also creates or upgrades the schema and words the errors. A test asserts both
paths give identical answers on both backends.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

#: kept equal to models.SCHEMA_VERSION by a test (importing models here would defeat the purpose)
SCHEMA_VERSION = 3
_LIVE = ("queued", "running", "held")
#: kept equal to store.status.FAILURES_SHOWN by a test
FAILURES_SHOWN = 20


def _sqlite_file(url: str) -> Path | None:
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = unquote(url[len(prefix) :])
            if not rest or rest.startswith(":memory:") or "?" in rest:
                return None
            return Path(rest).expanduser()
    return None


@dataclass
class _Db:
    conn: Any  # a DB-API connection
    param: str  # its placeholder
    state: str  # how to name job.state in the counting query
    errors: tuple[type[BaseException], ...]

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return list(self.conn.execute(sql.replace("?", self.param), params).fetchall())


def _sqlite(url: str) -> _Db | None:
    path = _sqlite_file(url)
    if path is None or not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return None
    # "+state" keeps SQLite from filtering through ix_job_due (state, next_attempt_at): a scan
    # of the covering ix_job_integration_state is ~3x faster at 100k jobs.
    return _Db(conn, "?", "+state", (sqlite3.Error,))


def _postgresql(url: str) -> _Db | None:
    """SQLAlchemy's ``postgresql[+psycopg]://user:password@host:port/dbname?key=value`` as
    psycopg connection parameters (the query keys are libpq's, as SQLAlchemy passes them)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgresql+psycopg"):
        return None
    try:
        import psycopg
    except ImportError:
        return None
    params: dict[str, Any] = dict(parse_qsl(parts.query))
    for key, value in (
        ("host", parts.hostname),
        ("port", parts.port),
        ("user", parts.username),
        ("password", parts.password),
        ("dbname", parts.path.lstrip("/")),
    ):
        if value:
            params[key] = unquote(value) if isinstance(value, str) else value
    params.setdefault("connect_timeout", 10)  # libpq waits forever by default
    try:
        conn = psycopg.connect(autocommit=True, **params)
        conn.read_only = True
    except (psycopg.Error, ValueError):
        return None
    return _Db(conn, "%s", "state", (psycopg.Error,))


def _connect(url: str) -> _Db | None:
    db = _sqlite(url) or _postgresql(url)
    if db is None:
        return None
    try:
        version = db.query("SELECT value FROM calsync_meta WHERE key = 'schema_version'")
    except db.errors:
        db.conn.close()
        return None
    if not version or int(version[0][0]) != SCHEMA_VERSION:
        db.conn.close()
        return None
    return db


def _iso(value: str | datetime | None) -> str | None:
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return when.replace(tzinfo=UTC).isoformat()  # stored as naive UTC


def status_rows(url: str, integration_id: int | None = None) -> list[dict[str, Any]] | None:
    db = _connect(url)
    if db is None:
        return None
    try:
        sql = (
            "SELECT id, provider_id, app, account, calendar_id, calendar_name, direction, status,"
            " status_detail, paused, last_synced_at FROM integration"
        )
        params: tuple[Any, ...] = ()
        if integration_id is not None:
            sql += " WHERE id = ?"
            params = (integration_id,)
        integrations = db.query(sql + " ORDER BY id", params)
        if integration_id is not None and not integrations:
            return None  # the full path raises the proper "no integration" error
        counts: dict[tuple[int, str], int] = {}
        for iid, state, n in db.query(
            "SELECT integration_id, state, count(*) FROM job"
            f" WHERE {db.state} IN ('queued', 'running', 'held', 'failed')"
            " GROUP BY integration_id, state"
        ):
            counts[(iid, state)] = n
        rows = [
            {
                "id": row[0],
                "provider_id": row[1],
                "app": row[2],
                "account": row[3],
                "calendar_id": row[4],
                "calendar_name": row[5],
                "direction": row[6],
                "status": row[7],
                "status_detail": row[8],
                "paused": bool(row[9]),
                "last_synced_at": _iso(row[10]),
                "queued": sum(counts.get((row[0], s), 0) for s in _LIVE),
                "failed": counts.get((row[0], "failed"), 0),
            }
            for row in integrations
        ]
        if integration_id is not None:
            rows[0]["failures"] = [
                {
                    "visit_id": visit_id,
                    "start": _iso(start),
                    "action": action,
                    "error": error,
                    "failed_at": _iso(failed_at),
                }
                for visit_id, start, action, error, failed_at in db.query(
                    "SELECT job.visit_id, visit.start, job.action, job.last_error, job.updated_at"
                    " FROM job JOIN visit ON visit.id = job.visit_id"
                    " WHERE job.integration_id = ? AND job.state = 'failed'"
                    " ORDER BY job.updated_at DESC, job.id DESC LIMIT ?",
                    (integration_id, FAILURES_SHOWN),
                )
            ]
        return rows
    except db.errors:
        return None
    finally:
        db.conn.close()
