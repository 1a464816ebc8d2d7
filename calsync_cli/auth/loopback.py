"""A one-shot HTTP listener on 127.0.0.1 that receives the OAuth redirect (RFC 8252 §7.3).

The listener answers the browser with a small page, hands the authorization code to the
waiting caller, and then only answers "already done". It never logs: there is no access log,
and neither the code nor the callback's query string reaches a log line, an exception message
or a page.
"""

from __future__ import annotations

import errno
import html
import secrets
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

    def __init__(self, port: int, app_title: str) -> None:
        super().__init__((LISTEN_HOST, port), _Handler, bind_and_activate=True)
        self.app_title = app_title
        self.expected_state: str | None = None
        self.result: CallbackResult | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()

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
        expected = self.server.expected_state
        states = query.get("state", [])
        state_ok = (
            expected is not None
            and len(states) == 1
            and secrets.compare_digest(states[0].encode("utf-8"), expected.encode("utf-8"))
        )
        if not state_ok:
            result = CallbackResult(
                error=AuthError(
                    "sign-in failed: state mismatch (the answer did not belong to this sign-in)",
                    hint="Run the command again and use the link it prints",
                )
            )
            page = (
                "Sign-in failed",
                "This answer does not belong to the sign-in calsync started. "
                "Return to the terminal and try again.",
            )
        elif query.get("error"):
            code = query["error"][0]
            if code == "access_denied":
                result = CallbackResult(
                    error=AuthError(
                        f"sign-in declined: the {title} account did not grant calsync access",
                        hint="Run the command again and allow access to connect the calendar",
                    )
                )
                page = (
                    "Access not granted",
                    "You declined access, so calsync did not connect "
                    "the calendar. You can close this tab.",
                )
            else:
                safe = "".join(ch for ch in code if ch.isalnum() or ch in "_-.")[:60] or "unknown"
                result = CallbackResult(
                    error=AuthError(
                        f"sign-in failed: {title} answered {safe}",
                        hint="Check the OAuth client settings and run the command again",
                    )
                )
                page = (
                    "Sign-in failed",
                    f"{title} reported an error ({safe}). Return to the terminal for details.",
                )
        elif not query.get("code") or not query["code"][0]:
            result = CallbackResult(
                error=AuthError(
                    f"sign-in failed: {title} sent no authorization code",
                    hint="Run the command again",
                )
            )
            page = (
                "Sign-in failed",
                "The answer carried no authorization code. Return to the terminal and try again.",
            )
        else:
            result = CallbackResult(code=query["code"][0])
            page = (
                "Signed in",
                "calsync received your sign-in. You can close this tab and return to the terminal.",
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

    def __init__(self, port: int = 0, *, app_title: str = "the provider") -> None:
        if not 0 <= port <= 65535:
            raise AuthError(f"port {port} is not a TCP port", hint="Pass --port 1024..65535")
        try:
            self._server = _Server(port, app_title)
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
        self._server.server_close()
