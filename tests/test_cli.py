"""The command line: --json on every command, one-line errors, exit codes, help, completions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer.main
from typer.testing import CliRunner

from calsync_cli.cli import completions
from calsync_cli.cli.app import app
from tests.conftest import PRACTICES, PROVIDERS, visit, write_jsonl
from tests.engine_support import make_integration

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "practices.jsonl", PRACTICES)
    write_jsonl(tmp_path / "providers.jsonl", PROVIDERS)
    write_jsonl(tmp_path / "visits.jsonl", [visit("a"), visit("b", provider_id="dr-patel")])
    for kind in ("practices", "providers", "visits"):
        assert run(kind, "import", str(tmp_path / f"{kind}.jsonl")).exit_code == 0
    return tmp_path


def test_empty_status_says_how_to_start() -> None:
    result = run("status")
    assert result.exit_code == 0
    assert "calsync practices import" in result.stderr
    assert run_json("status") == {"integrations": []}


def test_imports_and_list_json(seeded: Path) -> None:
    data = run_json("visits", "import", str(seeded / "visits.jsonl"))
    assert data["unchanged"] == 2 and data["created"] == 0
    listed = run_json("visits", "list", "--provider", "dr-lee")
    assert [v["id"] for v in listed["visits"]] == ["a"]
    assert listed["visits"][0]["start"] == "2026-12-01T09:00:00-06:00"
    assert run_json("visits", "list", "--from", "2026-12-02")["visits"] == []
    assert len(run_json("visits", "list", "--to", "2026-12-01")["visits"]) == 2


def test_import_from_stdin_csv(seeded: Path) -> None:
    csv_text = "id,name,timezone\nnew,New Clinic,Europe/Berlin\n"
    result = run("practices", "import", "-", "--json", input=csv_text)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["created"] == 1


def test_bad_file_is_one_line_exit_2_and_no_stdout(seeded: Path) -> None:
    bad = write_jsonl(
        seeded / "bad.jsonl", [visit("x"), visit("y", end="2026-12-01T08:00:00-06:00")]
    )
    result = run("visits", "import", str(bad), "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"calsync: error: {bad}:2: end")
    assert "Traceback" not in result.stderr
    missing = run("visits", "import", str(seeded / "nope.jsonl"))
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_integration_commands_json(seeded: Path) -> None:
    iid = make_integration()
    [row] = run_json("status")["integrations"]
    assert {k: row[k] for k in ("id", "provider_id", "app", "status", "direction", "paused")} == {
        "id": iid,
        "provider_id": "dr-lee",
        "app": "google",
        "status": "Active",
        "direction": "push",
        "paused": False,
    }
    assert set(row) >= {
        "account",
        "calendar_id",
        "calendar_name",
        "status_detail",
        "last_synced_at",
        "queued",
        "failed",
    }
    shown = run_json("filters", "show", str(iid))
    assert shown["patient_name"] is True and shown["providers"] == ["dr-lee"]
    changed = run_json(
        "filters",
        "set",
        str(iid),
        "--no-patient-name",
        "--patient-name-format",
        "initials",
        "--all-providers",
    )
    assert changed["patient_name"] is False and changed["patient_name_format"] == "initials"
    assert changed["providers"] == []
    assert run_json("direction", str(iid), "two-way")["direction"] == "two-way"
    assert run_json("toggle", str(iid))["paused"] is True
    assert run_json("toggle", str(iid), "--resume")["paused"] is False
    assert run_json("status", str(iid))["integrations"][0]["direction"] == "two-way"


def test_unknown_integration_and_bad_usage_exit_2(seeded: Path) -> None:
    result = run("filters", "show", "42", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert "no integration 42" in result.stderr and "calsync status" in result.stderr
    assert run("direction", "1", "sideways").exit_code == 2
    assert run("filters", "set", "1", "--practice", "main", "--all-practices").exit_code == 2


def test_bad_config_file_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("colour = 'blue'\n")
    monkeypatch.setenv("CALSYNC_CONFIG", str(cfg))
    result = run("status")
    assert result.exit_code == 2 and "unknown setting 'colour'" in result.stderr


def _all_commands():
    root = typer.main.get_command(app)

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(root, []))


@pytest.mark.parametrize("path", [p for p, _ in _all_commands()], ids=" ".join)
def test_every_command_has_help_json_and_readme_entry(path: list[str]) -> None:
    cmd = {tuple(p): c for p, c in _all_commands()}[tuple(path)]
    assert cmd.help and len(cmd.help) > 20, f"{path} needs help text"
    names = [opt for p in cmd.params for opt in getattr(p, "opts", [])]
    assert "--json" in names, f"{path} lacks --json"
    result = run(*path, "--help")
    assert result.exit_code == 0
    assert f"calsync {' '.join(path)}" in (ROOT / "README.md").read_text(), f"README lacks {path}"


def test_completions_are_current() -> None:
    for name, generate in completions.GENERATORS.items():
        committed = (ROOT / "completions" / name).read_text(encoding="utf-8")
        assert committed == generate(), (
            f"completions/{name} is stale: run python -m calsync_cli.cli.completions"
        )


def test_python_dash_m_and_version(tmp_path: Path) -> None:
    env = {**os.environ, "CALSYNC_DB_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    out = subprocess.run(
        [sys.executable, "-m", "calsync_cli", "--version"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and out.stdout.startswith("calsync ")
    out = subprocess.run(
        [sys.executable, "-m", "calsync_cli", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0 and json.loads(out.stdout) == {"integrations": []}


def test_status_starts_without_pydantic_or_sqlalchemy(seeded: Path) -> None:
    """The cold-start budget of `calsync status` (0.3 s) has no room for either import.

    pydantic comes in through Typer's coercion of absent values (see
    app._skip_coercion_of_absent_values); SQLAlchemy through any use of the ORM store.
    """
    make_integration()
    write_jsonl(seeded / "more.jsonl", [visit("c")])
    assert run("visits", "import", str(seeded / "more.jsonl")).exit_code == 0
    for args, through_typer in ((["status"], True), (["status", "--json"], False)):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "calsync_cli", *args],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
        assert ("typer" in imported) is through_typer  # --json: answered by cli.fast
        banned = {"pydantic", "sqlalchemy", "sqlmodel"}
        assert not {m for m in imported if m.split(".")[0] in banned}
    assert json.loads(out.stdout)["integrations"][0]["queued"] == 1


_seen: list[object] = []
_coercion_demo = typer.Typer()


@_coercion_demo.command()
def _coercion_demo_cmd(
    name: str,
    count: Annotated[
        int | None, typer.Option(min=1, callback=lambda v: _seen.append(v) or v)
    ] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag")] = None,
) -> None:
    _seen.append((name, count, tags))


def test_absent_values_keep_typer_semantics() -> None:
    """Skipping the coercer for absent values changes nothing a command can observe."""
    _seen.clear()
    assert runner.invoke(_coercion_demo, ["x"]).exit_code == 0
    assert _seen == [None, ("x", None, None)]  # the callback still sees the absent value
    _seen.clear()
    assert runner.invoke(_coercion_demo, ["x", "--count", "3", "--tag", "a"]).exit_code == 0
    assert _seen == [3, ("x", 3, ["a"])]  # given values are still coerced
    assert runner.invoke(_coercion_demo, ["x", "--count", "0"]).exit_code == 2  # and validated
    missing = runner.invoke(_coercion_demo, [])
    assert missing.exit_code == 2 and "Missing argument" in missing.stderr
    assert run("status", "0").exit_code == 2


def test_status_of_one_integration_lists_its_failures(seeded: Path) -> None:
    import sqlalchemy as sa

    from calsync_cli.store.db import Store
    from calsync_cli.store.models import Job

    iid = make_integration()
    write_jsonl(seeded / "more.jsonl", [visit("c")])
    assert run("visits", "import", str(seeded / "more.jsonl")).exit_code == 0
    store = Store(os.environ["CALSYNC_DB_URL"])
    with store.write() as s:
        s.execute(
            sa.update(Job).values(state="failed", last_error="Google Calendar: HTTP 400 invalid")
        )
    store.close()
    one = run("status", str(iid))
    assert one.exit_code == 0, one.stderr
    text = one.stdout + one.stderr
    assert "Failed for good (1; all, newest first):" in text
    assert "visit c at 2026-12-01 15:00Z: upsert failed" in text
    assert "Google Calendar: HTTP 400 invalid" in text
    assert "Jane Doe" not in text  # visit ids, never patient names
    [row] = run_json("status", str(iid))["integrations"]
    assert [f["visit_id"] for f in row["failures"]] == ["c"] and row["failed"] == 1
    assert "failures" not in run_json("status")["integrations"][0]  # only for one integration


def test_status_table_in_a_pipe_keeps_each_integration_on_one_line(
    seeded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    make_integration()
    result = run("status")  # CliRunner's stdout is not a terminal, like a pipe or a cron log
    assert result.exit_code == 0, result.stderr
    [line] = [ln for ln in result.stdout.splitlines() if "a@example.com" in ln]
    assert "dr-lee" in line and "Active" in line and "push" in line


def test_the_fast_answers_are_what_the_full_command_line_prints(seeded: Path) -> None:
    """``--help`` and ``status --json`` are answered before Typer is imported (cli.fast); the
    bytes are the full command line's, and Typer stays unimported."""
    import subprocess
    import sys

    from calsync_cli.cli.completions import HELP_FILE, top_help

    assert HELP_FILE.read_text(encoding="utf-8") == top_help(), (
        "calsync_cli/data/help.txt is stale: run python -m calsync_cli.cli.completions"
    )
    full = "import sys; from calsync_cli.cli.app import run; sys.argv[0] = 'calsync'; run()"
    env = {**os.environ, "COLUMNS": "80"}
    make_integration()  # a store with a schema and an integration to show
    for args in (["--help"], ["-h"], ["status", "--json"]):
        fast = subprocess.run([sys.executable, "-X", "importtime", "-m", "calsync_cli", *args],
                              env=env, capture_output=True, text=True, check=True)  # fmt: skip
        slow = subprocess.run([sys.executable, "-c", full, *args], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        assert fast.stdout == slow.stdout, args
        imported = {line.rsplit("|", 1)[-1].strip() for line in fast.stderr.splitlines()}
        assert "typer" not in imported and "click" not in imported, args
    wide = subprocess.run([sys.executable, "-m", "calsync_cli", "--help"], capture_output=True,
                          text=True, env={**env, "COLUMNS": "200"}, check=True)  # fmt: skip
    assert wide.stdout == subprocess.run([sys.executable, "-c", full, "--help"], text=True,
        capture_output=True, env={**env, "COLUMNS": "200"}, check=True).stdout  # fmt: skip
