"""Benchmark: the sweep as a set-based question, at scale.

    python benchmarks/sweep_bench.py [--visits 1000000] [--changed 0.01] [--db-url URL]

Targets (issue 10): with 1,000,000 stored visits of which 1% changed within the look-back and 5
integrations, one sweep under 1 s; with 100,000 changed visits x 5 integrations, under 2 s; memory
flat (peak RSS is printed).

Setup (bulk SQL, not the importer: the import is benchmarked elsewhere): 5 clinicians with one
integration each (provider filter = the clinician), visits spread over them; every visit was
synced (its link records the render inputs); of the changed visits half changed in a way that
alters the event (a new content hash: they need an update) and half in none the filters show
(a new content hash too: the sweep must render them to see that nothing changed).
Scenarios:
  1. "1% changed": --visits stored, --changed of them changed within the look-back, no live jobs.
  2. "100k changed, synced": 100,000 changed and already synced (inputs current): nothing to do.
  3. "100k changed, queued": 100,000 changed with a live job each (right after an import).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NOW = datetime(2026, 11, 24, 15, tzinfo=UTC)
PROVIDERS = [f"dr-{i}" for i in range(5)]


def build(url: str, n: int, changed: int, *, synced: bool, queued: bool) -> None:
    import sqlalchemy as sa

    from calsync_cli.engine.render import render
    from calsync_cli.store.db import Store
    from calsync_cli.store.models import EventLink, Integration, Job, Practice, Provider, Visit

    store = Store(url)
    eng = store.engine
    old, recent = NOW - timedelta(days=30), NOW - timedelta(hours=2)
    practice = Practice(id="main", name="Main Street Practice", location="12 Main St",
                        timezone="America/Chicago", content_hash="p", updated_at=old)  # fmt: skip
    with eng.begin() as conn:
        conn.execute(sa.insert(Practice.__table__), [practice.model_dump()])  # type: ignore[attr-defined]
        conn.execute(
            sa.insert(Provider.__table__),  # type: ignore[attr-defined]
            [{"id": p, "name": p, "content_hash": "h", "updated_at": old} for p in PROVIDERS],
        )
        integrations = []
        for p in PROVIDERS:
            integ = Integration(provider_id=p, app="google", calendar_id=f"cal-{p}", status="Active",
                                created_at=old, active_since=old, provider_filter=[p])  # fmt: skip
            row = integ.model_dump(exclude={"id"})
            result = conn.execute(sa.insert(Integration.__table__).returning(  # type: ignore[attr-defined]
                Integration.__table__.c.id), [row])  # type: ignore[attr-defined]  # fmt: skip
            integ.id = result.scalar_one()
            integrations.append(integ)
    start = NOW + timedelta(days=1)
    chunk = 20_000
    for first in range(0, n, chunk):
        visits, links, jobs = [], [], []
        for i in range(first, min(n, first + chunk)):
            integ = integrations[i % 5]
            is_changed = i < changed
            v = Visit(id=f"v{i}", practice_id="main", provider_id=integ.provider_id,
                      patient_name="Jane Doe", visit_type="Follow Up", room="Room 2",
                      start=start + timedelta(minutes=i % 5000), end=start + timedelta(minutes=i % 5000 + 30),
                      status="scheduled", reason="check", content_hash=f"c{i}", created_at=old,
                      changed_at=recent if is_changed else old)  # fmt: skip
            rendered = render(v, practice, integ)
            renders_same = not is_changed or synced or i % 2 == 1
            visits.append(v.model_dump())
            links.append({
                "integration_id": integ.id, "visit_id": v.id, "external_id": f"ev{i}",
                "calendar_id": integ.calendar_id,
                "content_hash": rendered.content_hash if renders_same else "older",
                "generation": 0, "synced_at": old,
                # what the link was rendered from: an older content hash for changed visits
                "visit_hash": v.content_hash if (not is_changed or synced) else "before",
                "filter_version": 0,
            })  # fmt: skip
            if is_changed and queued:
                jobs.append({"integration_id": integ.id, "visit_id": v.id, "action": "upsert",
                             "state": "queued", "attempts": 0, "next_attempt_at": recent,
                             "dirty": False, "created_at": recent, "updated_at": recent})  # fmt: skip
        with eng.begin() as conn:
            conn.execute(sa.insert(Visit.__table__), visits)  # type: ignore[attr-defined]
            conn.execute(sa.insert(EventLink.__table__), links)  # type: ignore[attr-defined]
            if jobs:
                conn.execute(sa.insert(Job.__table__), jobs)  # type: ignore[attr-defined]
    with eng.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    store.close()


def sweep_once(url: str) -> tuple[float, dict[str, int]]:
    from calsync_cli.config import load_settings
    from calsync_cli.engine.sweep import sweep
    from calsync_cli.store.db import Store

    store = Store(url)
    started = time.perf_counter()
    out = sweep(
        store, load_settings({"CALSYNC_DB_URL": url}), now=NOW, lookback=timedelta(hours=24)
    )
    took = time.perf_counter() - started
    store.close()
    return took, {"checked": out["checked"], "queued": out["queued"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--big", type=int, default=100_000, help="changed visits, scenarios 2-3")
    parser.add_argument("--db-url", help="an empty database (default: SQLite in a temp dir)")
    args = parser.parse_args()
    scenarios = [
        (f"{args.visits:,} stored, {args.changed:.0%} changed", args.visits,
         int(args.visits * args.changed), False, False),
        (f"{args.big:,} changed, synced", args.big, args.big, True, False),
        (f"{args.big:,} changed, queued", args.big, args.big, False, True),
    ]  # fmt: skip
    print(f"{'scenario':<34} {'sweep s':>8} {'checked':>9} {'queued':>8} {'peak RSS MiB':>13}")
    for label, n, changed, synced, queued in scenarios:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.db_url or f"sqlite:///{Path(tmp) / 'sweep.db'}"
            build(url, n, changed, synced=synced, queued=queued)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            took, out = sweep_once(url)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{label:<34} {took:>8.3f} {out['checked']:>9,} {out['queued']:>8,} {rss:>13.0f}"
                  f"{'' if rss_before else ''}")  # fmt: skip
            if args.db_url:
                break  # one scenario per empty database
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CALSYNC_CONFIG", os.devnull)
    sys.exit(main())
