"""``calsync connect``, ``calendars list|select`` and ``disconnect``."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import IntegrationArg, JsonOpt

if TYPE_CHECKING:
    from calsync_cli.auth import DeviceCode, RemoteSignIn
    from calsync_cli.providers.base import Calendar

#: pauses between device-code polls, and measures --timeout (tests replace them: no sleeping)
device_wait = time.sleep
sign_in_clock = time.monotonic


class App(StrEnum):
    google = "google"
    outlook = "outlook"


calendars = typer.Typer(
    help="The calendars of a connected account, and which one visits go to.", no_args_is_help=True
)


def announce_url(url: str) -> None:
    """Print the sign-in URL on a line of its own (stderr), whatever else happens."""
    sys.stderr.write("Open this address in a browser to sign in:\n")
    sys.stderr.write(url + "\n")
    sys.stderr.flush()


def _json_line(data: dict[str, Any]) -> None:
    """One JSON object on a line of its own on stderr, for a script to pick up and forward."""
    sys.stderr.write(json.dumps(data, separators=(",", ":")) + "\n")
    sys.stderr.flush()


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def announce_device_code(code: DeviceCode, *, provider_id: str, as_json: bool) -> None:
    """Where to enter the code, in plain words (stderr); with --json also as a JSON line."""
    if as_json:
        _json_line({**code.to_json(), "provider_id": provider_id})
    sys.stderr.write(
        f"To connect {provider_id}'s Outlook calendar, open {code.verification_uri} in a web "
        f"browser on any computer or phone, enter the code {code.user_code} and sign in with "
        f"the Microsoft account whose calendar should show the visits. The code works for "
        f"{_minutes(code.expires_in)}.\n"
        "Waiting for the sign-in (Ctrl-C to stop)...\n"
    )
    sys.stderr.flush()


def remote_steps(prompt: RemoteSignIn) -> list[str]:
    """What the clinician does, for someone who is not technical."""
    account = "Google" if prompt.app == "google" else "Microsoft"
    return [
        f"Open the sign-in link in your web browser and sign in with the {account} account "
        "whose calendar should show your visits.",
        "Allow calsync's access (if there are boxes to tick, tick them all).",
        "Your browser then shows an error page such as 'This site can't be reached' or "
        "'Unable to connect'. That is expected: nothing is broken.",
        "Copy the whole address from the browser's address bar (it starts with "
        f"{prompt.redirect_uri.rstrip('/')}/) and send it back right away: it works only once "
        "and only for a few minutes.",
    ]


def announce_remote(prompt: RemoteSignIn, *, provider_id: str, as_json: bool) -> None:
    """The sign-in link and the clinician's instructions (stderr); with --json also as one
    JSON line a script can forward."""
    steps = remote_steps(prompt)
    if as_json:
        instructions = " ".join(f"{n}. {step}" for n, step in enumerate(steps, 1))
        _json_line({**prompt.to_json(), "provider_id": provider_id, "instructions": instructions})
    sys.stderr.write(
        "Send this sign-in link to the clinician (or open it yourself on any computer):\n"
        f"{prompt.url}\n"
        "Instructions for the clinician:\n"
        + "".join(f"  {n}. {step}\n" for n, step in enumerate(steps, 1))
        + "Then paste the address they send back here (standard input) and press Enter.\n"
    )
    sys.stderr.flush()


def read_answer(timeout: float) -> str | None:
    """One line from standard input (with a prompt on a terminal), or None at end of input or
    after ``timeout`` seconds."""
    if stdin_is_terminal():
        sys.stderr.write("Address: ")
        sys.stderr.flush()
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        try:
            lines.append(sys.stdin.readline())
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        finally:
            done.set()

    # A daemon thread: a prompt nobody answers must not keep the process alive at the timeout.
    threading.Thread(target=reader, name="calsync-read-answer", daemon=True).start()
    if not done.wait(timeout):
        return None
    return lines[0] if lines and lines[0] else None


def can_open_browser() -> bool:
    """False where no browser can show up: a Linux/BSD session without a display."""
    if sys.platform in ("darwin", "win32", "cygwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def interactive() -> bool:
    """Whether someone can be asked: stdin and stderr are terminals."""
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def open_browser(url: str) -> bool:
    import webbrowser

    return webbrowser.open(url)


def pick_calendar(writable: Sequence[Calendar]) -> Calendar | None:
    """Ask which writable calendar visits go to (default: the primary)."""
    output.say("Which calendar should visits go to?")
    for n, cal in enumerate(writable, 1):
        output.say(f"  {n}. {cal.name}{' (primary)' if cal.primary else ''}  [{cal.id}]")
    default = next((n for n, c in enumerate(writable, 1) if c.primary), 1)
    while True:
        answer = typer.prompt("Calendar number", default=default, type=int, err=True)
        if 1 <= answer <= len(writable):
            return writable[answer - 1]
        output.say(f"Choose a number from 1 to {len(writable)}.")


def connect(
    app_name: Annotated[App, typer.Argument(metavar="google|outlook", help="The calendar app.")],
    provider: Annotated[
        str,
        typer.Option(
            "--provider", help="The provider (clinician) id whose visits this calendar receives."
        ),
    ],
    calendar: Annotated[
        str | None,
        typer.Option(
            "--calendar",
            metavar="CAL_ID",
            help="The calendar to use (default: ask, or leave Pending).",
        ),
    ] = None,
    no_browser: Annotated[
        bool,
        typer.Option("--no-browser", help="Do not open a browser; open the printed URL yourself."),
    ] = False,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="Loopback port for the sign-in redirect (default: any free port).",
        ),
    ] = 0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the sign-in.")
    ] = 300,
    device_code: Annotated[
        bool,
        typer.Option(
            "--device-code",
            help="Outlook only: print an address and a code to enter on any device, and wait "
            "until the clinician approves (no redirect, no browser here).",
        ),
    ] = False,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Sign in on another machine: print the sign-in link, then read back (standard "
            "input) the address the clinician's browser ended on.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Sign in to Google or Microsoft and connect a clinician's calendar.

    Three ways to sign in: in a browser on this machine (the default: prints the sign-in
    address and opens it unless --no-browser or there is no display), --device-code (Outlook:
    a code entered on any device), or --remote (a link the clinician opens anywhere; they send
    back the address their browser ends on). Connecting a provider that already has an
    integration for this app signs that integration in again. Without --calendar calsync asks
    on a terminal, else the integration stays Pending until 'calsync calendars select'.
    """
    from calsync_cli.errors import InputError
    from calsync_cli.services import connections, integrations

    if device_code and remote:
        raise InputError(
            "--device-code and --remote are two different ways to sign in", hint="Choose one"
        )
    if device_code and port:
        raise InputError("--port has no use with --device-code", hint="Leave --port out")
    method: connections.SignInMethod = (
        "device_code" if device_code else "remote" if remote else "browser"
    )
    opts = connections.ConnectOptions(
        app=app_name.value,
        provider_id=provider,
        calendar_id=calendar,
        method=method,
        port=port,
        timeout=timeout,
        open_browser=None if no_browser or not can_open_browser() else open_browser,
        announce_url=announce_url,
        announce_device_code=lambda code: announce_device_code(
            code, provider_id=provider, as_json=as_json
        ),
        announce_remote=lambda prompt: announce_remote(
            prompt, provider_id=provider, as_json=as_json
        ),
        read_answer=lambda: read_answer(timeout),
        wait=lambda seconds: device_wait(seconds),
        clock=lambda: sign_in_clock(),
        notify=output.say,
        choose=pick_calendar if calendar is None and interactive() else None,
    )
    result = connections.connect(context.settings(), context.store(), opts, now=context.now)
    iid = result.integration_id
    row = integrations.status_rows(context.store(), iid)[0]

    # These lines go to stderr with --json too: what happened, and what to do next.
    if result.created:
        verb = "Connected"
    elif result.previous_status == "Disconnected":
        verb = "Reconnected"
    else:
        verb = "Signed in again:"
    output.say(f"{verb} integration {iid} ({app_name.value}, {provider}) as {result.account}.")
    if result.status == "Active":
        output.say(f"Visits go to calendar {result.calendar_name} [{result.calendar_id}].")
        if result.jobs_queued:
            output.say(
                f"Queued {result.jobs_queued} upcoming visits; run 'calsync sync' to push them."
            )
    else:
        output.say(
            f"Status Pending: choose a calendar with 'calsync calendars select {iid} CAL_ID' "
            f"(list them with 'calsync calendars list {iid}')."
        )
    if result.created:
        output.say(f"To hide patient names: calsync filters set {iid} --no-patient-name")

    def human() -> None:
        sys.stdout.write(f"{iid}\n")  # the id, for scripts

    output.render(row, as_json, human)


