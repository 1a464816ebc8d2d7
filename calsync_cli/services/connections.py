"""Connections: sign an integration in (``connect``), choose its calendar, disconnect it.

The core of ``calsync connect``, ``calendars list|select`` and ``disconnect``. It knows nothing
of the command line: everything meant for the user arrives through callbacks
(``announce_url``, ``announce_device_code``, ``announce_remote``, ``read_answer``, ``notify``,
``choose``) or comes back as data.

``connect`` signs in one of three ways (``ConnectOptions.method``): ``browser`` (the loopback
redirect), ``device_code`` (Microsoft's device authorization grant) or ``remote`` (a sign-in
address opened on another machine, the final address pasted back). They differ only in how the
token answer is obtained; the calendar choice, the disclosure notice, token storage, the audit
entry and the re-authentication of an existing integration are the same code.

Tokens live in the token store the settings choose (``clients.token_store``: the keyring, or
sealed in the database); it is checked before any sign-in starts. A new integration's row and
its tokens are written together: the tokens are stored inside the database transaction, just
before it commits (a database store writes in that very transaction), so a token store failure
rolls the row back, and a failed commit deletes the tokens again; in both cases the new grant
is revoked at Google (Microsoft cannot revoke one sign-in).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlmodel import Session

from calsync_cli.apps import App as AppName
from calsync_cli.apps import app_name, connect_command
from calsync_cli.auth import (
    DEFAULT_TIMEOUT,
    DeviceCode,
    OAuthApp,
    RemoteSignIn,
    RevokeOutcome,
    SignIn,
    Tokens,
    TokenStorage,
    device_sign_in,
    oauth_app,
    reconnect_hint,
    remote_sign_in,
    revoke,
    sign_in,
)
from calsync_cli.config import Settings
from calsync_cli.errors import CalsyncError, InputError, NotFoundError, ReauthRequired
from calsync_cli.providers.base import (
    Calendar,
    CalendarProvider,
    ProviderError,
    StaticTokenSource,
)
from calsync_cli.providers.factory import make_provider
from calsync_cli.services import clients, integrations
from calsync_cli.services.clients import http_client, open_provider
from calsync_cli.store import audit, states
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store.db import Store
from calsync_cli.store.models import Integration, Provider

T = TypeVar("T")


#: the readable name of each disclosed field (``integrations.disclosed_fields``)
FIELD_LABELS = {
    "start": "start time",
    "end": "end time",
    "practice_name": "practice name",
    "visit_type": "visit type",
    "location": "practice location",
    "room": "room",
    "reason": "visit reason",
}


# -- small helpers ----------------------------------------------------------------------------


def _app_name(app: str) -> AppName:
    name = app.strip().lower()
    return app_name("outlook" if name == "microsoft" else name)


def _label(field: str) -> str:
    if field.startswith("patient_name:"):
        return f"patient name ({field.split(':', 1)[1]})"
    return FIELD_LABELS.get(field, field.replace("_", " "))


def disclosure_notice(provider_id: str, app: str) -> str:
    """What a new integration's events will show under the default filters, and how to hide
    patient names (printed once, before the first sign-in)."""
    probe = Integration(provider_id=provider_id, app=app, provider_filter=[provider_id])
    fields = integrations.disclosed_fields(probe)
    title = "Google Calendar" if app == "google" else "Outlook"
    text = (
        f"Events in {title} will show, for each of {provider_id}'s visits: "
        + ", ".join(_label(f) for f in fields)
        + "."
    )
    if probe.f_patient_name:
        text += (
            " Patient names are included by default; to leave them out, run after connecting: "
            "calsync filters set ID --no-patient-name (ID is the integration id printed below)."
        )
    if probe.f_private:
        text += (
            " Events are marked private: people the calendar is shared with see only busy"
            " (calsync filters set ID --no-private shows them the details)."
        )
    if app == "outlook":
        text += " Reminders are off (calsync filters set ID --reminders turns them on)."
    else:
        text += (
            " Events keep the calendar's default reminders (calsync filters set ID"
            " --no-reminders turns them off)."
        )
    return text


def _provider_failure(app: str, exc: ProviderError) -> CalsyncError:
    title = "Google" if app == "google" else "Microsoft"
    hint = "Try again in a minute" if exc.retryable else None
    return CalsyncError(f"{title} answered: {exc.message}", hint=hint)


def _choice(
    calendars: Sequence[Calendar], calendar_id: str, integration_id: int | None
) -> Calendar:
    """The calendar ``calendar_id`` if it exists and is writable; else ``InputError``."""
    hint = (
        f"List the calendars with: calsync calendars list {integration_id}"
        if integration_id is not None
        else "List the calendars with: calsync calendars list ID"
    )
    cal = next((c for c in calendars if c.id == calendar_id), None)
    if cal is None:
        raise InputError(f"the account has no calendar {calendar_id!r}", hint=hint)
    if not cal.writable:
        raise InputError(
            f"calendar {calendar_id!r} ({cal.name}) is read-only for this account: calsync "
            "cannot add events to it",
            hint=hint,
        )
    return cal


def calendar_json(cal: Calendar) -> dict[str, Any]:
    return {"id": cal.id, "name": cal.name, "primary": cal.primary, "writable": cal.writable}


@dataclass(frozen=True)
class IntegrationRef:
    """A detached copy of what these commands need from an integration row."""

    id: int
    app: AppName
    provider_id: str
    account: str | None
    calendar_id: str | None
    calendar_name: str | None
    status: str
    paused: bool

    @classmethod
    def of(cls, integ: Integration) -> IntegrationRef:
        assert integ.id is not None
        return cls(
            id=integ.id,
            app=_app_name(integ.app),
            provider_id=integ.provider_id,
            account=integ.account,
            calendar_id=integ.calendar_id,
            calendar_name=integ.calendar_name,
            status=integ.status,
            paused=integ.paused,
        )

    @property
    def reconnect(self) -> str:
        return connect_command(self.app, self.provider_id)


def load(store: Store, integration_id: int) -> IntegrationRef:
    """The integration (``NotFoundError`` when unknown)."""
    with store.read() as session:
        return IntegrationRef.of(integrations.get(session, integration_id))


def find_existing(session: Session, provider_id: str, app: str) -> Integration | None:
    """The integration of this provider and app, if there is one (the oldest when several)."""
    return store_integrations.find(session, provider_id, app)


# -- connect ----------------------------------------------------------------------------------


SignInMethod = Literal["browser", "device_code", "remote"]


def _no_answer() -> str | None:
    return None


@dataclass
class ConnectOptions:
    app: str
    provider_id: str
    calendar_id: str | None = None
    #: how the tokens are obtained; everything after the token answer is shared
    method: SignInMethod = "browser"
    port: int = 0
    timeout: float = DEFAULT_TIMEOUT
    #: opens the sign-in URL in a browser; None: do not (``browser`` only)
    open_browser: Callable[[str], bool] | None = None
    #: shows the sign-in URL (``browser``: always called, before the browser opens)
    announce_url: Callable[[str], None] = lambda url: None
    #: shows the user code and where to enter it (``device_code``)
    announce_device_code: Callable[[DeviceCode], None] = lambda code: None
    #: shows the address to open on another machine (``remote``)
    announce_remote: Callable[[RemoteSignIn], None] = lambda prompt: None
    #: reads back the address the browser ended on; None when there is none (``remote``)
    read_answer: Callable[[], str | None] = _no_answer
    #: pauses between device-code polls (tests pass one that does not sleep)
    wait: Callable[[float], None] = time.sleep
    #: measures ``timeout``
    clock: Callable[[], float] = time.monotonic
    #: one line for the user (notices, warnings)
    notify: Callable[[str], None] = lambda text: None
    #: asks the user to pick among the writable calendars; None when nobody can be asked
    choose: Callable[[Sequence[Calendar]], Calendar | None] | None = None


@dataclass(frozen=True)
class ConnectResult:
    integration_id: int
    created: bool
    previous_status: str | None
    account: str
    status: str
    calendar_id: str | None
    calendar_name: str | None
    jobs_queued: int


async def _discover(settings: Settings, app: AppName, tokens: Tokens) -> tuple[str, list[Calendar]]:
    """The account and its calendars, with freshly issued tokens (nothing stored yet)."""
    async with http_client() as http:
        provider = make_provider(app, http, StaticTokenSource(tokens.access_token), settings)
        try:
            calendars = await provider.list_calendars()
            account = await provider.account()
        finally:
            await provider.aclose()
    return account, calendars


def connect(
    settings: Settings,
    store: Store,
    opts: ConnectOptions,
    *,
    now: Callable[[], datetime],
    token_store: TokenStorage | None = None,
) -> ConnectResult:
    """Sign in and create the integration, or sign an existing one in again.

    Raises ``InputError`` for an unknown app or provider, or a device code for Google (before
    any sign-in), ``ConfigError`` when the OAuth client is not configured, ``KeyringError``
    when the token store does not work (before any sign-in too), ``AuthError`` when the sign-in
    fails, and ``KeyringError`` when the tokens cannot be stored (the new grant is then revoked
    where the provider allows it); in each case nothing is stored.
    An unusable ``--calendar`` leaves the integration Pending and raises ``InputError``.
    """
    app = _app_name(opts.app)
    oauth = oauth_app(app, settings)  # ConfigError (exit 2) with the setup hint
    if opts.method == "device_code" and oauth.device_code_url is None:
        raise InputError(
            f"{oauth.title} does not allow calendar access through a device code",
            hint=f"Sign in on another machine instead: calsync connect {app} --provider "
            f"{opts.provider_id} --remote",
        )
    with store.read() as session:
        if session.get(Provider, opts.provider_id) is None:
            raise NotFoundError(
                f"unknown provider {opts.provider_id!r}",
                hint="Import it first: calsync providers import FILE",
            )
        found = find_existing(session, opts.provider_id, app)
        existing = IntegrationRef.of(found) if found is not None else None
    tstore = token_store or clients.token_store(settings, store)
    # A token store that cannot work must stop us before the clinician signs in for nothing.
    tstore.get(PROBE_ID)
    if existing is None:
        opts.notify(disclosure_notice(opts.provider_id, app))
    elif existing.status == "Disconnected":
        opts.notify(f"Reconnecting integration {existing.id} ({app}, {opts.provider_id}).")
    else:
        opts.notify(f"Signing integration {existing.id} ({app}, {opts.provider_id}) in again.")

    signed = obtain_tokens(oauth, opts, login_hint=existing.account if existing else None)
    for warning in signed.warnings:
        opts.notify(warning)
    tokens = signed.tokens
    try:
        account, calendars = asyncio.run(_discover(settings, app, tokens))
    except ReauthRequired:
        raise CalsyncError(
            f"{oauth.title} refused the token it has just issued",
            hint="Run the command again",
        ) from None
    except ProviderError as exc:
        raise _provider_failure(app, exc) from None

    # Which calendar: --calendar, else the one already chosen, else ask (when someone can be).
    chosen: Calendar | None = None
    refusal: InputError | None = None
    if opts.calendar_id is not None:
        if existing is None and all(c.id != opts.calendar_id for c in calendars):
            # a typo in --calendar creates nothing (a read-only calendar still keeps the
            # sign-in, Pending, below: the account is right, only the choice is not)
            ids = ", ".join(c.id for c in calendars if c.writable) or "none"
            raise InputError(
                f"{account} has no calendar {opts.calendar_id!r}; nothing was connected",
                hint=f"Its writable calendars: {ids}. Run connect again with one of them",
            )
        try:
            chosen = _choice(calendars, opts.calendar_id, existing.id if existing else None)
        except InputError as exc:
            refusal = exc
    if chosen is None and existing is not None and existing.calendar_id is not None:
        chosen = next((c for c in calendars if c.id == existing.calendar_id and c.writable), None)
        if chosen is None:
            opts.notify(
                f"warning: calendar {existing.calendar_id!r} is not a writable calendar of "
                f"{account}; choose another one"
            )
    if chosen is None and opts.calendar_id is None and opts.choose is not None:
        writable = [c for c in calendars if c.writable]
        if writable:
            chosen = opts.choose(writable)
    if existing is not None and existing.account and existing.account != account:
        opts.notify(
            f"warning: integration {existing.id} was signed in as {existing.account}; "
            f"it now uses {account}"
        )

    try:
        result = _store_connection(
            store,
            tstore,
            app=app,
            provider_id=opts.provider_id,
            existing=existing,
            account=account,
            chosen=chosen,
            tokens=tokens,
            now=now(),
        )
    except BaseException as exc:
        note = _withdraw_unstored(store, oauth, tokens, account)
        if isinstance(exc, CalsyncError) and note:
            exc.message = f"{exc.message.rstrip('.')}; {note}"
        raise
    if refusal is not None:
        raise InputError(
            f"{refusal.message}; integration {result.integration_id} is connected "
            f"({result.status}) without it",
            hint=f"List the calendars with: calsync calendars list {result.integration_id}, "
            f"then: calsync calendars select {result.integration_id} CAL_ID",
        )
    return result


#: the integration id the token store is probed with before a sign-in (ids start at 1)
PROBE_ID = 0


def obtain_tokens(oauth: OAuthApp, opts: ConnectOptions, *, login_hint: str | None) -> SignIn:
    """The one step in which the three ways of signing in differ."""
    if opts.method == "device_code":
        return device_sign_in(
            oauth,
            timeout=opts.timeout,
            announce=opts.announce_device_code,
            wait=opts.wait,
            clock=opts.clock,
        )
    if opts.method == "remote":
        return remote_sign_in(
            oauth,
            announce=opts.announce_remote,
            read_answer=opts.read_answer,
            port=opts.port,
            login_hint=login_hint,
        )
    return sign_in(
        oauth,
        port=opts.port,
        timeout=opts.timeout,
        open_browser=opts.open_browser,
        announce_url=opts.announce_url,
        login_hint=login_hint,
        clock=opts.clock,
    )


def _withdraw_unstored(store: Store, oauth: OAuthApp, tokens: Tokens, account: str) -> str | None:
    """Revoke a sign-in whose tokens could not be stored, so no live grant is left behind.

    Google's revocation withdraws the whole grant the account gave the client project, so it is
    skipped when another integration still uses that account's grant. Microsoft has no
    endpoint to revoke one sign-in. Returns a note for the error message, or None.
    """
    if oauth.name != "google":
        return None
    try:
        with store.read() as session:
            sharing = [i.id for i in store_integrations.sharing_account(session, "google", account)]
    except Exception:  # noqa: BLE001 - the store may be what failed; then do not guess
        return (
            "the new sign-in was not revoked: remove calsync at "
            "https://myaccount.google.com/permissions if nothing else uses it"
        )
    if sharing:
        return (
            f"the new sign-in was not revoked, since integration {sharing[0]} uses the same "
            "Google grant"
        )
    outcome = revoke(oauth, tokens)
    if outcome.revoked:
        return "the new sign-in was revoked at Google"
    return (
        "the new sign-in could not be revoked: remove calsync at "
        "https://myaccount.google.com/permissions"
    )


def _store_connection(
    store: Store,
    token_store: TokenStorage,
    *,
    app: AppName,
    provider_id: str,
    existing: IntegrationRef | None,
    account: str,
    chosen: Calendar | None,
    tokens: Tokens,
    now: datetime,
) -> ConnectResult:
    stored_for: int | None = None
    previous_tokens: Tokens | None = None
    try:
        with store.write() as session:
            if existing is None:
                integ = integrations.create(
                    session,
                    provider_id=provider_id,
                    app=app,
                    now=now,
                    account=account,
                    calendar_id=chosen.id if chosen else None,
                    calendar_name=chosen.name if chosen else None,
                )
                previous_status = None
                calendar_changed = chosen is not None
            else:
                integ = integrations.get(session, existing.id)
                previous_status = integ.status
                calendar_changed = chosen is not None and chosen.id != integ.calendar_id
                integ.account = account
                if chosen is not None:
                    integ.calendar_id, integ.calendar_name = chosen.id, chosen.name
                else:
                    integ.calendar_id = integ.calendar_name = None
                if previous_status == "Disconnected":
                    integ.active_since = now
                session.add(integ)
                audit.record(
                    session,
                    "reconnect",
                    now=now,
                    integration_id=integ.id,
                    detail=f"{app} account {account}; was {previous_status}",
                )
            assert integ.id is not None
            iid = integ.id
            states.mark_active(session, integ, now=now, source="connect", revive=True, audited=True)
            queued = 0
            if chosen is not None and calendar_changed:
                audit.record(
                    session,
                    "calendar_select",
                    now=now,
                    integration_id=iid,
                    fields=integrations.disclosed_fields(integ),
                    detail=f"calendar {chosen.id}",
                )
                queued = integrations.requeue_upcoming(session, integ, now=now)
            session.flush()
            result = ConnectResult(
                integration_id=iid,
                created=existing is None,
                previous_status=previous_status,
                account=account,
                status=integ.status,
                calendar_id=integ.calendar_id,
                calendar_name=integ.calendar_name,
                jobs_queued=queued,
            )
            # Last step before the commit: a keyring failure rolls the row back.
            if existing is not None:
                # kept to put back if the commit fails; a damaged entry is what we replace
                with contextlib.suppress(CalsyncError):
                    previous_tokens = token_store.get(iid)
            token_store.put(iid, tokens, within=session)
            stored_for = iid
    except BaseException:
        if stored_for is not None:  # the commit failed after the tokens were stored
            with contextlib.suppress(CalsyncError):
                if previous_tokens is not None:
                    token_store.put(stored_for, previous_tokens)
                else:
                    token_store.delete(stored_for)
        raise
    return result


# -- calendars --------------------------------------------------------------------------------


def mark_reconnect_needed(store: Store, ref: IntegrationRef, *, now: datetime) -> None:
    """Set the integration to Error "reconnect needed: <command>" (the grant is gone)."""
    with store.write() as session:
        integ = integrations.get(session, ref.id)
        states.mark_reauth(session, integ, now=now)


def _with_provider(
    settings: Settings,
    store: Store,
    ref: IntegrationRef,
    call: Callable[[CalendarProvider], Awaitable[T]],
    *,
    now: Callable[[], datetime],
) -> T:
    async def run() -> T:
        async with open_provider(settings, ref.app, ref.id, ref.provider_id) as provider:
            try:
                return await call(provider)
            finally:
                await provider.aclose()

    try:
        return asyncio.run(run())
    except ReauthRequired as exc:
        mark_reconnect_needed(store, ref, now=now())
        if not exc.hint:
            exc.hint = reconnect_hint(ref.app, ref.provider_id)
        raise
    except ProviderError as exc:
        raise _provider_failure(ref.app, exc) from None


def list_calendars(
    settings: Settings, store: Store, integration_id: int, *, now: Callable[[], datetime]
) -> tuple[IntegrationRef, list[Calendar]]:
    """The account's calendars, read live from the provider."""
    ref = load(store, integration_id)
    integrations.refuse_disconnected(ref.id, ref.status, ref.app, ref.provider_id)
    oauth_app(ref.app, settings)  # ConfigError before any network
    calendars = _with_provider(settings, store, ref, lambda p: p.list_calendars(), now=now)
    return ref, calendars


