"""OAuth tokens and their home in the OS keyring.

Each integration has one keyring entry: service ``calsync``, username ``integration:<id>``, and
as the password a JSON object ``{"access_token", "refresh_token", "expires_at", "scope",
"token_type"}`` (``expires_at`` in whole seconds since the epoch, or null).

The backend is keyring's choice (``PYTHON_KEYRING_BACKEND``, ``keyringrc.cfg``). calsync never
falls back to a plain file on its own: with no usable backend every call raises
``KeyringError`` naming the fix. Every call runs in a daemon thread and gives up after
``timeout`` seconds, because a locked Secret Service can wait for an unlock prompt forever.
Calls are serialised within the process and, for a file backend on POSIX, across calsync
processes (an advisory lock beside the keyring file): file backends rewrite the whole file.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import keyring
import keyring.errors

from calsync_cli.errors import KeyringError, safe_summary

SERVICE = "calsync"
DEFAULT_KEYRING_TIMEOUT = 10.0

KEYRING_FIX = (
    "Set PYTHON_KEYRING_BACKEND to a working backend: a Secret Service (GNOME Keyring, KWallet) "
    "or, on a headless host, keyrings.alt.file.EncryptedKeyring from the keyrings.alt package "
    "(it asks for a password)"
)

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Tokens:
    """An access token, the refresh token that renews it, and when the access token expires.

    ``repr`` and ``str`` never show the tokens themselves.
    """

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None  # aware; None when the provider did not say
    scope: str | None = None
    token_type: str = "Bearer"

    def __repr__(self) -> str:
        expires = self.expires_at.isoformat() if self.expires_at else None
        return (
            f"Tokens(access_token=<redacted>, refresh_token="
            f"{'<redacted>' if self.refresh_token else None}, expires_at={expires!r}, "
            f"scope={self.scope!r}, token_type={self.token_type!r})"
        )

    __str__ = __repr__

    def expires_within(self, now: datetime, seconds: float) -> bool:
        """True when the access token has expired or expires within ``seconds`` of ``now``."""
        if self.expires_at is None:
            return False
        return self.expires_at - timedelta(seconds=seconds) <= now

    @classmethod
    def from_token_response(
        cls,
        response: Mapping[str, Any],
        now: datetime,
        *,
        previous: Tokens | None = None,
    ) -> Tokens:
        """Build from a token endpoint's JSON answer.

        ``expires_in`` counts from ``now``; a refresh answer without a refresh token (Google)
        keeps ``previous.refresh_token``; one with a new refresh token (Microsoft rotates them)
        replaces it. Raises ``ValueError`` when there is no access token.
        """
        access = response.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the token response has no access_token")
        refresh = response.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            refresh = previous.refresh_token if previous else None
        expires_at: datetime | None = None
        expires_in = response.get("expires_in")
        if isinstance(expires_in, (int, float, str)) and str(expires_in).strip():
            try:
                expires_at = now + timedelta(seconds=float(expires_in))
            except ValueError:
                expires_at = None
        if expires_at is None and isinstance(response.get("expires_at"), (int, float)):
            expires_at = datetime.fromtimestamp(float(response["expires_at"]), UTC)
        scope = response.get("scope")
        if not isinstance(scope, str) or not scope:
            scope = previous.scope if previous else None
        token_type = response.get("token_type")
        if not isinstance(token_type, str) or not token_type:
            token_type = "Bearer"
        return cls(
            access_token=access,
            refresh_token=refresh,
            expires_at=expires_at,
            scope=scope,
            token_type=token_type,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_at": int(self.expires_at.timestamp()) if self.expires_at else None,
                "scope": self.scope,
                "token_type": self.token_type,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Tokens:
        """Parse a stored entry. Raises ``ValueError`` (without the content) when it is bad."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("the stored tokens are not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise ValueError("the stored tokens have no access_token")
        expires_raw = data.get("expires_at")
        expires_at = (
            datetime.fromtimestamp(float(expires_raw), UTC)
            if isinstance(expires_raw, (int, float))
            else None
        )
        refresh = data.get("refresh_token")
        scope = data.get("scope")
        token_type = data.get("token_type")
        return cls(
            access_token=data["access_token"],
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=expires_at,
            scope=scope if isinstance(scope, str) else None,
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        )


#: One keyring call at a time in this process. A sync run refreshes several integrations'
#: tokens at once, and file backends (keyrings.alt, EncryptedKeyring) read the whole file, change
#: one entry and write it back: two writes at once would lose one integration's rotated token.
_KEYRING_LOCK = threading.Lock()


