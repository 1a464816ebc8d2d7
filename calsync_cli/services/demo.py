"""``calsync demo``: the whole job, end to end, on the embedded sandbox.

In a temporary directory (removed at the end unless kept, also on failure or Ctrl-C) it starts
the sandbox with a Google and an Outlook account, imports the bundled sample practices,
providers and visits (moved into the current week), connects ``dr-lee`` to Google and
``dr-patel`` to Outlook through the real loopback sign-in (PKCE, state; the sandbox approves
consent and :func:`calsync_cli.sandbox.browser.follow_sign_in` plays the browser), runs one
sync, and reads the events back from the sandbox.

Nothing of the user's is touched: the settings come from the sandbox and the temporary
directory only (not ``os.environ``, not the user's config file), the database lives in the
temporary directory, and tokens go to an in-memory keyring for the duration of the run.
This module knows nothing of the command line; the CLI renders :class:`DemoResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import keyring
import keyring.backend
import keyring.errors
from tzlocal.windows_tz import win_tz

from calsync_cli.config import load_settings
from calsync_cli.engine.worker import RunSummary, Worker
from calsync_cli.errors import CalsyncError
from calsync_cli.sandbox import DEMO_ACCOUNTS, Sandbox
from calsync_cli.sandbox.browser import follow_sign_in
from calsync_cli.services import connections, integrations
from calsync_cli.services import imports as importers
from calsync_cli.services.imports import Kind, Row
from calsync_cli.store.db import Store

#: the Monday of the week the bundled visits are dated in
SAMPLE_MONDAY = date(2026, 11, 30)
#: (app, provider) of the two integrations the demo connects
CONNECTIONS: tuple[tuple[str, str], ...] = (("google", "dr-lee"), ("outlook", "dr-patel"))
SIGN_IN_TIMEOUT = 30.0


# -- sample data ------------------------------------------------------------------------------


def weeks_to_shift(today: date, sample_monday: date = SAMPLE_MONDAY) -> int:
    """Whole weeks from the sample week's Monday to the Monday of ``today``'s week."""
    monday = today - timedelta(days=today.weekday())
    return (monday - sample_monday).days // 7


def shift_instant(text: str, zone: ZoneInfo, weeks: int) -> str:
    """Move an ISO 8601 instant by ``weeks`` keeping its weekday and its wall-clock time in
    ``zone`` (so a visit at 08:30 stays at 08:30 across a daylight-saving change)."""
    local = datetime.fromisoformat(text).astimezone(zone)
    moved = (local.replace(tzinfo=None) + timedelta(weeks=weeks)).replace(tzinfo=zone)
    return moved.isoformat()


def shift_visits(rows: Sequence[Row], zones: dict[str, ZoneInfo], weeks: int) -> list[Row]:
    """The visit rows with ``start`` and ``end`` moved by ``weeks`` in their practice's zone."""
    out = []
    for row in rows:
        values = dict(row.values)
        zone = zones[values["practice_id"]]
        for name in ("start", "end"):
            values[name] = shift_instant(values[name], zone, weeks)
        out.append(Row(row.line, values))
    return out


def sample_rows(kind: Kind) -> list[Row]:
    """The rows of the bundled ``calsync_cli/data/<kind>.jsonl``."""
    resource = resources.files("calsync_cli") / "data" / f"{kind}.jsonl"
    with resource.open("r", encoding="utf-8") as stream:
        return importers.read_rows(stream, f"{kind}.jsonl", "jsonl")


# -- an in-memory keyring ---------------------------------------------------------------------


