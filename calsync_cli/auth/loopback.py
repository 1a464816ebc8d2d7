"""A one-shot HTTP listener on 127.0.0.1 that receives the OAuth redirect (RFC 8252 §7.3).

The listener answers the browser with a small page, hands the authorization code to the
waiting caller, and then only answers "already done". It never logs: there is no access log,
and neither the code nor the callback's query string reaches a log line, an exception message
or a page.

Only a request that carries the expected ``state`` can end the sign-in: any other local request
(a port scanner, another program, a stale tab) gets 400 and the listener keeps waiting for the
real redirect until the timeout. Each connection has ``read_deadline`` seconds to send its
request, whatever pace it sends at, and closing the listener cuts every open connection, so no
client can keep ``connect`` running past ``--timeout``.
"""

from __future__ import annotations

import contextlib
import errno
import html
import io
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from calsync_cli.errors import AuthError

LISTEN_HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 300.0

#: seconds a connection may take to send its whole request (a browser needs milliseconds)
READ_DEADLINE = 5.0
_AADSTS = re.compile(r"AADSTS(\d{4,7})")

TIMEOUT_HINT = (
    "Rerun with a longer --timeout, or with --no-browser and open the printed URL yourself"
)


@dataclass(frozen=True)
class CallbackResult:
    """What the redirect brought: a code, or the AuthError to raise."""

    code: str | None = None
    error: AuthError | None = None

    def __repr__(self) -> str:  # the code stays out of logs
        return f"CallbackResult(code={'<redacted>' if self.code else None}, error={self.error!r})"


def safe_code(text: str) -> str:
    """An OAuth error code reduced to characters that are safe in a message or a page."""
    return "".join(ch for ch in text if ch.isalnum() or ch in "_-.")[:60] or "unknown"


def aadsts_code(description: str | None) -> int | None:
    """The Microsoft Entra error number (``AADSTS50194`` -> 50194) in an error description."""
    found = _AADSTS.search(description or "")
    return int(found.group(1)) if found else None


def state_matches(states: list[str], expected: str | None) -> bool:
    return (
        expected is not None
        and len(states) == 1
        and secrets.compare_digest(states[0].encode("utf-8"), expected.encode("utf-8"))
    )


def provider_error(title: str, code: str, description: str | None) -> AuthError:
    """The sign-in error an ``error=`` answer of the authorization endpoint means.

    Microsoft's codes are read from the ``AADSTS<number>`` of the description (never shown:
    it can quote the app's name); Google's from ``error`` alone.
    """
    aad = aadsts_code(description)
    if aad == 50194:
        return AuthError(
            f"sign-in failed: {title} says the app registration is single-tenant (AADSTS50194), "
            "so it cannot sign in through /common",
            hint="Set CALSYNC_MICROSOFT_AUTHORITY=https://login.microsoftonline.com/<tenant id> "
            "(the Directory (tenant) ID on the app's Overview page in Entra), or change the "
            "registration's supported account types to include other organisations and "
            "personal accounts",
        )
    if aad in (65001, 90094, 90095) or code == "consent_required":
        return AuthError(
            f"sign-in failed: the organisation only lets administrators approve apps, and "
            f"calsync's access to calendars (Calendars.ReadWrite) is not approved yet "
            f"({'AADSTS' + str(aad) if aad else 'consent_required'})",
            hint="Ask a Microsoft Entra administrator to grant admin consent to calsync's app "
            "registration (API permissions > Grant admin consent), then run the command again",
        )
    if code == "access_denied" or aad == 65004:
        return AuthError(
            f"sign-in declined: the {title} account did not grant calsync access",
            hint="Run the command again and allow access to connect the calendar",
        )
    return AuthError(
        f"sign-in failed: {title} answered {safe_code(code)}" + (f" (AADSTS{aad})" if aad else ""),
        hint="Check the OAuth client settings and run the command again",
    )


def interpret(query: dict[str, list[str]], title: str) -> CallbackResult:
    """What a redirect's query (whose state was checked already) means: a code or an error."""
    if query.get("error"):
        descriptions = query.get("error_description") or []
        return CallbackResult(
            error=provider_error(
                title, query["error"][0], descriptions[0] if descriptions else None
            )
        )
    if not query.get("code") or not query["code"][0]:
        return CallbackResult(
            error=AuthError(
                f"sign-in failed: {title} sent no authorization code",
                hint="Run the command again",
            )
        )
    return CallbackResult(code=query["code"][0])


