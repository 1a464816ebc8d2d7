"""Benchmark: push 2,000 visits over 10 integrations through one ``Worker.run_once()``.

    python benchmarks/sync_throughput.py [--visits N] [--latency S] [--sample K]
    python benchmarks/sync_throughput.py --workers 3 --pg postgresql+psycopg://postgres@127.0.0.1:5432/test

Setup: the sandbox in a child process (as a real provider is remote: its CPU is not the
engine's; ``--in-process`` runs it in this process, sharing the GIL), adding ``--latency`` (0.1 s) to every API call, inner batch calls
included (a Google batch waits once, for its slowest call; a Graph ``$batch`` runs its calls at
most 4 at a time per mailbox). 10 clinicians, each with their own account and integration: 5 on
Google, 5 on Outlook, signed in through the sandbox's OAuth, tokens in a file keyring in a
temporary directory, the store a fresh SQLite file.

It prints:
* the lower bound the limits allow, per integration, then the whole run (the integrations run in
  parallel, so the run's bound is the slowest integration's):
  - Outlook: ceil(n / 4) x latency (4 calls in flight per mailbox, whatever the batching);
  - Google: ceil(ceil(n / batch_chunk) / 4) x latency (one latency per batch request of at most
    ``batch_chunk`` calls, at most 4 requests in flight per account);
* the measured wall time of ``Worker.run_once()`` and its ratio to the bound (target <= 1.3;
  with ``--workers N``, N workers with their own leases run at once on the same store, as
  workers on N hosts would; ``--pg URL`` puts the store in a fresh schema of that PostgreSQL);
* the one-request-at-a-time rate, measured on a sample (``--sample`` creates with
  ``create_event``, one after another, half on a Google and half on an Outlook account) and
  extrapolated to the whole workload, and the speed-up over it (target >= 25x).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

N_INTEGRATIONS = 10
OUTLOOK_CONCURRENCY = 4
CLIENT_CONCURRENCY = 4  # requests in flight per account (CalendarProvider.max_concurrency)
NOW = datetime(2026, 11, 24, 15, tzinfo=UTC)


SERVE = """
import sys
from calsync_cli.sandbox import Sandbox
sb = Sandbox(port=0, outlook_mailbox_concurrency=int(sys.argv[1])).start()
print(sb.url, flush=True)
sys.stdin.read()
sb.stop()
"""


class RemoteSandbox:
    """The few ``Sandbox`` methods this benchmark uses, over the control API of a sandbox
    running in a child process."""

    def __init__(self, concurrency: int) -> None:
        import subprocess

        import httpx2

        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(concurrency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        self.http = httpx2.Client(base_url=f"{self.url}/_sandbox", timeout=60)

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)

    def env(self) -> dict[str, str]:
        return dict(self.http.get("/env").json())

    def add_account(self, app: str, email: str) -> None:
        self.http.post("/accounts", json={"app": app, "email": email}).raise_for_status()

    def calendar(self, app: str, email: str) -> str:
        data = self.http.get("/accounts", params={"app": app, "email": email}).json()
        return str(data["primary_calendar_id"])

    def set_latency(self, seconds: float) -> None:
        self.http.post("/latency", json={"seconds": seconds}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/stats").json())

    def reset_stats(self) -> None:
        self.http.post("/stats/reset").raise_for_status()

    def events(self, app: str, email: str, calendar: str) -> list[Any]:
        params = {"app": app, "email": email, "calendar": calendar}
        return list(self.http.get("/events", params=params).json()["events"])

    def issue_token(self, app: str, email: str) -> str:
        answer = self.http.post("/tokens", json={"app": app, "email": email}).json()
        return str(answer["access_token"])


class LocalSandbox(RemoteSandbox):
    def __init__(self, concurrency: int) -> None:
        from calsync_cli.sandbox import Sandbox

        self.sb = Sandbox(port=0, outlook_mailbox_concurrency=concurrency).start()
        self.url = self.sb.url

    def __exit__(self, *exc: object) -> None:
        self.sb.stop()

    def env(self) -> dict[str, str]:
        return self.sb.env()

    def add_account(self, app: str, email: str) -> None:
        self.sb.add_account(app, email)

    def calendar(self, app: str, email: str) -> str:
        return self.sb.account(app, email).primary_calendar_id

    def set_latency(self, seconds: float) -> None:
        self.sb.latency = seconds

    def stats(self) -> dict[str, Any]:
        return self.sb.stats()

    def reset_stats(self) -> None:
        self.sb.reset_stats()

    def events(self, app: str, email: str, calendar: str) -> list[Any]:
        return self.sb.events(app, email, calendar)

    def issue_token(self, app: str, email: str) -> str:
        return self.sb.issue_token(app, email)


def isolate(folder: Path) -> None:
    """Keep the keyring, config and data of this run in ``folder``."""
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        (folder / var).mkdir()
        os.environ[var] = str(folder / var)
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    for name in [n for n in os.environ if n.startswith("CALSYNC_")]:
        del os.environ[name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--in-process", action="store_true", help="run the sandbox in-process")
    parser.add_argument("--workers", type=int, default=1, help="workers sharing the store")
    parser.add_argument("--pg", help="a PostgreSQL URL: the store goes in a fresh schema there")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="calsync-bench-") as tmp:
        isolate(Path(tmp))
        sandbox = (LocalSandbox if args.in_process else RemoteSandbox)(OUTLOOK_CONCURRENCY)
        with sandbox as sb:
            db_url = fresh_schema(args.pg) if args.pg else f"sqlite:///{Path(tmp) / 'bench.db'}"
            return asyncio.run(
                run(Path(tmp), sb, args.visits, args.latency, args.sample, db_url, args.workers)
            )


def fresh_schema(url: str) -> str:
    import atexit
    import uuid

    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()

    atexit.register(drop)
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


async def run(
    tmp: Path,
    sb: RemoteSandbox,
    n_visits: int,
    latency: float,
    sample: int,
    db_url: str,
    n_workers: int = 1,
) -> int:
    import json

    import httpx2
    from sqlmodel import select

    from calsync_cli.auth.apps import GOOGLE_SCOPES, MICROSOFT_SCOPES
    from calsync_cli.auth.tokens import Tokens, TokenStore
    from calsync_cli.config import load_settings
    from calsync_cli.engine.render import render
    from calsync_cli.engine.worker import Worker
    from calsync_cli.providers.base import EventData, StaticTokenSource
    from calsync_cli.providers.factory import make_provider
    from calsync_cli.providers.google import BATCH_CHUNK
    from calsync_cli.sandbox.testing import google_sign_in, microsoft_sign_in
    from calsync_cli.services import imports as importers
    from calsync_cli.services import integrations as core
    from calsync_cli.services.clients import http_client
    from calsync_cli.store.db import Store
    from calsync_cli.store.models import Integration, Practice, Visit

    def jsonl(name: str, rows: list[dict[str, object]]) -> str:
        path = tmp / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    clinicians = [
        (f"dr-{i}", "google" if i < N_INTEGRATIONS // 2 else "outlook") for i in range(10)
    ]
    emails = {
        pid: f"{pid}@{'gmail' if app == 'google' else 'outlook'}.example" for pid, app in clinicians
    }
    settings = load_settings({**sb.env(), "CALSYNC_DB_URL": db_url})
    store = Store(settings.db_url)
    practice = {
        "id": "main",
        "name": "Main Street Practice",
        "location": "12 Main Street",
        "timezone": "America/Chicago",
    }
    importers.import_file(store, "practices", jsonl("p.jsonl", [practice]), now=NOW)
    importers.import_file(
        store, "providers", jsonl("d.jsonl", [{"id": p, "name": p} for p, _ in clinicians]),
        now=NOW,
    )  # fmt: skip
    with httpx2.Client() as client:
        for pid, app in clinicians:
            sb.add_account(app, emails[pid])
            calendar = sb.calendar(app, emails[pid])
            if app == "google":
                answer = google_sign_in(client, sb.url, emails[pid], scopes=GOOGLE_SCOPES)
            else:
                answer = microsoft_sign_in(client, sb.url, emails[pid], scopes=MICROSOFT_SCOPES)
            with store.write() as s:
                integ = core.create(
                    s, provider_id=pid, app=app, now=NOW, account=emails[pid],
                    calendar_id=calendar, calendar_name="Calendar",
                )  # fmt: skip
                assert integ.id is not None
                iid = integ.id
            TokenStore().put(iid, Tokens.from_token_response(answer, NOW))
    start = datetime(2026, 12, 1, 14, tzinfo=UTC)
    rows: list[dict[str, object]] = []
    for i in range(n_visits):
        when = start + timedelta(minutes=30 * (i // N_INTEGRATIONS))
        rows.append(
            {
                "id": f"v{i:05d}",
                "practice_id": "main",
                "provider_id": clinicians[i % N_INTEGRATIONS][0],
                "patient_name": f"Patient Number{i}",
                "visit_type": "Follow Up",
                "room": f"Room {i % 7}",
                "start": when.isoformat(),
                "end": (when + timedelta(minutes=30)).isoformat(),
            }
        )
    importers.import_file(store, "visits", jsonl("v.jsonl", rows), now=NOW)

    # -- the bound ------------------------------------------------------------------------
    per_integ = {pid: sum(1 for r in rows if r["provider_id"] == pid) for pid, _ in clinicians}
    bounds: dict[str, float] = {}
    for pid, app in clinicians:
        n = per_integ[pid]
        if app == "outlook":
            bounds[pid] = math.ceil(n / OUTLOOK_CONCURRENCY) * latency
        else:
            bounds[pid] = math.ceil(math.ceil(n / BATCH_CHUNK) / CLIENT_CONCURRENCY) * latency
    bound = max(bounds.values())

    # -- one run_once ---------------------------------------------------------------------
    sb.set_latency(latency)
    sb.reset_stats()
    workers = [
        Worker(store, settings, clock=lambda: NOW, owner=f"bench-{i}") for i in range(n_workers)
    ]
    began = time.perf_counter()
    summaries = await asyncio.gather(*(w.run_once() for w in workers))
    wall = time.perf_counter() - began
    totals = {k: sum(s.totals()[k] for s in summaries) for k in summaries[0].totals()}
    by_worker = [s.totals()["pushed"] for s in summaries]
    stats = sb.stats()
    events = sum(
        len(sb.events(app, emails[pid], sb.calendar(app, emails[pid]))) for pid, app in clinicians
    )
    ok = totals["pushed"] == n_visits and events == n_visits

    # -- one request at a time, on a sample -----------------------------------------------
    with store.read() as s:
        integ_by_app = {i.app: i for i in s.exec(select(Integration))}
        visit_rows = list(s.exec(select(Visit).limit(sample)))
        main = s.get(Practice, "main")
    assert main is not None
    seq_times: dict[str, float] = {}
    async with http_client() as client:
        for app in ("google", "outlook"):
            email = f"sequential@{app}.example"
            sb.add_account(app, email)
            calendar = sb.calendar(app, email)
            provider = make_provider(
                app,
                client,
                StaticTokenSource(sb.issue_token(app, email)),
                settings,  # type: ignore[arg-type]
            )
            events_data: list[EventData] = [
                render(v, main, integ_by_app[app], generation=7).event
                for v in visit_rows[: sample // 2]
            ]
            t0 = time.perf_counter()
            for event in events_data:
                await provider.create_event(calendar, event)
            seq_times[app] = (time.perf_counter() - t0) / len(events_data)
    per_event = {app: seq_times[app] for app in seq_times}
    n_by_app = {
        app: sum(per_integ[p] for p, a in clinicians if a == app) for app in ("google", "outlook")
    }
    sequential_total = sum(per_event[a] * n_by_app[a] for a in n_by_app)
    store.close()

    print(f"workload: {n_visits} visits over {N_INTEGRATIONS} integrations "
          f"({', '.join(f'{a} {n}' for a, n in n_by_app.items())}), latency {latency:g} s per call")  # fmt: skip
    print("lower bound the limits allow (integrations in parallel; the slowest decides):")
    print(f"  outlook: ceil(n/{OUTLOOK_CONCURRENCY}) x {latency:g} s = "
          f"{max(b for p, b in bounds.items() if dict(clinicians)[p] == 'outlook'):.2f} s "
          f"per mailbox (n = {max(per_integ.values())})")  # fmt: skip
    print(f"  google:  ceil(ceil(n/{BATCH_CHUNK})/{CLIENT_CONCURRENCY}) x {latency:g} s = "
          f"{max(b for p, b in bounds.items() if dict(clinicians)[p] == 'google'):.2f} s "
          f"per account (one latency per batch of <= {BATCH_CHUNK}, {CLIENT_CONCURRENCY} batches "
          f"in flight; {math.ceil(max(per_integ.values()) / BATCH_CHUNK) * latency:.2f} s if its "
          f"batches went one after another)")  # fmt: skip
    print(f"  bound: {bound:.2f} s")
    store_kind = "PostgreSQL" if db_url.startswith("postgresql") else "SQLite"
    print(f"measured: {n_workers} worker(s) on {store_kind}, pushed per worker {by_worker}")
    print(f"measured Worker.run_once(): {wall:.2f} s  (pushed {totals['pushed']}, "
          f"events on the calendars {events}, rescheduled {totals['rescheduled']}, "
          f"failed {totals['failed']})")  # fmt: skip
    print(f"  ratio to the bound: {wall / bound:.2f}x  (target <= 1.3x)")
    print(f"  sandbox: {sum(stats['batches'].values())} batch requests, "
          f"throttled {stats['throttled']}, max in flight per mailbox "
          f"{max(stats['max_concurrency']['outlook'].values(), default=0)}")  # fmt: skip
    print(f"one request at a time (measured on {sample} creates, extrapolated to the workload):")
    for app, t in per_event.items():
        print(f"  {app}: {t * 1000:.0f} ms per event, {1 / t:.1f} events/s")
    print(f"  whole workload one at a time: ~{sequential_total:.0f} s "
          f"({n_visits / sequential_total:.1f} events/s)")  # fmt: skip
    print(f"  run_once rate: {n_visits / wall:.0f} events/s; speed-up {sequential_total / wall:.0f}x "
          "(target >= 25x)")  # fmt: skip
    good = ok and wall / bound <= 1.3 and sequential_total / wall >= 25
    print("targets met" if good else "TARGETS MISSED")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