def _lock_file(backend: Any) -> int | None:
    """An open lock file beside a file backend's file (keyrings.alt's name it ``file_path``);
    None for other backends, without fcntl (Windows), or when it cannot be opened."""
    path = getattr(backend, "file_path", None)
    if not isinstance(path, str | os.PathLike):
        return None
    try:
        import fcntl  # noqa: F401 - POSIX only

        os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
        return os.open(os.fspath(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except (ImportError, OSError):
        return None


@contextlib.contextmanager
def _exclusive(backend: Any) -> Iterator[None]:
    """This process's keyring lock and, for a file backend, an advisory lock beside its file
    that every calsync process takes (two cron runs of ``sync`` can refresh tokens at the same
    moment). Other backends (Secret Service, macOS Keychain, Windows Credential Manager) write
    one entry at a time."""
    with _KEYRING_LOCK:
        fd = _lock_file(backend)
        if fd is None:
            yield
            return
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def keyring_username(integration_id: int | str) -> str:
    return f"integration:{integration_id}"


class TokenStore:
    """Tokens per integration in the OS keyring, every call bounded by ``timeout`` seconds.

    ``backend`` pins a keyring backend object; by default each call uses ``keyring.get_keyring()``
    (which honours ``PYTHON_KEYRING_BACKEND`` and ``keyring.set_keyring``).
    """

    def __init__(
        self,
        *,
        service: str = SERVICE,
        timeout: float = DEFAULT_KEYRING_TIMEOUT,
        backend: Any | None = None,
    ) -> None:
        self.service = service
        self.timeout = timeout
        self._backend = backend

    def get(self, integration_id: int | str) -> Tokens | None:
        """The stored tokens, or None when the integration has none."""
        username = keyring_username(integration_id)
        raw = self._call("read", lambda kr: kr.get_password(self.service, username))
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise KeyringError(f"the keyring entry {self.service}/{username} is not text")
        try:
            return Tokens.from_json(raw)
        except ValueError as exc:
            raise KeyringError(
                f"the keyring entry {self.service}/{username} is damaged: {exc}",
                hint="Run calsync connect again for this integration",
            ) from None

    def put(self, integration_id: int | str, tokens: Tokens) -> None:
        username = keyring_username(integration_id)
        value = tokens.to_json()
        self._call("write", lambda kr: kr.set_password(self.service, username, value))

    def delete(self, integration_id: int | str) -> bool:
        """Delete the entry; False when there was none."""
        username = keyring_username(integration_id)

        def _delete(kr: Any) -> bool:
            if kr.get_password(self.service, username) is None:
                return False
            try:
                kr.delete_password(self.service, username)
            except keyring.errors.PasswordDeleteError:
                return False
            return True

        return self._call("delete", _delete)

    # -- machinery -------------------------------------------------------------------------

    def _call(self, action: str, fn: Callable[[Any], T]) -> T:
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def worker() -> None:
            try:
                backend = self._backend if self._backend is not None else keyring.get_keyring()
                _check_backend(backend)
                with _exclusive(backend):
                    outcome.append((True, fn(backend)))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))
            finally:
                done.set()

        thread = threading.Thread(target=worker, name=f"calsync-keyring-{action}", daemon=True)
        thread.start()
        if not done.wait(self.timeout):
            # The worker may stay blocked (a locked keyring waiting for a prompt); it is a
            # daemon thread, so it cannot keep the process alive.
            raise KeyringError(
                f"the keyring did not answer within {self.timeout:g} s ({action})",
                hint="Unlock the keyring (or its Secret Service) and retry, or " + KEYRING_FIX,
            )
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        if isinstance(value, KeyringError):
            raise value
        if isinstance(value, keyring.errors.NoKeyringError):
            raise KeyringError("no usable keyring backend", hint=KEYRING_FIX) from None
        if isinstance(value, keyring.errors.KeyringLocked):
            raise KeyringError(
                f"the keyring is locked ({action})", hint="Unlock it and retry, or " + KEYRING_FIX
            ) from None
        if isinstance(value, Exception):
            # Backends raise all sorts (DBus errors, OSError, a file backend's parse error that
            # quotes the file: part of a token): the class and a fixed summary, never the text.
            raise KeyringError(
                f"the keyring failed to {action}: {safe_summary(value)}", hint=KEYRING_FIX
            ) from None
        raise value


def _check_backend(backend: Any) -> None:
    """Refuse keyring's null backends instead of failing later with its traceback."""
    from keyring.backends import chainer, fail

    if isinstance(backend, fail.Keyring):
        raise KeyringError("no usable keyring backend", hint=KEYRING_FIX)
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        raise KeyringError("no usable keyring backend", hint=KEYRING_FIX)
    try:
        from keyring.backends import null

        if isinstance(backend, null.Keyring):
            raise KeyringError(
                "the keyring backend is the null keyring, which stores nothing", hint=KEYRING_FIX
            )
    except ImportError:  # pragma: no cover - keyring always ships it
        pass
