"""Every exception calsync raises on purpose, in one tree.

::

    CalsyncError                  an operational failure the user can act on
    ├── InputError                bad input or usage: a file, an id, a time zone, an option
    │   ├── NotFoundError         an unknown practice, provider, visit or integration
    │   ├── ImportValidationError a row of an import file (carries file:line)
    │   └── ConfigError           a bad setting (environment or config file)
    ├── StoreError                the database could not be opened, read or upgraded
    ├── KeyringError              no usable keyring, or it timed out
    ├── AuthError                 the OAuth sign-in did not complete (denied, timeout, bad state)
    └── ProviderError             a call to Google or Microsoft failed (``retryable`` says
        │                         whether it may succeed later with nobody changing anything)
        ├── NotFound              the event or calendar does not exist (404)
        ├── Gone                  deleted already (Google 410); deletes count it as done
        ├── RateLimited           throttled (429, Google 403 rateLimitExceeded); ``retry_after``
        ├── Unavailable           5xx, timeouts, dropped connections; ``retry_after``
        ├── AuthExpired           the access token was refused (401): refresh and repeat once
        ├── ReauthRequired        the grant is gone (``invalid_grant``): sign in again
        ├── PermissionDenied      the account may not do this (read-only calendar, missing scope)
        ├── CalendarUnavailable   the target calendar is gone or no longer writable
        ├── EventIdTaken          a create's id is held by an event that cannot be restored
        └── InvalidRequest        the provider rejected the request as malformed (400-class)

Every exception carries a one-line ``message`` (safe to show and store: no tokens, no patient
data, never a third-party library's text) and, where there is one, a ``hint``: the command or
setting that fixes it. ``one_line(exc)`` is the single way to turn any exception into that line.
The exit code is chosen by the CLI alone (``calsync_cli.cli.output``), from the class.
"""

from __future__ import annotations

import re as _re


class CalsyncError(Exception):
    """Base class: an operational failure the user can act on."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text = f"{text}. {self.hint}"
        return " ".join(text.split())


class InputError(CalsyncError):
    """Bad input or usage: fix the command line or the file."""


class NotFoundError(InputError):
    """An id that the store does not know."""


class ImportValidationError(InputError):
    """A row of an import file is invalid; nothing was written."""

    def __init__(self, source: str, line: int, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{source}:{line}: {problem}", hint=hint)
        self.source = source
        self.line = line
        self.problem = problem


class ConfigError(InputError):
    """A setting in the environment or the config file is invalid."""


class StoreError(CalsyncError):
    """The database could not be opened, created or upgraded."""


class KeyringError(CalsyncError):
    """The OS keyring is unusable or did not answer in time."""


class AuthError(CalsyncError):
    """The OAuth sign-in did not complete (denied, timed out, state mismatch, ...)."""


# -- provider errors ------------------------------------------------------------------------------


class ProviderError(CalsyncError):
    """A provider call failed. ``message`` is one line, safe to show and store (no PHI)."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class NotFound(ProviderError):
    """The calendar or event does not exist."""


class Gone(ProviderError):
    """The event was deleted already (Google answers 410 for a deleted event)."""


class RateLimited(ProviderError):
    """The provider throttled the call. ``retry_after`` is seconds, when the provider said."""

    retryable = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Unavailable(ProviderError):
    """A transient failure: 5xx, a timeout, a dropped connection. ``retry_after`` is seconds,
    when the provider said (a 503 may carry ``Retry-After``)."""

    retryable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class AuthExpired(ProviderError):
    """The access token was refused; refresh it and repeat the call once."""

    retryable = True


class ReauthRequired(ProviderError):
    """The refresh token is invalid or revoked: only a new sign-in helps."""


class PermissionDenied(ProviderError):
    """The account may not do this (a read-only calendar, a missing scope)."""


class CalendarUnavailable(ProviderError):
    """The integration's calendar is gone (404) or no longer writable (403): only a new calendar
    choice helps (``calsync calendars select ID CAL_ID``). Not retryable; the engine holds the
    integration's jobs and puts it in Error with that fix."""


class EventIdTaken(ProviderError):
    """A create's id is held by an event that cannot be brought back (Google answers 409
    ``duplicate`` to the insert, then 403/404 to restoring it: an event deleted in the Calendar UI
    or purged). The engine creates the event again under the visit's next generation."""


class InvalidRequest(ProviderError):
    """The provider rejected the request as invalid; repeating it will not help."""