@functools.cache
def _memory_keyring_class() -> type[keyring.backend.KeyringBackend]:
    # Defined on first use: keyring registers every backend class it sees, and this one must
    # not be a candidate when some other code in the process lets keyring pick a backend.
    class MemoryKeyring(keyring.backend.KeyringBackend):
        """Keeps passwords in a dict: gone when the process ends."""

        priority = 1  # keyring's classproperty, as a plain number

        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self._items: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self._items.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self._items[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            if self._items.pop((service, username), None) is None:
                raise keyring.errors.PasswordDeleteError(username)

    return MemoryKeyring


@contextlib.contextmanager
def memory_keyring() -> Iterator[keyring.backend.KeyringBackend]:
    """Make an in-memory keyring the process's keyring until the block ends.

    calsync stores tokens with ``keyring.get_keyring()`` (the token store and the worker's
    token sources both do). The demo's tokens are for throwaway sandbox accounts: written to
    the user's real keyring they would leave ``calsync`` entries behind (and could prompt to
    unlock it), and they could collide with a real installation's ``integration:<id>``
    entries. So for the demo's duration the keyring is a dict, and the user's backend is put
    back afterwards.
    """
    previous = keyring.get_keyring()
    backend = _memory_keyring_class()()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoEvent:
    """One event as read back from the sandbox; times in the event's (the practice's) zone."""

    integration: int
    app: str
    start: datetime
    end: datetime
    title: str
    location: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "app": self.app,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "title": self.title,
            "location": self.location,
        }


@dataclass
class DemoResult:
    directory: Path
    kept: bool
    db_url: str
    weeks_shifted: int
    imported: dict[str, int]
    sync: RunSummary
    integrations: list[dict[str, Any]]
    events: list[DemoEvent]
    #: the day the human output shows: today when it has events, else the first day that has
    day: date | None
    elapsed: float = 0.0

    def events_on(self, day: date | None) -> list[DemoEvent]:
        return [e for e in self.events if e.start.date() == day]

    def as_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "kept": self.kept,
            "sync": self.sync.as_dict(),
            "integrations": self.integrations,
            "events": [e.as_dict() for e in self.events],
            "day": self.day.isoformat() if self.day else None,
        }


@dataclass
class DemoHooks:
    """What the caller hears while the demo runs."""

    #: one line per step ("Imported ...", "Connected ...")
    step: Callable[[str], None] = lambda text: None
    #: the worker's progress: (jobs done, jobs claimed)
    progress: Callable[[int, int], None] | None = None


# -- reading events back ----------------------------------------------------------------------


def _parse_time(value: Any) -> datetime:
    """A Google ``{dateTime, timeZone}`` or Graph ``dateTimeTimeZone``, in its ``timeZone``."""
    raw = str(value["dateTime"]).replace("Z", "+00:00")
    head, dot, rest = raw.partition(".")
    if dot:  # Graph writes seven fractional digits; Python reads at most six
        digits = "".join(c for c in rest if c.isdigit())
        raw = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    parsed = datetime.fromisoformat(raw)
    name = value.get("timeZone") or "UTC"
    name = win_tz.get(name, name)  # Graph answers Windows zone names (CLDR windowsZones)
    zone = UTC if name in ("UTC", "Etc/UTC") else ZoneInfo(name)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=zone)
    return parsed.astimezone(zone)


def read_events(sb: Sandbox, rows: Sequence[dict[str, Any]]) -> list[DemoEvent]:
    """Every live event on each integration's chosen calendar, read from the sandbox."""
    out: list[DemoEvent] = []
    for row in rows:
        if not row["account"] or not row["calendar_id"]:
            continue
        for data in sb.events(row["app"], row["account"], row["calendar_id"]):
            if row["app"] == "google":
                title, location = data.get("summary") or "", data.get("location") or None
            else:
                title = data.get("subject") or ""
                location = (data.get("location") or {}).get("displayName") or None
            out.append(
                DemoEvent(
                    integration=row["id"],
                    app=row["app"],
                    start=_parse_time(data["start"]),
                    end=_parse_time(data["end"]),
                    title=title,
                    location=location,
                )
            )
    out.sort(key=lambda e: (e.integration, e.start))
    return out


def pick_day(events: Sequence[DemoEvent], today: date) -> date | None:
    days = sorted({e.start.date() for e in events})
    if today in days:
        return today
    return days[0] if days else None


# -- the run ----------------------------------------------------------------------------------


def run_demo(
    *,
    keep: bool = False,
    hooks: DemoHooks | None = None,
    today: date | None = None,
    base_dir: str | None = None,
    sign_in_timeout: float = SIGN_IN_TIMEOUT,
) -> DemoResult:
    """Run the demo; see the module's docstring. Raises ``CalsyncError`` when a step fails.

    ``today`` picks the week the visits move to (default: the local date); ``base_dir`` is
    where the temporary directory is made (default: the system's temporary directory).
    """
    hooks = hooks or DemoHooks()
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="calsync-demo-", dir=base_dir))
    try:
        result = _run(directory, keep, hooks, today or date.today(), sign_in_timeout)
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    result.elapsed = time.monotonic() - started
    return result


