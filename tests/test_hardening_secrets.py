"""Issue 13, class 1: third-party error text never reaches stderr, ``--json`` or the database.

A damaged keyring file whose parse error quotes a stored token, and database URLs carrying a
password, run through the CLI as a user runs it; the secret must be absent from stderr,
stdout (``--json``) and every text column of the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from tests.conftest import PRACTICES, PROVIDERS, visit, write_jsonl

runner = CliRunner()
TOKEN = "ya29.SECRET-ACCESS-TOKEN-0123456789"
PASSWORD = "S3cretPw-xyz"


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def _store_text(db_url: str) -> str:
    """Every value of every table, as text: what a secret must not be part of."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return "\n".join(
                repr(row)
                for name in names
                for row in conn.execute(sa.text(f'SELECT * FROM "{name}"'))
            )
    finally:
        engine.dispose()


def _seed_integration(tmp_path: Path) -> int:
    from tests.engine_support import make_integration

    for kind, rows in (("practices", PRACTICES), ("providers", PROVIDERS)):
        assert (
            run(kind, "import", str(write_jsonl(tmp_path / f"{kind}.jsonl", rows))).exit_code == 0
        )
    iid = make_integration()
    visits = write_jsonl(tmp_path / "visits.jsonl", [visit("a"), visit("b")])
    assert run("visits", "import", str(visits)).exit_code == 0
    return iid


def _damage_keyring() -> Path:
    """Rewrite the plaintext keyring file so that its parser fails on a line holding a token
    (configparser's ParsingError quotes the offending line)."""
    import keyring

    backend = keyring.get_keyring()
    backend.set_password("calsync", "integration:1", json.dumps({"access_token": TOKEN}))
    path = Path(backend.file_path)
    path.write_text(path.read_text() + f"\n{TOKEN} garbage without an equals sign\n")
    return path


def test_damaged_keyring_file_never_leaks_its_token(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_DB_URL", db_url)
    monkeypatch.setenv("CALSYNC_GOOGLE_CLIENT_ID", "client.apps.googleusercontent.com")
    monkeypatch.setenv("CALSYNC_GOOGLE_CLIENT_SECRET", "not-a-real-secret")
    for name in ("AUTH", "TOKEN", "REVOKE", "API", "BATCH"):  # nothing leaves loopback
        monkeypatch.setenv(f"CALSYNC_GOOGLE_{name}_URL", "http://127.0.0.1:9/x")
    _seed_integration(tmp_path)
    _damage_keyring()
    outputs = []
    for args in (("sync", "--json"), ("sync",), ("status", "1", "--json"), ("status",)):
        result = run(*args)
        outputs.append(result.stdout + result.stderr)
        assert "Traceback" not in result.stderr
        assert "unexpected internal error" not in result.stderr
    everything = "\n".join(outputs)
    assert TOKEN not in everything and "ACCESS-TOKEN" not in everything
    # the failure is visible, with the backend's class and a fixed summary
    assert "the keyring file cannot be parsed" in everything
    stored = _store_text(db_url)
    assert "ACCESS-TOKEN" not in stored
    assert "the keyring file cannot be parsed" in stored  # status_detail / job.last_error


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:abc/test",  # bad port
        f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:99999/test",  # port out of range
        f"post gres://postgres:{PASSWORD}@127.0.0.1/test",  # not a URL SQLAlchemy parses
        f"postgresql+psycopg://postgres:{PASSWORD}@@127.0.0.1:abc/test",  # '@' in it
        f"postgresql+nosuchdriver://postgres:{PASSWORD}@127.0.0.1/test",  # no driver
        f"postgresql+psycopg://no_such_role:{PASSWORD}@127.0.0.1:1/test",  # nothing listens
        f"postgresql+psycopg://127.0.0.1:1/test?user=x&password={PASSWORD}",  # in the query
    ],
)
@pytest.mark.parametrize("command", [("status",), ("visits", "list"), ("sync",)])
def test_db_url_password_is_never_shown(
    url: str, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_DB_URL", url)
    result = run(*command, "--json")
    assert result.exit_code in (1, 2), result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calsync: error: "), result.stderr
    assert PASSWORD not in result.stderr
    assert "unexpected internal error" not in result.stderr


def test_config_file_db_url_password_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'db_url = "postgresql://u:{PASSWORD}@h:notaport/db"\n')
    monkeypatch.delenv("CALSYNC_DB_URL")
    monkeypatch.setenv("CALSYNC_CONFIG", str(config))
    result = run("status", "--json")
    assert result.exit_code == 2 and PASSWORD not in result.stderr
    assert "u:***@h" in result.stderr


def test_safe_summary_never_copies_library_text() -> None:
    import configparser
    import sqlite3

    from calsync_cli.errors import safe_summary

    parse = configparser.ParsingError("keyring_pass.cfg")
    parse.append(3, f"{TOKEN} garbage")
    assert TOKEN in str(parse)  # the library quotes the line...
    assert safe_summary(parse) == "ParsingError: the keyring file cannot be parsed"  # ...we don't
    assert safe_summary(ValueError(TOKEN)) == "ValueError"
    assert safe_summary(sqlite3.DatabaseError("file is not a database")) == (
        "DatabaseError: the file is not a SQLite database"
    )
    wrapped = sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
    assert safe_summary(wrapped) == "OperationalError: the database is locked by another process"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("x postgresql+psycopg://u:p@ss@h:5/db y", "x postgresql+psycopg://u:***@h:5/db y"),
        ("postgresql://h/db?user=u&password=pw&sslmode=require", None),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_redact_url(text: str, shown: str | None) -> None:
    from calsync_cli.errors import redact_url

    out = redact_url(text)
    assert "pw" not in out and "p@ss" not in out
    if shown is not None:
        assert out == shown
