"""``calsync doctor``: checks with ok / warn / fail and the fix."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from calsync_cli.cli import context, output
from calsync_cli.cli.options import JsonOpt

MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skipped": "skip"}


def doctor(
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not try to reach Google and Microsoft.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check this installation: keyring, database, sign-ins, endpoints, cron/systemd, key file.

    One line per check: ok, warn or FAIL, what was found and, unless ok, the fix. Exit 0 when
    nothing failed (warnings allowed), 1 otherwise.
    """
    from calsync_cli.services import doctor as core

    checks = core.run(core.DoctorOptions(offline=offline), now=context.now())
    code = core.exit_code(checks)
    data = {"checks": [c.to_json() for c in checks], "ok": code == 0, "exit_code": code}

    def human() -> None:
        width = max(len(c.name) for c in checks)
        for c in checks:
            line = f"{MARKS[c.status]}  {c.name.ljust(width)}  {c.message}"
            if c.fix and c.status != "ok":
                line += f". Fix: {c.fix}"
            sys.stdout.write(line + "\n")
        failed = sum(c.status == "fail" for c in checks)
        warned = sum(c.status == "warn" for c in checks)
        output.say(f"{len(checks)} checks: {failed} failed, {warned} warnings.")

    output.render(data, as_json, human)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
