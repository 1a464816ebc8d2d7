"""``calsync doctor``: what is wrong with this installation, one check at a time, with the fix.

Each check answers a ``Check`` (``ok``, ``warn``, ``fail`` or ``skipped``, a one-line message
and, unless ok, the fix). The command layer only renders them; exit 1 when any failed.

The checks:

- ``config``: the environment and the config file can be read.
- ``keyring``: the backend keyring chose, a real set/get/delete round trip on a throwaway
  entry, and whether the backend needs a desktop session (Secret Service and KWallet talk over
  the D-Bus session bus, which cron jobs and SSH logins usually lack).
- ``database``: reachable; ``database file``: a SQLite file (and its WAL/SHM files) is mode 0600;
  ``schema``: its version is the one this calsync writes.
- ``sign-in N``: per connected integration, its tokens are there and, by the providers' rules,
  not about to die: a Microsoft refresh token dies after 90 days unused (warn from day 80); a
  Google one after six months unused (warn from 150 days), and after 7 days for an app whose
  OAuth consent screen is still in "Testing" status (a refresh token announced to expire within
  7 days means exactly that). When a token was last used is read from the access token it
  last produced (its expiry minus the access token lifetime of about one hour).
- ``endpoint HOST``: a TCP connect and, for https, a TLS handshake to each configured Google and
  Microsoft host (through the HTTPS proxy when one applies), 5 s timeout; skipped ``offline``.
- ``schedule sync`` / ``schedule sweep``: a crontab line (the user's ``crontab -l``,
  ``/etc/crontab``, ``/etc/cron.d/*``) or a systemd unit (``ExecStart=``) that runs the command;
  looked up every time, never assumed.
- ``secret key file``: with ``CALSYNC_TOKEN_STORE=database``, ``CALSYNC_SECRET_KEY_FILE`` exists
  and is mode 0600.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import stat
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from calsync_cli.apps import connect_command
from calsync_cli.config import Settings, load_settings
from calsync_cli.errors import CalsyncError, one_line

Status = Literal["ok", "warn", "fail", "skipped"]

CONNECT_TIMEOUT = 5.0
#: how long an access token lives (Google: 1 h; Microsoft: 60-90 min): a token's last use is
#: taken as its access token's expiry minus this
ACCESS_TOKEN_LIFETIME = timedelta(hours=1)
#: Microsoft: refresh tokens die after 90 days unused ("Refresh token lifetime", Microsoft
#: identity platform docs: https://learn.microsoft.com/entra/identity-platform/refresh-tokens)
MICROSOFT_IDLE_LIMIT, MICROSOFT_IDLE_WARN = timedelta(days=90), timedelta(days=80)
#: Google: six months unused, and 7 days for an app in "Testing" status ("Refresh token
#: expiration", https://developers.google.com/identity/protocols/oauth2#expiration)
GOOGLE_IDLE_LIMIT, GOOGLE_IDLE_WARN = timedelta(days=180), timedelta(days=150)
GOOGLE_TESTING_LIFETIME = timedelta(days=7)

CRON_FIX = (
    "add to the crontab of the user that runs calsync (crontab -e): "
    "'* * * * * calsync sync' and '*/15 * * * * calsync sweep', or a systemd timer"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


@dataclass
class DoctorOptions:
    """Where the checks look; tests point each at planted faults."""

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    offline: bool = False
    #: the file system root under which /etc/cron.d, /etc/crontab and unit files are read
    root: Path = Path("/")
    #: the user's crontab, as a command whose standard output is the crontab
    crontab_command: Sequence[str] = ("crontab", "-l")
    #: directories of systemd unit files, relative to ``root`` ("~" is the user's home)
    unit_dirs: Sequence[str] = (
        "etc/systemd/system",
        "etc/systemd/user",
        "lib/systemd/system",
        "usr/lib/systemd/system",
        "~/.config/systemd/user",
    )
    connect_timeout: float = CONNECT_TIMEOUT
    #: the keyring backend to test (default: keyring's choice)
    keyring_backend: Any | None = None


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed (warnings allowed), else 1."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def run(opts: DoctorOptions, *, now: datetime) -> list[Check]:
    """Every check, in a fixed order."""
    checks: list[Check] = []
    try:
        loaded = load_settings(opts.env)
        checks.append(Check("config", "ok", f"settings read ({_config_source(loaded)})"))
        settings: Settings | None = loaded
    except CalsyncError as exc:
        settings = None
        checks.append(Check("config", "fail", exc.message, exc.hint or "fix the setting it names"))
    checks.append(check_keyring(opts))
    if settings is not None:
        db_checks, integrations = check_database(settings.db_url)
        checks.extend(db_checks)
        checks.extend(check_sign_ins(settings, integrations, opts, now=now))
        checks.extend(check_endpoints(settings, opts))
    checks.extend(check_schedule(opts))
    checks.extend(check_secret_key(opts.env, settings))
    return checks


def _config_source(settings: Settings) -> str:
    path = settings.config_path
    return f"config file {path}" if path is not None and path.exists() else "no config file"


# -- keyring ----------------------------------------------------------------------------------

#: backends that reach their store over the D-Bus session bus
_SESSION_BACKENDS = ("SecretService", "libsecret", "kwallet", "KWallet")


def _backend_name(backend: Any) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_keyring(opts: DoctorOptions) -> Check:
    import keyring

    from calsync_cli.auth.tokens import KEYRING_FIX, Tokens, TokenStore

    try:
        backend = opts.keyring_backend or keyring.get_keyring()
    except Exception as exc:  # noqa: BLE001 - keyring's own loading can fail in many ways
        return Check(
            "keyring", "fail", f"keyring cannot load a backend: {one_line(exc)}", KEYRING_FIX
        )
    name = _backend_name(backend)
    store = TokenStore(backend=backend, timeout=10.0)
    probe = f"doctor-probe-{uuid.uuid4().hex[:12]}"
    try:
        store.put(probe, Tokens(access_token="doctor-probe", refresh_token=None, expires_at=None))
        back = store.get(probe)
        deleted = store.delete(probe)
    except CalsyncError as exc:
        return Check("keyring", "fail", f"{name}: {exc.message}", exc.hint or KEYRING_FIX)
    if back is None or back.access_token != "doctor-probe" or not deleted:
        return Check("keyring", "fail", f"{name} did not give back what it was given", KEYRING_FIX)
    if any(part in name for part in _SESSION_BACKENDS) and not opts.env.get(
        "DBUS_SESSION_BUS_ADDRESS"
    ):
        return Check(
            "keyring",
            "warn",
            f"{name} works here, but it needs a desktop (D-Bus) session, which cron and systemd "
            "services do not have",
            KEYRING_FIX,
        )
    if "Plaintext" in name:
        return Check(
            "keyring",
            "warn",
            f"{name} works without a desktop session, but keeps tokens in a plain-text file",
            "use keyrings.alt.file.EncryptedKeyring (PYTHON_KEYRING_BACKEND) or "
            "CALSYNC_TOKEN_STORE=database with a secret key file",
        )
    return Check(
        "keyring", "ok", f"{name}: set/get/delete round trip works without a desktop session"
    )


# -- database ---------------------------------------------------------------------------------


def _mode_problem(path: Path) -> str | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode & 0o077:
        return f"{path} is mode {mode:04o} (others can read it)"
    return None


def check_database(url: str) -> tuple[list[Check], list[Any]]:
    """``database``, ``database file`` (SQLite) and ``schema``; and the integrations, read when
    the schema allows it."""
    import sqlalchemy as sa

    from calsync_cli.store import health
    from calsync_cli.store.db import Store

    checks: list[Check] = []
    path = health.sqlite_path(url)
    if path is not None and not path.exists():
        checks.append(
            Check(
                "database",
                "warn",
                f"no database at {path} yet",
                "import practices, providers and visits (calsync practices import FILE), or "
                "set CALSYNC_DB_URL to the existing database",
            )
        )
        return checks, []
    try:
        found = health.probe(url)
    except CalsyncError as exc:
        checks.append(Check("database", "fail", exc.message, exc.hint))
        return checks, []
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        checks.append(
            Check(
                "database",
                "fail",
                f"cannot reach the database ({type(orig or exc).__name__})",
                "check CALSYNC_DB_URL and that the database server is running",
            )
        )
        return checks, []
    where = str(found.sqlite_path) if found.sqlite_path else found.dialect
    checks.append(Check("database", "ok", f"reachable ({where})"))
    if found.sqlite_path is not None:
        loose = [
            p
            for p in (
                found.sqlite_path,
                Path(f"{found.sqlite_path}-wal"),
                Path(f"{found.sqlite_path}-shm"),
            )
            if _mode_problem(p)
        ]
        if loose:
            checks.append(
                Check(
                    "database file",
                    "fail",
                    "; ".join(_mode_problem(p) or "" for p in loose) + ": it holds patient names",
                    "chmod 600 " + " ".join(str(p) for p in loose),
                )
            )
        else:
            checks.append(Check("database file", "ok", f"{found.sqlite_path} is mode 0600"))
    integrations: list[Any] = []
    if found.version is None:
        checks.append(
            Check(
                "schema",
                "warn",
                "the database is empty (no calsync tables yet)",
                "any calsync command that uses the store creates them: calsync status",
            )
        )
    elif found.version > found.current:
        checks.append(
            Check(
                "schema",
                "fail",
                f"schema version {found.version} is newer than this calsync understands "
                f"({found.current})",
                "upgrade calsync to the version the other hosts run",
            )
        )
    elif found.version < found.current:
        checks.append(
            Check(
                "schema",
                "warn",
                f"schema version {found.version}; this calsync writes {found.current}",
                "the next calsync command upgrades it (back the database up first)",
            )
        )
    else:
        checks.append(Check("schema", "ok", f"schema version {found.version} (current)"))
        store = Store(url)
        try:
            with store.read() as session:
                integrations = health.integrations(session)
        finally:
            store.close()
    return checks, integrations


# -- sign-ins ---------------------------------------------------------------------------------


def _token_storage(settings: Settings) -> Any:
    """The token store the settings choose: ``services.clients.token_store`` where this
    calsync has one (the sealed database store), else the keyring."""
    import importlib

    from calsync_cli.auth.tokens import TokenStore

    chooser = getattr(importlib.import_module("calsync_cli.services.clients"), "token_store", None)
    return TokenStore() if chooser is None else chooser(settings)


def sign_in_check(integ: Any, tokens: Any, *, now: datetime) -> Check:
    """One integration's sign-in against its provider's expiry rules (pure)."""
    name = f"sign-in {integ.id}"
    who = f"{integ.app} {integ.account or '?'} ({integ.provider_id})"
    fix = connect_command(integ.app, integ.provider_id)
    if integ.needs_reauth:
        return Check(name, "fail", f"{who}: the grant is gone (reconnect needed)", fix)
    if tokens is None:
        return Check(name, "fail", f"{who}: no tokens are stored for it", fix)
    if not tokens.refresh_token:
        return Check(name, "fail", f"{who}: no refresh token is stored", fix)
    refresh_expires = tokens.refresh_expires_at
    if integ.app == "google" and isinstance(refresh_expires, datetime):
        left = refresh_expires - now
        testing_fix = (
            "publish the Google OAuth app (Google Cloud console, OAuth consent screen: Publish "
            f"app), then sign in again: {fix}"
        )
        if left <= timedelta(0):
            return Check(name, "fail", f"{who}: the refresh token expired", testing_fix)
        if left <= GOOGLE_TESTING_LIFETIME:
            return Check(
                name,
                "warn",
                f"{who}: the refresh token expires in {_days(left)}: the Google app is in "
                "Testing status (refresh tokens last 7 days)",
                testing_fix,
            )
    expires_at = tokens.expires_at
    last_use = None if expires_at is None else expires_at - ACCESS_TOKEN_LIFETIME
    limit, warn_at, rule = (
        (MICROSOFT_IDLE_LIMIT, MICROSOFT_IDLE_WARN, "90 days")
        if integ.app == "outlook"
        else (GOOGLE_IDLE_LIMIT, GOOGLE_IDLE_WARN, "six months")
    )
    if last_use is not None:
        idle = now - last_use
        if idle >= limit:
            return Check(
                name,
                "fail",
                f"{who}: the refresh token was last used {_days(idle)} ago; it dies after "
                f"{rule} unused",
                fix,
            )
        if idle >= warn_at:
            return Check(
                name,
                "warn",
                f"{who}: the refresh token was last used {_days(idle)} ago; it dies after "
                f"{rule} unused",
                "run calsync sweep now (it refreshes idle sign-ins), and schedule it",
            )
    if integ.status == "Pending":
        return Check(
            name,
            "warn",
            f"{who}: signed in, but no calendar is chosen",
            f"calsync calendars select {integ.id} CAL_ID",
        )
    used = f"last used {_days(now - last_use)} ago" if last_use is not None else "signed in"
    return Check(name, "ok", f"{who}: {used}")


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    if days < 1:
        return f"{max(delta.total_seconds() / 3600, 0):.0f} h"
    return f"{days:.0f} days"


def check_sign_ins(
    settings: Settings, integrations: Sequence[Any], opts: DoctorOptions, *, now: datetime
) -> list[Check]:
    connected = [i for i in integrations if i.status != "Disconnected"]
    if not connected:
        return [Check("sign-ins", "ok", "no connected integrations")]
    try:
        storage = _token_storage(settings)
    except CalsyncError as exc:
        return [Check("sign-ins", "fail", exc.message, exc.hint)]
    checks = []
    for integ in connected:
        try:
            tokens = storage.get(integ.id)
        except CalsyncError as exc:
            checks.append(Check(f"sign-in {integ.id}", "fail", exc.message, exc.hint))
            continue
        checks.append(sign_in_check(integ, tokens, now=now))
    return checks


# -- endpoints --------------------------------------------------------------------------------


def endpoint_urls(settings: Settings) -> list[str]:
    """The configured Google and Microsoft URLs, one per distinct scheme://host:port."""
    urls = (
        settings.google_auth_url,
        settings.google_token_url,
        settings.google_revoke_url,
        settings.google_api_url,
        settings.google_batch_url,
        settings.microsoft_authorize_url,
        settings.microsoft_graph_url,
    )
    seen: dict[tuple[str, str, int], str] = {}
    for url in urls:
        parts = urlsplit(url)
        if not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        seen.setdefault((parts.scheme, parts.hostname, port), url)
    return list(seen.values())


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _is_loopback(host):
        return None  # loopback is always reached directly (README: proxies)
    lowered = {k.lower(): v for k, v in env.items()}
    proxies = {
        k[: -len("_proxy")]: v
        for k, v in lowered.items()
        if k.endswith("_proxy") and v and k != "no_proxy"
    }
    no_proxy = lowered.get("no_proxy", "")
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    return proxies.get(parts.scheme) or proxies.get("all")


