"""Reading integrations: one by id, and those that take pushed work."""

from __future__ import annotations

from sqlmodel import Session, col, select

from calsync_cli.errors import NotFoundError
from calsync_cli.store.models import DISCONNECTED, Integration


def get(session: Session, integration_id: int) -> Integration:
    """The integration, or a ``NotFoundError`` that says how to list them."""
    integ = session.get(Integration, integration_id)
    if integ is None:
        raise NotFoundError(
            f"no integration {integration_id}", hint="Run 'calsync status' to list integrations"
        )
    return integ


def pushing(session: Session) -> list[Integration]:
    """Integrations that receive pushed work now: connected, unpaused, calendar chosen."""
    stmt = select(Integration).where(
        Integration.status != DISCONNECTED,
        Integration.paused == False,  # noqa: E712
        col(Integration.calendar_id).is_not(None),
        col(Integration.direction).in_(("push", "two-way")),
    )
    return list(session.exec(stmt))


def pulling(session: Session, *, include_paused: bool = True) -> list[Integration]:
    """Integrations that read their calendar: pull or two-way, connected, calendar chosen."""
    stmt = select(Integration).where(
        col(Integration.direction).in_(("pull", "two-way")),
        Integration.status != DISCONNECTED,
        col(Integration.calendar_id).is_not(None),
    )
    if not include_paused:
        stmt = stmt.where(Integration.paused == False)  # noqa: E712
    return list(session.exec(stmt))


def signed_in(session: Session) -> list[Integration]:
    """Connected integrations whose sign-in is not known to be gone."""
    stmt = select(Integration).where(
        Integration.status != DISCONNECTED,
        Integration.needs_reauth == False,  # noqa: E712
    )
    return list(session.exec(stmt))


def find(session: Session, provider_id: str, app: str) -> Integration | None:
    """The integration of this provider and app, if there is one (the oldest when several)."""
    stmt = (
        select(Integration)
        .where(Integration.provider_id == provider_id, Integration.app == app)
        .order_by(col(Integration.id))
    )
    return session.exec(stmt).first()


def sharing_account(
    session: Session, app: str, account: str, *, besides: int | None = None
) -> list[Integration]:
    """Connected integrations signed in with ``account`` at ``app`` (one Google grant serves
    them all), other than ``besides``."""
    stmt = select(Integration).where(
        Integration.app == app,
        Integration.account == account,
        Integration.status != DISCONNECTED,
    )
    if besides is not None:
        stmt = stmt.where(Integration.id != besides)
    return list(session.exec(stmt))
