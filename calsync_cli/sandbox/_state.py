"""The sandbox's in-memory world: accounts, calendars, events, grants, tokens, faults, stats.

Everything is guarded by one re-entrant lock (``State.lock``); nobody sleeps while holding it.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from calsync_cli.sandbox._core import JSON
from calsync_cli.sandbox._oauth_state import OAuthState

App = Literal["google", "outlook"]
APPS: tuple[App, ...] = ("google", "outlook")

GOOGLE_CLIENT_ID = "calsync-sandbox.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "GOCSPX-calsync-sandbox-secret"
MICROSOFT_CLIENT_ID = "5f0c0a9e-6c1b-4f43-9d4a-5a2b1c0de000"

GOOGLE_FULL_SCOPE = "https://www.googleapis.com/auth/calendar"
GRAPH_DEFAULT_SCOPES = ("offline_access", "Calendars.ReadWrite", "User.Read")

ACCESS_TOKEN_TTL = 3600.0
#: how long Graph remembers a ``transactionId``. Graph documents the property only as avoiding
#: "redundant POST operations in case of client retries" (event resource type), with no window:
#: the sandbox keeps it for a short while and forgets it on ``Faults.forget_transactions``
TRANSACTION_WINDOW = 600.0
CODE_TTL = 600.0
MAX_REFRESH_TOKENS = 100


def check_app(app: str) -> App:
    if app == "google":
        return "google"
    if app in ("outlook", "microsoft"):
        return "outlook"
    raise ValueError(f"unknown app {app!r}: use 'google' or 'outlook'")


@dataclass
class EventRec:
    data: JSON
    deleted: bool = False
    mod: int = 0  # State.counter when last changed
    created_seq: int = 0
    #: Google: deleted by its owner in the Calendar UI (see ``Faults.delete_in_ui``)
    ui_deleted: bool = False
    #: Graph: the default (REST) id, which changes when the event moves to another calendar;
    #: the dict key is the immutable id (``Prefer: IdType="ImmutableId"``)
    rest_id: str | None = None
    #: Graph: when the transactionId was recorded (time.monotonic)
    txn_at: float = 0.0


@dataclass
class CalendarRec:
    id: str
    name: str
    primary: bool
    writable: bool
    events: dict[str, EventRec] = field(default_factory=dict)
    #: Outlook: the owner's address when the calendar is shared with or delegated to the account
    shared_from: str | None = None
    #: Google: ids purged from the calendar (an insert still answers 409, a PUT 404)
    purged: set[str] = field(default_factory=set)
    #: Google: writes answered so far while ``write_burst`` is set (``Faults.calendar_burst``)
    burst_writes: int = 0

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "primary": self.primary,
            "writable": self.writable,
        }
        if self.shared_from:
            out["shared_from"] = self.shared_from
        return out


@dataclass
class FailSpec:
    status: int
    reason: str | None
    retry_after: float | None


@dataclass
class AccountRec:
    app: App
    email: str
    personal: bool
    display_name: str
    user_id: str
    calendars: dict[str, CalendarRec] = field(default_factory=dict)
    fail_queue: list[FailSpec] = field(default_factory=list)
    drops: int = 0
    latency: float = 0.0
    sync_epoch: int = 0
    in_flight: int = 0
    #: Google: at most this many writes to one calendar inside one batch request; the rest
    #: answer 403 rateLimitExceeded (None: no limit). See ``Faults.calendar_burst``.
    write_burst: int | None = None

    def primary(self) -> CalendarRec:
        for cal in self.calendars.values():
            if cal.primary:
                return cal
        raise LookupError("no primary calendar")


@dataclass(frozen=True)
class Account:
    """A sandbox account as the Python API hands it out (a snapshot)."""

    app: str
    email: str
    personal: bool
    calendars: list[dict[str, Any]]

    @property
    def primary_calendar_id(self) -> str:
        return str(next(c["id"] for c in self.calendars if c["primary"]))

    @property
    def calendar_ids(self) -> list[str]:
        return [c["id"] for c in self.calendars]

    def calendar_id(self, name: str) -> str:
        """The id of the calendar called ``name``."""
        for cal in self.calendars:
            if cal["name"] == name:
                return str(cal["id"])
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "email": self.email,
            "personal": self.personal,
            "calendars": [dict(c) for c in self.calendars],
            "primary_calendar_id": self.primary_calendar_id,
        }


@dataclass
class Grant:
    """What one account consented to for one client."""

    app: App
    client_id: str
    email: str
    scopes: set[str]
    refresh_tokens: list[str] = field(default_factory=list)
    access_tokens: set[str] = field(default_factory=set)
    alive: bool = True


@dataclass
class AccessToken:
    token: str
    grant: Grant
    scopes: frozenset[str]
    expires_at: float
    expired: bool = False

    def valid(self) -> bool:
        return self.grant.alive and not self.expired and time.monotonic() < self.expires_at


@dataclass
class AuthCode:
    code: str
    app: App
    client_id: str
    email: str
    redirect_uri: str
    challenge: str
    scopes: list[str]
    issue_refresh: bool
    include_granted: bool
    expires_at: float
    used: bool = False


@dataclass
class Stats:
    requests: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    batch_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    batches: Counter[str] = field(default_factory=Counter)
    max_concurrency: dict[str, int] = field(default_factory=dict)
    throttled: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: Counter[tuple[str, str]] = field(default_factory=Counter)
    revocations: Counter[tuple[str, str]] = field(default_factory=Counter)
    refreshes: Counter[tuple[str, str]] = field(default_factory=Counter)
    code_exchanges: Counter[tuple[str, str]] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        def by_account(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for (app, email), n in sorted(counter.items()):
                out.setdefault(app, {})[email] = n
            return out

        requests: dict[str, dict[str, dict[str, int]]] = {}
        calls: Counter[tuple[str, str]] = Counter()
        for (app, email, method, kind), n in sorted(self.requests.items()):
            requests.setdefault(app, {}).setdefault(email, {})[f"{method} {kind}"] = n
            if kind != "batch":
                calls[(app, email)] += n
        return {
            "requests": requests,
            "calls": by_account(calls),
            "batch_calls": by_account(self.batch_calls),
            "batches": dict(sorted(self.batches.items())),
            "max_concurrency": {"outlook": dict(sorted(self.max_concurrency.items()))},
            "throttled": by_account(self.throttled),
            "faults_injected": by_account(self.faults),
            "revocations": by_account(self.revocations),
            "token_refreshes": by_account(self.refreshes),
            "code_exchanges": by_account(self.code_exchanges),
        }


@dataclass
class ConsentChoice:
    decision: Literal["allow", "deny"] = "allow"
    account: str | None = None


class State:
    """All sandbox data. Methods whose names start with ``locked_`` expect the lock held."""

    def __init__(
        self,
        *,
        latency: float,
        outlook_mailbox_concurrency: int,
        auto_approve: bool,
        retry_after: int,
    ) -> None:
        self.lock = threading.RLock()
        #: notified (under ``lock``) whenever an API call is counted: tests wait on it
        self.activity = threading.Condition(self.lock)
        self.api_calls = 0
        self.latency = latency
        self.mailbox_concurrency = outlook_mailbox_concurrency
        self.auto_approve = auto_approve
        self.retry_after = retry_after
        self.base_url = ""
        self.accounts: dict[tuple[App, str], AccountRec] = {}
        self.grants: list[Grant] = []
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, Grant] = {}
        self.codes: dict[str, AuthCode] = {}
        self.consent = ConsentChoice()
        self.stats = Stats()
        self.counter = 0
        self.sync_tokens: dict[
            str, tuple[str, str, int, int]
        ] = {}  # token -> email, cal, epoch, mod
        self.page_tokens: dict[str, Any] = {}
        self.clients: dict[App, str] = {"google": GOOGLE_CLIENT_ID, "outlook": MICROSOFT_CLIENT_ID}
        #: app registrations, consent-screen choices, device codes, token endpoint faults
        self.oauth = OAuthState()
        self.transaction_window = TRANSACTION_WINDOW

    # -- accounts -------------------------------------------------------------------------
    def tick(self) -> int:
        self.counter += 1
        return self.counter

    def add_account(
        self,
        app: App,
        email: str,
        *,
        personal: bool,
        calendars: list[dict[str, Any]] | None,
    ) -> AccountRec:
        with self.lock:
            key = (app, email.lower())
            if key in self.accounts:
                raise ValueError(f"{app} account {email} exists already")
            local = email.split("@", 1)[0]
            display = " ".join(p.capitalize() for p in local.replace("_", ".").split(".") if p)
            rec = AccountRec(
                app=app,
                email=email,
                personal=personal,
                display_name=display or email,
                user_id=secrets.token_hex(8) if personal else _guid(),
            )
            primary_id = email if app == "google" else _graph_id()
            primary_name = email if app == "google" else "Calendar"
            rec.calendars[primary_id] = CalendarRec(primary_id, primary_name, True, True)
            for extra in calendars or []:
                name = str(extra.get("name") or "Calendar")
                writable = bool(extra.get("writable", True))
                if app == "google":
                    cal_id = f"c_{secrets.token_hex(16)}@group.calendar.google.com"
                else:
                    cal_id = _graph_id()
                cal = CalendarRec(cal_id, name, False, writable)
                shared = extra.get("shared_from")
                if app == "outlook" and isinstance(shared, str) and shared:
                    cal.shared_from = shared
                rec.calendars[cal_id] = cal
            self.accounts[key] = rec
            return rec

    def find(self, app: App, email: str) -> AccountRec:
        rec = self.accounts.get((app, email.lower()))
        if rec is None:
            raise KeyError(f"no {app} account {email}")
        return rec

    def public_account(self, rec: AccountRec) -> Account:
        return Account(
            app=rec.app,
            email=rec.email,
            personal=rec.personal,
            calendars=[c.public() for c in rec.calendars.values()],
        )

    def first_account(self, app: App) -> AccountRec | None:
        for (a, _), rec in self.accounts.items():
            if a == app:
                return rec
        return None

    # -- grants and tokens --------------------------------------------------------------------
    def locked_grant_for(self, app: App, client_id: str, email: str) -> Grant | None:
        for grant in self.grants:
            if (
                grant.alive
                and grant.app == app
                and grant.client_id == client_id
                and grant.email.lower() == email.lower()
            ):
                return grant
        return None

    def locked_new_grant(self, app: App, client_id: str, email: str, scopes: set[str]) -> Grant:
        grant = Grant(app=app, client_id=client_id, email=email, scopes=set(scopes))
        self.grants.append(grant)
        return grant

    def locked_issue_access(self, grant: Grant, scopes: set[str]) -> str:
        token = ("ya29." if grant.app == "google" else "EwB") + secrets.token_urlsafe(40)
        self.access_tokens[token] = AccessToken(
            token=token,
            grant=grant,
            scopes=frozenset(scopes),
            expires_at=time.monotonic() + ACCESS_TOKEN_TTL,
        )
        grant.access_tokens.add(token)
        return token

    def locked_issue_refresh(self, grant: Grant) -> str:
        token = ("1//" if grant.app == "google" else "M.C5") + secrets.token_urlsafe(48)
        grant.refresh_tokens.append(token)
        self.refresh_tokens[token] = grant
        while len(grant.refresh_tokens) > MAX_REFRESH_TOKENS:
            oldest = grant.refresh_tokens.pop(0)
            self.refresh_tokens.pop(oldest, None)
        return token

    def locked_withdraw(self, grant: Grant) -> None:
        grant.alive = False
        for token in grant.refresh_tokens:
            self.refresh_tokens.pop(token, None)
        for token in grant.access_tokens:
            self.access_tokens.pop(token, None)
        grant.refresh_tokens.clear()
        grant.access_tokens.clear()

    def authenticate(self, app: App, token: str | None) -> AccessToken | None:
        if token is None:
            return None
        with self.lock:
            info = self.access_tokens.get(token)
            if info is None or info.grant.app != app or not info.valid():
                return None
            return info

    def issue_token(self, app: App, email: str, scopes: list[str] | None) -> str:
        with self.lock:
            rec = self.find(app, email)
            if scopes is None:
                scopes = [GOOGLE_FULL_SCOPE] if app == "google" else list(GRAPH_DEFAULT_SCOPES)
            grant = self.locked_grant_for(app, "sandbox-direct", rec.email)
            if grant is None:
                grant = self.locked_new_grant(app, "sandbox-direct", rec.email, set(scopes))
            grant.scopes |= set(scopes)
            return self.locked_issue_access(grant, set(scopes))

    # -- faults --------------------------------------------------------------------------------
    def locked_take_fault(self, rec: AccountRec) -> FailSpec | Literal["drop"] | None:
        if rec.drops > 0:
            rec.drops -= 1
            self.stats.faults[(rec.app, rec.email)] += 1
            return "drop"
        if rec.fail_queue:
            self.stats.faults[(rec.app, rec.email)] += 1
            return rec.fail_queue.pop(0)
        return None

    def expire_access_tokens(self, app: App, email: str) -> None:
        with self.lock:
            rec = self.find(app, email)
            for info in self.access_tokens.values():
                if info.grant.email.lower() == rec.email.lower() and info.grant.app == app:
                    info.expired = True

    def revoke_grants(self, app: App, email: str) -> None:
        with self.lock:
            rec = self.find(app, email)
            for grant in self.grants:
                if grant.app == app and grant.email.lower() == rec.email.lower() and grant.alive:
                    self.locked_withdraw(grant)

    # -- events --------------------------------------------------------------------------------
    def events(
        self, app: App, email: str, calendar_id: str, include_deleted: bool
    ) -> list[dict[str, Any]]:
        with self.lock:
            rec = self.find(app, email)
            cal = rec.calendars.get(calendar_id)
            if cal is None and calendar_id == "primary":
                cal = rec.primary()
            if cal is None:
                raise KeyError(f"no calendar {calendar_id} in {app} account {email}")
            ordered = sorted(cal.events.values(), key=lambda e: e.created_seq)
            out = []
            for ev in ordered:
                if ev.deleted and not include_deleted:
                    continue
                data = copy.deepcopy(ev.data)
                if app == "outlook" and ev.deleted:
                    data["@sandbox.deleted"] = True
                if app == "outlook" and ev.rest_id:
                    data["@sandbox.rest_id"] = ev.rest_id
                out.append(data)
            return out


def graph_event_ids() -> tuple[str, str]:
    """(immutable id, REST id) of a new Graph event, both in Exchange's opaque style."""
    return "AAMkAG" + secrets.token_urlsafe(96) + "=", "AAMkAG" + secrets.token_urlsafe(96) + "="


def _guid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _graph_id() -> str:
    """An opaque id in the style of Exchange's (URL-safe base64 with padding)."""
    return "AAMkAG" + secrets.token_urlsafe(66).replace("-", "_") + "="