@dataclass(frozen=True)
class SelectResult:
    integration_id: int
    calendar: Calendar
    previous_calendar_id: str | None
    status: str
    paused: bool
    jobs_queued: int


def select_calendar(
    settings: Settings,
    store: Store,
    integration_id: int,
    calendar_id: str,
    *,
    now: Callable[[], datetime],
) -> SelectResult:
    """Send the integration's visits to ``calendar_id`` (which must exist and be writable).

    Upcoming visits are queued again, so the worker moves their events to the new calendar.
    """
    ref, calendars = list_calendars(settings, store, integration_id, now=now)
    cal = _choice(calendars, calendar_id, integration_id)
    at = now()
    with store.write() as session:
        integ = integrations.get(session, integration_id)
        assert integ.id is not None
        integrations.refuse_disconnected(integ.id, integ.status, integ.app, integ.provider_id)
        previous = integ.calendar_id
        was_active = integ.status == "Active"
        integ.calendar_id, integ.calendar_name = cal.id, cal.name
        session.add(integ)
        states.mark_active(session, integ, now=at, source="connect", audited=True)
        queued = 0
        if previous != cal.id or not was_active:
            audit.record(
                session,
                "calendar_select",
                now=at,
                integration_id=integration_id,
                fields=integrations.disclosed_fields(integ),
                detail=f"calendar {cal.id}" + (f" (was {previous})" if previous else ""),
            )
            queued = integrations.requeue_upcoming(session, integ, now=at)
        return SelectResult(
            integration_id=integration_id,
            calendar=cal,
            previous_calendar_id=previous,
            status=integ.status,
            paused=integ.paused,
            jobs_queued=queued,
        )