def _now() -> datetime:
    return datetime.now(UTC)


def _run(
    directory: Path, keep: bool, hooks: DemoHooks, today: date, sign_in_timeout: float
) -> DemoResult:
    db_url = f"sqlite:///{directory / 'calsync.db'}"
    # An empty config file of its own: the user's config.toml (a db_url, a visit_url) must not
    # leak into the demo, and load_settings reads only this mapping, never os.environ.
    config = directory / "config.toml"
    config.write_text("# calsync demo: settings come from the sandbox\n", encoding="utf-8")

    with memory_keyring(), Sandbox(port=0, auto_approve=True) as sb:
        for app in ("google", "outlook"):
            sb.add_account(
                app, DEMO_ACCOUNTS[app], calendars=[{"name": "Holidays", "writable": False}]
            )
        env = {**sb.env(), "CALSYNC_DB_URL": db_url, "CALSYNC_CONFIG": str(config)}
        settings = load_settings(env=env)
        hooks.step(f"Sandbox listening on {sb.url}; working in {directory}")

        store = Store(settings.db_url)
        try:
            imported: dict[str, int] = {}
            practices = sample_rows("practices")
            zones = {r.values["id"]: ZoneInfo(r.values["timezone"]) for r in practices}
            sources: tuple[tuple[Kind, list[Row]], ...] = (
                ("practices", practices),
                ("providers", sample_rows("providers")),
            )
            for kind, data in sources:
                res = importers.import_rows(store, kind, data, source=f"{kind}.jsonl", now=_now())
                imported[kind] = res.rows

            # Connect before the visits arrive, so importing them queues the whole week
            # (connecting queues only visits still to come).
            for app, provider_id in CONNECTIONS:
                account = sb.account(app, DEMO_ACCOUNTS[app])
                opts = connections.ConnectOptions(
                    app=app,
                    provider_id=provider_id,
                    calendar_id=account.primary_calendar_id,
                    timeout=sign_in_timeout,
                    open_browser=follow_sign_in,
                )
                conn = connections.connect(settings, store, opts, now=_now)
                hooks.step(
                    f"Connected integration {conn.integration_id} ({app}, {provider_id}) as "
                    f"{conn.account}: calendar {conn.calendar_name}"
                )

            weeks = weeks_to_shift(today)
            visits = shift_visits(sample_rows("visits"), zones, weeks)
            res = importers.import_rows(store, "visits", visits, source="visits.jsonl", now=_now())
            imported["visits"] = res.rows
            hooks.step(
                f"Imported {imported['practices']} practices, {imported['providers']} providers "
                f"and {res.rows} visits (moved into this week); {res.jobs_queued} sync jobs queued"
            )

            worker = Worker(store, settings, on_progress=hooks.progress)
            summary = asyncio.run(worker.run_once())
            _check(summary)
            rows = integrations.status_rows(store)
        finally:
            store.close()

        events = read_events(sb, rows)
        missing = [r["id"] for r in rows if not any(e.integration == r["id"] for e in events)]
        if missing:
            raise CalsyncError(
                f"the demo synced, but integration {missing[0]} has no events in the sandbox"
            )
    return DemoResult(
        directory=directory,
        kept=keep,
        db_url=db_url,
        weeks_shifted=weeks,
        imported=imported,
        sync=summary,
        integrations=rows,
        events=events,
        day=pick_day(events, today),
    )


def _check(summary: RunSummary) -> None:
    """The sandbox does not fail unless told to: anything but a clean run is a failure."""
    for item in summary.integrations.values():
        if item.failed or item.rescheduled or item.held or item.needs_reauth:
            detail = f": {item.error}" if item.error else ""
            raise CalsyncError(
                f"the demo sync did not complete for integration {item.id} ({item.app}){detail}",
                hint="Run it again with -v",
            )
    if not summary.integrations:
        raise CalsyncError("the demo sync found nothing to push")
