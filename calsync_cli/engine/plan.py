"""What to do with each claimed visit: a pure plan, no I/O and no SQL.

``wanted(visit, integration)`` is the one rule for "does this visit belong on this calendar"
(not cancelled; the integration's practice and provider filters match). ``plan()`` turns claimed
work (a visit, its practice, the link to its event if any) into one ``Step`` each:

==========  ==================================================================================
create      the visit belongs and has no event: create it (``repeat`` when a dead worker's
            create on the same key may have landed: the same key answers the same event)
update      its event's content differs from the current render
move        its event is on a calendar the integration has left: delete there, create here
delete      it no longer belongs (cancelled, reassigned, filtered out): delete its event
recover     a dead worker's create may have landed where it should not (the visit no longer
            belongs, or the integration moved to another calendar since): create on the same
            key and delete what that answers; then, when the visit belongs here, create here
skip        nothing to do: unchanged, or nothing there and nothing wanted
invalid     the visit cannot be rendered (an instant out of range, say): its job alone fails,
            naming the visit; the others go on
==========  ==================================================================================

The worker writes the steps ahead (``store.links``), applies them through the provider, and
records the results. Only result-dependent fallbacks stay in the applier: an update answered
NotFound/Gone becomes a create, a create whose id cannot be restored takes the next generation.

Keys and generations: a create's idempotency key is ``(integration, visit, generation)``. A
provider that restores a deleted event when it is created again under its id
(``create_restores_deleted``: Google) keeps one generation for a visit's whole life; any other
(Graph's ``transactionId`` answers the deleted event) takes the next generation after a delete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfoNotFoundError

from calsync_cli.engine.render import Rendered, render
from calsync_cli.store.models import EventLink, Integration, Practice, Visit
from calsync_cli.store.visits import Facts

__all__ = ["ACTIONS", "PENDING_CREATE", "Facts", "Step", "counts", "plan", "wanted"]

Action = Literal["create", "update", "move", "delete", "recover", "skip", "invalid"]
ACTIONS: tuple[Action, ...] = ("create", "update", "move", "delete", "recover", "skip", "invalid")

#: ``EventLink.content_hash`` while a create may have reached the calendar unrecorded
PENDING_CREATE = "pending-create"


class VisitFacts(Protocol):
    """What ``wanted`` needs of a visit (a stored ``Visit``, or an import's record)."""

    @property
    def status(self) -> str: ...
    @property
    def practice_id(self) -> str: ...
    @property
    def provider_id(self) -> str: ...


class Capabilities(Protocol):
    """What the plan needs to know of the provider (``CalendarProvider`` class attributes)."""

    create_restores_deleted: bool


class Work(Protocol):
    """One claimed (or, for a dry run, due) job: the visit as it is now and its link."""

    @property
    def job_id(self) -> int: ...
    @property
    def visit(self) -> Visit: ...
    @property
    def practice(self) -> Practice: ...
    @property
    def link(self) -> EventLink | None: ...


def matches(integ: Integration, practice_id: str, provider_id: str) -> bool:
    """The practice and provider filters (an empty list means all)."""
    if integ.practice_filter and practice_id not in integ.practice_filter:
        return False
    return not (integ.provider_filter and provider_id not in integ.provider_filter)


def wanted(visit: VisitFacts, integ: Integration) -> bool:
    """Whether ``visit`` belongs on ``integ``'s calendar: not cancelled, and its filters match."""
    return visit.status != "cancelled" and matches(integ, visit.practice_id, visit.provider_id)


@dataclass(frozen=True)
class Step:
    """One planned action for one visit on one integration."""

    action: Action
    job_id: int
    visit_id: str
    #: why, in a few words (for ``sync --dry-run -v``; never patient data)
    why: str
    #: the integration's calendar: where the event should be
    calendar_id: str | None = None
    #: what to write there (create, update, move; recover when the visit belongs here)
    rendered: Rendered | None = None
    #: the generation of ``rendered``'s key
    generation: int = 0
    #: the existing event: updated (update) or deleted (move, delete)
    event_id: str | None = None
    #: where ``event_id`` is (move, delete), or where a dead worker's create may be (recover)
    from_calendar: str | None = None
    #: recover: the dead worker's create, repeated on its key to find and delete what it made
    probe: Rendered | None = None
    #: create: repeats a create that may have landed
    repeat: bool = False
    #: the link's generation once its event is deleted (delete, recover without a create)
    generation_after_delete: int = 0

    @property
    def writes(self) -> bool:
        return self.action != "skip"


def next_generation(link: EventLink | None, caps: Capabilities) -> int:
    """The generation a create uses after the visit's event was deleted (or must be replaced)."""
    base = link.generation if link else 0
    return base if caps.create_restores_deleted else base + 1


def plan(
    integ: Integration,
    work: Sequence[Work],
    caps: Capabilities,
    *,
    visit_link: Callable[[str], str | None] = lambda _visit_id: None,
) -> list[Step]:
    """One ``Step`` per item of ``work``, in order (see the module docstring)."""
    calendar = integ.calendar_id
    assert calendar is not None, "plan() needs an integration with a calendar"
    steps: list[Step] = []
    for item in work:

        def draw(generation: int, _item: Work = item) -> Rendered:
            return render(
                _item.visit, _item.practice, integ, generation=generation,
                visit_link=visit_link(_item.visit.id),
            )  # fmt: skip

        def step(action: Action, why: str, _item: Work = item, **kw: Any) -> Step:
            return Step(action, _item.job_id, _item.visit.id, why, calendar_id=calendar, **kw)

        try:
            steps.append(_one(integ, item, caps, draw, step))
        except (ValueError, OverflowError, KeyError, ZoneInfoNotFoundError) as exc:
            steps.append(step("invalid", f"cannot be rendered ({type(exc).__name__})"))
    return steps


def _one(
    integ: Integration,
    item: Work,
    caps: Capabilities,
    draw: Callable[[int], Rendered],
    step: Callable[..., Step],
) -> Step:
    """The step for one item (see the module docstring)."""
    visit, link = item.visit, item.link
    base = link.generation if link else 0
    live = link is not None and link.external_id is not None
    pending = link is not None and not live and link.content_hash == PENDING_CREATE
    where = (link.calendar_id if link else None) or integ.calendar_id
    if not wanted(visit, integ):
        if live:
            assert link is not None
            return step("delete", _why_not(visit), event_id=link.external_id,
                        from_calendar=where, generation=base,
                        generation_after_delete=next_generation(link, caps))  # fmt: skip
        if pending:
            return step("recover", _why_not(visit), from_calendar=where, probe=draw(base),
                        generation=base,
                        generation_after_delete=next_generation(link, caps))  # fmt: skip
        return step("skip", "not wanted and not there", generation=base)
    if pending and where != integ.calendar_id:
        again = next_generation(link, caps)
        return step("recover", "a create left on the previous calendar", rendered=draw(again),
                    generation=again, from_calendar=where, probe=draw(base))  # fmt: skip
    if not live:
        return step("create", "not on the calendar", rendered=draw(base), generation=base,
                    repeat=pending)  # fmt: skip
    assert link is not None
    if where != integ.calendar_id:
        again = next_generation(link, caps)
        return step("move", "the integration's calendar changed", rendered=draw(again),
                    generation=again, event_id=link.external_id, from_calendar=where)  # fmt: skip
    rendered = draw(base)
    if link.content_hash == rendered.content_hash:
        return step("skip", "unchanged", generation=base)
    return step("update", "changed", rendered=rendered, generation=base,
                event_id=link.external_id)  # fmt: skip


def _why_not(visit: Visit) -> str:
    return "cancelled" if visit.status == "cancelled" else "filtered out or reassigned"


def counts(steps: Sequence[Step]) -> dict[str, int]:
    """How many steps of each action."""
    out: dict[str, int] = dict.fromkeys(ACTIONS, 0)
    for step in steps:
        out[step.action] += 1
    return out
