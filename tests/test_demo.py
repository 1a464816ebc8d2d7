"""``calsync demo`` (in-process and as a subprocess) and ``calsync sandbox serve``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx2
import keyring
import pytest
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from calsync_cli.errors import CalsyncError
from calsync_cli.sandbox.browser import follow_sign_in, is_loopback
from calsync_cli.services import demo as core

runner = CliRunner()
TITLE = re.compile(r"^\[Main Street Practice\] - [A-Z][a-z]+ [A-Z][a-z]+ - [A-Z][A-Za-z -]+$")


@pytest.fixture
def tmp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the demo makes its temporary directory (tempfile's default, redirected)."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def assert_user_state_untouched(home: Path, tmp_path: Path) -> None:
    """Nothing in the test's XDG dirs (config, data with its keyring file, cache), no user
    database, and no calsync entry in the test's keyring."""
    assert files_under(home) == []
    assert not (tmp_path / "calsync.db").exists()
    kr = keyring.get_keyring()
    assert type(kr).__name__ == "PlaintextKeyring"
    for iid in range(1, 5):
        assert kr.get_password("calsync", f"integration:{iid}") is None


def check_document(doc: dict[str, Any], today: date) -> None:
    assert set(doc) >= {"directory", "kept", "sync", "integrations", "events"}
    rows = {r["id"]: r for r in doc["integrations"]}
    assert [(r["app"], r["provider_id"], r["status"]) for r in rows.values()] == [
        ("google", "dr-lee", "Active"),
        ("outlook", "dr-patel", "Active"),
    ]
    assert all(r["queued"] == 0 and r["failed"] == 0 and r["last_synced_at"] for r in rows.values())
    assert doc["sync"]["exit_code"] == 0 and doc["sync"]["totals"]["failed"] == 0
    events = doc["events"]
    assert doc["sync"]["totals"]["pushed"] == len(events)
    assert {e["integration"] for e in events} == set(rows)
    assert {e["app"] for e in events} == {"google", "outlook"}
    for e in events:
        assert TITLE.match(e["title"]), e["title"]
        assert e["location"].startswith("12 Main Street, Springfield")
    # the sample week, moved into this week: Monday to Friday, same wall-clock times
    monday = today - timedelta(days=today.weekday())
    starts = [datetime.fromisoformat(e["start"]) for e in events]
    assert {s.date() for s in starts} == {monday + timedelta(days=n) for n in range(5)}
    first = min(s for s, e in zip(starts, events, strict=True) if e["app"] == "google")
    assert (first.date(), first.hour, first.minute) == (monday, 8, 30)
    assert first.utcoffset() == first.astimezone(ZoneInfo("America/Chicago")).utcoffset()
    assert doc["day"] == (today if today.weekday() < 5 else monday).isoformat()


# -- the demo through the CLI runner -----------------------------------------------------------


