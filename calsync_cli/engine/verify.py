"""Verify: compare an integration's calendar with what the store says should be there.

It reads the calendar's events that carry calsync's tag over a window (pages of the provider's
list call: the requests grow with pages, not events) and the visits the store has for that
window, and sorts what differs into kinds:

===========  =====================================================================================
missing      a visit that belongs on the calendar (``plan.wanted``) has no event
stale        its event's content differs from the current render (edited outside calsync, or a
             lost update)
duplicate    more than one tagged event for one visit
orphaned     a tagged event of a visit that no longer belongs (cancelled, reassigned, filtered out)
unknown      a tagged event calsync cannot match to a visit of this integration: left alone
===========  =====================================================================================

``repair`` queues the fixes: duplicates are deleted down to one at once (the one the store
links, else the first), everything else goes through the normal queue (the link is pointed at
the event found and marked out of date, and a job is queued), so the next ``sync`` applies it
with the usual retries, write-ahead and audit.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from calsync_cli.config import Settings
from calsync_cli.engine.plan import wanted
from calsync_cli.engine.render import Rendered, event_tag, render
from calsync_cli.errors import InputError
from calsync_cli.providers.base import (
    CalendarProvider,
    Gone,
    NotFound,
    Operation,
    TaggedEvent,
)
from calsync_cli.store import audit, links
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store.db import Store
from calsync_cli.store.integrations import get
from calsync_cli.store.models import DISCONNECTED, Integration

Kind = Literal["missing", "stale", "duplicate", "orphaned", "unknown"]
KINDS: tuple[Kind, ...] = ("missing", "stale", "duplicate", "orphaned", "unknown")
#: how far ahead "upcoming" looks by default
HORIZON = timedelta(days=90)

OpenProvider = Callable[..., AbstractAsyncContextManager[CalendarProvider]]


@dataclass(frozen=True)
class Drift:
    kind: Kind
    visit_id: str | None
    event_ids: tuple[str, ...] = ()
    #: which parts differ (stale): title, description, location, start, end, private
    fields: tuple[str, ...] = ()


@dataclass
class Verified:
    integration: int
    app: str
    calendar_id: str
    events: int = 0
    visits: int = 0
    drift: list[Drift] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(KINDS, 0)
        for d in self.drift:
            out[d.kind] += 1
        return out

    @property
    def clean(self) -> bool:
        return not any(d.kind != "unknown" for d in self.drift)

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "app": self.app,
            "calendar_id": self.calendar_id,
            "events": self.events,
            "visits": self.visits,
            "counts": self.counts(),
            "drift": [
                {
                    "kind": d.kind,
                    "visit_id": d.visit_id,
                    "event_ids": list(d.event_ids),
                    "fields": list(d.fields),
                }
                for d in self.drift
            ],  # fmt: skip
            "repaired": self.repaired,
        }


def parse_instant(text: str, option: str) -> datetime:
    """``--from``/``--to``: an ISO date (midnight UTC) or an ISO instant with an offset."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"{option} {text!r} is not a date or time",
            hint=f"Use a date like 2026-12-01, or 2026-12-01T09:00:00-06:00 ({option})",
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _differs(event: TaggedEvent, rendered: Rendered) -> tuple[str, ...]:
    want = rendered.event

    def flat(text: str | None) -> str:
        return " ".join((text or "").split())

    checks = {
        "title": flat(event.title) != flat(want.title),
        "description": flat(event.description) != flat(want.description),
        "location": flat(event.location) != flat(want.location),
        "start": event.start != want.start,
        "end": event.end != want.end,
        "private": event.private != want.private,
    }
    return tuple(name for name, bad in checks.items() if bad)


def compare(
    integ: Integration,
    events: list[TaggedEvent],
    expected: dict[str, tuple[Any, Any, Any]],
    *,
    visit_link: Callable[[str], str | None],
    start: datetime,
    end: datetime,
) -> list[Drift]:
    """The drift between ``events`` (tagged, on the calendar) and ``expected`` (visit id ->
    (visit, practice, link) the store knows for this integration). Pure."""
    assert integ.id is not None
    by_tag: dict[str, list[TaggedEvent]] = {}
    for event in events:
        by_tag.setdefault(event.tag, []).append(event)
    tags = {event_tag(integ.id, vid): vid for vid in expected}
    drift: list[Drift] = []
    for tag, found in by_tag.items():
        vid = tags.get(tag)
        if vid is None:
            drift.append(Drift("unknown", None, tuple(e.event_id for e in found)))
            continue
        visit, practice, link = expected[vid]
        if not wanted(visit, integ):
            drift.append(Drift("orphaned", vid, tuple(e.event_id for e in found)))
            continue
        if len(found) > 1:
            drift.append(Drift("duplicate", vid, tuple(e.event_id for e in found)))
        keep = _kept(found, link)
        rendered = render(visit, practice, integ, visit_link=visit_link(vid))
        differs = _differs(keep, rendered)
        if differs:
            drift.append(Drift("stale", vid, (keep.event_id,), differs))
    for vid, (visit, _practice, _link) in expected.items():
        in_window = visit.end > start and visit.start < end
        if in_window and wanted(visit, integ) and event_tag(integ.id, vid) not in by_tag:
            drift.append(Drift("missing", vid))
    return sorted(drift, key=lambda d: (KINDS.index(d.kind), d.visit_id or ""))