# -- disconnect -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    """What ``disconnect --purge`` removed: events of upcoming visits (visit end after now)."""

    #: deleted now
    deleted: int = 0
    #: already gone from the calendar (deleted outside calsync): counted as deleted
    already_gone: int = 0
    #: still on the calendar because their delete failed
    failed: int = 0
    #: events of past visits, which stay
    past_kept: int = 0
    #: one line per failed delete (visit id and the provider's safe message)
    failures: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "deleted": self.deleted,
            "already_gone": self.already_gone,
            "failed": self.failed,
            "past_kept": self.past_kept,
        }


@dataclass(frozen=True)
class DisconnectResult:
    integration_id: int
    #: None when the integration was disconnected already (nothing was done)
    revocation: Literal["revoked", "unsupported", "unconfirmed"] | None
    message: str
    jobs_dropped: int
    #: other integrations of the same Google account that lost their grant with this one
    also_affected: tuple[int, ...] = ()
    #: with ``--purge``: what was removed from the calendar
    purge: PurgeResult | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "integration": self.integration_id,
            "status": "Disconnected",
            "revocation": self.revocation,
            "message": self.message,
            "jobs_dropped": self.jobs_dropped,
        }
        if self.purge is not None:
            data["purge"] = self.purge.to_json()
        return data


