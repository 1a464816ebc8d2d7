"""``calsync doctor``: a planted fault of each kind shows up as its line, with its fix."""

from __future__ import annotations

import json
import os
import socket
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from keyring.backend import KeyringBackend
from typer.testing import CliRunner

from calsync_cli.auth.tokens import Tokens, TokenStore
from calsync_cli.cli.app import app
from calsync_cli.services import doctor
from calsync_cli.services import integrations as core
from calsync_cli.store.db import Store
from calsync_cli.store.models import Provider

runner = CliRunner()
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class MemoryKeyring(KeyringBackend):
    """A working keyring that needs no desktop session."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.entries[(service, username)]


class SecretServiceKeyring(MemoryKeyring):
    """Named like keyring's Secret Service backend, which needs the D-Bus session bus."""


def by_name(checks: list[doctor.Check], name: str) -> doctor.Check:
    return next(c for c in checks if c.name == name)


def options(tmp_path: Path, **env: str) -> doctor.DoctorOptions:
    """Nothing scheduled, no network: an empty root, an empty crontab, loopback endpoints."""
    (tmp_path / "root").mkdir(exist_ok=True)
    base = dict(os.environ)
    for app_name in ("GOOGLE_AUTH", "GOOGLE_TOKEN", "GOOGLE_REVOKE", "GOOGLE_API", "GOOGLE_BATCH"):
        base[f"CALSYNC_{app_name}_URL"] = "http://127.0.0.1:9/x"
    base["CALSYNC_MICROSOFT_AUTHORITY"] = "http://127.0.0.1:9/common"
    base["CALSYNC_MICROSOFT_GRAPH_URL"] = "http://127.0.0.1:9/v1.0"
    base.update(env)
    return doctor.DoctorOptions(
        env=base,
        offline=True,
        root=tmp_path / "root",
        crontab_command=("false",),
        keyring_backend=MemoryKeyring(),
    )


# -- keyring ----------------------------------------------------------------------------------


def test_keyring_round_trip_ok_and_leaves_nothing_behind(tmp_path: Path) -> None:
    opts = options(tmp_path)
    check = doctor.check_keyring(opts)
    assert check.status == "ok" and "round trip works" in check.message
    assert opts.keyring_backend.entries == {}


def test_missing_keyring_backend_fails_with_the_fix(tmp_path: Path) -> None:
    from keyring.backends import fail

    check = doctor.check_keyring(
        doctor.DoctorOptions(env={}, keyring_backend=fail.Keyring(), offline=True)
    )
    assert check.status == "fail" and "no usable keyring backend" in check.message
    assert check.fix is not None and "PYTHON_KEYRING_BACKEND" in check.fix


def test_session_keyring_without_a_desktop_session_warns(tmp_path: Path) -> None:
    opts = doctor.DoctorOptions(env={}, keyring_backend=SecretServiceKeyring())
    check = doctor.check_keyring(opts)
    assert check.status == "warn" and "desktop (D-Bus) session" in check.message
    opts.env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/0/bus"}
    assert doctor.check_keyring(opts).status == "ok"


# -- database ---------------------------------------------------------------------------------


def test_loose_sqlite_file_mode_fails_with_chmod(tmp_path: Path) -> None:
    path = tmp_path / "calsync.db"
    Store(f"sqlite:///{path}").close()
    checks, _ = doctor.check_database(f"sqlite:///{path}")
    assert by_name(checks, "database file").status == "ok"
    path.chmod(0o644)
    checks, _ = doctor.check_database(f"sqlite:///{path}")
    loose = by_name(checks, "database file")
    assert loose.status == "fail" and "mode 0644" in loose.message
    assert loose.fix == f"chmod 600 {path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # doctor reports, it does not change


def test_missing_database_warns_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    checks, _ = doctor.check_database(f"sqlite:///{path}")
    assert [c.status for c in checks] == ["warn"] and not path.exists()


def test_unreachable_database_fails(tmp_path: Path) -> None:
    checks, _ = doctor.check_database("postgresql+psycopg://postgres@127.0.0.1:1/test")
    assert checks[0].status == "fail" and "cannot reach the database" in checks[0].message


def _set_version(url: str, version: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE calsync_meta SET value = '{version}' WHERE key = 'schema_version'"
        )
    engine.dispose()


def test_schema_version_mismatch(db_url: str) -> None:
    Store(db_url).close()
    checks, _ = doctor.check_database(db_url)
    assert by_name(checks, "schema").status == "ok"
    _set_version(db_url, 99)
    newer = by_name(doctor.check_database(db_url)[0], "schema")
    assert newer.status == "fail" and "schema version 99 is newer" in newer.message
    assert newer.fix is not None and "upgrade calsync" in newer.fix
    _set_version(db_url, 2)
    older = by_name(doctor.check_database(db_url)[0], "schema")
    assert older.status == "warn" and "next calsync command upgrades it" in (older.fix or "")


