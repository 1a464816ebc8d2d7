"""The sweep: queue visits that should be on a calendar in their current form and are not.

It looks at visits changed within the look-back (and, per integration, only since it became
active or was last resumed: what changed while paused is never backfilled), renders each for
every pushing integration it belongs to, and queues it when there is no live job and the
event is missing, stale, on another calendar, or still there for a visit that no longer
belongs (cancelled, reassigned, filtered out). Each integration reads only its own clinicians'
visits and those it has an event link for. The reading and rendering run in a read
transaction; only the queuing takes the write lock. Idempotent, and safe while ``sync`` runs
(it only inserts coalesced jobs). It also prunes jobs that finished more than
``queue.FINISHED_RETENTION`` ago, so the outbox does not grow forever.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from calsync_cli.config import Settings
from calsync_cli.engine.render import render
from calsync_cli.engine.worker import PENDING_CREATE
from calsync_cli.errors import InputError
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store import jobs, queue
from calsync_cli.store.db import Store
from calsync_cli.store.models import JOB_FAILED, EventLink, Job, Practice, Visit

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise InputError(
            f"cannot read the duration {text!r}", hint="Use a number and a unit: 90m, 24h, 2d"
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def sweep(
    store: Store,
    settings: Settings,
    *,
    now: datetime,
    lookback: timedelta,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Queue what should be on a calendar and is not; with ``retry_failed`` also every visit
    whose job failed for good, however long ago (after its cause was fixed)."""
    checked = queued = retried = 0
    per_integration: dict[int, int] = {}
    planned: dict[int, list[tuple[int, str, str]]] = {}
    # Read and render outside the write transaction (after a big import that is most of the
    # work, and writers would wait for it); queuing is idempotent, so work found here that a
    # worker completes meanwhile only costs it a skip (the content hash is equal).
    with store.read() as session:
        for integ in store_integrations.pushing(session):
            assert integ.id is not None
            work = planned.setdefault(integ.id, [])
            since = max(now - lookback, integ.active_since)
            stmt = (
                select(Visit, Practice)
                .join(Practice, col(Practice.id) == col(Visit.practice_id))
                .where(col(Visit.changed_at) >= since)
            )
            if integ.provider_filter:
                # its clinicians' visits, and any other visit it has a link for (reassigned
                # away: its event must go); no other visit can need work here
                linked = select(EventLink.visit_id).where(EventLink.integration_id == integ.id)
                stmt = stmt.where(
                    sa.or_(
                        col(Visit.provider_id).in_(integ.provider_filter),
                        col(Visit.id).in_(linked),
                    )
                )
            rows = list(session.exec(stmt))
            if not rows:
                continue
            links = {
                lk.visit_id: lk
                for lk in session.exec(
                    select(EventLink).where(
                        EventLink.integration_id == integ.id,
                        col(EventLink.visit_id).in_([v.id for v, _ in rows]),
                    )
                )
            }
            live = jobs.live_pairs(session, integ.id)
            for visit, practice in rows:
                checked += 1
                if (integ.id, visit.id) in live:
                    continue
                link = links.get(visit.id)
                # a create a dead worker may have landed counts as on the calendar
                on_calendar = link is not None and (
                    link.external_id is not None or link.content_hash == PENDING_CREATE
                )
                belongs = visit.status != "cancelled" and jobs.matches(
                    integ, visit.practice_id, visit.provider_id
                )
                if belongs:
                    rendered = render(
                        visit, practice, integ, visit_link=settings.visit_link(visit.id)
                    )
                    if (
                        link is None
                        or not on_calendar
                        or link.content_hash != rendered.content_hash
                        or link.calendar_id != integ.calendar_id
                    ):
                        work.append((integ.id, visit.id, "upsert"))
                elif on_calendar:
                    work.append((integ.id, visit.id, "delete"))
    with store.write() as session:
        # only integrations that still take pushed work (one may have been paused or
        # disconnected meanwhile)
        pushing = store_integrations.pushing(session)
        for integ in pushing:
            assert integ.id is not None
            n = jobs.enqueue(session, planned.get(integ.id, []), now)
            queued += n
            if n:
                per_integration[integ.id] = n
        if retry_failed:
            for integ in pushing:
                assert integ.id is not None
                failed = session.exec(
                    select(Job.visit_id)
                    .where(Job.integration_id == integ.id, Job.state == JOB_FAILED)
                    .distinct()
                )
                n = jobs.enqueue(session, [(integ.id, v, "upsert") for v in failed], now)
                retried += n
                if n:
                    per_integration[integ.id] = per_integration.get(integ.id, 0) + n
        pruned = queue.prune(session, before=now - queue.FINISHED_RETENTION)
    return {
        "lookback_seconds": int(lookback.total_seconds()),
        "checked": checked,
        "queued": queued + retried,
        "retried_failed": retried,
        "pruned": pruned,
        "integrations": [{"id": k, "queued": v} for k, v in sorted(per_integration.items())],
    }
