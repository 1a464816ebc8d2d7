"""Tokens sealed into the calsync database, for workers on several hosts
(``CALSYNC_TOKEN_STORE=database``).

Each integration's tokens (the JSON of ``Tokens.to_json``) are sealed with AES-256-GCM
(``cryptography``'s AEAD: encryption and authentication in one), a fresh 96-bit nonce per write,
and the integration id as associated data, so a row copied onto another integration does not
open. The key never enters the database:

* ``CALSYNC_SECRET_KEY_FILE``: a file every host has (at least 32 bytes, e.g.
  ``openssl rand -base64 32``), readable by its owner only (mode 0600; anything more is refused);
* else a key kept in this host's OS keyring (service ``calsync``, entry ``token-sealing-key``),
  made at first use. That serves one host; a fleet shares the file.

A refresh holds the integration's tokens from its read to its write (``hold``): on PostgreSQL
the row ``FOR UPDATE``, so two hosts never spend one refresh token at once and the one that
waited reads the winner's answer; on SQLite (one host) a lock on the integration's byte of a
file beside the database. A refresh writes with an UPDATE only: after a disconnect deleted the
row, nothing brings the tokens back.

The AES key and the key's fingerprint are derived from the key material with HKDF-SHA256 under
different labels, so the fingerprint identifies the key without revealing it. The fingerprint
is recorded in ``calsync_meta`` (``token_key_fingerprint``, at the first write) and on each row;
a host whose key differs says so in one line naming ``CALSYNC_SECRET_KEY_FILE``. A wrong or
missing key is a ``TokenKeyError`` (a setting to fix), never "reconnect needed".
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from calsync_cli.auth.tokens import Tokens, TokenSlot, TokenStorage, TokenStore, utcnow
from calsync_cli.errors import CalsyncError, ConfigError
from calsync_cli.store import sealed as rows

if TYPE_CHECKING:
    from sqlmodel import Session

    from calsync_cli.store.db import Store

#: the keyring entry (service ``calsync``) of a host's own key, when no key file is set
KEYRING_SECRET = "token-sealing-key"
MIN_KEY_BYTES = 32
VERSION = "v1"
KEY_FILE_VAR = "CALSYNC_SECRET_KEY_FILE"
GENERATE_HINT = "generate one with: openssl rand -base64 32 > FILE && chmod 600 FILE"


class TokenKeyError(ConfigError):
    """The key that seals tokens in the database is missing, unusable, or not the one the
    database's tokens were sealed with (exit 2: a setting to fix, not a reconnect)."""


def _derive(material: bytes, label: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(material)


@dataclass(frozen=True)
class SealingKey:
    """A key for sealing tokens. ``source`` says where it came from (for messages); ``repr``
    shows only the fingerprint."""

    fingerprint: str
    source: str
    _aead: AESGCM = field(repr=False, compare=False)

    @classmethod
    def from_material(cls, material: bytes, source: str) -> SealingKey:
        if len(material) < MIN_KEY_BYTES:
            raise TokenKeyError(
                f"the token key from {source} is {len(material)} bytes; it needs at least "
                f"{MIN_KEY_BYTES}",
                hint=GENERATE_HINT[0].upper() + GENERATE_HINT[1:],
            )
        aead = AESGCM(_derive(material, b"calsync sealed tokens v1", 32))
        fingerprint = _derive(material, b"calsync token key fingerprint v1", 8).hex()
        return cls(fingerprint=fingerprint, source=source, _aead=aead)

    @staticmethod
    def _aad(integration_id: int) -> bytes:
        return f"calsync sealed_token {VERSION} integration:{integration_id}".encode()

    def seal(self, integration_id: int, tokens: Tokens) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, tokens.to_json().encode(), self._aad(integration_id))
        return f"{VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def open(self, integration_id: int, ciphertext: str) -> Tokens:
        """The tokens; ``ValueError`` (without content) when the text does not open."""
        version, _, body = ciphertext.partition(".")
        if version != VERSION:
            raise ValueError(f"unknown sealing version {version[:8]!r}")
        try:
            raw = base64.urlsafe_b64decode(body.encode("ascii"))
            plain = self._aead.decrypt(raw[:12], raw[12:], self._aad(integration_id))
        except (InvalidTag, ValueError, UnicodeError):
            raise ValueError("the ciphertext does not open with this key") from None
        return Tokens.from_json(plain.decode("utf-8"))


def _material(raw: bytes) -> bytes:
    """A text key (``openssl rand -base64 32``) without the whitespace around it; raw bytes
    (``head -c 32 /dev/urandom``) as they are, since stripping could eat random bytes."""
    if all(32 <= b < 127 or b in b"\t\n\r " for b in raw):
        return raw.strip()
    return raw


