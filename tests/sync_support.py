"""Helpers for the concurrency and crash tests: an engine Env on any database URL, two
clinicians each with their own calendar (dr-lee on Google, dr-patel on Outlook), and checks of
what the sandbox calendars show against what the store says they should show."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select

from calsync_cli.config import load_settings
from calsync_cli.engine.render import event_tag, render
from calsync_cli.sandbox import Sandbox
from calsync_cli.services import imports as importers
from calsync_cli.store.db import Store
from calsync_cli.store.models import Integration, Practice, Visit
from tests.conftest import PRACTICES, PROVIDERS, write_jsonl
from tests.engine_support import EMAILS, Clock, Env, connect

#: which clinician's visits go to which app's account (one integration each)
CLINICIANS = {"dr-lee": "google", "dr-patel": "outlook"}
ROOMS = ["Room 1", "Room 2", "Room 3", None]


def make_db_env(tmp: Path, sb: Sandbox, db_url: str, now: datetime) -> Env:
    """Like ``engine_support.make_env``, on ``db_url`` and with the clock at ``now``."""
    for app, email in EMAILS.items():
        sb.add_account(app, email)
    settings = load_settings({**sb.env(), "CALSYNC_DB_URL": db_url})
    store = Store(settings.db_url)
    for kind, rows in (("practices", PRACTICES), ("providers", PROVIDERS)):
        path = write_jsonl(tmp / f"{kind}.jsonl", [dict(r) for r in rows])
        importers.import_file(store, kind, str(path), now=now)  # type: ignore[arg-type]
    return Env(sb=sb, store=store, settings=settings, tmp=tmp, clock=Clock(now))


def connect_both(env: Env) -> dict[str, int]:
    """dr-lee's Google integration and dr-patel's Outlook one; returns {app: integration id}."""
    for provider_id, app in CLINICIANS.items():
        connect(env, app, provider_id)
    return dict(env.integrations)


def visit_rows(n: int, rng: random.Random, base: datetime) -> list[dict[str, Any]]:
    """``n`` visits spread over both clinicians and practices, unique patient names."""
    rows = []
    for i in range(n):
        start = base + timedelta(minutes=30 * i)
        rows.append(
            {
                "id": f"v{i:04d}",
                "practice_id": rng.choice(["main", "river"]),
                "provider_id": list(CLINICIANS)[i % 2],
                "patient_name": f"Pat Number{i}",
                "visit_type": rng.choice(["Follow Up", "New Patient"]),
                "room": rng.choice(ROOMS),
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=30)).isoformat(),
            }
        )
    return rows


def edit(rows: list[dict[str, Any]], rng: random.Random, k: int) -> list[dict[str, Any]]:
    """Apply ``k`` random edits in place (room, time, cancel, un-cancel, reassignment); return
    the edited rows (to import)."""
    changed: dict[str, dict[str, Any]] = {}
    for row in rng.sample(rows, k):
        what = rng.choice(["room", "time", "cancel", "uncancel", "reassign"])
        if what == "room":
            row["room"] = rng.choice(ROOMS)
        elif what == "time":
            shift = timedelta(minutes=rng.choice([-15, 15, 30]))
            for key in ("start", "end"):
                row[key] = (datetime.fromisoformat(str(row[key])) + shift).isoformat()
        elif what == "cancel":
            row["status"] = "cancelled"
        elif what == "uncancel":
            row["status"] = "confirmed"
        else:
            row["provider_id"] = "dr-patel" if row["provider_id"] == "dr-lee" else "dr-lee"
        changed[str(row["id"])] = row
    return list(changed.values())


def import_rows(env: Env, rows: list[dict[str, Any]], name: str, now: datetime) -> None:
    path = write_jsonl(env.tmp / name, rows)
    importers.import_file(env.store, "visits", str(path), now=now)


def creates_seen(sb: Sandbox) -> dict[str, int]:
    """Create calls the sandbox answered, per app (Google ``events.insert`` also inside batches,
    Outlook ``events.create`` also inside ``$batch``)."""
    requests = sb.stats()["requests"]
    return {
        "google": sum(r.get("POST events.insert", 0) for r in requests.get("google", {}).values()),
        "outlook": sum(
            r.get("POST events.create", 0) for r in requests.get("outlook", {}).values()
        ),
    }


def _tag(app: str, event: dict[str, Any]) -> str | None:
    if app == "google":
        private = (event.get("extendedProperties") or {}).get("private") or {}
        return str(private["calsync"]) if "calsync" in private else None
    for prop in event.get("singleValueExtendedProperties") or ():
        return str(prop.get("value"))
    return None


def _shown(app: str, event: dict[str, Any]) -> tuple[str, str, str]:
    if app == "google":
        return event["summary"], event.get("location") or "", event["start"]["dateTime"]
    location = (event.get("location") or {}).get("displayName") or ""
    return event["subject"], location, event["start"]["dateTime"]


def _expected_shown(app: str, rendered: Any) -> tuple[str, str, str]:
    start = rendered.start.replace(tzinfo=None) if app == "outlook" else rendered.start
    return rendered.title, rendered.location or "", start.isoformat()


def calendar_problems(env: Env) -> list[str]:
    """Differences between the calendars and the visits: each visit that belongs on an
    integration's calendar has exactly one live event there, with the content ``render`` gives;
    nothing else is on any calendar. Empty when all is well."""
    problems: list[str] = []
    with env.store.read() as s:
        integrations = list(s.exec(select(Integration)))
        visits = list(s.exec(select(Visit)))
        practices = {p.id: p for p in s.exec(select(Practice))}
    for integ in integrations:
        assert integ.id is not None and integ.account is not None
        app = integ.app
        by_tag: dict[str | None, list[dict[str, Any]]] = {}
        for event in env.sb.events(app, integ.account, str(integ.calendar_id)):
            by_tag.setdefault(_tag(app, event), []).append(event)
        for v in visits:
            tag = event_tag(integ.id, v.id)
            found = by_tag.pop(tag, [])
            belongs = v.status != "cancelled" and v.provider_id in integ.provider_filter
            if not belongs:
                if found:
                    problems.append(f"{app} {v.id}: {len(found)} event(s) for a visit not there")
                continue
            if len(found) != 1:
                problems.append(f"{app} {v.id}: {len(found)} events, expected 1")
                continue
            want = render(v, practices[v.practice_id], integ).event
            got, expected = _shown(app, found[0]), _expected_shown(app, want)
            if got != expected:
                problems.append(f"{app} {v.id}: shows {got}, expected {expected}")
        for unknown, extra in by_tag.items():
            problems.append(f"{app}: {len(extra)} event(s) with unknown tag {unknown}")
    return problems


def sync_process(env_vars: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``python -m calsync_cli sync ARGS`` with the test's environment (keyring included)."""
    return subprocess.Popen(
        [sys.executable, "-m", "calsync_cli", "sync", *args],
        env={**os.environ, **env_vars},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
