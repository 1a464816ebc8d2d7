"""Tokens sealed into the database (``CALSYNC_TOKEN_STORE=database``): the key, its fingerprint,
hosts that hold the wrong key, refreshes racing across hosts and against a disconnect, and no
token in plain text anywhere in the database (a ``pg_dump`` and the raw SQLite file)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import sqlalchemy as sa

from calsync_cli.auth import KeyringTokenSource, OAuthApp, Tokens, TokenStore, oauth_app
from calsync_cli.auth.sealed import (
    KEYRING_SECRET,
    SealedTokenStore,
    SealingKey,
    TokenKeyError,
    key_from_file,
)
from calsync_cli.cli.output import exit_code_of
from calsync_cli.config import Settings, load_settings
from calsync_cli.errors import ConfigError
from calsync_cli.providers.base import ReauthRequired
from calsync_cli.sandbox import Sandbox
from calsync_cli.services import clients
from calsync_cli.store import sealed as rows
from calsync_cli.store.db import Store
from tests.engine_support import EMAILS, sign_in_tokens

KEY_A = b"A" * 16 + b"fleet-key-material-0001"
KEY_B = b"B" * 16 + b"fleet-key-material-0002"


@pytest.fixture(autouse=True)
def _close_shared_stores() -> Iterator[None]:
    yield
    clients.close_shared()


def key_file(tmp_path: Path, material: bytes = KEY_A, name: str = "token.key") -> Path:
    path = tmp_path / name
    path.write_bytes(material + b"\n")
    path.chmod(0o600)
    return path


def sample(access: str = "ya29.ACCESS-SECRET", refresh: str | None = "1//REFRESH-SECRET") -> Tokens:
    return Tokens(
        access_token=access,
        refresh_token=refresh,
        expires_at=datetime(2027, 1, 1, tzinfo=UTC),
        scope="scope",
    )


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(port=0, auto_approve=True) as sandbox:
        for app, email in EMAILS.items():
            sandbox.add_account(app, email)
        yield sandbox


def app_of(sb: Sandbox, name: str, db_url: str = "sqlite://") -> OAuthApp:
    return oauth_app(name, load_settings({**sb.env(), "CALSYNC_DB_URL": db_url}))


# -- the key ---------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path)
    path.chmod(mode)
    with pytest.raises(TokenKeyError) as info:
        key_from_file(path)
    line = info.value.one_line()
    assert f"Run: chmod 600 {path}" in line and "CALSYNC_SECRET_KEY_FILE" in line
    assert "\n" not in line and exit_code_of(info.value) == 2
    path.chmod(0o600)
    assert key_from_file(path).fingerprint == SealingKey.from_material(KEY_A, "x").fingerprint


def test_text_and_raw_key_files(tmp_path: Path) -> None:
    text = key_file(tmp_path, b"  " + KEY_A + b"\r\n", "text.key")
    assert key_from_file(text).fingerprint == SealingKey.from_material(KEY_A, "x").fingerprint
    raw = b"\n" * 2 + bytes(range(200, 230)) + b" \n"  # 34 raw bytes: whitespace is key too
    assert key_from_file(key_file(tmp_path, raw, "raw.key")).fingerprint == (
        SealingKey.from_material(raw + b"\n", "x").fingerprint
    )


def test_a_missing_or_short_key_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(TokenKeyError, match="CALSYNC_SECRET_KEY_FILE.*does not exist"):
        key_from_file(tmp_path / "nope.key")
    with pytest.raises(TokenKeyError, match="at least 32") as info:
        key_from_file(key_file(tmp_path, b"short"))
    assert "openssl rand -base64 32" in info.value.one_line()


def test_the_fingerprint_identifies_the_key_without_revealing_it() -> None:
    a, b = SealingKey.from_material(KEY_A, "a"), SealingKey.from_material(KEY_B, "b")
    assert a.fingerprint != b.fingerprint and len(a.fingerprint) == 16
    assert KEY_A.decode() not in repr(a) and a.fingerprint in repr(a)
    sealed = a.seal(7, sample())
    assert a.open(7, sealed) == sample()
    assert "ACCESS-SECRET" not in sealed and "REFRESH-SECRET" not in sealed
    with pytest.raises(ValueError):
        b.open(7, sealed)
    with pytest.raises(ValueError):  # a row copied onto another integration does not open
        a.open(8, sealed)


def test_settings_choose_the_store(tmp_path: Path) -> None:
    base = {"CALSYNC_DB_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    assert isinstance(clients.token_store(load_settings(base)), TokenStore)
    settings = load_settings({**base, "CALSYNC_TOKEN_STORE": "Database"})
    chosen = clients.token_store(settings)
    assert isinstance(chosen, SealedTokenStore)
    assert clients.token_store(settings) is chosen  # one per process, not per token source
    with pytest.raises(ConfigError, match="CALSYNC_TOKEN_STORE must be keyring or database"):
        load_settings({**base, "CALSYNC_TOKEN_STORE": "file"})


# -- the store -------------------------------------------------------------------------------


def test_round_trip_records_the_fingerprint_and_replace_only_updates(
    store: Store, tmp_path: Path
) -> None:
    sealed = SealedTokenStore(store, key_file=str(key_file(tmp_path)))
    fingerprint = SealingKey.from_material(KEY_A, "a").fingerprint
    assert sealed.get(1) is None
    assert sealed.replace(1, sample()) is False  # nothing there: a refresh never creates
    assert sealed.get(1) is None
    sealed.put(1, sample())
    assert sealed.get(1) == sample()
    assert sealed.replace(1, sample(access="second")) is True
    assert sealed.get(1) == sample(access="second")
    with store.read() as s:
        assert rows.recorded_fingerprint(s) == fingerprint
        assert rows.fingerprints(s) == {fingerprint: 1}
        row = rows.get(s, 1)
    assert row is not None and row.ciphertext.startswith("v1.")
    assert sealed.delete(1) is True and sealed.get(1) is None and sealed.delete(1) is False


def test_a_host_with_the_wrong_key_says_so_and_is_never_reconnect(
    store: Store, db_url: str, tmp_path: Path, sb: Sandbox
) -> None:
    SealedTokenStore(store, key_file=str(key_file(tmp_path))).put(3, sample())
    other_host = Store(db_url)
    try:
        wrong = SealedTokenStore(other_host, key_file=str(key_file(tmp_path, KEY_B, "b.key")))
        for call in (lambda: wrong.get(3), lambda: wrong.put(4, sample()), lambda: wrong.hold(3)):
            with pytest.raises(TokenKeyError) as info:
                call()
            line = info.value.one_line()
            assert "sealed with key" in line and "CALSYNC_SECRET_KEY_FILE" in line
            assert "reconnect" not in line and "connect" not in line
            assert exit_code_of(info.value) == 2
        source = KeyringTokenSource(app_of(sb, "google"), wrong, 3, provider_id="dr-lee")
        with pytest.raises(TokenKeyError):
            asyncio.run(source.access_token())
        with pytest.raises(TokenKeyError):
            asyncio.run(source.refresh())
        settings = load_settings(
            {
                "CALSYNC_DB_URL": db_url,
                "CALSYNC_TOKEN_STORE": "database",
                "CALSYNC_SECRET_KEY_FILE": str(tmp_path / "b.key"),
            }
        )
        with pytest.raises(TokenKeyError):  # what a worker can call before claiming work
            clients.check_token_store(settings, other_host)
        clients.check_token_store(load_settings({"CALSYNC_DB_URL": db_url}), other_host)
        assert wrong.delete(3) is True  # a disconnect needs no key
    finally:
        other_host.close()


def test_without_a_key_file_the_key_is_made_in_the_keyring_once(
    store: Store, db_url: str, tmp_path: Path, keyring_backend: Any
) -> None:
    first = SealedTokenStore(store)
    first.put(1, sample())
    material = keyring_backend.get_password("calsync", KEYRING_SECRET)
    assert material and len(material) >= 32
    assert SealedTokenStore(store).get(1) == sample()  # the same key, found again
    # A second host with its own (empty) keyring must not make a key of its own.
    from keyrings.alt.file import PlaintextKeyring

    elsewhere = PlaintextKeyring()
    elsewhere.file_path = str(tmp_path / "other-host-keyring.cfg")
    with pytest.raises(TokenKeyError) as info:
        SealedTokenStore(store, keyring=TokenStore(backend=elsewhere)).get(1)
    assert "has no token key" in info.value.message
    assert "CALSYNC_SECRET_KEY_FILE" in info.value.one_line()
    assert elsewhere.get_password("calsync", KEYRING_SECRET) is None


# -- refresh across hosts ----------------------------------------------------------------------


class Gate(httpx2.AsyncBaseTransport):
    """A real loopback transport that runs ``before`` ahead of each token request."""

    def __init__(self, before: Callable[[], Awaitable[None]]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.before = before
        self.calls = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.calls += 1
        await self.before()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _pg_lock_waiters(db_url: str) -> int:
    engine = sa.create_engine(db_url.split("?")[0])
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _expired_tokens(sb: Sandbox, app: str) -> Tokens:
    fresh = sign_in_tokens(sb, app, EMAILS[app], datetime.now(UTC))
    return Tokens(
        access_token=fresh.access_token,
        refresh_token=fresh.refresh_token,
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
        scope=fresh.scope,
    )


@pytest.mark.parametrize("app", ["outlook", "google"])
def test_two_hosts_refreshing_at_once_spend_the_grant_once(
    db_url: str, tmp_path: Path, sb: Sandbox, app: str
) -> None:
    """Host A holds the row while it refreshes; host B waits on the row lock (PostgreSQL) and
    then uses A's answer (Microsoft's rotated refresh token included) instead of refreshing."""
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks across hosts are PostgreSQL's; SQLite is one host (next test)")
    path = str(key_file(tmp_path))
    host_a, host_b = Store(db_url), Store(db_url)
    try:
        store_a = SealedTokenStore(host_a, key_file=path)
        store_b = SealedTokenStore(host_b, key_file=path)
        tokens = sign_in_tokens(sb, app, EMAILS[app], datetime.now(UTC))
        store_a.put(9, tokens)
        oauth = app_of(sb, app)
        a_in_endpoint, b_in_endpoint = threading.Event(), threading.Event()

        async def a_waits_for_b() -> None:
            a_in_endpoint.set()
            await asyncio.to_thread(
                _wait_until,
                lambda: b_in_endpoint.is_set() or _pg_lock_waiters(db_url) > 0,
                "host B to wait for the row",
            )

        async def b_enters() -> None:
            b_in_endpoint.set()

        gate_a, gate_b = Gate(a_waits_for_b), Gate(b_enters)
        source_a = KeyringTokenSource(oauth, store_a, 9, transport=gate_a)
        source_b = KeyringTokenSource(oauth, store_b, 9, transport=gate_b)
        assert asyncio.run(source_b.access_token()) == tokens.access_token  # B knows the old one
        sb.reset_stats()
        answers: dict[str, str] = {}

        def host(name: str, source: KeyringTokenSource, after: threading.Event | None) -> None:
            if after is not None:
                assert after.wait(20)
            answers[name] = asyncio.run(source.refresh())

        threads = [
            threading.Thread(target=host, args=("a", source_a, None)),
            threading.Thread(target=host, args=("b", source_b, a_in_endpoint)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sb.stats()["token_refreshes"][app][EMAILS[app]] == 1
        assert gate_b.calls == 0
        assert answers["a"] == answers["b"] != tokens.access_token
        saved = store_b.get(9)
        assert saved is not None and saved.access_token == answers["a"]
        if app == "outlook":
            assert saved.refresh_token != tokens.refresh_token  # the rotated one, for every host
    finally:
        host_a.close()
        host_b.close()


OTHER_PROCESS = """
import asyncio, sys
from calsync_cli.auth import KeyringTokenSource, oauth_app
from calsync_cli.auth.sealed import SealedTokenStore
from calsync_cli.config import load_settings
from calsync_cli.store.db import Store
settings = load_settings()
store = Store(settings.db_url)
sealed = SealedTokenStore(store, key_file=settings.secret_key_file)
source = KeyringTokenSource(oauth_app("outlook", settings), sealed, 9)
print(asyncio.run(source.refresh()))
store.close()
"""


def _waiting_for_a_lock(pid: int) -> bool:
    """Linux: /proc/locks lists a blocked request as '... -> POSIX ADVISORY WRITE <pid> ...'."""
    text = Path("/proc/locks").read_text()
    return any("->" in line and f" {pid} " in line for line in text.splitlines())


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_on_sqlite_two_processes_refresh_once_and_other_writers_are_not_held_up(
    tmp_path: Path, sb: Sandbox
) -> None:
    """One host, two calsync processes: the second waits for the first's refresh of the grant
    and uses its answer, while the database itself stays writable for everything else."""
    path = tmp_path / "one-host.db"
    key = key_file(tmp_path)
    store = Store(f"sqlite:///{path}")
    try:
        sealed = SealedTokenStore(store, key_file=str(key))
        sealed.put(9, _expired_tokens(sb, "outlook"))
        env = {
            **os.environ,
            **sb.env(),
            "CALSYNC_DB_URL": f"sqlite:///{path}",
            "CALSYNC_SECRET_KEY_FILE": str(key),
        }
        writable: list[bool] = []
        other: list[subprocess.Popen[str]] = []

        async def meanwhile() -> None:
            raw = sqlite3.connect(path, timeout=0)
            try:
                raw.execute("BEGIN IMMEDIATE")  # other writers are not held up by the refresh
                raw.rollback()
                writable.append(True)
            finally:
                raw.close()
            proc = subprocess.Popen(
                [sys.executable, "-c", OTHER_PROCESS], env=env, stdout=subprocess.PIPE, text=True
            )
            other.append(proc)
            await asyncio.to_thread(
                _wait_until,
                lambda: proc.poll() is not None or _waiting_for_a_lock(proc.pid),
                "the other process to wait for the grant",
            )

        sb.reset_stats()
        token = asyncio.run(
            KeyringTokenSource(
                app_of(sb, "outlook"), sealed, 9, transport=Gate(meanwhile)
            ).access_token()
        )
        out, _ = other[0].communicate(timeout=60)
        assert other[0].returncode == 0
        assert writable == [True]
        assert out.strip() == token  # the winner's answer, not a refresh of its own
        assert sb.stats()["token_refreshes"]["outlook"][EMAILS["outlook"]] == 1
    finally:
        store.close()


# -- a disconnect racing a refresh -----------------------------------------------------------------


def test_keyring_a_refresh_finishing_after_a_disconnect_does_not_bring_tokens_back(
    sb: Sandbox,
) -> None:
    keyring_store = TokenStore()
    keyring_store.put(5, _expired_tokens(sb, "outlook"))

    async def disconnect_meanwhile() -> None:
        assert await asyncio.to_thread(keyring_store.delete, 5)

    source = KeyringTokenSource(
        app_of(sb, "outlook"), keyring_store, 5, transport=Gate(disconnect_meanwhile)
    )
    with pytest.raises(ReauthRequired):
        asyncio.run(source.access_token())
    assert keyring_store.get(5) is None
    assert sb.stats()["token_refreshes"]["outlook"][EMAILS["outlook"]] == 1  # it did refresh


def test_database_a_disconnect_during_a_refresh_wins(
    db_url: str, tmp_path: Path, sb: Sandbox
) -> None:
    path = str(key_file(tmp_path))
    worker_host, admin_host = Store(db_url), Store(db_url)
    try:
        sealed = SealedTokenStore(worker_host, key_file=path)
        sealed.put(5, _expired_tokens(sb, "outlook"))
        deleted: list[bool] = []
        deleter = threading.Thread(
            target=lambda: deleted.append(SealedTokenStore(admin_host, key_file=path).delete(5))
        )

        async def disconnect_meanwhile() -> None:
            deleter.start()
            if postgres:  # the delete waits for the row
                await asyncio.to_thread(
                    _wait_until, lambda: _pg_lock_waiters(db_url) > 0, "the delete to wait"
                )
            else:  # SQLite locks beside the database: the delete goes through at once
                await asyncio.to_thread(deleter.join, 60)

        postgres = db_url.startswith("postgresql")
        source = KeyringTokenSource(
            app_of(sb, "outlook"), sealed, 5, transport=Gate(disconnect_meanwhile)
        )
        if postgres:
            asyncio.run(source.access_token())  # the refresh committed first, under its lock
        else:
            with pytest.raises(ReauthRequired):  # its UPDATE found no row, and wrote nothing
                asyncio.run(source.access_token())
        deleter.join(60)
        assert deleted == [True]
        assert sealed.get(5) is None
        # and a refresh that starts after the delete finds nothing and writes nothing
        with pytest.raises(ReauthRequired):
            asyncio.run(KeyringTokenSource(app_of(sb, "outlook"), sealed, 5).refresh())
        assert sealed.get(5) is None
    finally:
        worker_host.close()
        admin_host.close()


# -- end to end: connect, sync, grep the database, disconnect, migrate --------------------------


def _settings(sb: Sandbox, db_url: str, key: Path) -> Settings:
    return load_settings(
        {
            **sb.env(),
            "CALSYNC_DB_URL": db_url,
            "CALSYNC_TOKEN_STORE": "database",
            "CALSYNC_SECRET_KEY_FILE": str(key),
        }
    )


def _database_bytes(db_url: str) -> bytes:
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        if os.environ.get("CI"):
            pytest.fail("pg_dump is required in CI")
        pytest.skip("pg_dump is not installed")
    schema = parse_qs(urlsplit(db_url).query)["options"][0].removeprefix("-csearch_path=")
    url = urlsplit(db_url.replace("postgresql+psycopg", "postgresql"))
    dump = subprocess.run(
        [pg_dump, "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 5432),
         "-U", url.username or "postgres", "-n", schema, (url.path or "/test")[1:]],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    assert b"sealed_token" in dump.stdout
    return dump.stdout


def test_connect_sync_and_disconnect_leave_no_token_in_the_database(
    db_url: str, tmp_path: Path, sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from calsync_cli.services import connections
    from calsync_cli.services.connections import ConnectOptions

    settings = _settings(sb, db_url, key_file(tmp_path))
    store = Store(db_url)
    try:
        from calsync_cli.services import imports
        from tests.conftest import NOW, PRACTICES, PROVIDERS, write_jsonl

        for kind, data in (("practices", PRACTICES), ("providers", PROVIDERS)):
            imports.import_file(
                store, kind, str(write_jsonl(tmp_path / f"{kind}.jsonl", data)), now=NOW
            )

        def browser(url: str) -> None:
            with httpx2.Client(follow_redirects=True, timeout=10) as client:
                client.get(url)

        seen: list[str] = []
        for app, provider in (("google", "dr-lee"), ("outlook", "dr-patel")):
            result = connections.connect(
                settings, store,
                ConnectOptions(app=app, provider_id=provider, calendar_id=None, announce_url=browser),
                now=lambda: NOW,
            )  # fmt: skip
            sealed = clients.token_store(settings)
            assert isinstance(sealed, SealedTokenStore)
            tokens = sealed.get(result.integration_id)
            assert tokens is not None and tokens.refresh_token
            seen += [tokens.access_token, tokens.refresh_token]
            # a worker's refresh (another host's token source, the shared store)
            fresh = asyncio.run(
                clients.token_source(settings, app, result.integration_id, provider).refresh()
            )
            again = sealed.get(result.integration_id)
            assert again is not None and again.access_token == fresh
            seen += [fresh, again.refresh_token or ""]
        assert TokenStore().get(1) is None and TokenStore().get(2) is None  # not in the keyring
        clients.close_shared()
        blob = _database_bytes(db_url)
        assert EMAILS["google"].encode() in blob  # the grep reads the rows (accounts are there)
        for token in set(seen):
            assert token and token.encode() not in blob, "a token is in the database in clear"
        for iid in (1, 2):
            connections.disconnect(settings, store, iid, now=lambda: NOW)
        with store.read() as s:
            assert rows.integration_ids(s) == []
    finally:
        store.close()


def test_tokens_migrate_moves_sign_ins_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from calsync_cli.cli.app import app
    from calsync_cli.services import integrations
    from tests.conftest import NOW, PRACTICES, PROVIDERS, write_jsonl

    runner = CliRunner()
    for kind, data in (("practices", PRACTICES), ("providers", PROVIDERS)):
        assert (
            runner.invoke(
                app, [kind, "import", str(write_jsonl(tmp_path / f"{kind}.jsonl", data))]
            ).exit_code
            == 0
        )
    store = Store(os.environ["CALSYNC_DB_URL"])
    try:
        with store.write() as s:
            ids = [
                integrations.create(s, provider_id=p, app="google", now=NOW, account=f"{p}@x").id
                for p in ("dr-lee", "dr-patel", "dr-lee")
            ]
        keyring_store = TokenStore()
        keyring_store.put(ids[0], sample("a0", "r0"))
        keyring_store.put(ids[1], sample("a1", "r1"))
        monkeypatch.setenv("CALSYNC_SECRET_KEY_FILE", str(key_file(tmp_path)))

        def migrate(to: str) -> dict[str, Any]:
            result = runner.invoke(app, ["tokens", "migrate", "--to", to, "--json"])
            assert result.exit_code == 0, result.stderr
            return json.loads(result.stdout)  # type: ignore[no-any-return]

        first = migrate("database")
        assert (first["moved"], first["already"], first["missing"]) == (2, 0, 1)
        assert first["integrations"]["missing"] == [ids[2]]
        assert keyring_store.get(ids[0]) is None and keyring_store.get(ids[1]) is None
        sealed = SealedTokenStore(store, key_file=os.environ["CALSYNC_SECRET_KEY_FILE"])
        assert sealed.get(ids[0]) == sample("a0", "r0")
        again = migrate("database")
        assert (again["moved"], again["already"], again["missing"]) == (0, 2, 1)
        human = runner.invoke(app, ["tokens", "migrate", "--to", "database"])
        assert "Moved 0 sign-ins" in human.stderr and "CALSYNC_TOKEN_STORE=database" in human.stderr
        back = migrate("keyring")
        assert (back["moved"], back["already"]) == (2, 0)
        assert keyring_store.get(ids[1]) == sample("a1", "r1") and sealed.get(ids[1]) is None
        bad = runner.invoke(app, ["tokens", "migrate", "--to", "file"])
        assert bad.exit_code == 2
    finally:
        store.close()


def test_a_burst_of_refreshes_through_one_shared_store(
    db_url: str, tmp_path: Path, sb: Sandbox
) -> None:
    """After an hour's downtime every token has expired: a worker starting then refreshes all
    of its integrations at once, through the one database token store of the process."""
    settings = _settings(sb, db_url, key_file(tmp_path))
    shared = clients.token_store(settings)
    expired = _expired_tokens(sb, "google")
    ids = range(1, 41)
    for iid in ids:
        shared.put(iid, expired)
    sb.reset_stats()

    async def all_at_once() -> list[str]:
        return await asyncio.gather(
            *(clients.token_source(settings, "google", i, "dr-lee").access_token() for i in ids)
        )

    tokens = asyncio.run(all_at_once())
    assert len(set(tokens)) == len(ids) and expired.access_token not in tokens
    assert sb.stats()["token_refreshes"]["google"][EMAILS["google"]] == len(ids)
    assert all((t := shared.get(i)) is not None and t.access_token == tokens[i - 1] for i in ids)