@calendars.command("list")
def calendars_list(integration: IntegrationArg, as_json: JsonOpt = False) -> None:
    """List the account's calendars: id, name, primary, writable."""
    from calsync_cli.services import connections

    ref, cals = connections.list_calendars(
        context.settings(), context.store(), integration, now=context.now
    )
    data: dict[str, Any] = {
        "calendars": [connections.calendar_json(c) for c in cals],
        "integration": integration,
        "selected": ref.calendar_id,
    }

    def human() -> None:
        output.table(
            f"Calendars of integration {integration} ({ref.account or ref.app})",
            ["", "id", "name", "primary", "writable"],
            [
                [
                    "*" if c.id == ref.calendar_id else "",
                    c.id,
                    c.name,
                    "yes" if c.primary else "",
                    "yes" if c.writable else "no (read-only)",
                ]
                for c in cals
            ],
        )
        if ref.calendar_id is None:
            output.say(f"No calendar chosen yet: calsync calendars select {integration} CAL_ID")
        else:
            output.say("* the calendar visits go to")

    output.render(data, as_json, human)


@calendars.command("select")
def calendars_select(
    integration: IntegrationArg,
    calendar_id: Annotated[
        str, typer.Argument(metavar="CAL_ID", help="A calendar id from 'calsync calendars list'.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Choose the calendar visits go to.

    Upcoming visits are queued again, so the next sync moves their events to this calendar.
    """
    from calsync_cli.services import connections

    result = connections.select_calendar(
        context.settings(), context.store(), integration, calendar_id, now=context.now
    )
    data = {
        "integration": integration,
        "calendar_id": result.calendar.id,
        "calendar_name": result.calendar.name,
        "previous_calendar_id": result.previous_calendar_id,
        "status": result.status,
        "paused": result.paused,
        "jobs_queued": result.jobs_queued,
    }

    def human() -> None:
        output.say(
            f"Integration {integration} now sends visits to {result.calendar.name} "
            f"[{result.calendar.id}]; status {result.status}"
            + (" (paused)" if result.paused else "")
            + "."
        )
        if result.jobs_queued:
            output.say(f"Queued {result.jobs_queued} upcoming visits for the next sync.")

    output.render(data, as_json, human)


def disconnect(
    integration: IntegrationArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Before revoking, delete calsync's events of upcoming visits from the "
            "calendar (past visits' events stay).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Revoke the tokens and stop syncing; events already synced stay (unless --purge).

    Google's revocation withdraws the grant the account gave calsync's client project (other
    integrations of that account must reconnect); Microsoft has no single-token revocation,
    so calsync deletes its tokens and says where to remove the app's access. With --purge,
    calsync first deletes its events of upcoming visits (visit end after now); if some cannot
    be deleted the integration stays connected and the command says what is left (exit 1).
    """
    from calsync_cli.errors import CalsyncError, InputError
    from calsync_cli.services import connections

    store = context.store()
    ref = connections.load(store, integration)
    if ref.status != "Disconnected" and not yes:
        if not stdin_is_terminal():
            raise InputError(
                f"disconnecting integration {integration} needs confirmation",
                hint="pass --yes to disconnect non-interactively",
            )
        where = ref.calendar_name or ref.calendar_id or "no calendar"
        fate = (
            "Events of upcoming visits are deleted from the calendar; past ones stay"
            if purge
            else "Synced events stay on the calendar"
        )
        question = (
            f"Disconnect integration {integration} ({ref.app}, {ref.provider_id}, "
            f"{ref.account or '?'}, {where})? {fate}"
        )
        if not typer.confirm(question, default=False, err=True):
            raise CalsyncError("not disconnected; nothing changed")
    result = connections.disconnect(
        context.settings(), store, integration, now=context.now, purge=purge
    )

    def human() -> None:
        if result.revocation is None:
            output.say(result.message)
            return
        if result.purge is not None:
            p = result.purge
            removed = p.deleted + p.already_gone
            output.say(
                f"Deleted {removed} events of upcoming visits"
                + (f" ({p.already_gone} were already gone)" if p.already_gone else "")
                + f"; {p.past_kept} events of past visits stay."
            )
            kept = "events of past visits stay on the calendar"
        else:
            kept = "synced events stay on the calendar"
        output.say(
            f"Disconnected integration {integration}: dropped {result.jobs_dropped} queued "
            f"jobs; {kept}."
        )
        output.say(result.message)
        for other in result.also_affected:
            output.warn(
                f"integration {other} used the same Google grant and needs reconnecting: "
                "see calsync status"
            )

    output.render(result.to_json(), as_json, human)


def register(app: typer.Typer) -> None:
    app.command("connect")(connect)
    app.add_typer(calendars, name="calendars")
    app.command("disconnect")(disconnect)
