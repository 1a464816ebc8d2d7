"""A loopback stand-in for Google Calendar v3, Microsoft Graph and both OAuth servers.

It answers the paths, methods, JSON shapes, status codes and error bodies that the providers
document, for what calsync uses, and it can inject faults (errors, dropped connections,
latency, expired or revoked grants). The test suite, ``calsync demo`` and
``calsync sandbox serve`` run it::

    with Sandbox() as sb:
        sb.add_account("google", "dr.jones@example.com")
        os.environ.update(sb.env())
        ...

URL layout (below ``sb.url``): ``/google/o/oauth2/v2/auth``, ``/google/token``,
``/google/revoke``, ``/google/calendar/v3``, ``/google/batch/calendar/v3``;
``/microsoft/common/oauth2/v2.0/{authorize,token,devicecode}`` (any tenant in place of
``common``), ``/microsoft/devicelogin`` (where a user code is entered), ``/microsoft/graph/v1.0``;
and the control API under ``/_sandbox`` (see ``calsync_cli.sandbox._control``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from calsync_cli.sandbox._server import Faults, Sandbox
from calsync_cli.sandbox._state import (
    GOOGLE_CLIENT_ID,
    GOOGLE_CLIENT_SECRET,
    MICROSOFT_CLIENT_ID,
    Account,
)

__all__ = [
    "GOOGLE_CLIENT_ID",
    "GOOGLE_CLIENT_SECRET",
    "MICROSOFT_CLIENT_ID",
    "Account",
    "Faults",
    "Sandbox",
    "run_foreground",
]

DEMO_ACCOUNTS = {
    "google": "demo.clinician@gmail.example",
    "outlook": "demo.clinician@outlook.example",
}


def run_foreground(
    host: str,
    port: int,
    *,
    latency: float = 0.0,
    announce: Callable[[str], None],
    outlook_mailbox_concurrency: int = 4,
    auto_approve: bool = True,
    stop_event: threading.Event | None = None,
) -> None:
    """Serve the sandbox until KeyboardInterrupt (or ``stop_event``), seeding demo accounts.

    ``announce`` receives one line at a time: the URL, the demo accounts and the
    ``export CALSYNC_...=...`` lines to point calsync at the sandbox.
    """
    sb = Sandbox(
        host=host,
        port=port,
        latency=latency,
        outlook_mailbox_concurrency=outlook_mailbox_concurrency,
        auto_approve=auto_approve,
    )
    sb.start()
    try:
        for app, email in DEMO_ACCOUNTS.items():
            if not sb.accounts(app):
                sb.add_account(app, email, calendars=[{"name": "Holidays", "writable": False}])
        announce(f"calsync sandbox listening on {sb.url}")
        for acct in sb.accounts():
            announce(f"account {acct.app}: {acct.email}")
        announce("point calsync at it with:")
        for key, value in sb.env().items():
            announce(f"export {key}={value}")
        waiter = stop_event or threading.Event()
        try:
            while not waiter.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        sb.stop()
