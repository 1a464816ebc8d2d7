"""Settings: environment variables > config file > defaults.

The config file is TOML, at ``config.toml`` in the platformdirs user config dir or at the path in
``CALSYNC_CONFIG``. Its keys are the environment names without the ``CALSYNC_`` prefix, in lower
case::

    db_url = "postgresql+psycopg://calsync@db.internal/calsync"
    visit_url = "https://pm.example.com/visits/{visit_id}"
    google_client_id = "1234.apps.googleusercontent.com"

Secrets other than the OAuth client credentials never live here: tokens are in the keyring, or
sealed in the database (``token_store = "database"``) with the key in ``secret_key_file``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from calsync_cli.errors import ConfigError, redact_url

APP_NAME = "calsync"
#: lone surrogates (undecodable bytes of an environment variable) and C0 controls but tab
_UNUSABLE_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
ENV_PREFIX = "CALSYNC_"


def user_config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def user_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Every setting calsync reads. Field names are the env names without the prefix."""

    db_url: str
    visit_url: str | None = None
    google_client_id: str | None = None
    google_client_secret: str | None = None
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_revoke_url: str = "https://oauth2.googleapis.com/revoke"
    google_api_url: str = "https://www.googleapis.com/calendar/v3"
    google_batch_url: str = "https://www.googleapis.com/batch/calendar/v3"
    microsoft_client_id: str | None = None
    microsoft_authority: str = "https://login.microsoftonline.com/common"
    microsoft_graph_url: str = "https://graph.microsoft.com/v1.0"
    #: where tokens live: ``keyring`` (this host's OS keyring) or ``database`` (sealed into the
    #: store, for workers on several hosts)
    token_store: str = "keyring"
    #: the key that seals tokens in the database (the same file on every host); unset: a key
    #: kept in this host's keyring
    secret_key_file: str | None = None
    config_path: Path | None = None

    @property
    def microsoft_authorize_url(self) -> str:
        return self.microsoft_authority.rstrip("/") + "/oauth2/v2.0/authorize"

    @property
    def microsoft_token_url(self) -> str:
        return self.microsoft_authority.rstrip("/") + "/oauth2/v2.0/token"

    def visit_link(self, visit_id: str) -> str | None:
        if not self.visit_url:
            return None
        return self.visit_url.replace("{visit_id}", visit_id)


TOKEN_STORES = ("keyring", "database")

_SETTING_NAMES = tuple(f.name for f in fields(Settings) if f.name != "config_path")


def google_batch_url_for(api_url: str) -> str:
    """The batch endpoint beside a Calendar API URL: ``.../calendar/v3`` ->
    ``.../batch/calendar/v3`` (Google's own layout); otherwise the API URL's origin +
    ``/batch/calendar/v3``."""
    base = api_url.rstrip("/")
    if base.endswith("/calendar/v3"):
        return base[: -len("/calendar/v3")] + "/batch/calendar/v3"
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}/batch/calendar/v3"


def default_db_url() -> str:
    return f"sqlite:///{user_data_dir() / 'calsync.db'}"


def config_file_path(env: Mapping[str, str]) -> Path:
    explicit = env.get(ENV_PREFIX + "CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    return user_config_dir() / "config.toml"


def _read_config_file(path: Path, explicit: bool) -> dict[str, object]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"config file {path} does not exist",
                hint="Create it or unset CALSYNC_CONFIG",
            ) from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not UTF-8 text", hint="Save it as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message names a line and column, no content
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}", hint="Fix the file or move it away"
        ) from None
    unknown = sorted(set(data) - set(_SETTING_NAMES))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting {unknown[0]!r}",
            hint="Known settings: " + ", ".join(_SETTING_NAMES),
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    return data


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``env`` (default: ``os.environ``) and the config file."""
    env = os.environ if env is None else env
    path = config_file_path(env)
    values: dict[str, object] = dict(
        _read_config_file(path, explicit=bool(env.get(ENV_PREFIX + "CONFIG")))
    )
    for name in _SETTING_NAMES:
        from_env = env.get(ENV_PREFIX + name.upper())
        if from_env:
            values[name] = from_env
    for name, value in values.items():
        if isinstance(value, str) and _UNUSABLE_TEXT.search(value):
            # an environment variable of bytes that are not UTF-8 (Python hands them over as
            # lone surrogates), or a control character: every later use would fail on it
            raise ConfigError(
                f"{ENV_PREFIX}{name.upper()} (or {name} in the config file) contains bytes "
                "that are not UTF-8 text, or a control character",
                hint="Set it to plain UTF-8 text",
            )
    values.setdefault("db_url", default_db_url())
    api_url = values.get("google_api_url")
    if isinstance(api_url, str) and "google_batch_url" not in values:
        # only the API URL was set: batches go to the same host, never to Google's real one
        values["google_batch_url"] = google_batch_url_for(api_url)
    visit_url = values.get("visit_url")
    if isinstance(visit_url, str) and "{visit_id}" not in visit_url:
        raise ConfigError(
            "CALSYNC_VISIT_URL must contain {visit_id}",
            hint="For example https://pm.example.com/visits/{visit_id}",
        )
    token_store = values.get("token_store", "keyring")
    if isinstance(token_store, str):
        values["token_store"] = token_store = token_store.strip().lower()
    if token_store not in TOKEN_STORES:
        raise ConfigError(
            f"CALSYNC_TOKEN_STORE must be keyring or database, not {token_store!r}",
            hint="keyring keeps tokens on this host; database seals them into the store for "
            "several hosts",
        )
    db_url = values["db_url"]
    if isinstance(db_url, str):
        check_db_url(db_url)
    return Settings(config_path=path, **values)  # type: ignore[arg-type]


_DB_URL_HINT = "Use sqlite:///path/to/calsync.db or postgresql+psycopg://user@host/db"


def check_db_url(url: str) -> None:
    """The shape of CALSYNC_DB_URL, checked without importing SQLAlchemy (``status`` reads the
    database with the bare driver): a scheme, and a port in 1-65535. The store parses it fully;
    every message hides the URL's password."""
    from urllib.parse import urlsplit

    shown = repr(redact_url(url))
    if "://" not in url or any(c in url for c in "\x00\n\r"):
        raise ConfigError(f"CALSYNC_DB_URL is not a database URL: {shown}", hint=_DB_URL_HINT)
    try:
        port = urlsplit(url).port
    except ValueError:
        raise ConfigError(
            f"CALSYNC_DB_URL has a port that is not a number in 1-65535: {shown}",
            hint=_DB_URL_HINT,
        ) from None
    if port == 0:
        raise ConfigError(f"CALSYNC_DB_URL has port 0: {shown}", hint=_DB_URL_HINT)
