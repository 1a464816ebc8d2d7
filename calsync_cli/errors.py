"""The exceptions calsync raises, and the exit code each one means.

::

    CalsyncError                      exit 1  an operational failure
    ├── InputError                    exit 2  bad input or usage: a file, an id, a time zone
    │   ├── NotFoundError             exit 2  an unknown practice, provider, visit or integration
    │   └── ImportValidationError     exit 2  a row of an import file (carries file:line)
    ├── ConfigError                   exit 2  a bad setting (environment or config file)
    ├── StoreError                    exit 1  the database could not be opened or upgraded
    ├── KeyringError                  exit 1  no usable keyring, or it timed out
    ├── AuthError                     exit 1  the OAuth sign-in failed (denied, timeout, bad state)
    └── ReauthRequired                exit 4  the integration must be connected again

Every exception carries a one-line ``message`` and, where there is one, a ``hint``: the command
or setting that fixes it. The CLI's single error mapper (``calsync_cli.cli.output``) renders
``message`` and ``hint`` on one line and exits with ``exit_code``.
"""

from __future__ import annotations


class CalsyncError(Exception):
    """Base class: an operational failure the user can act on (exit code 1)."""

    exit_code = 1

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
    """Bad input or usage: fix the command line or the file (exit code 2)."""

    exit_code = 2


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


class ReauthRequired(CalsyncError):
    """The integration's grant is gone; the user must run ``calsync connect`` again (exit 4)."""

    exit_code = 4
