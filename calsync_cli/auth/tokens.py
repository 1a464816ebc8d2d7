"""OAuth tokens, the interface of their stores, and their default home: the OS keyring.

``TokenStorage`` is what every token store offers (``get``, ``put``, ``replace``, ``delete`` and
``hold``); ``TokenStore`` keeps tokens in the OS keyring (the default, one host), and
``calsync_cli.auth.sealed.SealedTokenStore`` seals them into the database
(``CALSYNC_TOKEN_STORE=database``, several hosts). ``calsync_cli.services.clients.token_store``
picks one from the settings.

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

import asyncio
import contextlib
import json
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import keyring
import keyring.errors

from calsync_cli.errors import KeyringError, safe_summary

if TYPE_CHECKING:
    from sqlmodel import Session

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
    #: when the refresh token itself dies, when the provider says (Google's
    #: ``refresh_token_expires_in``: 7 days for an app in "Testing" status)
    refresh_expires_at: datetime | None = None

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
        refresh_expires_at = previous.refresh_expires_at if previous else None
        lifetime = response.get("refresh_token_expires_in")
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0:
            refresh_expires_at = now + timedelta(seconds=float(lifetime))
        elif isinstance(response.get("refresh_token"), str):
            refresh_expires_at = None  # a new refresh token without a stated end
        return cls(
            access_token=access,
            refresh_token=refresh,
            expires_at=expires_at,
            scope=scope,
            token_type=token_type,
            refresh_expires_at=refresh_expires_at,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_at": int(self.expires_at.timestamp()) if self.expires_at else None,
                "scope": self.scope,
                "token_type": self.token_type,
                "refresh_expires_at": (
                    int(self.refresh_expires_at.timestamp()) if self.refresh_expires_at else None
                ),
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
        refresh_raw = data.get("refresh_expires_at")
        return cls(
            access_token=data["access_token"],
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=expires_at,
            scope=scope if isinstance(scope, str) else None,
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
            refresh_expires_at=(
                datetime.fromtimestamp(float(refresh_raw), UTC)
                if isinstance(refresh_raw, int | float) and not isinstance(refresh_raw, bool)
                else None
            ),
        )


class TokenSlot:
    """One integration's tokens, held for a refresh: ``tokens`` was read under the store's lock
    and ``replace`` writes while still holding it. ``release`` ends the hold (idempotent).

    The base slot holds no lock (the keyring has none that spans a network call): it reads, and
    ``replace`` writes only over an entry that is still there.
    """

    def __init__(self, storage: TokenStorage, integration_id: int | str) -> None:
        self._storage = storage
        self._integration_id = integration_id
        self.tokens: Tokens | None = storage.get(integration_id)

    def replace(self, tokens: Tokens) -> bool:
        """Store refreshed tokens; False (and nothing written) when they were deleted meanwhile."""
        return self._storage.replace(self._integration_id, tokens)

    def release(self) -> None:
        """End the hold; a slot whose ``replace`` was not called changes nothing."""


class TokenStorage(ABC):
    """Where an integration's tokens live. Every method may raise ``CalsyncError`` subclasses
    (``KeyringError`` for the keyring; ``StoreError`` or ``ConfigError`` for the database, the
    latter for a missing or wrong sealing key): never ``ReauthRequired``, which is the token
    source's to decide from what ``get`` returns."""

    #: holds one event loop may take or keep at once (``held``); None: no limit
    max_holds: int | None = None

    @abstractmethod
    def get(self, integration_id: int | str) -> Tokens | None:
        """The stored tokens, or None when the integration has none."""

    @abstractmethod
    def put(
        self, integration_id: int | str, tokens: Tokens, *, within: Session | None = None
    ) -> None:
        """Store (create or overwrite) the tokens of a sign-in. ``within``: the caller's write
        transaction on the calsync database, which a database store writes in (so the tokens and
        the integration row commit together); other stores ignore it."""

    @abstractmethod
    def replace(self, integration_id: int | str, tokens: Tokens) -> bool:
        """Overwrite tokens that are still stored (a refresh's answer); False, writing nothing,
        when there are none: a disconnect that deleted them wins over a refresh in flight."""

    @abstractmethod
    def delete(self, integration_id: int | str) -> bool:
        """Delete the tokens; False when there were none."""

    def hold(self, integration_id: int | str) -> TokenSlot:
        """Read the tokens under the store's lock on them, held until ``release``: a refresh
        reads, calls the token endpoint and writes while holding it, so two processes or hosts
        never spend one refresh token at once. Blocks while another holder has it."""
        return TokenSlot(self, integration_id)


