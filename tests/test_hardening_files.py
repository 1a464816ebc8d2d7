"""Issue 13, classes 4 and 9: database files and URLs calsync did not create.

- A file that is not a database, a SQLite database of another application, a PostgreSQL schema
  holding tables with calsync's names: refused (exit 2) with the fix, and left untouched.
- A calsync SQLite file open to other users: made 0600, said once.
- A read-only directory (or file) holding calsync's database: ``status`` and ``visits list``
  work; writing commands refuse with one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from tests.conftest import PRACTICES, PROVIDERS, visit, write_jsonl

runner = CliRunner()
COMMANDS = (("status",), ("visits", "list"), ("practices", "import", "-"), ("sync",))


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def one_line(result, code: int) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calsync: error: "), result.stderr
    assert "unexpected internal error" not in lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seed(tmp_path: Path) -> None:
    for kind, rows in (
        ("practices", PRACTICES),
        ("providers", PROVIDERS),
        ("visits", [visit("a")]),
    ):
        result = run(kind, "import", str(write_jsonl(tmp_path / f"{kind}.jsonl", rows)))
        assert result.exit_code == 0, result.stderr


# ------------------------------------------------------------------ not calsync's


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, I am a text file\n",
        bytes(range(256)) * 64,
        b"SQLite format 3\x00" + b"\xff" * 100,
    ],
    ids=["empty", "text", "binary", "bad-sqlite-header"],
)
def test_a_file_that_is_not_a_database_is_refused_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{path}")
    if not content:  # an empty file is where calsync creates a new database: allowed
        assert run("status", "--json").exit_code == 0
        return
    before = digest(path)
    for args in COMMANDS:
        line = one_line(run(*args, "--json", input='{"id":"x"}\n'), 2)
        assert "not a SQLite database" in line and str(path) in line
    assert digest(path) == before


def test_a_directory_as_the_database_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{tmp_path}")
    for args in COMMANDS:
        assert "not a file" in one_line(run(*args, input="x"), 2)


def test_another_applications_sqlite_database_is_refused_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
        conn.commit()
    before = digest(path)
    monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{path}")
    for args in COMMANDS:
        line = one_line(run(*args, "--json", input='{"id":"x"}\n'), 2)
        assert "tables that calsync did not create (invoices)" in line
        assert "CALSYNC_DB_URL" in line
    assert digest(path) == before
    assert (
        not path.with_name("app.db-wal").exists()
        or path.with_name("app.db-wal").stat().st_size == 0
    )


def test_tables_with_calsyncs_names_are_refused_on_both_backends(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE visit (visit_no INTEGER, notes TEXT)"))
    monkeypatch.setenv("CALSYNC_DB_URL", db_url)
    for args in COMMANDS:
        assert "did not create (visit)" in one_line(run(*args, input="x"), 2)
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == ["visit"]
    engine.dispose()


# ------------------------------------------------------------------ permissions


@pytest.mark.parametrize("mode", [0o644, 0o664, 0o666, 0o640, 0o604])
def test_loose_permissions_are_tightened_and_said_once(tmp_path: Path, mode: int) -> None:
    seed(tmp_path)
    path = Path(os.environ["CALSYNC_DB_URL"].removeprefix("sqlite:///"))
    for command in (("status",), ("visits", "list")):
        path.chmod(mode)
        first = run(*command, "--json")
        assert first.exit_code == 0, first.stderr
        assert "made the database" in first.stderr and "private" in first.stderr
        assert f"{mode:04o}" in first.stderr
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        json.loads(first.stdout)  # stdout is still one JSON document
        again = run(*command, "--json")
        assert again.exit_code == 0 and "private" not in again.stderr


# ------------------------------------------------------------------ read-only


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """``directory`` as a read-only directory: mode 0555 for a normal user; for root (whom
    modes do not stop) a read-only bind mount of it. Skips when neither is possible."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield directory
        finally:
            directory.chmod(0o755)
        return
    view = directory.with_name(directory.name + "-ro")
    view.mkdir()
    if subprocess.run(
        ["mount", "--bind", "-o", "ro", directory, view], capture_output=True
    ).returncode:
        pytest.skip("cannot make a read-only directory here (root, no bind mount)")
    subprocess.run(["mount", "-o", "remount,ro,bind", view], capture_output=True)
    try:
        if os.access(view, os.W_OK):
            pytest.skip("the bind mount is not read-only")
        yield view
    finally:
        subprocess.run(["umount", view], check=True)


LEAVE_WAL_FILES = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM visit").fetchall()
os._exit(0)  # no close: the -wal and -shm files stay, as after a killed calsync
"""


@pytest.mark.parametrize("leftover", [False, True], ids=["closed-cleanly", "wal-files-left"])
def test_a_read_only_directory_still_allows_read_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leftover: bool
) -> None:
    import sys

    from calsync_cli.cli import context

    home = tmp_path / "db"
    home.mkdir()
    database = home / "calsync.db"
    monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{database}")
    seed(tmp_path)
    context.reset()  # close the store the last command left open
    assert not database.with_name("calsync.db-wal").exists()
    if leftover:
        subprocess.run([sys.executable, "-c", LEAVE_WAL_FILES, database], check=True)
        assert database.with_name("calsync.db-shm").exists()
    before = sorted(p.name for p in home.iterdir())
    with read_only(home) as view:
        monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{view / 'calsync.db'}")
        status = run("status", "--json")
        assert status.exit_code == 0, status.stderr
        assert json.loads(status.stdout) == {"integrations": []}
        human = run("status")
        assert "No integrations yet (2 practices, 2 providers, 1 visits stored)" in human.stderr
        listed = run("visits", "list", "--json")
        assert listed.exit_code == 0, listed.stderr
        assert [v["id"] for v in json.loads(listed.stdout)["visits"]] == ["a"]
        for args in (
            ("visits", "import", str(tmp_path / "visits.jsonl")),
            ("toggle", "1"),
            ("sync",),
            ("sweep",),
        ):
            line = one_line(run(*args), 1)
            assert "read-only" in line, line
        context.reset()
    assert sorted(p.name for p in home.iterdir()) == before
