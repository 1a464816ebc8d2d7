"""``calsync demo`` and ``calsync sandbox serve``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from calsync_cli.cli import output
from calsync_cli.cli.integrations import status_table
from calsync_cli.cli.options import JsonOpt

if TYPE_CHECKING:
    from calsync_cli.services.demo import DemoResult

sandbox = typer.Typer(
    help="The local provider sandbox: fake Google and Microsoft services.", no_args_is_help=True
)


def _show(result: DemoResult) -> None:
    totals = result.sync.totals()
    output.say(
        f"Synced {totals['pushed']} events ({result.elapsed:.1f} s in all): "
        + ", ".join(
            f"{s.pushed} to integration {s.id} ({s.app})" for s in result.sync.integrations.values()
        )
        + "."
    )
    output.say("")
    status_table(result.integrations)
    day = result.day
    if day is not None:
        for row in result.integrations:
            events = [e for e in result.events_on(day) if e.integration == row["id"]]
            title = (
                f"Integration {row['id']}: {row['provider_id']}'s {row['app']} calendar "
                f"({row['account']}), {day:%A %Y-%m-%d}, read back from the sandbox"
            )
            output.table(
                title,
                ["time", "title", "location"],
                [
                    [f"{e.start:%H:%M}-{e.end:%H:%M} {e.start.tzname()}", e.title, e.location]
                    for e in events
                ]
                or [["", "(no visits that day)", ""]],
            )
    output.say("What next:")
    output.say(
        "  Hide patient names from an integration's events: calsync filters set ID "
        "--no-patient-name   (the title becomes [Main Street Practice] - Follow Up)"
    )
    output.say(
        "  Your own data: calsync practices|providers|visits import FILE   (samples: "
        "calsync_cli/data/)"
    )
    output.say(
        "  A real calendar: set CALSYNC_GOOGLE_CLIENT_ID and CALSYNC_GOOGLE_CLIENT_SECRET (README, "
        "Configuration), then: calsync connect google --provider dr-lee"
    )
    if result.kept:
        output.say(
            f"  Look around the kept demo database: CALSYNC_DB_URL={result.db_url} calsync "
            "status   (the sandbox and its tokens are gone, so it cannot sync any more)"
        )


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo's temporary directory.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run everything end to end on the built-in sandbox: no account needed.

    In a temporary directory, with fake Google and Microsoft services on 127.0.0.1: import the
    sample practices, providers and a week of visits (this week), connect dr-lee to Google and
    dr-patel to Outlook through the real sign-in, sync, and show the events that arrived.
    Your own configuration, database and keyring are not touched.
    """
    from calsync_cli.services.demo import DemoHooks, run_demo

    say = (lambda text: None) if as_json else output.say
    with output.progress_bar("demo", enabled=not as_json) as bar:
        hooks = DemoHooks(step=say, progress=lambda done, total: bar("syncing", done, total))
        result = run_demo(keep=keep, hooks=hooks)
    if keep:
        output.say(f"Kept the demo's directory: {result.directory}")
    from calsync_cli.cli.sync import exit_code_of_run

    data = result.as_dict()
    data["sync"]["exit_code"] = exit_code_of_run(result.sync)
    output.render(data, as_json, lambda: _show(result))


@sandbox.command("serve")
def sandbox_serve(
    port: Annotated[
        int,
        typer.Option(
            "--port", min=0, max=65535, help="Port on 127.0.0.1 (default: any free port)."
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run the provider sandbox in the foreground until Ctrl-C (or SIGTERM).

    Prints the address, the demo accounts and the CALSYNC_* variables that point calsync at
    it (on stderr; with --json, {"url", "env"} on stdout once it is listening).
    """
    import contextlib
    import errno
    import signal
    import threading

    from calsync_cli.errors import CalsyncError
    from calsync_cli.sandbox import Sandbox, run_foreground

    prefix = "calsync sandbox listening on "
    state: dict[str, Any] = {"url": None, "expected": None, "env": {}, "printed": False}

    def announce(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if not as_json or state["printed"]:
            return
        if line.startswith(prefix):
            state["url"] = line[len(prefix) :].strip()
            bound = int(state["url"].rsplit(":", 1)[1])
            # the names to wait for (env() only formats the URL; nothing is started)
            state["expected"] = set(Sandbox(port=bound).env())
        elif line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            state["env"][key] = value
        if state["expected"] is not None and set(state["env"]) >= state["expected"]:
            state["printed"] = True
            output.emit_json({"url": state["url"], "env": state["env"]})

    # SIGTERM (a service manager, `kill`) stops it as cleanly as Ctrl-C does.
    stop = threading.Event()
    previous: Any = None
    with contextlib.suppress(ValueError):  # not the main thread (an embedder): Ctrl-C only
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        run_foreground("127.0.0.1", port, announce=announce, stop_event=stop)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the serving loop caught it: still a normal stop
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CalsyncError(
                f"port {port} on 127.0.0.1 is already in use",
                hint="Choose another with --port, or --port 0 for any free port",
            ) from None
        raise CalsyncError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror or type(exc).__name__}",
            hint="Choose another with --port",
        ) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.add_typer(sandbox, name="sandbox")
