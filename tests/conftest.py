"""Shared fixtures. Every test runs with its own config, data dir, database and keyring."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

PG_URL = os.environ.get("CALSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: CI sets this: a PostgreSQL test that cannot reach the server fails instead of skipping
REQUIRE_PG = os.environ.get("CALSYNC_REQUIRE_POSTGRES") == "1"

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every state path and the keyring at a temporary directory."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    for name in list(os.environ):
        if name.startswith("CALSYNC_") and name not in (
            "CALSYNC_TEST_PG_URL",
            "CALSYNC_REQUIRE_POSTGRES",
        ):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{tmp_path / 'calsync.db'}")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    previous = keyring.get_keyring()
    # Its file lives under XDG_DATA_HOME, so subprocesses (which get the same environment and
    # PYTHON_KEYRING_BACKEND) share this test's keyring.
    keyring.set_keyring(PlaintextKeyring())
    yield tmp_path
    keyring.set_keyring(previous)


@pytest.fixture
def keyring_backend() -> object:
    """The temporary keyring backend this test runs with (see ``isolated_env``)."""
    import keyring

    return keyring.get_keyring()


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    problem = _pg_reachable()
    if problem:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required here but unreachable at {PG_URL}: {problem}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {problem}")
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[object]:
    """A sandbox over loopback, a SQLite store seeded with practices and providers, and the
    settings that point calsync at both (see tests/engine_support.py)."""
    from calsync_cli.sandbox import Sandbox
    from tests.engine_support import make_env

    with Sandbox(port=0, auto_approve=True) as sb:
        e = make_env(tmp_path, sb)
        yield e
        e.store.close()


@pytest.fixture
def store(db_url: str) -> Iterator[object]:
    from calsync_cli.store.db import Store

    s = Store(db_url)
    yield s
    s.close()


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PRACTICES = [
    {
        "id": "main",
        "name": "Main Street Practice",
        "location": "12 Main Street",
        "timezone": "America/Chicago",
    },
    {
        "id": "river",
        "name": "Riverside Family Care",
        "location": "400 River Road",
        "timezone": "America/New_York",
    },
]
PROVIDERS = [
    {"id": "dr-lee", "name": "Dr. Ana Lee", "email": "ana@example.com"},
    {"id": "dr-patel", "name": "Dr. Raj Patel"},
]


def visit(vid: str, **over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": vid,
        "practice_id": "main",
        "provider_id": "dr-lee",
        "patient_name": "Jane Doe",
        "visit_type": "Follow Up",
        "room": "Room 2",
        "start": "2026-12-01T09:00:00-06:00",
        "end": "2026-12-01T09:30:00-06:00",
    }
    row.update(over)
    return row
