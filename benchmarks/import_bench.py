"""Benchmark: import 100,000 visits, re-import them unchanged, and cold start-up.

    python benchmarks/import_bench.py [--visits N] [--runs K] [--db-url URL]

Targets (issue 2): import of 100k visits under 20 s; unchanged re-import under 10 s;
`calsync --help` and `calsync status` (table and --json) cold start under 300 ms.
The store is a fresh SQLite file in a temporary directory (or the empty database given with
--db-url) with 5 integrations (one per provider), so every imported visit also queues one
outbox job, as in production.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROVIDERS = [f"dr-{i}" for i in range(5)]
DAY = timedelta(hours=24)


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


def cold_start(args: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + sys) of a fresh process."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


#: for reference: a one-command Typer app with one option, nothing of calsync. Typer as shipped
#: builds a pydantic coercer even for absent values; calsync skips that (cli/app.py).
BARE_TYPER = """
import typer
app = typer.Typer()
@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    print("{}")
app()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--db-url",
        help="an empty database to use instead of a temporary SQLite file, e.g. "
        "postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%%3Dbench",
    )
    opts = parser.parse_args()

    from calsync_cli.config import load_settings
    from calsync_cli.engine.sweep import sweep
    from calsync_cli.services import imports as importers
    from calsync_cli.services import integrations as core
    from calsync_cli.store.db import Store

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        visits = write_inputs(folder, opts.visits)
        url = opts.db_url or f"sqlite:///{folder / 'bench.db'}"
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
        # the sweep the day of such an import: every visit changed within its look-back
        t = time.perf_counter()
        swept = sweep(store, load_settings({"CALSYNC_DB_URL": url}), now=now, lookback=DAY)
        t_sweep = time.perf_counter() - t
        store.close()
        assert first.created == opts.visits and first.jobs_queued == opts.visits, first
        assert again.unchanged == opts.visits and again.jobs_queued == 0, again

        env = {**os.environ, "CALSYNC_DB_URL": url}
        bare = folder / "bare_typer.py"
        bare.write_text(BARE_TYPER)
        t_help = cold_start(["-m", "calsync_cli", "--help"], env, opts.runs)
        t_status = cold_start(["-m", "calsync_cli", "status", "--json"], env, opts.runs)
        t_table = cold_start(["-m", "calsync_cli", "status"], env, opts.runs)
        t_bare = cold_start([str(bare), "--json"], env, opts.runs)
        t_python = cold_start(["-c", "pass"], env, opts.runs)

    rows = [
        (f"import {opts.visits:,} visits (+{first.jobs_queued:,} jobs)", t_import, 20.0),
        (f"re-import {opts.visits:,} unchanged", t_reimport, 10.0),
    ]
    for label, seconds, target in rows:
        verdict = "ok" if seconds <= target else "OVER TARGET"
        print(f"{label:<52} {seconds:8.3f} s   target {target:g} s   {verdict}")
    label = f"sweep right after ({swept['checked']:,} pairs checked)"
    print(f"{label:<52} {t_sweep:8.3f} s")
    starts = [
        ("cold `calsync --help`", t_help, 0.3),
        (f"cold `calsync status --json` ({opts.visits:,} jobs queued)", t_status, 0.3),
        ("cold `calsync status` (the table)", t_table, 0.3),
        ("reference: a bare one-option Typer app", t_bare, None),
        ("floor: the interpreter alone (python -c pass)", t_python, None),
    ]
    for label, (wall, cpu), limit in starts:
        verdict = "" if limit is None else ("ok" if wall <= limit else "OVER TARGET")
        target = "" if limit is None else f"target {limit:g} s"
        print(f"{label:<52} {wall:8.3f} s wall, {cpu:.3f} s cpu (medians)   {target}   {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
