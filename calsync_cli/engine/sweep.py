"""The sweep: queue visits that should be on a calendar in their current form and are not.

It looks at visits changed within the look-back (and, per integration, only since it became
active or was last resumed: what changed while paused is never backfilled) and queues each that
has no live job and whose event is missing, stale, on another calendar, or still there for a
visit that no longer belongs (cancelled, reassigned, filtered out). Which visits those are is one
indexed query per integration (``store.links.needing_work``: each link records the inputs of its
render, the visit's content hash and the integration's filter version); a visit is rendered only
when its inputs changed but its event might not (a change to a field the filters hide). The
reading runs in a read transaction; only the queuing takes the write lock. Idempotent, and safe while ``sync`` runs
(it only inserts coalesced jobs). It also prunes jobs that finished more than
``queue.FINISHED_RETENTION`` ago, so the outbox does not grow forever.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from calsync_cli.config import Settings
from calsync_cli.engine.render import render
from calsync_cli.errors import InputError
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store import jobs, links, queue
from calsync_cli.store.db import Store

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
    # Read outside the write transaction (writers would wait for it); queuing is idempotent, so
    # work found here that a worker completes meanwhile only costs it a skip.
    with store.read() as session:
        for integ in store_integrations.pushing(session):
            assert integ.id is not None
            work = planned.setdefault(integ.id, [])
            since = max(now - lookback, integ.active_since)
            candidates = links.needing_work(session, integ, since=since)
            checked += len(candidates)
            to_render = [c for c in candidates if c.wanted and c.live_here]
            loaded = links.visits_and_practices(session, [c.visit_id for c in to_render])
            for c in candidates:
                if not c.wanted:
                    work.append((integ.id, c.visit_id, "delete"))
                    continue
                if c.live_here:
                    # its inputs changed, or are unknown (written before v3): render to see
                    # whether the event itself would change
                    visit, practice = loaded[c.visit_id]
                    rendered = render(
                        visit, practice, integ, visit_link=settings.visit_link(visit.id)
                    )
                    if c.content_hash == rendered.content_hash:
                        continue
                work.append((integ.id, c.visit_id, "upsert"))
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
                failed = jobs.failed_visits(session, integ.id)
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


async def sweep_and_keep_alive(
    store: Store,
    settings: Settings,
    *,
    now: datetime,
    lookback: timedelta,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """What ``calsync sweep`` runs: the sweep, then the token keep-alive (``tokens`` in the
    answer, with ``reauth_needed`` naming the integrations that need signing in again)."""
    from calsync_cli.engine.keepalive import keep_alive
    from calsync_cli.services.clients import check_token_store

    check_token_store(settings, store)
    data = sweep(store, settings, now=now, lookback=lookback, retry_failed=retry_failed)
    data["tokens"] = await keep_alive(store, settings, now=now)
    return data