#: how long one line may be (they are shown, and stored in jobs and status)
LINE_LIMIT = 300


def one_line(exc: BaseException | str, limit: int = LINE_LIMIT) -> str:
    """The one line to show or store for ``exc``: our own message with its hint, else only the
    exception's type (a third-party exception's text may quote tokens or patient data); a
    string is collapsed to one line. Cut to ``limit`` characters."""
    if isinstance(exc, CalsyncError):
        text = exc.one_line()
    elif isinstance(exc, str):
        text = exc
    else:
        text = f"unexpected {type(exc).__name__}"
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return flat


# --------------------------------------------------------------------------- safe error text
#
# Text from keyring, database drivers, HTTP and OAuth libraries can quote what the library
# read: part of a token from a damaged keyring file, a URL with its password, a row's values.
# calsync never shows or stores it verbatim. ``safe_summary`` names the exception's class and
# picks a fixed summary from the table below by recognising the failure; the library's text is
# only matched against, never copied. ``redact_url`` hides passwords in anything URL-shaped.

#: (fragment of a library's message, lower case) -> the fixed summary calsync shows instead
_SUMMARIES: tuple[tuple[str, str], ...] = (
    # SQLite (sqlite3.Error texts, https://www.sqlite.org/rescode.html)
    ("database is locked", "the database is locked by another process"),
    ("file is not a database", "the file is not a SQLite database"),
    ("file is encrypted or is not a database", "the file is not a SQLite database"),
    ("unable to open database file", "the database file cannot be opened"),
    ("readonly database", "the database is read-only"),
    ("read-only", "the database is read-only"),
    ("disk i/o error", "a disk I/O error"),
    ("database or disk is full", "the disk is full"),
    ("malformed", "the database file is damaged"),
    ("no such table", "a table is missing"),
    # PostgreSQL / libpq (psycopg.OperationalError texts)
    ("password authentication failed", "the server refused the user name or password"),
    ("no password supplied", "the server wants a password"),
    ("connection refused", "nothing listens at that host and port"),
    ("could not translate host name", "the host name cannot be resolved"),
    ("name or service not known", "the host name cannot be resolved"),
    ("timeout expired", "the connection timed out"),
    ("timed out", "the connection timed out"),
    ("does not exist", "that role or database does not exist"),
    ("too many connections", "the server has too many connections"),
    ("server closed the connection", "the server closed the connection"),
    ("ssl", "the TLS connection failed"),
    ("invalid port", "the port is not valid"),
    ("out of range", "a number is out of range"),
    # keyring backends and their file formats
    ("no recommended backend", "no usable keyring backend"),
    ("source contains parsing errors", "the keyring file cannot be parsed"),
    ("file contains no section headers", "the keyring file cannot be parsed"),
    ("incorrect password", "the keyring password is wrong"),
    ("permission denied", "permission denied"),
    ("no module named", "a module is not installed"),
)


def _root_cause(exc: BaseException) -> BaseException:
    """The driver's exception inside SQLAlchemy's wrapper (``.orig``), else ``exc``."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def safe_summary(exc: BaseException) -> str:
    """``ClassName: a fixed summary`` (or just the class name) for a third-party exception.

    Never contains the exception's own text: that is only compared with known fragments to
    choose one of calsync's fixed summaries. An ``OSError`` shows its ``strerror`` (the C
    library's message for the errno, which quotes nothing).
    """
    cause = _root_cause(exc)
    name = type(cause).__name__
    if isinstance(cause, OSError) and not type(cause).__module__.startswith(("psycopg", "sqlite")):
        return f"{name}: {cause.strerror}" if cause.strerror else name
    try:
        text = str(cause).lower()
    except Exception:  # noqa: BLE001 - a __str__ that fails has nothing to offer
        text = ""
    for fragment, summary in _SUMMARIES:
        if fragment in text:
            return f"{name}: {summary}"
    return name


#: the password runs to the last "@" of the word: an unencoded "@" in it must not leak its tail
_URL_PASSWORD = _re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@\s:?#]*):\S*@")
_QUERY_SECRET = _re.compile(
    r"(?P<key>[?&;\s](?:password|passwd|pwd|pass|secret|token|access_token|refresh_token"
    r"|client_secret|key|sslpassword)=)[^&;\s]*",
    _re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """``text`` with every URL password (``scheme://user:PASSWORD@host``) and password-like
    query value (``?password=...``) replaced by ``***``. Works on text that does not parse as a
    URL, which is exactly when a URL gets echoed in an error."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}***", text)
