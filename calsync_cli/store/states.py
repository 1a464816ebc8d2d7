"""The one owner of an integration's state.

An integration is ``Active``, ``Pending`` (no calendar chosen yet), ``Error`` (its latest push or
pull failed; it keeps retrying) or ``Disconnected``. Beside the state, two machine flags:
``needs_reauth`` (the grant is gone) and ``needs_calendar`` (the calendar is gone or no longer
writable); either holds the integration's jobs until someone signs in again or chooses a
calendar. Job claiming and the token keep-alive read the flags; ``status_detail`` is text for
people and is never read to decide anything.

Every change goes through one function here, in the caller's write transaction::

    mark_active        a push or pull succeeded (or a calendar was chosen): Active
    mark_error         a push or pull failed: Error, with the reason
    mark_reauth        the grant is gone: Error + needs_reauth, with the command that fixes it
    mark_calendar_lost the calendar is gone or read-only: Error + needs_calendar, with the fix
    mark_pending       signed in, no calendar yet: Pending
    mark_disconnected  disconnected: Disconnected, for good (until a new sign-in)

Rules:

* Nothing leaves ``Disconnected`` except a new sign-in (``revive=True``, from ``connect``): a
  worker finishing, a refresh or a pull that races a disconnect cannot bring it back.
* Each source clears only its own failure: a pull that succeeds does not hide a failing push,
  and a pull that fails does not overwrite a push's error (nor the other way round).
* A change of state writes one audit entry (``state``: "Active -> Error"; ``reauth_required``
  for a lost grant); a repeat of the same state writes nothing, so a busy integration does not
  fill the audit log. A command that writes its own, richer entry for the same change in the same
  transaction (``connect``, ``calendar_select``, ``disconnect``) passes ``audited=True``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlmodel import Session

from calsync_cli.apps import connect_command
from calsync_cli.store import audit
from calsync_cli.store.models import ACTIVE, DISCONNECTED, ERROR, PENDING, Integration

Source = Literal["push", "pull", "connect"]

#: ``status_detail`` of an integration that needs signing in again (display text only)
REAUTH_TEXT = "reconnect needed"


def reauth_detail(app: str, provider_id: str) -> str:
    return f"{REAUTH_TEXT}: {connect_command(app, provider_id)}"


def pending_detail(integration_id: int) -> str:
    return (
        f"choose a calendar: calsync calendars select {integration_id} CAL_ID "
        f"(see calsync calendars list {integration_id})"
    )


def _change(
    session: Session,
    integ: Integration,
    status: str,
    detail: str | None,
    *,
    now: datetime,
    needs_reauth: bool,
    error_source: str | None,
    revive: bool = False,
    audited: bool = False,
    needs_calendar: bool = False,
) -> bool:
    """Apply a transition; False when the integration is Disconnected and this is no revival."""
    if integ.status == DISCONNECTED and not revive:
        return False
    before = integ.status
    before_all = (integ.status, integ.status_detail, integ.needs_reauth, integ.needs_calendar)
    changed = (before_all, integ.error_source) != (
        (status, detail, needs_reauth, needs_calendar),
        error_source,
    )
    integ.status, integ.status_detail = status, detail
    integ.needs_reauth, integ.error_source = needs_reauth, error_source
    integ.needs_calendar = needs_calendar
    if changed:
        session.add(integ)
    if not audited and (before != status or (needs_reauth and changed)):
        audit.record(
            session,
            "reauth_required" if needs_reauth else "state",
            now=now,
            integration_id=integ.id,
            detail=f"{before} -> {status}",
        )
    return True


def mark_active(
    session: Session,
    integ: Integration,
    *,
    now: datetime,
    source: Source,
    synced: bool = False,
    revive: bool = False,
    audited: bool = False,
) -> bool:
    """``source`` succeeded. Clears an error only when it is ``source``'s own (or a sign-in's);
    ``synced`` also moves ``last_synced_at``. A Pending integration (no calendar) stays Pending."""
    if integ.status == DISCONNECTED and not revive:
        return False
    if synced:
        integ.last_synced_at = now
        session.add(integ)
    if integ.status == ERROR and integ.error_source not in (None, source) and source != "connect":
        return True  # the other half is still failing: its error stands
    if (integ.needs_reauth or integ.needs_calendar) and source != "connect":
        return True  # only a new sign-in (or calendar choice) clears a held integration
    if integ.calendar_id is None:
        return _change(
            session, integ, PENDING, pending_detail(integ.id or 0), now=now,
            needs_reauth=False, error_source=None, revive=revive, audited=audited,
        )  # fmt: skip
    return _change(
        session, integ, ACTIVE, None, now=now, needs_reauth=False, error_source=None,
        revive=revive, audited=audited,
    )  # fmt: skip


def mark_error(
    session: Session, integ: Integration, *, now: datetime, source: Source, detail: str
) -> bool:
    """``source`` failed with ``detail`` (one line, no PHI). A pull does not overwrite a push's
    error, and no failure overwrites "reconnect needed" or a lost calendar."""
    if integ.needs_reauth or integ.needs_calendar:
        return integ.status != DISCONNECTED
    if integ.status == ERROR and integ.error_source == "push" and source == "pull":
        return True
    return _change(session, integ, ERROR, detail, now=now, needs_reauth=False, error_source=source)


def mark_reauth(
    session: Session, integ: Integration, *, now: datetime, audited: bool = False
) -> bool:
    """The grant is gone: Error, jobs held until someone runs the command in the detail."""
    return _change(
        session, integ, ERROR, reauth_detail(integ.app, integ.provider_id), now=now,
        needs_reauth=True, error_source=None, audited=audited,
    )  # fmt: skip


def mark_calendar_lost(session: Session, integ: Integration, *, now: datetime, why: str) -> bool:
    """The calendar is gone or no longer writable (``why``, one line): Error, jobs held until a
    calendar is chosen again."""
    if integ.needs_reauth:
        return integ.status != DISCONNECTED
    detail = (
        f"{why}. Choose a calendar: calsync calendars select {integ.id} CAL_ID "
        f"(see calsync calendars list {integ.id})"
    )
    return _change(
        session, integ, ERROR, detail, now=now, needs_reauth=False, error_source="push",
        needs_calendar=True,
    )  # fmt: skip


def mark_pending(
    session: Session, integ: Integration, *, now: datetime, revive: bool = False
) -> bool:
    """Signed in, but no calendar chosen yet."""
    return _change(
        session, integ, PENDING, pending_detail(integ.id or 0), now=now,
        needs_reauth=False, error_source=None, revive=revive,
    )  # fmt: skip


def mark_disconnected(
    session: Session, integ: Integration, *, now: datetime, audited: bool = False
) -> bool:
    """Disconnected: nothing but a new sign-in brings it back."""
    detail = f"disconnected; to reconnect: {connect_command(integ.app, integ.provider_id)}"
    return _change(
        session, integ, DISCONNECTED, detail, now=now, needs_reauth=False, error_source=None,
        revive=True, audited=audited,
    )  # fmt: skip
