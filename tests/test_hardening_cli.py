"""Issue 13, classes 4, 8 and 10 on the command line: numbers that overflow, contradictions,
Click's usage errors in calsync's one-line format, closed pipes and narrow terminals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from tests.conftest import PRACTICES, PROVIDERS, visit, write_jsonl

#: subprocesses under pipes and many terminal widths: in CI's slow pass (`pytest -m slow`)
pytestmark = pytest.mark.slow

runner = CliRunner()


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def one_line_exit_2(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("calsync: error: "), result.stderr
    assert "unexpected internal error" not in lines[0]
    return lines[0]


@pytest.fixture
def seeded(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Practices, providers, two visits and one integration on each backend; its id."""
    monkeypatch.setenv("CALSYNC_DB_URL", db_url)
    return _seed(db_url, tmp_path)


@pytest.fixture
def seeded_sqlite(tmp_path: Path) -> int:
    """The same in the test's SQLite file (output does not depend on the backend)."""
    return _seed(os.environ["CALSYNC_DB_URL"], tmp_path)


def _seed(db_url: str, tmp_path: Path) -> int:
    from calsync_cli.cli import context
    from calsync_cli.services import integrations
    from calsync_cli.store.db import Store

    for kind, rows in (("practices", PRACTICES), ("providers", PROVIDERS)):
        assert (
            run(kind, "import", str(write_jsonl(tmp_path / f"{kind}.jsonl", rows))).exit_code == 0
        )
    store = Store(db_url)
    with store.write() as s:
        iid = integrations.create(
            s, provider_id="dr-lee", app="google", now=context.now(), account="a@example.com",
            calendar_id="primary",
        ).id  # fmt: skip
    store.close()
    overnight = visit("night", start="2026-12-01T23:00:00-06:00", end="2026-12-02T01:00:00-06:00")
    path = write_jsonl(tmp_path / "visits.jsonl", [visit("a"), overnight])
    assert run("visits", "import", str(path)).exit_code == 0
    assert iid is not None
    return iid


# ------------------------------------------------------------------ class 4: overflow

HUGE = str(2**63)
HUGER = "9" * 40


def test_huge_numbers_are_usage_errors_not_internal_errors(seeded: int) -> None:
    cases = [
        ("status", HUGE),
        ("status", HUGER),
        ("toggle", HUGER, "--pause"),
        ("filters", "show", HUGE),
        ("filters", "set", HUGER, "--notes"),
        ("direction", HUGER, "push"),
        ("calendars", "list", HUGER),
        ("calendars", "select", HUGER, "primary"),
        ("disconnect", HUGER, "--yes"),
        ("conflicts", HUGER),
        ("visits", "list", "--limit", HUGER),
        ("sync", "--watch", "--interval", "1e300"),
        ("connect", "google", "--provider", "dr-lee", "--timeout", "1e400"),
        ("connect", "google", "--provider", "dr-lee", "--port", HUGER),
        ("sweep", "--lookback", "99999999999999999999h"),
        ("sweep", "--lookback", "1e5d"),
    ]
    for args in cases:
        line = one_line_exit_2(run(*args, "--json"))
        assert "Traceback" not in line, args


def test_dates_outside_the_documented_years_are_usage_errors(seeded: int) -> None:
    for option, value in (
        ("--to", "9999-12-31"),
        ("--from", "0001-01-01"),
        ("--from", "0001-01-01T00:00+05:00"),
        ("--to", "9999-12-31T23:59-05:00"),
        ("--from", "1899-12-31"),
    ):
        line = one_line_exit_2(run("visits", "list", option, value, "--json"))
        assert "outside the years 1900-2200" in line
    assert run("visits", "list", "--to", "2200-12-31", "--json").exit_code == 0