def _revoke(
    settings: Settings, ref: IntegrationRef, tokens: Tokens | None
) -> tuple[RevokeOutcome, OAuthApp | None]:
    try:
        oauth = oauth_app(ref.app, settings)
    except CalsyncError:
        oauth = None
    if ref.app == "outlook":
        # Microsoft has no single-token revocation: revoke() says where to remove the access.
        placeholder = tokens or Tokens(access_token="-", refresh_token=None, expires_at=None)
        if oauth is not None:
            return revoke(oauth, placeholder), oauth
        return (
            RevokeOutcome(
                "unsupported",
                "Microsoft has no endpoint to revoke one sign-in: calsync deleted its tokens "
                "locally; remove calsync's access at https://account.live.com/consent/Manage "
                "(personal account) or https://myapplications.microsoft.com (work or school)",
            ),
            None,
        )
    manual = "Remove calsync at https://myaccount.google.com/permissions"
    if tokens is None:
        return RevokeOutcome(
            "unconfirmed", f"calsync held no tokens for this integration to revoke. {manual}"
        ), oauth
    if oauth is None:
        return RevokeOutcome(
            "unconfirmed",
            f"the Google OAuth client is not configured, so calsync could not revoke. {manual}",
        ), None
    return revoke(oauth, tokens), oauth


