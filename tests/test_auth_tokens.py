"""Tokens and the keyring token store: round trips, redaction, no silent fallback, timeouts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.errors
import pytest
from keyring.backends import chainer, fail
from keyrings.alt.file import PlaintextKeyring

from calsync_cli.auth import Tokens, TokenStore, keyring_username
from calsync_cli.errors import KeyringError

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


def sample(**changes: Any) -> Tokens:
    base = Tokens(
        access_token="ya29.ACCESS-SECRET",
        refresh_token="1//REFRESH-SECRET",
        expires_at=NOW + timedelta(hours=1),
        scope="https://www.googleapis.com/auth/calendar.events",
        token_type="Bearer",
    )
    return Tokens(**{**base.__dict__, **changes})


def test_repr_and_str_redact_tokens() -> None:
    tokens = sample()
    for text in (repr(tokens), str(tokens), f"{tokens}", repr([tokens])):
        assert "ACCESS-SECRET" not in text
        assert "REFRESH-SECRET" not in text
        assert "<redacted>" in text


def test_json_round_trip_keeps_every_field() -> None:
    tokens = sample()
    data = json.loads(tokens.to_json())
    assert set(data) == {
        "access_token", "refresh_token", "expires_at", "scope", "token_type", "refresh_expires_at",
    }  # fmt: skip
    assert data["expires_at"] == int((NOW + timedelta(hours=1)).timestamp())
    assert Tokens.from_json(tokens.to_json()) == tokens


def test_a_refresh_tokens_own_end_is_kept_across_refreshes() -> None:
    """Google's ``refresh_token_expires_in`` (7 days for an app in Testing status) is the end of
    the refresh token: kept by refresh answers that carry no new refresh token."""
    first = Tokens.from_token_response(
        {"access_token": "a", "refresh_token": "r", "expires_in": 3599,
         "refresh_token_expires_in": 604799}, NOW,
    )  # fmt: skip
    assert first.refresh_expires_at == NOW + timedelta(seconds=604799)
    later = NOW + timedelta(days=2)
    again = Tokens.from_token_response({"access_token": "b", "expires_in": 3599}, later,
                                       previous=first)  # fmt: skip
    assert again.refresh_expires_at == first.refresh_expires_at
    assert Tokens.from_json(again.to_json()).refresh_expires_at == first.refresh_expires_at
    assert Tokens.from_token_response({"access_token": "c"}, NOW).refresh_expires_at is None


def test_from_token_response_counts_expires_in_from_now_and_keeps_previous_refresh() -> None:
    previous = sample()
    fresh = Tokens.from_token_response(
        {"access_token": "new", "expires_in": 3599, "token_type": "Bearer"},
        NOW,
        previous=previous,
    )
    assert fresh.expires_at == NOW + timedelta(seconds=3599)
    assert fresh.refresh_token == previous.refresh_token  # Google does not rotate
    assert fresh.scope == previous.scope
    rotated = Tokens.from_token_response(
        {"access_token": "new", "refresh_token": "rotated", "expires_in": "60"},
        NOW,
        previous=previous,
    )
    assert rotated.refresh_token == "rotated"
    with pytest.raises(ValueError):
        Tokens.from_token_response({"token_type": "Bearer"}, NOW)


def test_expires_within() -> None:
    tokens = sample(expires_at=NOW + timedelta(seconds=59))
    assert tokens.expires_within(NOW, 60)
    assert not tokens.expires_within(NOW, 30)
    assert not sample(expires_at=None).expires_within(NOW, 60)


def test_store_put_get_delete(keyring_backend: PlaintextKeyring) -> None:
    store = TokenStore()
    assert store.get(7) is None
    store.put(7, sample())
    assert store.get(7) == sample()
    raw = keyring_backend.get_password("calsync", keyring_username(7))
    assert raw is not None
    assert json.loads(raw)["access_token"] == "ya29.ACCESS-SECRET"
    assert keyring_username(7) == "integration:7"
    store.put(7, sample(access_token="second"))
    assert store.get(7) == sample(access_token="second")
    assert store.get(8) is None
    assert store.delete(7) is True
    assert store.get(7) is None
    assert store.delete(7) is False


def test_damaged_entry_is_a_keyring_error_without_its_content(
    keyring_backend: PlaintextKeyring,
) -> None:
    keyring_backend.set_password("calsync", "integration:3", "not json ACCESS-SECRET")
    with pytest.raises(KeyringError) as info:
        TokenStore().get(3)
    assert "damaged" in info.value.message
    assert "ACCESS-SECRET" not in info.value.one_line()


def test_fail_backend_raises_keyring_error_naming_the_fix() -> None:
    keyring.set_keyring(fail.Keyring())  # type: ignore[no-untyped-call]
    store = TokenStore()
    for call in (lambda: store.get(1), lambda: store.put(1, sample()), lambda: store.delete(1)):
        with pytest.raises(KeyringError) as info:
            call()
        line = info.value.one_line()
        assert "no usable keyring backend" in line
        assert "PYTHON_KEYRING_BACKEND" in line
        assert "keyrings.alt.file.EncryptedKeyring" in line
        assert "\n" not in line
        assert info.value.__cause__ is None


def test_chainer_with_nothing_usable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [])
    keyring.set_keyring(chainer.ChainerBackend())  # type: ignore[no-untyped-call]
    with pytest.raises(KeyringError, match="no usable keyring backend"):
        TokenStore().put(1, sample())


class _RaisingKeyring(keyring.backend.KeyringBackend):
    priority = 1

    def __init__(self, exc: Exception) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.exc = exc

    def get_password(self, service: str, username: str) -> str | None:
        raise self.exc

    def set_password(self, service: str, username: str, password: str) -> None:
        raise self.exc

    def delete_password(self, service: str, username: str) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (keyring.errors.NoKeyringError("No recommended backend"), "no usable keyring backend"),
        (keyring.errors.KeyringLocked("locked"), "the keyring is locked"),
        (keyring.errors.PasswordSetError("nope"), "PasswordSetError"),
        (OSError(13, "Permission denied"), "Permission denied"),
    ],
)
def test_backend_errors_become_one_line_keyring_errors(exc: Exception, expected: str) -> None:
    keyring.set_keyring(_RaisingKeyring(exc))
    with pytest.raises(KeyringError) as info:
        TokenStore().put(1, sample())
    assert expected in info.value.one_line()
    assert "PYTHON_KEYRING_BACKEND" in info.value.one_line()
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


class _BlockingKeyring(keyring.backend.KeyringBackend):
    """Like a locked Secret Service waiting for an unlock prompt."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.release = threading.Event()
        self.entered = threading.Event()

    def get_password(self, service: str, username: str) -> str | None:
        self.entered.set()
        self.release.wait(5)
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self.get_password(service, username)

    def delete_password(self, service: str, username: str) -> None:
        self.get_password(service, username)


