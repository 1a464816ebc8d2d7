"""One call per command: ``run_sync`` (push, then pull), ``dry_run`` (the plan, nothing sent).

``run_sync`` is what ``calsync sync`` runs once (cron) or per round (``--watch``): the worker
pushes due work, then pull and two-way integrations have their busy time read. Paused
integrations neither push nor pull. The report is data; the CLI picks the exit code from it.

``dry_run`` answers the plan for everything due now, per integration, without claiming a job,
calling a provider or changing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from calsync_cli.config import Settings
from calsync_cli.engine.conflicts import PullResult, pull
from calsync_cli.engine.plan import ACTIONS, Step, counts, plan
from calsync_cli.engine.worker import RunSummary, Worker
from calsync_cli.providers.factory import provider_class
from calsync_cli.store import queue
from calsync_cli.store.db import Store


@dataclass
class SyncReport:
    """What one sync did: the push summary and each pull."""

    push: RunSummary
    pulled: list[PullResult] = field(default_factory=list)

    @property
    def needs_reauth(self) -> bool:
        return self.push.needs_reauth or any(p.needs_reauth for p in self.pulled)

    @property
    def failed(self) -> int:
        return self.push.failed

    @property
    def blocked(self) -> bool:
        """This host could not work (an unusable keyring or database): exit 1."""
        return self.push.blocked

    def as_dict(self) -> dict[str, Any]:
        return {**self.push.as_dict(), "pull": [p.as_dict() for p in self.pulled]}


async def run_sync(
    store: Store,
    settings: Settings,
    *,
    now: Callable[[], datetime],
    worker: Worker,
    pull_too: bool = True,
) -> SyncReport:
    """Push what is due (``worker``), then read the busy time of pull and two-way integrations
    that are not paused. A host whose token store cannot open the sealed tokens (a missing or
    wrong key) stops here, before claiming anything."""
    from calsync_cli.services.clients import check_token_store

    check_token_store(settings, store)
    report = SyncReport(await worker.run_once())
    if pull_too:
        report.pulled = await pull(store, settings, now=now(), include_paused=False)
    return report


@dataclass
class PlannedIntegration:
    id: int
    app: str
    calendar_id: str | None
    steps: list[Step]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            "calendar_id": self.calendar_id,
            "counts": counts(self.steps),
            "visits": {
                action: [s.visit_id for s in self.steps if s.action == action]
                for action in ACTIONS
                if any(s.action == action for s in self.steps)
            },
        }


@dataclass
class DryRun:
    integrations: list[PlannedIntegration]

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for item in self.integrations:
            for action, n in counts(item.steps).items():
                out[action] += n
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "integrations": [i.as_dict() for i in self.integrations],
            "totals": self.totals(),
        }


def dry_run(store: Store, settings: Settings, *, now: datetime) -> DryRun:
    """The plan for everything due now: nothing claimed, sent or changed."""
    with store.read() as session:
        due = queue.peek(session, now=now)
        planned = [
            PlannedIntegration(
                integ.id,
                integ.app,
                integ.calendar_id,
                plan(integ, items, provider_class(integ.app), visit_link=settings.visit_link),
            )  # fmt: skip
            for integ, items in due.values()
            if integ.id is not None
        ]
    return DryRun(sorted(planned, key=lambda p: p.id))
