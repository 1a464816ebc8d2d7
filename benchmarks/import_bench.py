"""Benchmark: import 100,000 visits, re-import them unchanged, and cold start-up.

    python benchmarks/import_bench.py [--visits N] [--runs K]

Targets (issue 2): import of 100k visits under 20 s; unchanged re-import under 10 s;
`calsync --help` and `calsync status --json` cold start under 300 ms.
The store is a fresh SQLite file in a temporary directory with 5 integrations (one per
provider), so every imported visit also queues one outbox job, as in production.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROVIDERS = [f"dr-{i}" for i in range(5)]


def write_inputs(folder: Path, n: int) -> Path:
    (folder / "practices.jsonl").write_text(
        json.dumps(
            {
                "id": "main",
                "name": "Main Street Practice",
                "location": "12 Main St",
                "timezone": "America/Chicago",
            }
        )
        + "\n"
    )
    (folder / "providers.jsonl").write_text(
        "".join(json.dumps({"id": p, "name": p}) + "\n" for p in PROVIDERS)
    )
    start = datetime(2026, 12, 1, 15, tzinfo=UTC)
    with open(folder / "visits.jsonl", "w") as f:
        for i in range(n):
            s = start + timedelta(minutes=30 * (i // len(PROVIDERS)))
            f.write(
                json.dumps(
                    {
                        "id": f"v{i:07d}",
                        "practice_id": "main",
                        "provider_id": PROVIDERS[i % len(PROVIDERS)],
                        "patient_name": f"Patient {i}",
                        "visit_type": "Follow Up",
                        "room": "Room 1",
                        "start": s.isoformat(),
                        "end": (s + timedelta(minutes=30)).isoformat(),
                        "reason": "check",
                    }
                )
                + "\n"
            )
    return folder / "visits.jsonl"


def cold_start(args: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "calsync_cli", *args], env=env, check=True, capture_output=True
        )
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    opts = parser.parse_args()

    from calsync_cli import importers
    from calsync_cli import integrations as core
    from calsync_cli.store.db import Store

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        visits = write_inputs(folder, opts.visits)
        url = f"sqlite:///{folder / 'bench.db'}"
        store = Store(url)
        now = datetime.now(UTC)
        importers.import_file(store, "practices", str(folder / "practices.jsonl"), now=now)
        importers.import_file(store, "providers", str(folder / "providers.jsonl"), now=now)
        with store.write() as s:
            for p in PROVIDERS:
                core.create(s, provider_id=p, app="google", now=now, calendar_id="primary")

        t = time.perf_counter()
        first = importers.import_file(store, "visits", str(visits), now=now)
        t_import = time.perf_counter() - t
        t = time.perf_counter()
        again = importers.import_file(store, "visits", str(visits), now=now)
        t_reimport = time.perf_counter() - t
        store.close()
        assert first.created == opts.visits and first.jobs_queued == opts.visits, first
        assert again.unchanged == opts.visits and again.jobs_queued == 0, again

        env = {**os.environ, "CALSYNC_DB_URL": url}
        t_help = cold_start(["--help"], env, opts.runs)
        t_status = cold_start(["status", "--json"], env, opts.runs)

    rows = [
        (f"import {opts.visits:,} visits (+{first.jobs_queued:,} jobs)", t_import, 20.0),
        (f"re-import {opts.visits:,} unchanged", t_reimport, 10.0),
        ("cold `calsync --help` (median)", t_help, 0.3),
        ("cold `calsync status --json` (median)", t_status, 0.3),
    ]
    for label, seconds, target in rows:
        verdict = "ok" if seconds <= target else "OVER TARGET"
        print(f"{label:<48} {seconds:8.3f} s   target {target:g} s   {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