def key_from_file(path: str | os.PathLike[str]) -> SealingKey:
    """The key in ``path``, refused when group or others may read or write the file."""
    file = Path(path).expanduser()
    where = f"{KEY_FILE_VAR} ({file})"
    try:
        info = file.stat()
        if os.name == "posix" and info.st_mode & 0o077:
            raise TokenKeyError(
                f"the token key file {file} ({KEY_FILE_VAR}) is open to other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o})",
                hint=f"Run: chmod 600 {file}",
            )
        material = _material(file.read_bytes())
    except FileNotFoundError:
        raise TokenKeyError(
            f"the token key file {file} ({KEY_FILE_VAR}) does not exist",
            hint="Copy the fleet's key file there (the same file on every host), or "
            + GENERATE_HINT,
        ) from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise TokenKeyError(
            f"cannot read the token key file {file} ({KEY_FILE_VAR}): "
            f"{exc.strerror or type(exc).__name__}",
            hint=f"Point {KEY_FILE_VAR} at a readable file",
        ) from None
    return SealingKey.from_material(material, where)


def new_key_material() -> str:
    return secrets.token_urlsafe(32)


class _SealedSlot(TokenSlot):
    """A row held for a refresh: a write transaction with the row read ``FOR UPDATE``
    (PostgreSQL; on SQLite without ``fcntl`` the ``BEGIN IMMEDIATE`` write lock), kept open
    until ``replace`` commits or ``release``."""

    def __init__(self, owner: SealedTokenStore, integration_id: int) -> None:
        self._owner = owner
        self._iid = integration_id
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = contextlib.ExitStack()
        try:
            session = self._stack.enter_context(owner.store.write())
            self._session = session
            owner._check_recorded(session)
            row = rows.get(session, integration_id, for_update=True)
            self.tokens = owner._open(row) if row is not None else None
        except BaseException as exc:
            self._end(exc)
            raise

    def _end(self, exc: BaseException | None = None) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if exc is None:
            stack.close()  # commit: the lock goes with the transaction
        else:
            stack.__exit__(type(exc), exc, exc.__traceback__)  # roll back; may translate

    def replace(self, tokens: Tokens) -> bool:
        with self._lock:
            if self._stack is None:
                raise RuntimeError("the token slot was released")
            try:
                done = rows.replace(
                    self._session,
                    self._iid,
                    self._owner.key().seal(self._iid, tokens),
                    self._owner.key().fingerprint,
                    now=self._owner.clock(),
                )
            except BaseException as exc:
                self._end(exc)
                raise
            self._end()
            return done

    def release(self) -> None:
        with self._lock:
            self._end()


try:
    import fcntl

    _lockf: Callable[..., object] | None = fcntl.lockf
except ImportError:  # pragma: no cover - Windows: the write transaction is the lock
    _lockf = None

