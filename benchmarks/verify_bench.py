"""Benchmark: ``verify`` over calendars of N calsync events costs requests per page, not event.

    python benchmarks/verify_bench.py [--events 1000 5000]

For each size: a fresh sandbox (in this process) and store, one Google and one Outlook
integration, N upcoming visits each, synced; then one ``verify`` of both calendars. It prints,
per provider, the events read, the list requests the verify made (the sandbox counts them), the
events per request, and the wall time. Run from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one(n: int) -> list[tuple[str, int, int, float]]:
    from calsync_cli.engine.verify import verify
    from calsync_cli.sandbox import Sandbox
    from tests.conftest import visit
    from tests.engine_support import connect, make_env

    rows = []
    with tempfile.TemporaryDirectory() as tmp, Sandbox(port=0) as sb:
        os.environ["XDG_DATA_HOME"] = tmp
        os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
        env = make_env(Path(tmp), sb)
        env.clock.now = datetime.now(UTC)
        base = env.clock.now.replace(microsecond=0) + timedelta(days=1)
        for app, provider in (("google", "dr-lee"), ("outlook", "dr-patel")):
            connect(env, app, provider_id=provider)
        visits = []
        for i in range(n):
            start = base + timedelta(minutes=30 * i)
            for provider in ("dr-lee", "dr-patel"):
                visits.append(visit(f"{provider}-{i}", provider_id=provider,
                                    start=start.isoformat(),
                                    end=(start + timedelta(minutes=30)).isoformat()))  # fmt: skip
        env.import_visits(visits)
        while env.sync().integrations:
            pass
        end = base + timedelta(minutes=30 * n + 60)
        for app, iid in env.integrations.items():
            sb.reset_stats()
            started = time.perf_counter()
            [result] = asyncio.run(
                verify(env.store, env.settings, now=env.clock(), integration_id=iid, end=end)
            )
            took = time.perf_counter() - started
            requests = sum(
                count for per_account in sb.stats()["requests"].get(app, {}).values()
                for kind, count in per_account.items()
            )  # fmt: skip
            assert result.clean, result.counts()
            rows.append((app, result.events, requests, took))
        env.store.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    print(f"{'events':>7} {'provider':>8} {'requests':>9} {'events/request':>15} {'seconds':>8}")
    for n in args.events:
        for app, events, requests, took in one(n):
            print(
                f"{events:>7} {app:>8} {requests:>9} {events / max(requests, 1):>15.0f} {took:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
