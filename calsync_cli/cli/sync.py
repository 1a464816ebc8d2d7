"""``calsync sync`` and ``calsync sweep``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import JsonOpt
from calsync_cli.errors import InputError

PROGRESS_JOBS = 200


def _render_summary(data: dict[str, Any]) -> None:
    if not data["integrations"] and not data.get("pull"):
        output.say("Nothing due.")
        return
    output.table(
        None,
        [
            "integration",
            "app",
            "created",
            "updated",
            "deleted",
            "unchanged",
            "rescheduled",
            "failed",
            "held",
        ],
        [
            [
                s["id"],
                s["app"],
                s["pushed"],
                s["updated"],
                s["deleted"],
                s["skipped"],
                s["rescheduled"],
                s["failed"],
                s["held"],
            ]
            for s in data["integrations"]
        ],
    )
    for s in data["integrations"]:
        if s["error"]:
            output.say(f"integration {s['id']}: {s['error']}")
    for p in data.get("pull", []):
        line = f"integration {p['integration']}: read busy time, {len(p['conflicts'])} conflicts"
        output.say(line if not p["error"] else f"integration {p['integration']}: {p['error']}")


def exit_code_of_run(report: Any) -> int:
    """4 when an integration needs signing in again, else 1 when a job failed for good in this
    run or this host could not work (an unusable keyring or database), else 0 (work
    rescheduled for a retry is not a failure)."""
    if report.needs_reauth:
        return output.EXIT_REAUTH
    failed = report.failed or getattr(report, "blocked", False)
    return output.EXIT_FAILURE if failed else output.EXIT_OK


def _render_plan(data: dict[str, Any]) -> None:
    if not data["integrations"]:
        output.say("Nothing due: a sync now would send nothing.")
        return
    actions = ("create", "update", "move", "delete", "recover", "skip")
    output.table(
        "Planned (dry run: nothing sent, nothing changed)",
        ["integration", "app", "create", "update", "move", "delete", "recover", "unchanged"],
        [[i["id"], i["app"], *(i["counts"][a] for a in actions)] for i in data["integrations"]],
    )
    if output.state.verbose:
        for i in data["integrations"]:
            for action, visits in i["visits"].items():
                output.say(f"integration {i['id']} {action}: {', '.join(visits)}")


def sync(
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep running until SIGINT/SIGTERM; finish calls in flight, then exit 0.",
        ),
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option("--interval", min=0.1, help="Seconds between rounds with --watch (10)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what a sync would do per integration (creates, updates, moves, deletes;"
            " visit ids with -v or --json) without sending, claiming or changing anything.",
        ),
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="With --watch: after each round write counters in the Prometheus text format"
            " to this file (atomically), for node_exporter's textfile collector.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Push queued work to the external calendars: create, update, delete on cancel.

    Without --watch it processes what is due, reads the busy time of pull and two-way
    integrations, and exits: 4 when an integration needs signing in again, else 1 when a job
    failed for good in this run, else 0 (work rescheduled for a retry is not a failure). Run it
    from cron every minute, or keep one running with --watch (one log line per round).
    """
    import asyncio

    if interval is not None and not watch:
        raise InputError("--interval only applies with --watch", hint="Add --watch, or drop it")
    if metrics_file is not None and not watch:
        raise InputError("--metrics-file only applies with --watch", hint="Add --watch")
    if dry_run and watch:
        raise InputError("--dry-run and --watch do not go together", hint="Use one of them")
    if dry_run:
        from calsync_cli.engine.run import dry_run as plan_due

        planned = plan_due(context.store(), context.settings(), now=context.now()).as_dict()
        output.render(planned, as_json, lambda: _render_plan(planned))
        return

    from calsync_cli.engine.run import run_sync
    from calsync_cli.engine.worker import Worker

    with output.progress_bar("syncing", enabled=not as_json and not watch) as bar:
        worker = Worker(
            context.store(), context.settings(),
            on_progress=lambda done, total: bar("pushing", done, total) if total > PROGRESS_JOBS else None,
        )  # fmt: skip
        if watch:
            report = asyncio.run(_watch(worker, 10 if interval is None else interval, metrics_file))
        else:
            report = asyncio.run(
                run_sync(context.store(), context.settings(), now=context.now, worker=worker)
            )
    data = report.as_dict()
    data["exit_code"] = exit_code_of_run(report)
    output.render(data, as_json, lambda: _render_summary(data))
    code = 0 if watch else data["exit_code"]
    if code:
        raise typer.Exit(code)