class _DeadlineReader(io.RawIOBase):
    """A connection's reading side that gives up at a fixed instant, however the bytes come:
    each read waits at most until the deadline (a client trickling one byte a second would
    otherwise reset a per-read timeout forever)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _page(title: str, text: str, *, ok: bool) -> bytes:
    colour = "#1a7f37" if ok else "#b42318"
    body = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>calsync: {html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:34em;margin:4em auto;"
        "padding:0 1em;line-height:1.5}"
        f"h1{{font-size:1.4em;color:{colour}}}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>\n"
    )
    return body.encode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for handlers; they time out quickly
    block_on_close = True
    allow_reuse_address = False  # "port already in use" must be reported, not papered over

    def __init__(self, port: int, app_title: str, read_deadline: float) -> None:
        super().__init__((LISTEN_HOST, port), _Handler, bind_and_activate=True)
        self.app_title = app_title
        self.read_deadline = read_deadline
        self.expected_state: str | None = None
        self.result: CallbackResult | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()
        #: connections still sending their request (a response is small and never blocks)
        self.connections: set[socket.socket] = set()

    def cut_connections(self) -> None:
        """Shut every connection still sending its request, so no handler thread outlives the
        listener; one already answering finishes its page."""
        with self.lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a broken browser connection is not news.
        return

    def finish(self, result: CallbackResult) -> bool:
        """Record the first result; False when one was recorded already."""
        with self.lock:
            if self.result is not None:
                return False
            self.result = result
        self.done.set()
        return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 2  # an idle connection (a browser's preconnect) must not hold up shutdown
    server_version = "calsync"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # no access log: the request line carries the authorization code

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + self.server.read_deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))
        with self.server.lock:
            self.server.connections.add(self.connection)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        # The request line and headers are read (a GET has no body): the handler only answers.
        with self.server.lock:
            self.server.connections.discard(self.connection)
        return ok

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        parts = urlsplit(self.path)
        if parts.path == "/favicon.ico":
            self._send(HTTPStatus.NOT_FOUND, b"", content_type="image/x-icon")
            return
        if parts.path not in ("/", ""):
            self._send_page(HTTPStatus.NOT_FOUND, "Not found", "This address has nothing here.")
            return
        query = parse_qs(parts.query, keep_blank_values=True)
        if self.server.result is not None:
            self._send_page(
                HTTPStatus.OK,
                "Already done",
                "This sign-in has already been handled. You can close this tab.",
                ok=True,
            )
            return
        if not query:
            # Not a redirect (someone opened the bare address): keep waiting for the real one.
            self._send_page(
                HTTPStatus.BAD_REQUEST,
                "Waiting for sign-in",
                f"This address receives the answer from {self.server.app_title} after you sign "
                "in. Use the sign-in link that calsync printed.",
            )
            return
        self._callback(query)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._send_page(HTTPStatus.METHOD_NOT_ALLOWED, "Not allowed", "Use the sign-in link.")

    def _callback(self, query: dict[str, list[str]]) -> None:
        title = self.server.app_title
        if not state_matches(query.get("state", []), self.server.expected_state):
            # Not the answer to this sign-in (another program, a stale tab, a forgery): refuse
            # it and keep waiting for the real redirect; it must not end the sign-in.
            self._send_page(
                HTTPStatus.BAD_REQUEST,
                "Not this sign-in",
                "This answer does not belong to the sign-in calsync is waiting for. Use the "
                "sign-in link calsync printed most recently.",
            )
            return
        result = interpret(query, title)
        if result.error is None:
            page = (
                "Signed in",
                "calsync received your sign-in. You can close this tab and return to the terminal.",
            )
        elif result.error.message.startswith("sign-in declined"):
            page = (
                "Access not granted",
                "You declined access, so calsync did not connect "
                "the calendar. You can close this tab.",
            )
        elif query.get("error"):
            page = (
                "Sign-in failed",
                f"{title} reported an error ({safe_code(query['error'][0])}). "
                "Return to the terminal for details.",
            )
        else:
            page = (
                "Sign-in failed",
                "The answer carried no authorization code. Return to the terminal and try again.",
            )
        if not self.server.finish(result):
            self._send_page(
                HTTPStatus.OK,
                "Already done",
                "This sign-in has already been handled. You can close this tab.",
                ok=True,
            )
            return
        ok = result.error is None
        self._send_page(HTTPStatus.OK if ok else HTTPStatus.BAD_REQUEST, *page, ok=ok)

    def _send_page(self, status: HTTPStatus, title: str, text: str, *, ok: bool = False) -> None:
        self._send(status, _page(title, text, ok=ok), content_type="text/html; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, *, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class LoopbackListener:
    """Listen on 127.0.0.1:``port`` (0: a free port) for one OAuth redirect.

    Use as a context manager; ``port`` is known once constructed. ``expect(state)`` arms it,
    ``wait(timeout)`` returns the code or raises ``AuthError``.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        app_title: str = "the provider",
        read_deadline: float = READ_DEADLINE,
    ) -> None:
        if not 0 <= port <= 65535:
            raise AuthError(f"port {port} is not a TCP port", hint="Pass --port 1024..65535")
        try:
            self._server = _Server(port, app_title, read_deadline)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AuthError(
                    f"port {port} on 127.0.0.1 is already in use",
                    hint="Choose another with --port, or leave --port out for a free one",
                ) from None
            raise AuthError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
                hint="Choose another with --port, or leave --port out for a free one",
            ) from None
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="calsync-oauth-listener",
            daemon=True,
        )
        self._started = False
        self._closed = False

    def __enter__(self) -> LoopbackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, state: str) -> None:
        """Arm the listener for the redirect that carries ``state`` and start serving."""
        self._server.expected_state = state
        if not self._started:
            self._started = True
            self._thread.start()

    def wait(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 0.1,
    ) -> str:
        """Block until the redirect arrives; return its code or raise ``AuthError``.

        Waits in short ticks so Ctrl-C interrupts it; ``clock`` measures the timeout.
        """
        deadline = clock() + timeout
        while not self._server.done.wait(max(0.0, min(tick, deadline - clock()))):
            if clock() >= deadline:
                raise AuthError(f"no sign-in within {timeout:g} s", hint=TIMEOUT_HINT)
        result = self._server.result
        assert result is not None
        if result.error is not None:
            raise result.error
        assert result.code is not None
        return result.code

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._server.shutdown()
            self._thread.join()
        # Handler threads still reading a slow request end now, not at their own pace.
        self._server.cut_connections()
        self._server.server_close()