def _kept(found: list[TaggedEvent], link: Any) -> TaggedEvent:
    """Of several events of one visit, the one the store links (else the first)."""
    linked = link.external_id if link is not None else None
    return next((e for e in found if e.event_id == linked), found[0])


async def verify(
    store: Store,
    settings: Settings,
    *,
    now: datetime,
    integration_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    repair: bool = False,
    open_provider: OpenProvider | None = None,
) -> list[Verified]:
    """Verify (and with ``repair`` queue the fixes for) each pushing integration's calendar."""
    start = start or now
    end = end or now + HORIZON
    if end <= start:
        raise InputError(
            "--to must be after --from", hint="For example --from 2026-12-01 --to 2026-12-31"
        )
    if open_provider is None:
        from calsync_cli.services.clients import open_provider as default_open

        open_provider = default_open
    with store.read() as session:
        if integration_id is not None:
            integ = get(session, integration_id)
            if integ.status == DISCONNECTED or integ.calendar_id is None:
                raise InputError(
                    f"integration {integration_id} has no connected calendar to verify",
                    hint=f"Run: calsync calendars select {integration_id} CAL_ID",
                )
            targets = [integ]
        else:
            targets = store_integrations.pushing(session)
    results: list[Verified] = []
    for integ in targets:
        assert integ.id is not None and integ.calendar_id is not None
        result = Verified(integ.id, integ.app, integ.calendar_id)
        async with open_provider(settings, integ.app, integ.id, integ.provider_id) as provider:
            events: list[TaggedEvent] = []
            async for page in provider.list_tagged_events(integ.calendar_id, start, end):
                events += page
            with store.read() as session:
                expected = links.expected_in_window(session, integ, start=start, end=end)
            result.events, result.visits = len(events), len(expected)
            result.drift = compare(
                integ, events, expected, visit_link=settings.visit_link, start=start, end=end
            )
            if repair and result.drift:
                result.repaired = await _repair(store, provider, integ, result.drift, expected, now)
        results.append(result)
    return results


async def _repair(
    store: Store,
    provider: CalendarProvider,
    integ: Integration,
    drift: list[Drift],
    expected: dict[str, tuple[Any, Any, Any]],
    now: datetime,
) -> dict[str, int]:
    assert integ.id is not None and integ.calendar_id is not None
    repaired = dict.fromkeys(("deleted", "queued"), 0)
    # duplicates: delete down to one now (the one the store links, else the first)
    extra: list[str] = []
    keep: dict[str, str] = {}
    for d in drift:
        if d.kind == "duplicate" and d.visit_id is not None:
            link = expected[d.visit_id][2]
            linked = link.external_id if link is not None else None
            kept = linked if linked in d.event_ids else d.event_ids[0]
            keep[d.visit_id] = kept
            extra += [e for e in d.event_ids if e != kept]
    if extra:
        results = await provider.batch(
            integ.calendar_id, [Operation("delete", event_id=e) for e in extra]
        )
        repaired["deleted"] = sum(
            1 for r in results if r.error is None or isinstance(r.error, NotFound | Gone)
        )
    # the rest through the normal queue: point the link at what is there, mark it out of date
    fixes: list[links.Fix] = []
    for d in drift:
        if d.visit_id is None or d.kind == "unknown":
            continue
        if d.kind == "duplicate":
            fixes.append(links.Fix(d.visit_id, keep[d.visit_id], "upsert"))
        elif d.kind == "stale":
            fixes.append(links.Fix(d.visit_id, d.event_ids[0], "upsert"))
        elif d.kind == "missing":
            fixes.append(links.Fix(d.visit_id, None, "upsert"))
        elif d.kind == "orphaned":
            fixes.append(links.Fix(d.visit_id, d.event_ids[0], "delete"))
            extra_orphans = d.event_ids[1:]
            if extra_orphans:
                await provider.batch(
                    integ.calendar_id, [Operation("delete", event_id=e) for e in extra_orphans]
                )
                repaired["deleted"] += len(extra_orphans)
    with store.write() as session:
        repaired["queued"] = links.queue_fixes(session, integ, fixes, now=now)
        audit.record(
            session, "verify_repair", now=now, integration_id=integ.id,
            detail=f"{repaired['deleted']} duplicate events deleted, {repaired['queued']} queued",
        )  # fmt: skip
    return repaired