def purge_upcoming(
    settings: Settings, store: Store, ref: IntegrationRef, *, now: Callable[[], datetime]
) -> PurgeResult:
    """Delete the integration's events of upcoming visits (visit end after now) through the
    provider, in batches; an event already gone counts as deleted. Each deleted event's link is
    cleared and the delete audited. Past visits' events stay. Raises ``ReauthRequired`` (the
    integration is then marked so) when the sign-in is gone; per-event failures are counted."""
    from calsync_cli.providers.base import Gone, NotFound, Operation
    from calsync_cli.store import purge as store_purge

    at = now()
    with store.read() as session:
        upcoming, past = store_purge.events_by_period(session, ref.id, now=at)
    if not upcoming:
        return PurgeResult(past_kept=past)
    by_calendar: dict[str, list[store_purge.LinkedEvent]] = {}
    for event in upcoming:
        calendar = event.calendar_id or ref.calendar_id
        if calendar is not None:
            by_calendar.setdefault(calendar, []).append(event)

    async def delete_all(provider: CalendarProvider) -> list[tuple[str, str | None, bool]]:
        """(visit id, failure or None, already gone) per event."""
        outcomes: list[tuple[str, str | None, bool]] = []
        for calendar, events in by_calendar.items():
            ops = [Operation("delete", event_id=e.external_id) for e in events]
            results = await provider.batch(calendar, ops)
            for event, result in zip(events, results, strict=True):
                error = result.error
                if error is None:
                    outcomes.append((event.visit_id, None, False))
                elif isinstance(error, NotFound | Gone):
                    outcomes.append((event.visit_id, None, True))
                else:
                    outcomes.append((event.visit_id, error.message, False))
        return outcomes

    outcomes = _with_provider(settings, store, ref, delete_all, now=now)
    done_at = now()
    deleted = gone = 0
    failures: list[str] = []
    with store.write() as session:
        for visit_id, failure, already_gone in outcomes:
            if failure is not None:
                failures.append(f"visit {visit_id}: {failure}")
                continue
            store_purge.forget_deleted(
                session, ref.id, visit_id, now=done_at,
                detail="purged on disconnect" + (" (already gone)" if already_gone else ""),
            )  # fmt: skip
            if already_gone:
                gone += 1
            else:
                deleted += 1
    return PurgeResult(deleted, gone, len(failures), past, tuple(failures))


