"""Pull: read busy time from the external calendar and report visits that overlap it.

Only for integrations in ``pull`` or ``two-way`` direction. calsync's own events (recognised by
their tag) are not conflicts. Nothing is written to the external calendar and nothing of the
external events but their times and ids is kept or shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from calsync_cli.config import Settings
from calsync_cli.engine.plan import wanted
from calsync_cli.errors import InputError
from calsync_cli.providers.base import BusyBlock, ProviderError, ReauthRequired
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store import states
from calsync_cli.store.db import Store
from calsync_cli.store.integrations import get
from calsync_cli.store.models import DISCONNECTED, Integration, Visit
from calsync_cli.store.visits import visits_between

HORIZON = timedelta(days=14)
OWN_TAG_PREFIX = "calsync-"


@dataclass(frozen=True)
class Conflict:
    integration: int
    visit_id: str
    visit_start: str
    visit_end: str
    busy_start: str
    busy_end: str
    event_id: str | None


@dataclass
class PullResult:
    integration: int
    app: str
    conflicts: list[Conflict]
    error: str | None = None
    needs_reauth: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "app": self.app,
            "conflicts": [asdict(c) for c in self.conflicts],
            "error": self.error,
            "needs_reauth": self.needs_reauth,
        }


def overlaps(visits: list[Visit], busy: list[BusyBlock], integration_id: int) -> list[Conflict]:
    found = []
    foreign = [b for b in busy if not (b.tag or "").startswith(OWN_TAG_PREFIX)]
    for visit in visits:
        for block in foreign:
            if block.start < visit.end and block.end > visit.start:
                found.append(
                    Conflict(
                        integration_id, visit.id, visit.start.isoformat(), visit.end.isoformat(),
                        block.start.isoformat(), block.end.isoformat(), block.event_id,
                    )
                )  # fmt: skip
    return found


def pulling(
    session: Any, integration_id: int | None, *, include_paused: bool = True
) -> list[Integration]:
    """The integrations to read: the one asked for (refused with the fix when it does not read
    its calendar), or every pull and two-way integration with a calendar."""
    if integration_id is not None:
        integ = get(session, integration_id)
        if integ.direction == "push":
            raise InputError(
                f"integration {integration_id} only pushes; it does not read its calendar",
                hint=f"Turn reading on with: calsync direction {integration_id} two-way",
            )
        if integ.status == DISCONNECTED or integ.calendar_id is None:
            raise InputError(
                f"integration {integration_id} has no connected calendar",
                hint=f"Run: calsync calendars select {integration_id} CAL_ID",
            )
        return [integ] if include_paused or not integ.paused else []
    return store_integrations.pulling(session, include_paused=include_paused)


async def pull(
    store: Store,
    settings: Settings,
    *,
    now: datetime,
    integration_id: int | None = None,
    horizon: timedelta = HORIZON,
    open_provider: Callable[..., Any] | None = None,
    record: bool = True,
    include_paused: bool = True,
) -> list[PullResult]:
    """Read each pulling integration's busy time over [now, now + horizon). A sync leaves
    paused integrations out (``include_paused=False``): paused means neither push nor pull."""
    if open_provider is None:
        from calsync_cli.services.clients import open_provider as default_open

        open_provider = default_open
    with store.read() as session:
        integrations = pulling(session, integration_id, include_paused=include_paused)
        window = visits_between(session, now, now + horizon) if integrations else []
        work = [(integ, [v for v in window if wanted(v, integ)]) for integ in integrations]

    async def one(integ: Integration, visits: list[Visit]) -> PullResult:
        assert integ.id is not None and integ.calendar_id is not None
        result = PullResult(integ.id, integ.app, [])
        try:
            async with open_provider(settings, integ.app, integ.id, integ.provider_id) as provider:
                busy = await provider.list_busy(integ.calendar_id, now, now + horizon)
            result.conflicts = overlaps(visits, busy, integ.id)
        except ReauthRequired as exc:
            result.needs_reauth, result.error = True, exc.one_line()
        except ProviderError as exc:
            result.error = exc.message
        return result

    results = list(await asyncio.gather(*(one(i, v) for i, v in work)))
    if record:
        _record(store, results, now)
    return results


def _record(store: Store, results: list[PullResult], now: datetime) -> None:
    with store.write() as session:
        for result in results:
            integ = session.get(Integration, result.integration)
            if integ is None:
                continue
            if result.needs_reauth:
                states.mark_reauth(session, integ, now=now)
            elif result.error:
                states.mark_error(
                    session, integ, now=now, source="pull", detail=f"pull failed: {result.error}"
                )
            elif integ.status != DISCONNECTED:
                integ.pulled_at = now
                session.add(integ)
                states.mark_active(
                    session, integ, now=now, source="pull", synced=integ.direction == "pull"
                )