# -- endpoints --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_fails_and_offline_skips(tmp_path: Path) -> None:
    from calsync_cli.config import load_settings

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        closed = _closed_port()
        opts = options(
            tmp_path,
            CALSYNC_GOOGLE_API_URL=f"http://127.0.0.1:{closed}/calendar/v3",
            CALSYNC_MICROSOFT_GRAPH_URL=f"http://127.0.0.1:{open_port}/v1.0",
        )
        opts.offline = False
        checks = doctor.check_endpoints(load_settings(opts.env), opts)
    bad = by_name(checks, f"endpoint 127.0.0.1:{closed}")
    assert bad.status == "fail" and "ConnectionRefusedError" in bad.message
    assert bad.fix is not None and "CALSYNC_*_URL" in bad.fix
    assert by_name(checks, f"endpoint 127.0.0.1:{open_port}").status == "ok"
    opts.offline = True
    assert [c.status for c in doctor.check_endpoints(load_settings(opts.env), opts)] == ["skipped"]


def test_proxy_is_used_except_for_no_proxy_and_loopback() -> None:
    env = {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "example.org,.corp"}
    assert (
        doctor._proxy_for("https://graph.microsoft.com/v1.0", env) == "http://proxy.internal:3128"
    )
    assert doctor._proxy_for("https://api.example.org/", env) is None
    assert doctor._proxy_for("https://x.corp/", env) is None
    assert doctor._proxy_for("https://127.0.0.1:8443/", env) is None


# -- schedule ---------------------------------------------------------------------------------


def test_cron_and_systemd_entries_are_looked_up(tmp_path: Path) -> None:
    opts = options(tmp_path)
    absent = doctor.check_schedule(opts)
    assert [(c.name, c.status) for c in absent] == [
        ("schedule sync", "warn"),
        ("schedule sweep", "warn"),
    ]
    assert all(c.fix == doctor.CRON_FIX for c in absent)
    assert "nothing runs calsync sync" in absent[0].message

    etc = opts.root / "etc"
    (etc / "cron.d").mkdir(parents=True)
    (etc / "crontab").write_text("# * * * * * calsync sweep\n")  # a comment runs nothing
    assert by_name(doctor.check_schedule(opts), "schedule sweep").status == "warn"
    (etc / "cron.d" / "calsync").write_text(
        "*/15 * * * * calsync /opt/calsync/.venv/bin/calsync sweep --lookback 24h\n"
    )
    units = etc / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "calsync-worker.service").write_text(
        "[Service]\nExecStart=/opt/calsync/.venv/bin/calsync -v sync --watch --interval 10\n"
    )
    found = doctor.check_schedule(opts)
    assert by_name(found, "schedule sync").message.endswith(
        "/etc/systemd/system/calsync-worker.service"
    )
    assert by_name(found, "schedule sweep").message.endswith("/etc/cron.d/calsync")
    assert doctor.exit_code(found) == 0

    # the user's crontab, read through the injected command
    (etc / "cron.d" / "calsync").unlink()
    opts.crontab_command = ("echo", "*/10 * * * * calsync sweep >>/var/log/sweep.log 2>&1")
    assert by_name(doctor.check_schedule(opts), "schedule sweep").message.endswith("crontab -l")
    opts.crontab_command = ("/nonexistent/crontab", "-l")  # no cron installed: nothing found
    assert by_name(doctor.check_schedule(opts), "schedule sweep").status == "warn"


# -- sign-ins ---------------------------------------------------------------------------------


@dataclass
class Integ:
    id: int
    app: str
    provider_id: str = "dr-lee"
    account: str | None = "ana@example.com"
    status: str = "Active"
    needs_reauth: bool = False