def test_a_keyring_that_hangs_times_out() -> None:
    blocking = _BlockingKeyring()
    keyring.set_keyring(blocking)
    store = TokenStore(timeout=0.2)
    try:
        with pytest.raises(KeyringError) as info:
            store.get(1)
        assert blocking.entered.is_set()
        line = info.value.one_line()
        assert "did not answer within 0.2 s" in line
        assert "Unlock" in line
        assert "PYTHON_KEYRING_BACKEND" in line
    finally:
        blocking.release.set()


def test_a_pinned_backend_is_used_instead_of_the_global_one(tmp_path: Path) -> None:
    other = PlaintextKeyring()
    other.file_path = str(tmp_path / "other.cfg")
    store = TokenStore(backend=other)
    store.put(5, sample())
    assert TokenStore().get(5) is None
    assert store.get(5) == sample()


def test_concurrent_writes_of_different_integrations_are_all_kept(
    keyring_backend: PlaintextKeyring,
) -> None:
    """Refreshes of several integrations in one run write the keyring at the same time; a file
    backend (read the file, change one entry, write it back) must not lose any of them."""
    store = TokenStore()
    ids = range(1, 9)
    start = threading.Barrier(len(ids))

    def write(iid: int) -> None:
        start.wait()
        for round_ in range(15):
            store.put(iid, sample(access_token=f"{iid}-{round_}"))

    threads = [threading.Thread(target=write, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: (t.access_token if (t := store.get(i)) else None) for i in ids} == {
        i: f"{i}-14" for i in ids
    }


WRITER = """
import sys
from datetime import UTC, datetime
from calsync_cli.auth import Tokens, TokenStore
iid = int(sys.argv[1])
sys.stdin.readline()  # start together
for round_ in range(15):
    TokenStore().put(iid, Tokens(access_token=f"{iid}-{round_}", refresh_token="r",
                                 expires_at=datetime(2027, 1, 1, tzinfo=UTC)))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the cross-process lock is POSIX only")
def test_concurrent_writes_from_several_processes_are_all_kept(
    keyring_backend: PlaintextKeyring,
) -> None:
    """Two cron runs of ``calsync sync`` can refresh tokens at the same moment."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(i)], stdin=subprocess.PIPE, text=True)
        for i in range(1, 5)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    store = TokenStore()
    assert {i: (t.access_token if (t := store.get(i)) else None) for i in range(1, 5)} == {
        i: f"{i}-14" for i in range(1, 5)
    }
