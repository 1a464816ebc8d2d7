"""The audit trail: who changed what, and which fields were disclosed to which integration.

Entries name fields, never their values: the trail itself must hold no patient data.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from datetime import datetime
from functools import cache

from sqlmodel import Session

from calsync_cli.store.models import AuditEntry


@cache
def current_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def record(
    session: Session,
    action: str,
    *,
    now: datetime,
    integration_id: int | None = None,
    visit_id: str | None = None,
    fields: Sequence[str] = (),
    detail: str | None = None,
) -> None:
    session.add(
        AuditEntry(
            at=now,
            actor=current_actor(),
            action=action,
            integration_id=integration_id,
            visit_id=visit_id,
            fields=list(fields),
            detail=detail,
        )
    )
