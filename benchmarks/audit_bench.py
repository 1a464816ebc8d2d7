"""Benchmark: export the audit trail as JSON Lines, in flat memory.

    python benchmarks/audit_bench.py [--rows N] [--db-url URL]

Target (issue 12): ``calsync audit --format jsonl`` of 1,000,000 rows in flat memory. The
store is a fresh SQLite file in a temporary directory (or the empty database given with
--db-url) holding 5 integrations and N audit rows (pushes with their field names). The export
runs as a real ``calsync`` process writing to a file; its wall time and peak RSS are measured
for N/10 rows and for N rows: flat memory means the two peaks are about the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIELDS = ["start", "end", "practice_name", "patient_name:full", "visit_type", "location", "room"]


def fill(url: str, rows: int, start_id: int = 0) -> None:
    """Insert ``rows`` audit entries (and 5 integrations on first use) in large batches."""
    import sqlalchemy as sa
    from sqlmodel import SQLModel

    from calsync_cli.services import integrations
    from calsync_cli.store.db import Store
    from calsync_cli.store.models import Provider

    store = Store(url)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    if start_id == 0:
        with store.write() as s:
            s.add(Provider(id="dr-0", name="Dr. Zero", content_hash="x", updated_at=now))
        for n in range(5):
            with store.write() as s:
                integrations.create(
                    s, provider_id="dr-0", app=("google", "outlook")[n % 2], now=now,
                    account=f"clinician{n}@example.com", calendar_id="primary",
                )  # fmt: skip
    table = SQLModel.metadata.tables["audit"]
    chunk = 20_000
    with store.engine.begin() as conn:
        for first in range(start_id, start_id + rows, chunk):
            batch = [
                {
                    "at": now + timedelta(seconds=i),
                    "actor": "cron",
                    "action": ("push_create", "push_update", "push_delete")[i % 3],
                    "integration_id": 1 + i % 5,
                    "visit_id": f"v{i % 50_000:06d}",
                    "fields": [] if i % 3 == 2 else FIELDS,
                    "detail": "google calendar primary",
                }
                for i in range(first, min(first + chunk, start_id + rows))
            ]
            conn.execute(sa.insert(table), batch)
    store.close()


def export(url: str, out: Path) -> tuple[float, float, int]:
    """Run ``calsync audit --format jsonl`` in a child; (seconds, peak RSS in MiB, lines)."""
    env = {**os.environ, "CALSYNC_DB_URL": url}
    code = (
        "import resource, sys, runpy\n"
        "sys.argv = ['calsync', 'audit', '--format', 'jsonl']\n"
        "try:\n"
        "    from calsync_cli.cli.app import run\n"
        "    run()\n"
        "finally:\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    sys.stderr.write(f'PEAK_KB {peak}\\n')\n"
    )
    started = time.perf_counter()
    with out.open("wb") as sink:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, stdout=sink, stderr=subprocess.PIPE, check=False
        )
    seconds = time.perf_counter() - started
    stderr = done.stderr.decode()
    peak_line = next(line for line in stderr.splitlines() if line.startswith("PEAK_KB"))
    if done.returncode != 0:
        raise SystemExit(f"export failed ({done.returncode}): {stderr}")
    lines = sum(1 for _ in out.open("rb"))
    return seconds, int(peak_line.split()[1]) / 1024, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db-url", default=None, help="an empty database (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = args.db_url or f"sqlite:///{folder / 'bench.db'}"
        small = args.rows // 10
        started = time.perf_counter()
        fill(url, small)
        t_small, rss_small, n_small = export(url, folder / "small.jsonl")
        fill(url, args.rows - small, start_id=small)
        filled = time.perf_counter() - started - t_small
        t_big, rss_big, n_big = export(url, folder / "big.jsonl")
        size = (folder / "big.jsonl").stat().st_size / 2**20
        first = json.loads((folder / "big.jsonl").open().readline())
        assert first["fields"] == [], first  # the first integration's connect entry
    result = {
        "rows": n_big,
        "fill_seconds": round(filled, 1),
        "export_seconds": round(t_big, 2),
        "rows_per_second": round(n_big / t_big),
        "output_mib": round(size, 1),
        "peak_rss_mib": round(rss_big, 1),
        f"peak_rss_mib_at_{n_small}_rows": round(rss_small, 1),
        "export_seconds_small": round(t_small, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