def probe_endpoint(url: str, *, timeout: float, env: Mapping[str, str]) -> Check:
    """TCP connect (and a TLS handshake for https) to ``url``'s host, or its proxy."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    name = f"endpoint {host}:{port}"
    proxy = _proxy_for(url, env)
    target_host, target_port, tls = host, port, parts.scheme == "https"
    via = ""
    if proxy:
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        target_host, target_port, tls = p.hostname or "", p.port or 8080, False
        via = f" through the proxy {target_host}:{target_port}"
    try:
        with socket.create_connection((target_host, target_port), timeout=timeout) as sock:
            if tls:
                context = ssl.create_default_context()
                with context.wrap_socket(sock, server_hostname=host) as tls_sock:
                    tls_sock.settimeout(timeout)
        done = "TLS handshake" if tls else "TCP connect"
        return Check(name, "ok", f"{done} to {host}:{port}{via} succeeded")
    except ssl.SSLCertVerificationError:
        what, fix = "its TLS certificate does not verify", "check the URL and the CA bundle"
    except socket.gaierror:
        what = f"cannot resolve {host}{via} (gaierror)"
        fix = "check DNS, the network and HTTPS_PROXY/NO_PROXY, or the CALSYNC_*_URL setting"
    except (ssl.SSLError, OSError) as exc:
        timed_out = f", timed out after {timeout:g} s" if isinstance(exc, TimeoutError) else ""
        what = f"cannot connect{via} ({type(exc).__name__}{timed_out})"
        fix = (
            "check the network, the firewall and HTTPS_PROXY/NO_PROXY, or the CALSYNC_*_URL "
            "setting that names this host"
        )
    return Check(name, "fail", what, fix)


def check_endpoints(settings: Settings, opts: DoctorOptions) -> list[Check]:
    if opts.offline:
        return [Check("endpoints", "skipped", "not checked (--offline)")]
    urls = endpoint_urls(settings)
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        return list(
            pool.map(lambda u: probe_endpoint(u, timeout=opts.connect_timeout, env=opts.env), urls)
        )


# -- schedule (cron, systemd) -----------------------------------------------------------------


def _command_pattern(command: str) -> re.Pattern[str]:
    # calsync (any path, python -m calsync_cli too), global options, then the command word
    return re.compile(
        r"(?:\bcalsync|calsync_cli)\S*(?:\s+-{1,2}[\w-]+)*\s+" + re.escape(command) + r"(?:\s|$)"
    )


def _runs(lines: Sequence[str], pattern: re.Pattern[str]) -> bool:
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if pattern.search(text):
            return True
    return False


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _user_crontab(command: Sequence[str]) -> list[str]:
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command, no shell
            list(command), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []  # no crontab program: no user crontab
    return done.stdout.splitlines() if done.returncode == 0 else []


def schedule_sources(opts: DoctorOptions) -> list[tuple[str, list[str]]]:
    """Every place that can run calsync on a schedule, with its lines."""
    sources: list[tuple[str, list[str]]] = [("crontab -l", _user_crontab(opts.crontab_command))]
    etc = opts.root / "etc"
    sources.append(("/etc/crontab", _read_lines(etc / "crontab")))
    cron_d = etc / "cron.d"
    if cron_d.is_dir():
        for path in sorted(cron_d.iterdir()):
            if path.is_file():
                sources.append((f"/etc/cron.d/{path.name}", _read_lines(path)))
    home = Path(opts.env.get("HOME") or Path.home())
    for rel in opts.unit_dirs:
        folder = home / rel[2:] if rel.startswith("~/") else opts.root / rel
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.service")):
            lines = [ln for ln in _read_lines(path) if ln.strip().startswith("ExecStart")]
            sources.append((str(path) if rel.startswith("~/") else f"/{rel}/{path.name}", lines))
    return sources


def check_schedule(opts: DoctorOptions) -> list[Check]:
    sources = schedule_sources(opts)
    checks = []
    for command, why in (
        ("sync", "visits reach calendars only when someone runs calsync sync"),
        ("sweep", "missed visits are not re-queued and idle sign-ins are not kept alive"),
    ):
        pattern = _command_pattern(command)
        where = [name for name, lines in sources if _runs(lines, pattern)]
        if where:
            checks.append(
                Check(
                    f"schedule {command}", "ok", f"calsync {command} runs from " + ", ".join(where)
                )
            )
        else:
            looked = "crontab -l, /etc/crontab, /etc/cron.d, systemd units"
            checks.append(
                Check(
                    f"schedule {command}",
                    "warn",
                    f"nothing runs calsync {command} (looked in {looked}): {why}",
                    CRON_FIX,
                )
            )
    return checks


# -- secret key file (fleet) ------------------------------------------------------------------


def check_secret_key(env: Mapping[str, str], settings: Settings | None = None) -> list[Check]:
    """With tokens sealed in the database, the key file every host shares. Reads the settings
    (environment or config file) where this calsync has them, else the environment."""
    mode = getattr(settings, "token_store", None) or env.get("CALSYNC_TOKEN_STORE") or "keyring"
    if str(mode).strip().lower() != "database":
        return []
    raw = getattr(settings, "secret_key_file", None) or env.get("CALSYNC_SECRET_KEY_FILE")
    if not raw:
        return [
            Check(
                "secret key file",
                "warn",
                "CALSYNC_TOKEN_STORE=database without CALSYNC_SECRET_KEY_FILE: the sealing key "
                "lives in this host's keyring, so other hosts cannot read the tokens",
                "create a key file (head -c 32 /dev/urandom > calsync.key; chmod 600 "
                "calsync.key), copy it to every host and set CALSYNC_SECRET_KEY_FILE",
            )
        ]
    path = Path(raw).expanduser()
    if not path.is_file():
        return [
            Check(
                "secret key file",
                "fail",
                f"CALSYNC_SECRET_KEY_FILE {path} does not exist",
                "copy the fleet's key file there (the same file on every host), mode 0600",
            )
        ]
    problem = _mode_problem(path)
    if problem:
        return [Check("secret key file", "fail", problem, f"chmod 600 {path}")]
    return [Check("secret key file", "ok", f"{path} exists, mode 0600")]


__all__ = [
    "Check",
    "DoctorOptions",
    "exit_code",
    "run",
    "sign_in_check",
]
