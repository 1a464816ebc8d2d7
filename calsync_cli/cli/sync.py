"""``calsync sync`` and ``calsync sweep``."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import JsonOpt

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
    as_json: JsonOpt = False,
) -> None:
    """Push queued work to the external calendars: create, update, delete on cancel.

    Without --watch it processes what is due and exits: 4 when an integration needs signing in
    again, else 1 when a job failed for good in this run, else 0 (work rescheduled for a retry
    is not a failure). Run it from cron every minute, or keep one running with --watch.
    """
    import asyncio

    from calsync_cli.engine.worker import Worker

    if interval is not None and not watch:
        from calsync_cli.errors import InputError

        raise InputError("--interval applies only with --watch", hint="Add --watch, or drop it")
    interval = 10 if interval is None else interval
    with output.progress_bar("syncing", enabled=not as_json) as bar:
        worker = Worker(
            context.store(), context.settings(),
            on_progress=lambda done, total: bar("pushing", done, total) if total > PROGRESS_JOBS else None,
        )  # fmt: skip
        if not watch:
            summary = asyncio.run(worker.run_once())
        else:
            summary = asyncio.run(_watch(worker, interval))
    pulled = [] if watch else asyncio.run(_pull())
    data = summary.as_dict()
    data["pull"] = [p.as_dict() for p in pulled]
    if any(p.needs_reauth for p in pulled):
        data["exit_code"] = 4
    output.render(data, as_json, lambda: _render_summary(data))
    code = 0 if watch else data["exit_code"]
    if code:
        raise typer.Exit(code)


async def _pull() -> list[Any]:
    """The pull half of a sync: read busy time of unpaused pull and two-way integrations."""
    from calsync_cli.engine.conflicts import pull

    results = await pull(context.store(), context.settings(), now=context.now())
    return [r for r in results if not _paused(r.integration)]


def _paused(integration_id: int) -> bool:
    from calsync_cli.services.integrations import get

    with context.store().read() as session:
        return bool(get(session, integration_id).paused)


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

    from calsync_cli.engine.keepalive import keep_alive
    from calsync_cli.engine.sweep import parse_duration
    from calsync_cli.engine.sweep import sweep as run_sweep

    data = run_sweep(
        context.store(),
        context.settings(),
        now=context.now(),
        lookback=_lookback(parse_duration, lookback),
        retry_failed=retry_failed,
    )
    data["tokens"] = asyncio.run(keep_alive(context.store(), context.settings(), now=context.now()))

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
        raise typer.Exit(4)


def _lookback(parse: Any, text: str) -> Any:
    """--lookback, bounded: a century at most (more overflows the date arithmetic)."""
    from datetime import timedelta

    from calsync_cli.errors import InputError

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


def register(app: typer.Typer) -> None:
    app.command("sync")(sync)
    app.command("sweep")(sweep)
    app.command("conflicts")(conflicts)