async def _watch(worker: Any, interval: float, metrics_file: Path | None) -> Any:
    import asyncio
    import signal

    from calsync_cli.engine.metrics import Metrics
    from calsync_cli.engine.run import SyncReport, run_sync
    from calsync_cli.engine.worker import RunSummary

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        worker.stop_requested = True  # no new claim round; the calls in flight finish
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    total = RunSummary()
    metrics = Metrics()
    output.say(f"Watching for sync work every {interval:g} s; Ctrl-C to stop.")
    try:
        while not stop.is_set():
            report = await run_sync(
                context.store(), context.settings(), now=context.now, worker=worker,
                pull_too=False,
            )  # fmt: skip
            total.extend(report.push)
            metrics.add(report.push, at=context.now())
            if report.push.integrations:
                output.say(metrics.round_line(report.push, at=context.now()))
            if metrics_file is not None:
                metrics.write(metrics_file)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    output.say("Stopped.")
    return SyncReport(total)


def sweep(
    lookback: Annotated[
        str, typer.Option("--lookback", help="How far back to look, e.g. 24h, 90m, 2d.")
    ] = "24h",
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Also queue again every visit whose job failed for good, however long ago "
            "(after fixing the cause; see 'calsync status INTEGRATION').",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue visits that should have synced and did not (run it from cron).

    Looks at visits changed within the look-back that belong on an active, unpaused
    integration's calendar in their current form but are not there (missing or stale event, or
    a cancelled visit whose event is still there) and have no queued work. Changes made while
    an integration was paused are never backfilled. Safe to run while 'calsync sync' runs.

    It prunes finished jobs older than a week, and keeps quiet connections alive: refresh
    tokens die unused (Microsoft after 90 days, Google after six months), so it refreshes the
    sign-in of any integration idle for a week. Exits 4 when an integration needs signing in
    again.
    """
    import asyncio

    from calsync_cli.engine.sweep import parse_duration, sweep_and_keep_alive

    data = asyncio.run(
        sweep_and_keep_alive(
            context.store(), context.settings(), now=context.now(),
            lookback=_lookback(parse_duration, lookback), retry_failed=retry_failed,
        )
    )  # fmt: skip

    def human() -> None:
        output.say(
            f"Checked {data['checked']} recent visit changes; queued {data['queued']} for sync."
        )
        if data["retried_failed"]:
            output.say(f"Of those, {data['retried_failed']} had failed for good: queued again.")
        if data["pruned"]:
            output.say(f"Pruned {data['pruned']} jobs finished over a week ago.")
        tokens = data["tokens"]
        if tokens["refreshed"]:
            output.say(
                f"Kept {len(tokens['refreshed'])} quiet connections alive (tokens refreshed)."
            )
        for iid in tokens["reauth_needed"]:
            output.say(f"integration {iid}: reconnect needed (see 'calsync status {iid}')")
        for iid, error in tokens["errors"].items():
            output.say(f"integration {iid}: could not refresh its sign-in: {error}")

    output.render(data, as_json, human)
    if data["tokens"]["reauth_needed"]:
        raise typer.Exit(output.EXIT_REAUTH)
    if data["tokens"]["unusable"]:  # the keyring or database of this host is the problem
        raise typer.Exit(output.EXIT_FAILURE)


def _lookback(parse: Any, text: str) -> Any:
    """--lookback, bounded: a century at most (more overflows the date arithmetic)."""
    from datetime import timedelta

    try:
        delta = parse(text)
    except OverflowError:
        delta = None
    if delta is None or delta > timedelta(days=36_600):
        raise InputError(f"--lookback {text!r} is too long", hint="Use at most 36600d, e.g. 24h")
    return delta


def conflicts(
    integration: Annotated[
        int | None,
        typer.Argument(
            metavar="INTEGRATION",
            min=1,
            help="Only this integration (default: every pull or two-way integration).",
        ),
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, max=90, help="How many days ahead to look.")
    ] = 14,
    as_json: JsonOpt = False,
) -> None:
    """Visits that overlap busy time on the external calendar (pull and two-way).

    Reads the integration's calendar live; calsync's own events are not conflicts. Only times
    and event ids of external events are shown. Turn reading on with
    'calsync direction INTEGRATION two-way'.
    """
    import asyncio
    from datetime import timedelta

    from calsync_cli.engine.conflicts import pull

    results = asyncio.run(
        pull(context.store(), context.settings(), now=context.now(), integration_id=integration,
             horizon=timedelta(days=days), record=False)
    )  # fmt: skip
    data = {"integrations": [r.as_dict() for r in results]}

    def human() -> None:
        if not results:
            output.say(
                "No integration reads its calendar. Turn it on with: calsync direction ID two-way"
            )
            return
        rows = [
            [c.integration, c.visit_id, c.visit_start[:16].replace("T", " "), c.visit_end[11:16],
             f"{c.busy_start[:16].replace('T', ' ')}-{c.busy_end[11:16]}"]
            for r in results for c in r.conflicts
        ]  # fmt: skip
        if rows:
            output.table(None, ["integration", "visit", "visit (UTC)", "until", "busy (UTC)"], rows)
        for r in results:
            if r.error:
                output.say(f"integration {r.integration}: {r.error}")
            elif not r.conflicts:
                output.say(f"integration {r.integration}: no conflicts in the next {days} days")

    output.render(data, as_json, human)
    if any(r.needs_reauth for r in results):
        raise typer.Exit(4)
    if any(r.error for r in results):
        raise typer.Exit(1)


def _render_verify(data: dict[str, Any]) -> None:
    if not data["integrations"]:
        output.say("No pushing integration to verify.")
        return
    output.table(
        "Calendars against the store",
        ["integration", "app", "events", "missing", "stale", "duplicate", "orphaned", "unknown"],
        [[i["integration"], i["app"], i["events"],
          *(i["counts"][k] for k in ("missing", "stale", "duplicate", "orphaned", "unknown"))]
         for i in data["integrations"]],
    )  # fmt: skip
    for i in data["integrations"]:
        for d in i["drift"]:
            if d["kind"] != "unknown" and (output.state.verbose or len(i["drift"]) <= 20):
                what = f" ({', '.join(d['fields'])})" if d["fields"] else ""
                output.say(
                    f"integration {i['integration']}: {d['kind']} visit {d['visit_id']}{what}"
                )
        if i["repaired"]:
            r = i["repaired"]
            output.say(
                f"integration {i['integration']}: deleted {r['deleted']} duplicate events, queued"
                f" {r['queued']} fixes; run 'calsync sync' to apply them"
            )
    if data["drift"] and not data["repaired"]:
        output.say("Drift found. Queue the fixes with: calsync verify --repair")


def verify(
    integration: Annotated[
        int | None,
        typer.Argument(metavar="INTEGRATION", min=1, help="Only this integration (default: all)."),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Queue the fixes: duplicates are deleted down to one now, the rest goes through"
            " the queue for the next 'calsync sync'.",
        ),
    ] = False,
    start: Annotated[
        str | None, typer.Option("--from", help="Start of the window (default: now).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="End of the window (default: 90 days ahead).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare each calendar's calsync events with what the store says should be there.

    Reads the events that carry calsync's tag (upcoming by default) and reports visits that
    are missing, stale (edited outside calsync, or a lost update), duplicated, orphaned (the
    visit was cancelled, reassigned or filtered out) or unknown (tagged, but not ours to judge:
    left alone). Exits 0 when clean and 1 when drift was found, like diff; with --repair it
    queues the fixes and exits 0.
    """
    import asyncio

    from calsync_cli.engine.verify import parse_instant
    from calsync_cli.engine.verify import verify as run_verify

    results = asyncio.run(
        run_verify(
            context.store(), context.settings(), now=context.now(), integration_id=integration,
            start=parse_instant(start, "--from") if start else None,
            end=parse_instant(end, "--to") if end else None, repair=repair,
        )
    )  # fmt: skip
    drift = not all(r.clean for r in results)
    data = {
        "integrations": [r.as_dict() for r in results],
        "drift": drift,
        "repaired": repair,
    }
    output.render(data, as_json, lambda: _render_verify(data))
    if drift and not repair:
        raise typer.Exit(output.EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("sync")(sync)
    app.command("sweep")(sweep)
    app.command("conflicts")(conflicts)
