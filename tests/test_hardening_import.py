"""Issue 13, classes 2, 3 and 4 (import side): what import refuses, and how.

Every case runs the CLI as a user does (file and standard input), on SQLite and PostgreSQL, and
checks the outcome: one ``calsync: error:`` line naming the real problem, exit 2, nothing
written (the store's counts are unchanged), no traceback, no "unexpected internal error".
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from tests.conftest import PRACTICES, PROVIDERS, visit, write_jsonl

#: hundreds of refused files on both backends: in CI's slow pass (`pytest -m slow`), not the default run
pytestmark = pytest.mark.slow

runner = CliRunner()

PROVIDER_HEADER = b"id,name,email\n"


def run(*args: str, input: bytes | str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


@pytest.fixture
def seeded(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CALSYNC_DB_URL", db_url)
    for kind, rows in (("practices", PRACTICES), ("providers", PROVIDERS)):
        result = run(kind, "import", str(write_jsonl(tmp_path / f"{kind}.jsonl", rows)))
        assert result.exit_code == 0, result.stderr
    result = run("visits", "import", str(write_jsonl(tmp_path / "v.jsonl", [visit("seed")])))
    assert result.exit_code == 0, result.stderr
    return db_url


def counts(db_url: str) -> dict[str, int]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("practice", "provider", "visit", "job")
            }
    finally:
        engine.dispose()


def refused(db_url: str, kind: str, data: bytes, *args: str, via: str, tmp_path: Path) -> str:
    """Import ``data`` through a file or standard input; assert the one-line refusal and
    that nothing was written; return the line."""
    before = counts(db_url)
    if via == "stdin":
        result = run(kind, "import", "-", *args, "--json", input=data)
    else:
        suffix = ".csv" if "csv" in args else ".jsonl"
        path = tmp_path / f"input{suffix}"
        path.write_bytes(data)
        result = run(kind, "import", str(path), *args, "--json")
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calsync: error: "), result.stderr
    assert "unexpected internal error" not in lines[0] and "Traceback" not in result.stderr
    assert counts(db_url) == before
    return lines[0]


# ------------------------------------------------------------------ class 3: silent data loss

CSV_CASES = [
    # (name, kind, bytes, expected fragment of the one line)
    ("no header row", "providers", b"dr-x,Dr X,x@example.com\n", "is not a header"),
    ("wrong header", "providers", b"ident,nm\nx,X\n", "is not a header"),
    ("header lacks name", "providers", b"id,email\nx,x@example.com\n", "lacks the required"),
    (
        "visit header lacks start and end",
        "visits",
        b"id,practice_id,provider_id,patient_name\nv,main,dr-lee,Jane\n",
        "columns start, end",
    ),
    ("semicolons", "providers", b"id;name\nx;X\n", "separated by semicolons"),
    ("tabs", "providers", b"id\tname\nx\tX\n", "separated by tabs"),
    ("JSON Lines as CSV", "providers", b'{"id":"x","name":"X"}\n', "JSON Lines, not CSV"),
    ("unterminated quote", "providers", b'id,name\n"x,X\n', "unterminated quote"),
    ("latin-1", "providers", b"id,name\nx,J\xe9r\xf4me\n", "not UTF-8"),
    ("UTF-16 with BOM", "providers", "id,name\nx,X\n".encode("utf-16"), "UTF-16"),
    ("header only", "providers", PROVIDER_HEADER, "no rows"),
    ("empty", "providers", b"", "empty"),
    ("blank lines only", "providers", b"\n  \n\n", "empty"),
    ("duplicate column", "providers", b"id,name,name\nx,X,Y\n", "twice"),
    ("NUL byte", "providers", b"id,name\nx,A\x00B\n", "control character"),
]


def test_csv_sniffing_refuses_with_the_reason(seeded: str, tmp_path: Path) -> None:
    """One seeded store per backend for every case (a refusal writes nothing)."""
    for name, kind, data, expected in CSV_CASES:
        for via in ("file", "stdin"):
            line = refused(seeded, kind, data, "--format", "csv", via=via, tmp_path=tmp_path)
            assert expected in line, (name, via, line)


JSONL_CASES = [
    ("CSV as JSON Lines", b"id,name\nx,X\n", "looks like CSV"),
    ("NaN id", b'{"id": NaN, "name": "X"}\n', "NaN, Infinity"),
    ("Infinity id", b'{"id": -Infinity, "name": "X"}\n', "NaN, Infinity"),
    ("overflowing float id", b'{"id": 1e400, "name": "X"}\n', "not a finite number"),
    ("5000-digit id", b'{"id": 1' + b"0" * 5000 + b', "name": "X"}\n', "too deep/long"),
    ("deep nesting", b'{"id": ' + b"[" * 100_000 + b"\n", "not valid JSON"),
    ("lone surrogate", b'{"id": "a\\ud800", "name": "X"}\n', "lone surrogate"),
    ("NUL in a name", b'{"id": "a", "name": "A\\u0000B"}\n', "control character"),
    ("surrogate in a key", b'{"id": "a", "name": "X", "\\udfff": 1}\n', "lone surrogate"),
    ("latin-1", b'{"id": "a", "name": "J\xe9r\xf4me"}\n', "not UTF-8"),
    ("UTF-32", '{"id": "a", "name": "X"}\n'.encode("utf-32"), "UTF-32"),
    ("not an object", b'["id", "name"]\n', "JSON object"),
    ("bool id", b'{"id": true, "name": "X"}\n', "must be a string"),
    ("empty", b"", "empty"),
]


def test_jsonl_refusals(seeded: str, tmp_path: Path) -> None:
    for name, data, expected in JSONL_CASES:
        for via in ("file", "stdin"):
            line = refused(
                seeded, "providers", data, "--format", "jsonl", via=via, tmp_path=tmp_path
            )
            assert expected in line, (name, via, line)


def test_utf8_bom_is_read_on_every_path(seeded: str, tmp_path: Path) -> None:
    for n, (via, fmt) in enumerate((v, f) for v in ("file", "stdin") for f in ("csv", "jsonl")):
        body = f"id,name\nbom-{n},Dr BOM\n" if fmt == "csv" else f'{{"id":"bom-{n}","name":"B"}}\n'
        data = b"\xef\xbb\xbf" + body.encode()
        if via == "stdin":
            result = run("providers", "import", "-", "--format", fmt, "--json", input=data)
        else:
            path = tmp_path / f"bom.{fmt}"
            path.write_bytes(data)
            result = run("providers", "import", str(path), "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["created"] == 1, (via, fmt)
        assert "warning" not in result.stderr  # no "unknown column '\ufeffid'"


def test_stdin_without_format_sniffs_bom_jsonl(seeded: str) -> None:
    result = run("providers", "import", "-", "--json", input=b'\xef\xbb\xbf{"id":"s","name":"S"}\n')
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["created"] == 1


# ------------------------------------------------------------------ class 2: bounded dates

BAD_INSTANTS = [
    "0001-01-01T00:00:00+06:00",  # year 0 in UTC: overflowed on write
    "0001-01-01T10:00:00-06:00",
    "9999-12-31T20:00:00-06:00",  # year 10000 in UTC
    "9999-12-31T10:00:00+06:00",
    "1899-12-31T23:00:00+00:00",
    "2201-01-01T00:00:00+00:00",
    "1900-01-01T00:30:00+01:00",  # 1899 in UTC
]


def test_instants_outside_the_documented_years_are_refused(seeded: str, tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    for start in BAD_INSTANTS:
        end = (datetime.fromisoformat(start) + timedelta(minutes=30)).isoformat()
        rows = [visit("ok-1"), visit("odd", start=start, end=end), visit("ok-2")]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        for via in ("file", "stdin"):
            line = refused(seeded, "visits", data, "--format", "jsonl", via=via, tmp_path=tmp_path)
            assert ":2: start" in line and "outside the years 1900-2200" in line, line


def test_the_documented_edges_are_accepted(seeded: str, tmp_path: Path) -> None:
    rows = [
        visit("early", start="1900-01-01T00:00:00+00:00", end="1900-01-01T00:30:00+00:00"),
        visit("late", start="2200-12-31T23:00:00+00:00", end="2200-12-31T23:30:00+00:00"),
    ]
    result = run("visits", "import", str(write_jsonl(tmp_path / "edges.jsonl", rows)), "--json")
    assert result.exit_code == 0, result.stderr
    listed = run("visits", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert {"early", "late"} <= {v["id"] for v in json.loads(listed.stdout)["visits"]}


def test_visits_list_survives_an_odd_stored_row(seeded: str) -> None:
    """A row stored before import was bounded (or written by another tool) must not make
    ``visits list`` fail for everyone."""
    engine = sa.create_engine(seeded)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO practice (id, name, location, timezone, content_hash, updated_at)"
                " VALUES ('gone', 'Gone', NULL, 'No/Such_Zone', 'x', :now)"
            ),
            {"now": "2026-11-24 15:00:00"},
        )
        for vid, practice, start, end in (
            ("year-one", "main", "0001-01-01 00:00:00", "0001-01-01 00:30:00"),
            ("bad-zone", "gone", "2026-12-02 15:00:00", "2026-12-02 15:30:00"),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO visit (id, practice_id, provider_id, patient_name, start, "
                    '"end", status, content_hash, created_at, changed_at) VALUES (:id, :p, '
                    "'dr-lee', 'P', :s, :e, 'scheduled', 'x', :s, :s)"
                ),
                {"id": vid, "p": practice, "s": start, "e": end},
            )
    engine.dispose()
    for args in (("visits", "list", "--json"), ("visits", "list")):
        result = run(*args)
        assert result.exit_code == 0, result.stderr
    ids = [v["id"] for v in json.loads(run("visits", "list", "--json").stdout)["visits"]]
    assert ids == ["year-one", "seed", "bad-zone"]


# ------------------------------------------------------------------ class 10: time zone names


def test_time_zones_that_are_not_places_are_refused(seeded: str, tmp_path: Path) -> None:
    for zone in ("localtime", "Factory", "posixrules", "../etc/passwd", "utc", "Nowhere/Zone"):
        data = (json.dumps({"id": "z", "name": "Z", "timezone": zone}) + "\n").encode()
        line = refused(
            seeded, "practices", data, "--format", "jsonl", via="stdin", tmp_path=tmp_path
        )
        assert "unknown time zone" in line, line


# ------------------------------------------------------------------ class 4: concurrent imports


def test_concurrent_imports_of_the_same_new_ids_both_succeed(seeded: str, tmp_path: Path) -> None:
    """PostgreSQL lets two imports insert the same new ids at once; the loser's IntegrityError
    is retried (SQLite serialises the writers)."""
    from calsync_cli.services import imports
    from calsync_cli.store.db import Store
    from tests.conftest import NOW

    rows = [visit(f"c-{i}") for i in range(300)]
    path = write_jsonl(tmp_path / "same.jsonl", rows)
    barrier = threading.Barrier(3)
    outcomes: list[object] = []

    def worker() -> None:
        store = Store(os.environ["CALSYNC_DB_URL"])
        try:
            barrier.wait()
            outcomes.append(imports.import_file(store, "visits", str(path), now=NOW))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcomes.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(o, imports.ImportResult) for o in outcomes), outcomes
    assert sum(o.created for o in outcomes) == 300  # type: ignore[attr-defined]
    assert counts(seeded)["visit"] == 301
