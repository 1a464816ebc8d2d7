"""``calsync sync`` and ``calsync sweep``."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import JsonOpt

PROGRESS_JOBS = 200


def _render_summary(data: dict[str, Any]) -> None:
    if not data["integrations"]:
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


def sync(
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep running until SIGINT/SIGTERM; finish calls in flight, then exit 0.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between rounds with --watch.")
    ] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Push queued work to the external calendars: create, update, delete on cancel.

    Without --watch it processes what is due and exits: 4 when an integration needs signing in
    again, else 1 when a job failed for good in this run, else 0 (work rescheduled for a retry
    is not a failure). Run it from cron every minute, or keep one running with --watch.
    """
    import asyncio

    from calsync_cli.engine.worker import Worker

    with output.progress_bar("syncing", enabled=not as_json) as bar:
        worker = Worker(
            context.store(), context.settings(),
            on_progress=lambda done, total: bar("pushing", done, total) if total > PROGRESS_JOBS else None,
        )  # fmt: skip
        if not watch:
            summary = asyncio.run(worker.run_once())
        else:
            summary = asyncio.run(_watch(worker, interval))
    data = summary.as_dict()
    output.render(data, as_json, lambda: _render_summary(data))
    code = 0 if watch else summary.exit_code
    if code:
        raise typer.Exit(code)


async def _watch(worker: Any, interval: float) -> Any:
    import asyncio
    import signal

    from calsync_cli.engine.worker import RunSummary

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    total = RunSummary()
    output.say(f"Watching for sync work every {interval:g} s; Ctrl-C to stop.")
    try:
        while not stop.is_set():
            round_summary = await worker.run_once()
            for item in round_summary.integrations.values():
                total.merge(item)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    output.say("Stopped.")
    return total


def sweep(
    lookback: Annotated[
        str, typer.Option("--lookback", help="How far back to look, e.g. 24h, 90m, 2d.")
    ] = "24h",
    as_json: JsonOpt = False,
) -> None:
    """Queue visits that should have synced and did not (run it from cron).

    Looks at visits changed within the look-back that belong on an active, unpaused
    integration's calendar in their current form but are not there (missing or stale event, or
    a cancelled visit whose event is still there) and have no queued work. Changes made while
    an integration was paused are never backfilled. Safe to run while 'calsync sync' runs.
    """
    from calsync_cli.engine.sweep import parse_duration
    from calsync_cli.engine.sweep import sweep as run_sweep

    data = run_sweep(
        context.store(), context.settings(), now=context.now(), lookback=parse_duration(lookback)
    )
    output.render(
        data, as_json,
        lambda: output.say(f"Checked {data['checked']} recent visit changes; queued {data['queued']} for sync."),
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("sync")(sync)
    app.command("sweep")(sweep)