def test_text_that_is_not_utf8_is_a_usage_error(seeded: int, tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in an argument or a setting reach Python as lone surrogates
    (``$'\\xff'`` in a shell): refused in one line, except in a file name, which may be any
    bytes."""
    bad = "dr-\udcff"
    for args in (
        ("visits", "list", "--provider", bad),
        ("filters", "set", str(seeded), "--practice", bad),
        ("connect", "google", "--provider", bad),
        ("calendars", "select", str(seeded), bad),
        ("visits", "list", "--practice", "a\x00b"),
    ):
        assert "Invalid value" in one_line_exit_2(run(*args)), args
    odd_name = tmp_path / "practices-\udcff.jsonl"
    write_jsonl(odd_name, PRACTICES)  # on disk: the byte 0xff
    assert run("practices", "import", str(odd_name), "--json").exit_code == 0
    for name, value in (
        ("CALSYNC_DB_URL", "sqlite:////tmp/\udcff.db"),
        ("CALSYNC_VISIT_URL", "https://pm/\udcff/{visit_id}"),
        ("CALSYNC_GOOGLE_CLIENT_ID", "id\udcff"),
    ):
        result = runner.invoke(app, ["status", "--json"], env={name: value})
        assert name in one_line_exit_2(result)


def test_largest_accepted_integers_answer_not_found(seeded: int) -> None:
    for args in (("status", str(2**31 - 1)), ("toggle", str(2**31 - 1))):
        line = one_line_exit_2(run(*args))
        assert "no integration" in line
    for args in (("status", str(2**31)), ("filters", "show", str(2**31))):
        assert "is too large (at most 2147483647)" in one_line_exit_2(run(*args))


# ------------------------------------------------------------------ class 10: contradictions


def test_every_flag_pair_given_both_ways_is_refused(seeded: int) -> None:
    """Walk the real command tree: every ``--x/--no-x`` option of every command refuses both."""
    root = typer.main.get_command(app)
    tried = 0

    def walk(command, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        nonlocal tried
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for param in command.params:
            for on in param.opts:
                for off in getattr(param, "secondary_opts", ()):
                    args = [*path]
                    needs_integration = any(p.name == "integration" for p in command.params)
                    if needs_integration:
                        args.append(str(seeded))
                    line = one_line_exit_2(run(*args, on, off))
                    assert f"{on} and {off} contradict each other" in line, line
                    tried += 1

    walk(root, [])
    assert tried >= 6  # toggle --pause/--resume and filters set's five pairs, at least


def test_other_contradictions(seeded: int) -> None:
    cases = {
        ("sync", "--interval", "5"): "--interval only applies with --watch",
        ("sync", "--interval", "inf", "--watch"): "not a number of seconds",
        ("sync", "--interval", "nan", "--watch"): "--interval",
        ("sync", "--interval", "-inf", "--watch"): "--interval",
        ("filters", "set", str(seeded), "--all-practices", "--practice", "main"): "contradict",
        ("filters", "set", str(seeded), "--all-providers", "--provider", "x"): "contradict",
    }
    for args, expected in cases.items():
        assert expected in one_line_exit_2(run(*args)), args
    # nothing changed
    assert json.loads(run("filters", "show", str(seeded), "--json").stdout)["notes"] is False


def test_click_usage_errors_use_the_one_line_format(seeded: int) -> None:
    cases = {
        ("nosuch",): "No such command 'nosuch'",
        ("status", "--bogus"): "No such option: --bogus",
        ("toggle", "abc"): "Invalid value for 'INTEGRATION'",
        ("toggle",): "Missing argument 'INTEGRATION'",
        ("direction", str(seeded), "sideways"): "Invalid value",
        ("visits", "list", "--limit", "0"): "--limit",
        ("connect", "google"): "Missing option '--provider'",
        ("sync", "--interval"): "requires an argument",
        ("visits", "list", "extra"): "unexpected extra argument",
    }
    for args, expected in cases.items():
        line = one_line_exit_2(run(*args))
        assert expected in line and "-h' for help" in line, (args, line)
        assert "Usage:" not in line


def test_non_finite_and_huge_numbers_as_ids_in_files(seeded: int, tmp_path: Path) -> None:
    for raw in ('{"id": NaN, "name": "X"}', '{"id": 1e999, "name": "X"}'):
        result = run("providers", "import", "-", "--format", "jsonl", input=raw + "\n")
        one_line_exit_2(result)


# ------------------------------------------------------------------ class 8: output


@pytest.mark.parametrize(
    "command", [("visits", "list", "--json"), ("visits", "list"), ("status",), ("-h",)]
)
def test_a_closed_pipe_is_quiet(
    seeded_sqlite: int, command: tuple[str, ...], tmp_path: Path
) -> None:
    """``calsync ... | true``: the reader is gone before calsync writes (a pipe whose read end
    is closed). Exit 0 or 141, nothing on stderr: no "Exception ignored", no internal error."""
    rows = [visit(f"p{i}") for i in range(300)]  # more output than a pipe buffer holds
    assert run("visits", "import", str(write_jsonl(tmp_path / "many.jsonl", rows))).exit_code == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run(
        [sys.executable, "-m", "calsync_cli", *command], stdout=write_end,
        stderr=subprocess.PIPE, text=True, timeout=60, env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    os.close(write_end)
    assert proc.returncode in (0, 141), (proc.returncode, proc.stderr)
    assert proc.stderr == "", proc.stderr


def _unfold(text: str) -> str:
    """A table's text with each column's folded pieces joined (column after column, without
    whitespace); a record layout (``column: value`` lines) without whitespace."""
    columns: dict[int, list[str]] = {}
    rest: list[str] = []
    for line in text.splitlines():
        if "│" in line or "┃" in line:
            for j, cell in enumerate(line.replace("┃", "│").split("│")):
                columns.setdefault(j, []).append(cell.strip())
        else:
            rest.append(line)
    joined = "".join("".join(parts) for _, parts in sorted(columns.items())) + "".join(rest)
    return "".join(joined.split())


def test_narrow_terminals_never_hide_a_number(seeded_sqlite: int) -> None:
    iid = str(seeded_sqlite)
    for width in (10, 20, 30, 40, 50, 60, 70, 80, 100, 200):
        for command in (("visits", "list"), ("status",), ("filters", "show", iid)):
            result = runner.invoke(app, list(command), env={"COLUMNS": str(width)})
            assert result.exit_code == 0, result.stderr
            flat = _unfold(result.stdout)
            if command[0] == "visits":
                for needed in ("2026-12-0109:00-09:30", "2026-12-0123:00-2026-12-0201:00"):
                    assert needed in flat, (width, result.stdout)
            elif command[0] == "status":
                assert "dr-lee" in flat and "primary" in flat, (width, result.stdout)
                assert "never" in flat and "a@example.com" in flat, (width, result.stdout)
            else:
                assert "dr-lee" in flat, (width, result.stdout)
            assert "…" not in result.stdout, (width, result.stdout)


def test_visits_list_shows_both_dates_when_a_visit_spans_days(seeded: int) -> None:
    result = runner.invoke(app, ["visits", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "2026-12-01 23:00-2026-12-02 01:00" in result.stdout
    assert "2026-12-01 09:00-09:30" in result.stdout