@dataclass
class GoogleTokens:
    """Tokens whose refresh token announced its expiry (``refresh_token_expires_in``)."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    refresh_expires_at: datetime | None


def _tokens(last_used_days_ago: float) -> Tokens:
    used = NOW - timedelta(days=last_used_days_ago)
    return Tokens("at", "rt", used + doctor.ACCESS_TOKEN_LIFETIME)


def test_microsoft_refresh_token_unused_for_80_days_warns_and_90_fails() -> None:
    outlook = Integ(3, "outlook")
    assert doctor.sign_in_check(outlook, _tokens(79), now=NOW).status == "ok"
    warn = doctor.sign_in_check(outlook, _tokens(85), now=NOW)
    assert warn.status == "warn" and "last used 85 days ago" in warn.message
    assert "90 days unused" in warn.message and "calsync sweep" in (warn.fix or "")
    dead = doctor.sign_in_check(outlook, _tokens(91), now=NOW)
    assert dead.status == "fail" and dead.fix == "calsync connect outlook --provider dr-lee"
    # the same age is fine for Google (six months)
    assert doctor.sign_in_check(Integ(4, "google"), _tokens(85), now=NOW).status == "ok"


def test_google_refresh_token_expiring_within_7_days_means_testing_status() -> None:
    google = Integ(5, "google")
    soon = GoogleTokens("at", "rt", NOW, refresh_expires_at=NOW + timedelta(days=3))
    check = doctor.sign_in_check(google, soon, now=NOW)
    assert check.status == "warn" and "Testing status" in check.message
    assert check.fix is not None and "Publish app" in check.fix
    assert "calsync connect google --provider dr-lee" in check.fix
    later = GoogleTokens("at", "rt", NOW, refresh_expires_at=NOW + timedelta(days=30))
    assert doctor.sign_in_check(google, later, now=NOW).status == "ok"
    gone = GoogleTokens("at", "rt", NOW, refresh_expires_at=NOW - timedelta(minutes=1))
    assert doctor.sign_in_check(google, gone, now=NOW).status == "fail"


def test_missing_tokens_and_lost_grant_fail_with_the_connect_command() -> None:
    for integ, tokens in (
        (Integ(6, "google"), None),
        (Integ(7, "google", needs_reauth=True), _tokens(1)),
    ):
        check = doctor.sign_in_check(integ, tokens, now=NOW)
        assert check.status == "fail" and check.fix == "calsync connect google --provider dr-lee"
    pending = doctor.sign_in_check(Integ(8, "outlook", status="Pending"), _tokens(0), now=NOW)
    assert pending.status == "warn" and pending.fix == "calsync calendars select 8 CAL_ID"


def test_run_reads_each_integrations_tokens_from_the_keyring(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'signed.db'}"
    store = Store(url)
    with store.write() as s:
        s.add(Provider(id="dr-lee", name="Dr. Lee", content_hash="x", updated_at=NOW))
    ids = []
    for app_name in ("outlook", "google"):
        with store.write() as s:
            integ = core.create(
                s, provider_id="dr-lee", app=app_name, now=NOW, account="a@example.com",
                calendar_id="primary",
            )  # fmt: skip
            ids.append(integ.id)
    store.close()
    TokenStore().put(ids[0], _tokens(85))  # outlook, idle 85 days; google: nothing stored
    checks = doctor.run(options(tmp_path, CALSYNC_DB_URL=url), now=NOW)
    assert by_name(checks, f"sign-in {ids[0]}").status == "warn"
    assert by_name(checks, f"sign-in {ids[1]}").message.endswith("no tokens are stored for it")
    assert doctor.exit_code(checks) == 1


# -- secret key file --------------------------------------------------------------------------


def test_secret_key_file_of_a_fleet(tmp_path: Path) -> None:
    assert doctor.check_secret_key({}) == []
    [unset] = doctor.check_secret_key({"CALSYNC_TOKEN_STORE": "database"})
    assert unset.status == "warn" and "CALSYNC_SECRET_KEY_FILE" in unset.message
    key = tmp_path / "calsync.key"
    env = {"CALSYNC_TOKEN_STORE": "database", "CALSYNC_SECRET_KEY_FILE": str(key)}
    [missing] = doctor.check_secret_key(env)
    assert missing.status == "fail" and "does not exist" in missing.message
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    [loose] = doctor.check_secret_key(env)
    assert loose.status == "fail" and loose.fix == f"chmod 600 {key}"
    key.chmod(0o600)
    assert doctor.check_secret_key(env)[0].status == "ok"


# -- the command ------------------------------------------------------------------------------


def _cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("CALSYNC_DB_URL", f"sqlite:///{db}")
    Store(f"sqlite:///{db}").close()
    return db


def test_cli_renders_one_line_per_check_and_exits_1_on_a_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _cli_env(monkeypatch, tmp_path)
    ok = runner.invoke(app, ["doctor", "--offline", "--json"])
    assert ok.exit_code == 0, ok.stdout
    data = json.loads(ok.stdout)
    names = [c["name"] for c in data["checks"]]
    assert names[:5] == ["config", "keyring", "database", "database file", "schema"]
    assert "endpoints" in names and "schedule sync" in names and data["ok"] is True
    assert all(set(c) == {"name", "status", "message", "fix"} for c in data["checks"])

    db.chmod(0o640)
    bad = runner.invoke(app, ["doctor", "--offline"])
    assert bad.exit_code == 1
    line = next(ln for ln in bad.stdout.splitlines() if "database file" in ln)
    assert line.startswith("FAIL  database file")
    assert line.endswith(f"Fix: chmod 600 {db}")
    assert "1 failed" in bad.stderr


def test_cli_missing_keyring_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring
    from keyring.backends import fail

    _cli_env(monkeypatch, tmp_path)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    keyring.set_keyring(fail.Keyring())
    result = runner.invoke(app, ["doctor", "--offline"])
    assert result.exit_code == 1
    line = next(ln for ln in result.stdout.splitlines() if " keyring " in f" {ln} ")
    assert line.startswith("FAIL  keyring") and "Fix: Set PYTHON_KEYRING_BACKEND" in line