#: per token store and event loop: how many holds may be taken or held at once
_GATES: weakref.WeakKeyDictionary[TokenStorage, dict[asyncio.AbstractEventLoop, asyncio.Semaphore]]
_GATES = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def _gate(storage: TokenStorage) -> asyncio.Semaphore | None:
    if storage.max_holds is None:
        return None
    loop = asyncio.get_running_loop()
    with _GATES_LOCK:
        per_loop = _GATES.setdefault(storage, {})
        gate = per_loop.get(loop)
        if gate is None:
            for old in [lp for lp in per_loop if lp.is_closed()]:
                del per_loop[old]
            gate = per_loop[loop] = asyncio.Semaphore(storage.max_holds)
        return gate


@contextlib.asynccontextmanager
async def held(storage: TokenStorage, integration_id: int | str) -> AsyncIterator[TokenSlot]:
    """``storage.hold`` for async code: taken and released in worker threads, and released even
    when the task is cancelled at any point (a hold that leaked would block every other host's
    refresh of this grant).

    At most ``storage.max_holds`` holds per event loop are taken or held at once; the others
    wait here, without a thread. Otherwise a burst of refreshes (every token has expired after
    an hour's downtime) would fill the thread pool with holds waiting for a database connection
    while the holders that own the connections wait for a thread to write and let go.
    """
    gate = _gate(storage)
    async with contextlib.AsyncExitStack() as stack:
        if gate is not None:
            await stack.enter_async_context(gate)
        loop = asyncio.get_running_loop()
        taking = loop.run_in_executor(None, storage.hold, integration_id)
        try:
            slot = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The thread may still get the hold: release it as soon as it does.
            def release_late(fut: asyncio.Future[TokenSlot]) -> None:
                if not fut.cancelled() and fut.exception() is None:
                    loop.run_in_executor(None, fut.result().release)

            taking.add_done_callback(release_late)
            raise
        try:
            yield slot
        finally:
            await asyncio.shield(asyncio.to_thread(slot.release))


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


class TokenStore(TokenStorage):
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

    def put(
        self, integration_id: int | str, tokens: Tokens, *, within: Session | None = None
    ) -> None:
        username = keyring_username(integration_id)
        value = tokens.to_json()
        self._call("write", lambda kr: kr.set_password(self.service, username, value))

    def replace(self, integration_id: int | str, tokens: Tokens) -> bool:
        """Overwrite the entry only if it is still there, in one call under the keyring lock
        (no other calsync call in between; across processes too for a file backend)."""
        username = keyring_username(integration_id)
        value = tokens.to_json()

        def _replace(kr: Any) -> bool:
            if kr.get_password(self.service, username) is None:
                return False
            kr.set_password(self.service, username, value)
            return True

        return self._call("write", _replace)

    def secret(self, name: str, create: Callable[[], str] | None = None) -> str | None:
        """The keyring entry ``name`` of the service (not an integration's tokens); when there is
        none and ``create`` is given, store ``create()`` and return it, in one call under the
        keyring lock."""

        def _secret(kr: Any) -> str | None:
            value = kr.get_password(self.service, name)
            if value is None and create is not None:
                kr.set_password(self.service, name, create())
                value = kr.get_password(self.service, name)  # what the backend really kept
            return value if isinstance(value, str) else None

        return self._call("read", _secret)

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


#: the keyring store under its descriptive name (``TokenStore`` is kept for its many callers)
KeyringTokenStore = TokenStore
