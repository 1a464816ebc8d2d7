"""Helpers for engine tests: a sandbox, a store, and integrations signed in through OAuth."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2

from calsync_cli.auth.apps import GOOGLE_SCOPES, MICROSOFT_SCOPES
from calsync_cli.auth.tokens import Tokens, TokenStore
from calsync_cli.config import Settings, load_settings
from calsync_cli.engine.worker import RunSummary, Worker
from calsync_cli.sandbox import Sandbox
from calsync_cli.sandbox.testing import google_sign_in, microsoft_sign_in
from calsync_cli.services import imports as importers
from calsync_cli.services import integrations as core
from calsync_cli.store.db import Store
from tests.conftest import NOW, PRACTICES, PROVIDERS, write_jsonl

EMAILS = {"google": "ana.lee@gmail.example", "outlook": "ana.lee@outlook.example"}


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass
class Env:
    sb: Sandbox
    store: Store
    settings: Settings
    tmp: Path
    clock: Clock = field(default_factory=Clock)
    integrations: dict[str, int] = field(default_factory=dict)

    def worker(self, **kw: Any) -> Worker:
        kw.setdefault("provider_options", {"retry_budget": 0})
        return Worker(self.store, self.settings, clock=self.clock, rng=random.Random(1), **kw)

    def sync(self, **kw: Any) -> RunSummary:
        return asyncio.run(self.worker(**kw).run_once())

    def import_visits(
        self, rows: list[dict[str, object]], name: str = "v.jsonl"
    ) -> importers.ImportResult:
        path = write_jsonl(self.tmp / name, rows)
        return importers.import_file(self.store, "visits", str(path), now=self.clock())

    def calendar(self, app: str) -> str:
        return self.sb.account(app, EMAILS[app]).primary_calendar_id

    def events(self, app: str, **kw: Any) -> list[dict[str, Any]]:
        return self.sb.events(app, EMAILS[app], self.calendar(app), **kw)


def sign_in_tokens(sb: Sandbox, app: str, email: str, now: datetime) -> Tokens:
    """The OAuth code flow against the sandbox, asking for calsync's own scopes (a refresh must
    ask for the same scopes as the sign-in)."""
    with httpx2.Client() as client:
        if app == "google":
            answer = google_sign_in(client, sb.url, email, scopes=GOOGLE_SCOPES)
        else:
            answer = microsoft_sign_in(client, sb.url, email, scopes=MICROSOFT_SCOPES)
    return Tokens.from_token_response(answer, now)


def connect(env: Env, app: str, provider_id: str = "dr-lee") -> int:
    email = EMAILS[app]
    # The sandbox issued them now, by the real clock, which is also what the token source checks
    # their expiry against (env.clock is the worker's clock); stamping them with env.clock made
    # every test refresh first once the real time passed NOW + 1 h.
    tokens = sign_in_tokens(env.sb, app, email, datetime.now(UTC))
    with env.store.write() as s:
        integ = core.create(
            s, provider_id=provider_id, app=app, now=env.clock(), account=email,
            calendar_id=env.calendar(app), calendar_name="Calendar",
        )  # fmt: skip
        assert integ.id is not None
        iid = integ.id
    TokenStore().put(iid, tokens)
    env.integrations[app] = iid
    return iid


def make_env(tmp: Path, sb: Sandbox) -> Env:
    for app, email in EMAILS.items():
        sb.add_account(app, email, calendars=[{"name": "Clinic", "writable": True}])
    settings = load_settings({**sb.env(), "CALSYNC_DB_URL": f"sqlite:///{tmp / 'engine.db'}"})
    store = Store(settings.db_url)
    importers.import_file(store, "practices", str(write_jsonl(tmp / "p.jsonl", PRACTICES)), now=NOW)
    importers.import_file(store, "providers", str(write_jsonl(tmp / "d.jsonl", PROVIDERS)), now=NOW)
    return Env(sb=sb, store=store, settings=settings, tmp=tmp)


def sandbox_app(sb: Sandbox, name: str, tmp_path: Path) -> Any:
    """The OAuth app ``name`` pointed at the sandbox, with an empty config file."""
    from calsync_cli.auth.apps import oauth_app

    config = tmp_path / "config.toml"
    config.write_text("")
    env = {**sb.env(), "CALSYNC_DB_URL": "sqlite://", "CALSYNC_CONFIG": str(config)}
    return oauth_app(name, load_settings(env))


def make_integration(provider: str = "dr-lee") -> int:
    """An Active Google integration in the CLI's store (``CALSYNC_DB_URL``), no sign-in."""
    from calsync_cli.cli import context
    from calsync_cli.services import integrations
    from calsync_cli.store.db import Store

    store = Store(os.environ["CALSYNC_DB_URL"])
    with store.write() as s:
        integ = integrations.create(
            s,
            provider_id=provider,
            app="google",
            now=context.now(),
            account="a@example.com",
            calendar_id="primary",
        )
        iid = integ.id
    store.close()
    assert iid is not None
    return iid