def test_demo_json(tmp_base: Path, tmp_path: Path) -> None:
    before = keyring.get_keyring()
    started = time.monotonic()
    result = runner.invoke(app, ["demo", "--json"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    check_document(doc, date.today())
    assert doc["kept"] is False
    assert not Path(doc["directory"]).exists()
    assert Path(doc["directory"]).parent == tmp_base and list(tmp_base.iterdir()) == []
    assert keyring.get_keyring() is before  # put back
    assert_user_state_untouched(tmp_path / "home", tmp_path)
    assert elapsed < 15


def test_demo_human_output(tmp_base: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.stderr
    out, err = result.stdout, result.stderr
    # the status table, then one day of events per integration
    assert "Active" in out and "dr-lee" in out and "dr-patel" in out
    assert out.count("read back from the sandbox") == 2
    assert "[Main Street Practice]" in out
    assert re.search(r"\d\d:\d\d-\d\d:\d\d C[SD]T", out)
    assert "Connected integration 1 (google, dr-lee)" in err
    assert "Connected integration 2 (outlook, dr-patel)" in err
    assert "What next" in err and "--no-patient-name" in err and "calsync connect google" in err
    assert list(tmp_base.iterdir()) == []
    assert_user_state_untouched(tmp_path / "home", tmp_path)


def test_demo_keep(tmp_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["demo", "--keep", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    kept = Path(doc["directory"])
    assert doc["kept"] is True and (kept / "calsync.db").is_file()
    assert f"Kept the demo's directory: {kept}" in result.stderr
    assert_user_state_untouched(tmp_path / "home", tmp_path)
    # the kept database is a normal calsync database
    monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{kept / 'calsync.db'}")
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.stderr
    rows = json.loads(status.stdout)["integrations"]
    assert [(r["app"], r["status"]) for r in rows] == [("google", "Active"), ("outlook", "Active")]


def test_demo_ignores_the_users_settings(
    tmp_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config file or CALSYNC_* variables of the user's do not reach the demo."""
    config = tmp_path / "home" / "config" / "calsync" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('visit_url = "https://pm.example/{visit_id}"\ndb_url = "sqlite:///x"\n')
    monkeypatch.setenv("CALSYNC_GOOGLE_API_URL", "https://www.googleapis.com/calendar/v3")
    result = runner.invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["events"]) > 0
    assert files_under(tmp_path / "home") == [config]


def test_demo_works_with_a_proxy_in_the_environment(
    tmp_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loopback traffic never goes through HTTP(S)_PROXY: a proxy cannot reach our 127.0.0.1."""
    with socket.socket() as dead:  # bound, never listening: every connection is refused
        dead.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy)
            monkeypatch.setenv(name.lower(), proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        result = runner.invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["events"]) > 0


def test_demo_failure_cleans_up(tmp_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = keyring.get_keyring()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise CalsyncError("the sandbox lost its events")

    monkeypatch.setattr(core, "read_events", broken)
    result = runner.invoke(app, ["demo", "--json"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "calsync: error: the sandbox lost its events"
    assert list(tmp_base.iterdir()) == []
    assert keyring.get_keyring() is before


def test_demo_interrupted_cleans_up(tmp_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = keyring.get_keyring()

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "_check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        core.run_demo(keep=False)
    assert list(tmp_base.iterdir()) == []
    assert keyring.get_keyring() is before


# -- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "weeks"),
    [
        (date(2026, 11, 30), 0),
        (date(2026, 12, 6), 0),  # Sunday: still that week
        (date(2026, 12, 7), 1),
        (date(2026, 11, 24), -1),
        (date(2026, 7, 15), -20),
    ],
)
def test_weeks_to_shift(today: date, weeks: int) -> None:
    assert core.weeks_to_shift(today) == weeks


def test_shift_keeps_weekday_and_wall_clock_across_dst() -> None:
    chicago = ZoneInfo("America/Chicago")
    moved = core.shift_instant("2026-11-30T08:30:00-06:00", chicago, -20)
    assert moved == "2026-07-13T08:30:00-05:00"  # a Monday, daylight time
    assert core.shift_instant("2026-11-30T08:30:00-06:00", chicago, 0) == (
        "2026-11-30T08:30:00-06:00"
    )


def test_sample_data_is_one_week_from_the_sample_monday() -> None:
    days = {datetime.fromisoformat(r.values["start"]).date() for r in core.sample_rows("visits")}
    assert min(days) == core.SAMPLE_MONDAY and max(days) - min(days) < timedelta(days=7)


def test_pick_day() -> None:
    def event(day: int) -> core.DemoEvent:
        start = datetime(2026, 11, day, 9, tzinfo=ZoneInfo("America/Chicago"))
        return core.DemoEvent(1, "google", start, start + timedelta(hours=1), "t", None)

    events = [event(24), event(23)]
    assert core.pick_day(events, date(2026, 11, 24)) == date(2026, 11, 24)
    assert core.pick_day(events, date(2026, 11, 28)) == date(2026, 11, 23)
    assert core.pick_day([], date(2026, 11, 28)) is None


def test_memory_keyring_is_restored() -> None:
    before = keyring.get_keyring()
    with core.memory_keyring() as kr:
        assert keyring.get_keyring() is kr
        kr.set_password("calsync", "integration:1", "x")
        assert kr.get_password("calsync", "integration:1") == "x"
        kr.delete_password("calsync", "integration:1")
        with pytest.raises(keyring.errors.PasswordDeleteError):
            kr.delete_password("calsync", "integration:1")
    assert keyring.get_keyring() is before
    assert before.get_password("calsync", "integration:1") is None


def test_browser_visits_only_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("accounts.google.com") and not is_loopback("10.0.0.1")
    assert follow_sign_in("https://accounts.google.com/o/oauth2/v2/auth") is False
    assert follow_sign_in("not a url") is False


# -- subprocesses ---------------------------------------------------------------------------------


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    base = tmp_path / "subtmp"
    base.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(base), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_demo_as_a_subprocess(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "calsync_cli", "demo", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    check_document(doc, date.today())
    assert Path(doc["directory"]).parent == Path(env["TMPDIR"])
    assert list(Path(env["TMPDIR"]).iterdir()) == []
    assert_user_state_untouched(tmp_path / "home", tmp_path)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "calsync_cli", "sandbox", "serve", "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(tmp_path),
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()


def read_document(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The JSON document the server prints once it listens (indented: read to its end)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"the sandbox exited early ({proc.poll()})"
        lines.append(line)
        if line.rstrip() == "}":
            doc: dict[str, Any] = json.loads("".join(lines))
            return doc
    raise AssertionError("no JSON document in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sandbox_serve(serve: subprocess.Popen[str], sig: signal.Signals) -> None:
    doc = read_document(serve)
    url = doc["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    with httpx2.Client(timeout=10, trust_env=False) as client:
        assert client.get(f"{url}/_sandbox/env").json() == doc["env"]
        accounts = client.get(f"{url}/_sandbox/accounts").json()["accounts"]
    assert {a["app"] for a in accounts} == {"google", "outlook"}
    assert doc["env"]["CALSYNC_GOOGLE_API_URL"] == f"{url}/google/calendar/v3"
    started = time.monotonic()
    serve.send_signal(sig)
    assert serve.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert serve.stderr is not None
    err = serve.stderr.read()
    assert f"calsync sandbox listening on {url}" in err and "export CALSYNC_" in err
    assert "Traceback" not in err


def test_sandbox_serve_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["sandbox", "serve", "--port", str(port), "--json"])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--port" in lines[0] and str(port) in lines[0]
