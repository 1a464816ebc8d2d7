"""Issue 13: random input never ends in a traceback or an internal error (Hypothesis).

Random rows and random bytes go to every importer (practices, providers, visits; JSON Lines
and CSV; a file and standard input), random arguments to every command. The outcome is always
exit 0 with the rows stored, or exit 2 with one ``calsync: error:`` line and nothing written
(commands may also exit 1 or 4: a failure in one line, or a report such as ``doctor``'s). Derandomized and bounded: a few seconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from calsync_cli.services.imports import FIELDS
from tests.conftest import PRACTICES, PROVIDERS, visit, write_jsonl

#: Hypothesis over every importer and command: thorough, and long: in CI's slow pass (`pytest -m slow`), not the default run
pytestmark = pytest.mark.slow

runner = CliRunner()
SETTINGS = settings(
    derandomize=True,
    max_examples=120,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
KINDS = ("practices", "providers", "visits")
TABLES = {"practices": "practice", "providers": "provider", "visits": "visit"}

# ------------------------------------------------------------------ strategies

weird_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from("\x00\x7f\n\r\t,;\"'{"),
    max_size=12,
)
instants = st.one_of(
    st.datetimes(
        min_value=__import__("datetime").datetime(1, 1, 1),
        max_value=__import__("datetime").datetime(9999, 12, 31),
        timezones=st.timezones(),
    ).map(lambda d: d.isoformat()),
    st.sampled_from(["2026-12-01T09:00:00-06:00", "2026-12-01T09:30:00-06:00", "2026-12-01"]),
    weird_text,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    weird_text,
    st.lists(st.integers(), max_size=2),
)


def _value(field: str) -> st.SearchStrategy[Any]:
    good = {
        "practice_id": st.sampled_from(["main", "river", "nowhere"]),
        "provider_id": st.sampled_from(["dr-lee", "dr-patel", "nobody"]),
        "timezone": st.sampled_from(
            ["America/Chicago", "localtime", "Factory", "Mars/Base", "UTC"]
        ),
        "start": instants,
        "end": instants,
        "status": st.sampled_from(["scheduled", "cancelled", "No Show", "gone"]),
        "id": st.text("abcxyz-0123456789", min_size=1, max_size=6),
    }.get(field, st.text(min_size=1, max_size=8))
    return st.one_of(good, good, good, scalars)


@st.composite
def rows(draw: st.DrawFn, kind: str) -> list[dict[str, Any]]:
    required, optional = FIELDS[kind]
    fields = list(required) + list(optional)
    out = []
    for _ in range(draw(st.integers(0, 4))):
        names = [f for f in fields if draw(st.integers(0, 9)) > 0]  # mostly all present
        if draw(st.booleans()) and draw(st.booleans()):
            names.append(draw(st.sampled_from(["extra", "", "ID", "\ufeffid", "id "])))
        out.append({n: draw(_value(n)) for n in names})
    return out


def serialise(kind: str, data: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in data).encode("utf-8", "surrogatepass")
    header: list[str] = []
    for r in data:
        header += [k for k in r if k not in header]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header or FIELDS[kind][0])
    for r in data:
        writer.writerow(["" if r.get(h) is None else r.get(h) for h in header])
    return buffer.getvalue().encode("utf-8", "surrogatepass")


raw_bytes = st.one_of(
    st.binary(max_size=200),
    st.tuples(
        st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"id,name\n", b"{", b'{"id":']),
        st.binary(max_size=120),
    ).map(lambda t: t[0] + t[1]),
)

# ------------------------------------------------------------------ the store


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    for kind, data in (
        ("practices", PRACTICES),
        ("providers", PROVIDERS),
        ("visits", [visit("a")]),
    ):
        assert runner.invoke(app, [kind, "import", str(write_jsonl(tmp_path / f"{kind}.jsonl", data))]).exit_code == 0  # fmt: skip
    return tmp_path


def fingerprint() -> tuple[Any, ...]:
    engine = sa.create_engine(os.environ["CALSYNC_DB_URL"])
    try:
        with engine.connect() as conn:
            return tuple(
                tuple(conn.execute(sa.text(f"SELECT id, content_hash FROM {t} ORDER BY id")))
                for t in ("practice", "provider", "visit")
            ) + (conn.execute(sa.text("SELECT count(*) FROM job")).scalar_one(),)
    finally:
        engine.dispose()


def stored_ids(kind: str) -> set[str]:
    engine = sa.create_engine(os.environ["CALSYNC_DB_URL"])
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.text(f"SELECT id FROM {TABLES[kind]}"))}
    finally:
        engine.dispose()


def check_import(tmp_path: Path, kind: str, data: bytes, fmt: str | None, via: str) -> int:
    before = fingerprint()
    args = [kind, "import"]
    if via == "stdin":
        args.append("-")
    else:
        path = tmp_path / f"random.{fmt or 'csv'}"
        path.write_bytes(data)
        args.append(str(path))
    if fmt is not None:
        args += ["--format", fmt]
    result = runner.invoke(app, [*args, "--json"], input=data if via == "stdin" else None)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    if result.exit_code == 0:
        assert json.loads(result.stdout)["kind"] == kind
        assert "calsync: error" not in result.stderr
    else:
        assert result.exit_code == 2, (result.exit_code, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("calsync: error: "), result.stderr
        assert fingerprint() == before
    return result.exit_code


@SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    fmt=st.sampled_from(["jsonl", "csv"]),
    via=st.sampled_from(["file", "stdin"]),
    data=st.data(),
)
def test_random_rows_are_stored_or_refused_in_one_line(
    seeded: Path, kind: str, fmt: str, via: str, data: st.DataObject
) -> None:
    generated = data.draw(rows(kind))
    code = check_import(seeded, kind, serialise(kind, generated, fmt), fmt, via)
    if code == 0:
        # a CSV row whose cells are all empty is a blank line: skipped, like in JSON Lines
        expected = {str(r["id"]).strip() for r in generated if r.get("id") not in (None, "")}
        assert expected <= stored_ids(kind)


@SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    fmt=st.sampled_from(["jsonl", "csv", None]),
    via=st.sampled_from(["file", "stdin"]),
    data=raw_bytes,
)
def test_random_bytes_are_refused_in_one_line(
    seeded: Path, kind: str, fmt: str | None, via: str, data: bytes
) -> None:
    check_import(seeded, kind, data, fmt, via)


# ------------------------------------------------------------------ random arguments

#: commands that run until stopped, or run the whole demo: not for random arguments
SKIP = {("demo",), ("sandbox", "serve")}


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        elif path not in SKIP:
            found.append((path, command))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = _commands()
tokens = st.one_of(
    st.sampled_from(["1", "0", "-1", "2", str(2**31), str(2**63), "9" * 30, "1e400", "inf",
                     "nan", "-inf", "0.05", "24h", "99999999999d", "two-way", "push", "primary",
                     "dr-lee", "main", "2026-12-01", "2026-13-45", "9999-12-31", "0001-01-01T00:00+05:00",
                     "-", "--", "", "--json"]),
    weird_text.filter(lambda t: "\x00" not in t),
)  # fmt: skip


@st.composite
def invocations(draw: st.DrawFn) -> list[str]:
    path, command = draw(st.sampled_from(COMMANDS))
    options = [o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))]
    options = [o for o in options if o.startswith("-") and o not in ("--watch", "-h", "--help")]
    args = list(path)
    for _ in range(draw(st.integers(0, 5))):
        if options and draw(st.booleans()):
            args.append(draw(st.sampled_from(options)))
        else:
            args.append(draw(tokens))
    if path[0] == "disconnect" and "--yes" not in args:
        args.append("--yes")
    if path[0] == "doctor":  # no network beyond loopback in tests
        args.append("--offline")
    if path[0] == "connect":
        args += ["--no-browser", "--timeout", "1"]
    return args


@SETTINGS
@given(args=invocations())
def test_random_arguments_end_in_one_line(seeded: Path, args: list[str]) -> None:
    result = runner.invoke(app, args, input="")
    assert "Traceback" not in result.stderr, (args, result.stderr)
    assert "internal error" not in result.stderr, (args, result.stderr)
    assert "Exception ignored" not in result.stderr
    assert result.exit_code in (0, 1, 2, 4), (args, result.exit_code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("calsync: error:")]
    if result.exit_code == 0:
        assert not errors, (args, result.stderr)
    elif result.exit_code == 2:  # bad usage or input: exactly the one line, no output
        assert len(errors) == 1, (args, result.exit_code, result.stderr)
        if "--json" in args:
            assert result.stdout == "", (args, result.stdout)
    else:  # 1 or 4: a failure (one line), or a report that found trouble (doctor, verify)
        assert len(errors) <= 1, (args, result.exit_code, result.stderr)
