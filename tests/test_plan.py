"""The plan as a table: (visit, link, integration, provider capabilities) -> step. Pure: no
database, no HTTP; the whole file runs in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from calsync_cli.engine.plan import PENDING_CREATE, Facts, Step, counts, plan, wanted
from calsync_cli.engine.render import render
from calsync_cli.store.models import EventLink, Integration, Practice, Visit

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
PRACTICE = Practice(
    id="main", name="Main Street Practice", location="12 Main Street",
    timezone="America/Chicago", content_hash="p", updated_at=NOW,
)  # fmt: skip


@dataclass(frozen=True)
class Caps:
    create_restores_deleted: bool


GOOGLE, GRAPH = Caps(True), Caps(False)


@dataclass(frozen=True)
class Item:
    job_id: int
    visit: Visit
    practice: Practice
    link: EventLink | None


def integration(**over: object) -> Integration:
    values: dict[str, object] = {
        "id": 7, "provider_id": "dr-lee", "app": "google", "calendar_id": "cal-1",
        "status": "Active", "created_at": NOW, "active_since": NOW,
        "provider_filter": ["dr-lee"], "practice_filter": [],
    }  # fmt: skip
    values.update(over)
    return Integration(**values)


def a_visit(**over: object) -> Visit:
    values: dict[str, object] = {
        "id": "v1", "practice_id": "main", "provider_id": "dr-lee", "patient_name": "Jane Doe",
        "visit_type": "Follow Up", "room": "Room 2", "status": "scheduled",
        "start": datetime(2026, 12, 1, 15, tzinfo=UTC), "end": datetime(2026, 12, 1, 16, tzinfo=UTC),
        "content_hash": "h", "created_at": NOW, "changed_at": NOW,
    }  # fmt: skip
    values.update(over)
    return Visit(**values)


def link(**over: object) -> EventLink:
    values: dict[str, object] = {
        "integration_id": 7, "visit_id": "v1", "external_id": "ev-1", "calendar_id": "cal-1",
        "content_hash": None, "generation": 0,
    }  # fmt: skip
    values.update(over)
    return EventLink(**values)


def current_hash(integ: Integration, visit: Visit, generation: int = 0) -> str:
    return render(visit, PRACTICE, integ, generation=generation).content_hash


def one(integ: Integration, visit: Visit, lk: EventLink | None, caps: Caps = GRAPH) -> Step:
    [step] = plan(integ, [Item(1, visit, PRACTICE, lk)], caps)
    return step


def test_wanted_is_the_one_rule() -> None:
    integ = integration(practice_filter=["main"])
    assert wanted(a_visit(), integ)
    assert not wanted(a_visit(status="cancelled"), integ)
    assert not wanted(a_visit(provider_id="dr-patel"), integ)
    assert not wanted(a_visit(practice_id="river"), integ)
    assert wanted(Facts("confirmed", "main", "dr-lee"), integ)
    assert wanted(a_visit(provider_id="dr-patel"), integration(provider_filter=[]))


@pytest.mark.parametrize(
    ("visit_over", "link_over", "action", "why"),
    [
        ({}, None, "create", "not on the calendar"),
        ({}, {"external_id": None, "content_hash": None}, "create", "not on the calendar"),
        ({}, {"content_hash": "stale"}, "update", "changed"),
        ({}, {"calendar_id": "old-cal"}, "move", "the integration's calendar changed"),
        ({"status": "cancelled"}, {}, "delete", "cancelled"),
        ({"provider_id": "dr-patel"}, {}, "delete", "filtered out or reassigned"),
        ({"status": "cancelled"}, None, "skip", "not wanted and not there"),
        ({"status": "cancelled"}, {"external_id": None}, "skip", "not wanted and not there"),
        (
            {"status": "cancelled"},
            {"external_id": None, "content_hash": PENDING_CREATE},
            "recover",
            "cancelled",
        ),
        (
            {},
            {"external_id": None, "content_hash": PENDING_CREATE, "calendar_id": "old-cal"},
            "recover",
            "a create left on the previous calendar",
        ),
    ],
)
def test_step_table(
    visit_over: dict[str, object], link_over: dict[str, object] | None, action: str, why: str
) -> None:
    step = one(
        integration(), a_visit(**visit_over), None if link_over is None else link(**link_over)
    )
    assert (step.action, step.why) == (action, why)
    assert step.writes is (action != "skip")


def test_unchanged_is_skipped_and_a_pending_create_repeats() -> None:
    integ, visit = integration(), a_visit()
    assert one(integ, visit, link(content_hash=current_hash(integ, visit))).action == "skip"
    pending = one(integ, visit, link(external_id=None, content_hash=PENDING_CREATE))
    assert pending.action == "create" and pending.repeat
    assert not one(integ, visit, None).repeat


def test_update_targets_the_existing_event_with_the_current_render() -> None:
    integ, visit = integration(), a_visit(visit_type="Annual Physical")
    step = one(integ, visit, link(content_hash="old", generation=3))
    assert step.event_id == "ev-1" and step.calendar_id == "cal-1" and step.generation == 3
    assert step.rendered is not None and "Annual Physical" in step.rendered.event.title


@pytest.mark.parametrize(("caps", "after"), [(GOOGLE, 2), (GRAPH, 3)])
def test_generations_follow_the_providers_capabilities(caps: Caps, after: int) -> None:
    """A provider that restores deleted events under their id keeps one key; another moves on."""
    integ = integration()
    delete = one(integ, a_visit(status="cancelled"), link(generation=2), caps)
    assert delete.generation_after_delete == after
    move = one(integ, a_visit(), link(calendar_id="old-cal", generation=2), caps)
    assert move.action == "move" and move.generation == after
    assert move.from_calendar == "old-cal" and move.event_id == "ev-1"
    assert move.rendered is not None and move.rendered.event.key.endswith(f":{after}")


def test_recover_probes_the_dead_workers_key_then_creates_here() -> None:
    integ = integration()
    lk = link(external_id=None, content_hash=PENDING_CREATE, calendar_id="old-cal", generation=4)
    step = one(integ, a_visit(), lk, GRAPH)
    assert step.probe is not None and step.probe.event.key.endswith(":4")
    assert step.rendered is not None and step.rendered.event.key.endswith(":5")
    assert step.from_calendar == "old-cal" and step.calendar_id == "cal-1"
    gone = one(integ, a_visit(status="cancelled"), lk, GRAPH)
    assert gone.rendered is None and gone.probe is not None and gone.generation_after_delete == 5


def test_plan_keeps_order_and_counts() -> None:
    integ = integration()
    items = [
        Item(1, a_visit(id="a"), PRACTICE, None),
        Item(2, a_visit(id="b", status="cancelled"), PRACTICE, link(visit_id="b")),
        Item(3, a_visit(id="c"), PRACTICE, link(visit_id="c", content_hash="x")),
    ]
    steps = plan(integ, items, GOOGLE, visit_link=lambda vid: f"https://pm.example/{vid}")
    assert [(s.job_id, s.visit_id, s.action) for s in steps] == [
        (1, "a", "create"), (2, "b", "delete"), (3, "c", "update"),
    ]  # fmt: skip
    assert counts(steps) == {
        "create": 1, "update": 1, "move": 0, "delete": 1, "recover": 0, "skip": 0, "invalid": 0,
    }  # fmt: skip
    assert steps[0].rendered is not None
    assert "https://pm.example/a" in steps[0].rendered.event.description


def test_a_visit_that_cannot_be_rendered_is_invalid_alone() -> None:
    """An instant the practice's zone cannot hold (year 9999 east of UTC) fails one step."""
    integ = integration()
    far = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    bad_zone = Practice(**{**PRACTICE.model_dump(), "timezone": "Asia/Tokyo"})
    items = [Item(1, a_visit(id="odd", start=far, end=far), bad_zone, None),
             Item(2, a_visit(id="fine"), PRACTICE, None)]  # fmt: skip
    odd, fine = plan(integ, items, GOOGLE)
    assert (odd.action, odd.visit_id) == ("invalid", "odd") and "OverflowError" in odd.why
    assert fine.action == "create"


def test_plan_needs_a_calendar() -> None:
    with pytest.raises(AssertionError):
        plan(integration(calendar_id=None), [], GOOGLE)