def disconnect(
    settings: Settings,
    store: Store,
    integration_id: int,
    *,
    now: Callable[[], datetime],
    token_store: TokenStorage | None = None,
    purge: bool = False,
) -> DisconnectResult:
    """Revoke at the provider, delete the stored tokens, drop live jobs, mark Disconnected.

    Synced events stay on the calendar, unless ``purge``: then, before revoking, calsync's
    events of upcoming visits are deleted (``purge_upcoming``); past visits' events stay. When
    some of those deletes fail the integration stays connected and ``CalsyncError`` says how
    many events are left. Disconnecting a disconnected integration does nothing (beyond
    deleting any token left behind) and says so; with ``purge`` that is an ``InputError``
    (without a sign-in nothing can be deleted).
    """
    tstore = token_store or clients.token_store(settings, store)
    ref = load(store, integration_id)
    if ref.status == "Disconnected":
        if purge:
            raise InputError(
                f"integration {integration_id} is already disconnected, so calsync cannot "
                "delete its events",
                hint=f"Sign in again ({ref.reconnect}), then: calsync disconnect "
                f"{integration_id} --purge --yes",
            )
        tstore.delete(integration_id)  # a leftover from an interrupted disconnect
        return DisconnectResult(
            integration_id,
            None,
            f"integration {integration_id} is already disconnected; nothing to do",
            0,
        )
    purged: PurgeResult | None = None
    if purge:
        oauth_app(ref.app, settings)  # ConfigError before any network
        purged = purge_upcoming(settings, store, ref, now=now)
        if purged.failed:
            with store.write() as session:
                audit.record(
                    session,
                    "purge_incomplete",
                    now=now(),
                    integration_id=integration_id,
                    detail=f"deleted {purged.deleted + purged.already_gone}, "
                    f"{purged.failed} upcoming events left; not disconnected",
                )
            first = purged.failures[0]
            raise CalsyncError(
                f"deleted {purged.deleted + purged.already_gone} upcoming events, but "
                f"{purged.failed} are left on the calendar (first: {first}); integration "
                f"{integration_id} is still connected",
                hint=f"Run calsync disconnect {integration_id} --purge again, or disconnect "
                "without --purge to leave them",
            )
    tokens = tstore.get(integration_id)
    outcome, _ = _revoke(settings, ref, tokens)
    tstore.delete(integration_id)
    at = now()
    affected: list[int] = []
    with store.write() as session:
        integ = integrations.get(session, integration_id)
        dropped = integrations.drop_live_jobs(
            session, integration_id, now=at, reason="integration disconnected"
        )
        states.mark_disconnected(session, integ, now=at, audited=True)
        audit.record(
            session,
            "disconnect",
            now=at,
            integration_id=integration_id,
            detail=f"revocation {outcome.status}; {dropped} queued jobs dropped"
            + (
                f"; purged {purged.deleted + purged.already_gone} upcoming events"
                if purged is not None
                else ""
            ),
        )
        if outcome.status == "revoked" and ref.app == "google" and ref.account:
            # Google withdrew the whole grant of this account to the client project.
            for other in store_integrations.sharing_account(
                session, "google", ref.account, besides=integration_id
            ):
                assert other.id is not None
                states.mark_reauth(session, other, now=at, audited=True)
                audit.record(
                    session,
                    "reauth_required",
                    now=at,
                    integration_id=other.id,
                    detail=f"grant revoked by disconnecting integration {integration_id}",
                )
                affected.append(other.id)
    return DisconnectResult(
        integration_id, outcome.status, outcome.message, dropped, tuple(affected), purged
    )