#: in-process exclusion per (lock file, integration): POSIX record locks belong to the process,
#: so two threads of one process would both get them
_LOCAL: dict[tuple[Path, int], threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


class _FileLockedSlot(TokenSlot):
    """SQLite: byte ``integration_id`` of ``lock_file`` locked (``fcntl.lockf``) until
    ``release``; the row is read after taking the lock and written with an UPDATE only."""

    def __init__(self, owner: SealedTokenStore, integration_id: int, lock_file: Path) -> None:
        assert _lockf is not None
        self._owner = owner
        self._iid = integration_id
        with _LOCAL_GUARD:
            self._local = _LOCAL.setdefault((lock_file, integration_id), threading.Lock())
        self._local.acquire()
        self._holding = True
        self._fd: int | None = None
        try:
            self._fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            _lockf(self._fd, fcntl.LOCK_EX, 1, integration_id)
            self.tokens = owner.get(integration_id)
        except BaseException:
            self.release()
            raise

    def replace(self, tokens: Tokens) -> bool:
        return self._owner.replace(self._iid, tokens)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the record lock
        if self._holding:
            self._holding = False
            self._local.release()


class SealedTokenStore(TokenStorage):
    """Tokens sealed in the ``sealed_token`` table of ``store``.

    The key comes from ``key`` (tests), else ``key_file``, else the keyring entry
    ``KEYRING_SECRET`` of ``keyring`` (made at first use when the database has no tokens sealed
    under another key). It is resolved at the first call, so building the store costs nothing.
    """

    #: each hold keeps a database connection (PostgreSQL) or a worker thread while it waits:
    #: well inside SQLAlchemy's default pool (5 + 10) and asyncio's default thread pool
    max_holds = 4

    def __init__(
        self,
        store: Store,
        *,
        key: SealingKey | None = None,
        key_file: str | None = None,
        keyring: TokenStore | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.clock = clock
        self._key = key
        self._key_file = key_file
        self._keyring = keyring
        self._key_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SealedTokenStore(url={self.store.engine.url!r})"

    # -- the key ------------------------------------------------------------------------------

    def key(self) -> SealingKey:
        with self._key_lock:
            if self._key is None:
                self._key = self._resolve_key()
            return self._key

    def _resolve_key(self) -> SealingKey:
        if self._key_file:
            return key_from_file(self._key_file)
        keyring = self._keyring or TokenStore()
        source = (
            f"this host's keyring ({keyring.service}/{KEYRING_SECRET}; {KEY_FILE_VAR} is unset)"
        )
        material = keyring.secret(KEYRING_SECRET)
        if material is None:
            with self.store.read() as session:
                recorded = rows.recorded_fingerprint(session)
            if recorded is not None:
                raise TokenKeyError(
                    f"the tokens in the database are sealed with key {recorded}, and this host "
                    f"has no token key ({KEY_FILE_VAR} is unset and the keyring has none)",
                    hint=f"Set {KEY_FILE_VAR} to the key file the other hosts use",
                )
            material = keyring.secret(KEYRING_SECRET, create=new_key_material)
        if material is None:  # pragma: no cover - a backend that keeps nothing
            raise TokenKeyError(
                f"the keyring did not keep the token key ({KEY_FILE_VAR} is unset)",
                hint=f"Set {KEY_FILE_VAR}: " + GENERATE_HINT,
            )
        return SealingKey.from_material(material.encode("utf-8"), source)

    def _mismatch(self, sealed_with: str, what: str) -> TokenKeyError:
        key = self.key()
        return TokenKeyError(
            f"{what} sealed with key {sealed_with}, but this host's key from {key.source} is "
            f"{key.fingerprint}",
            hint=f"Set {KEY_FILE_VAR} to the same key file on every host (the one with "
            f"fingerprint {sealed_with})",
        )

    def _check_recorded(self, session: Session) -> None:
        recorded = rows.recorded_fingerprint(session)
        if recorded is not None and recorded != self.key().fingerprint:
            raise self._mismatch(recorded, "the tokens in the database are")

    def _record(self, session: Session) -> None:
        recorded = rows.record_fingerprint(session, self.key().fingerprint)
        if recorded != self.key().fingerprint:
            raise self._mismatch(recorded, "the tokens in the database are")

    def _open(self, row: rows.SealedRow) -> Tokens:
        key = self.key()
        if row.key_fingerprint != key.fingerprint:
            raise self._mismatch(
                row.key_fingerprint, f"integration {row.integration_id}'s tokens are"
            )
        try:
            return key.open(row.integration_id, row.ciphertext)
        except ValueError:
            raise CalsyncError(
                f"integration {row.integration_id}'s sealed tokens do not open with key "
                f"{key.fingerprint}, whose fingerprint they carry: the row is damaged",
                hint=f"Run calsync connect again for integration {row.integration_id}",
            ) from None

    # -- TokenStorage ------------------------------------------------------------------------

    @staticmethod
    def _id(integration_id: int | str) -> int:
        return int(integration_id)

    def get(self, integration_id: int | str) -> Tokens | None:
        iid = self._id(integration_id)
        self.key()
        with self.store.read() as session:
            self._check_recorded(session)
            row = rows.get(session, iid)
        return self._open(row) if row is not None else None

    def put(
        self, integration_id: int | str, tokens: Tokens, *, within: Session | None = None
    ) -> None:
        iid = self._id(integration_id)
        key = self.key()
        sealed = key.seal(iid, tokens)
        with self._session(within) as session:
            self._record(session)
            rows.put(session, iid, sealed, key.fingerprint, now=self.clock())

    def replace(self, integration_id: int | str, tokens: Tokens) -> bool:
        iid = self._id(integration_id)
        key = self.key()
        sealed = key.seal(iid, tokens)
        with self.store.write() as session:
            self._check_recorded(session)
            return rows.replace(session, iid, sealed, key.fingerprint, now=self.clock())

    def delete(self, integration_id: int | str) -> bool:
        """Erase the sealed row; needs no key (a host with the wrong key can still disconnect)."""
        with self.store.write() as session:
            return rows.delete(session, self._id(integration_id))

    def hold(self, integration_id: int | str) -> TokenSlot:
        """PostgreSQL: the row, ``FOR UPDATE`` in a transaction held until the refresh is
        written. SQLite (one host): an advisory lock on the integration's byte of a lock file
        beside the database, with a read before and an UPDATE-only write after the refresh."""
        self.key()  # outside the transaction: the keyring may be slow
        iid = self._id(integration_id)
        lock_file = rows.refresh_lock_file(self.store.url)
        if lock_file is not None and _lockf is not None:
            return _FileLockedSlot(self, iid, lock_file)
        return _SealedSlot(self, iid)

    def check(self) -> str:
        """Resolve the key and compare it with the database's record: the key's fingerprint, or
        ``TokenKeyError`` (for a worker to refuse to start on a host with the wrong key)."""
        key = self.key()
        with self.store.read() as session:
            self._check_recorded(session)
        return key.fingerprint

    def integration_ids(self) -> list[int]:
        with self.store.read() as session:
            return rows.integration_ids(session)

    @contextlib.contextmanager
    def _session(self, within: Session | None) -> Iterator[Session]:
        if within is not None:
            yield within
            return
        with self.store.write() as session:
            yield session


__all__ = [
    "KEYRING_SECRET",
    "SealedTokenStore",
    "SealingKey",
    "TokenKeyError",
    "key_from_file",
]
