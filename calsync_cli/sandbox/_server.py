"""The loopback HTTP server and the ``Sandbox`` object that owns it."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from calsync_cli.sandbox import _control
from calsync_cli.sandbox._core import DropConnection, Request, Response, json_response
from calsync_cli.sandbox._google import GoogleService
from calsync_cli.sandbox._microsoft import MicrosoftService
from calsync_cli.sandbox._oauth_state import TokenFault
from calsync_cli.sandbox._state import (
    GOOGLE_CLIENT_ID,
    GOOGLE_CLIENT_SECRET,
    MICROSOFT_CLIENT_ID,
    Account,
    ConsentChoice,
    FailSpec,
    State,
    Stats,
    check_app,
)

MAX_BODY = 64 * 1024 * 1024


class Faults:
    """Fault injection for one account's API calls."""

    def __init__(self, state: State, app: str, email: str) -> None:
        self._state = state
        self._app = check_app(app)
        self._email = email
        state.find(self._app, email)  # raises KeyError for an unknown account

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> Faults:
        """The next ``n`` API calls answer ``status`` with the provider's error body."""
        with self._state.lock:
            rec = self._state.find(self._app, self._email)
            rec.fail_queue.extend(FailSpec(status, reason, retry_after) for _ in range(n))
        return self

    def drop_next(self, n: int = 1) -> Faults:
        """The next ``n`` API calls get their connection closed without any response."""
        with self._state.lock:
            self._state.find(self._app, self._email).drops += n
        return self

    def latency(self, seconds: float) -> Faults:
        """Extra latency for each of this account's API calls."""
        with self._state.lock:
            self._state.find(self._app, self._email).latency = max(0.0, float(seconds))
        return self

    def expire_access_tokens(self) -> Faults:
        """Every access token issued so far for this account now answers 401."""
        self._state.expire_access_tokens(self._app, self._email)
        return self

    def revoke_grant(self) -> Faults:
        """The account withdraws every grant: refreshes answer invalid_grant, tokens 401."""
        self._state.revoke_grants(self._app, self._email)
        return self

    def invalidate_sync_tokens(self) -> Faults:
        """Google: every sync token handed out so far answers 410 fullSyncRequired."""
        with self._state.lock:
            self._state.find(self._app, self._email).sync_epoch += 1
        return self

    def clear(self) -> Faults:
        """Forget pending failures, drops, extra latency and the write-burst limit."""
        with self._state.lock:
            rec = self._state.find(self._app, self._email)
            rec.fail_queue.clear()
            rec.drops = 0
            rec.latency = 0.0
            rec.write_burst = None
        return self

    # -- what the account's owner does outside calsync, and account-level limits --------------

    def _calendar(self, calendar_id: str) -> Any:
        rec = self._state.find(self._app, self._email)
        cal = rec.calendars.get(calendar_id)
        if cal is None:
            raise KeyError(f"no calendar {calendar_id} in {self._app} account {self._email}")
        return rec, cal

    def delete_calendar(self, calendar_id: str) -> Faults:
        """The owner deletes (or unsubscribes from) the calendar: it answers 404 from now on."""
        with self._state.lock:
            rec, cal = self._calendar(calendar_id)
            del rec.calendars[cal.id]
        return self

    def set_writable(self, calendar_id: str, writable: bool) -> Faults:
        """The calendar's owner grants or withdraws the account's write access."""
        with self._state.lock:
            self._calendar(calendar_id)[1].writable = bool(writable)
        return self

    def delete_in_ui(self, calendar_id: str, event_id: str, *, purge: bool = False) -> Faults:
        """Google: the owner deletes the event in the Calendar UI (``purge``: and empties the
        bin). Its id stays taken (insert: 409 duplicate) but it cannot be restored (PUT/PATCH:
        403, or 404 once purged), as google-api-python-client#846 and
        google-api-ruby-client#1811 report."""
        with self._state.lock:
            _, cal = self._calendar(calendar_id)
            ev = cal.events.get(event_id)
            if ev is None:
                raise KeyError(f"no event {event_id}")
            if purge:
                del cal.events[event_id]
                cal.purged.add(event_id)
            else:
                ev.deleted = ev.ui_deleted = True
                ev.data["status"] = "cancelled"
                ev.mod = self._state.tick()
        return self

    def move_event(self, event_id: str, to_calendar: str) -> str:
        """Outlook: the user moves the event to another calendar of the mailbox. Its REST id
        changes; its immutable id does not (Obtain immutable identifiers for Outlook resources).
        Answers the new REST id."""
        from calsync_cli.sandbox._state import graph_event_ids

        with self._state.lock:
            rec = self._state.find(self._app, self._email)
            target = rec.calendars.get(to_calendar)
            if target is None:
                raise KeyError(f"no calendar {to_calendar}")
            for cal in rec.calendars.values():
                for key, ev in list(cal.events.items()):
                    if event_id in (key, ev.rest_id) and not ev.deleted:
                        del cal.events[key]
                        ev.rest_id = graph_event_ids()[1]
                        ev.mod = self._state.tick()
                        target.events[key] = ev
                        return ev.rest_id
        raise KeyError(f"no event {event_id}")

    def forget_transactions(self) -> Faults:
        """Outlook: every transactionId recorded so far is past Graph's (undocumented) window."""
        with self._state.lock:
            rec = self._state.find(self._app, self._email)
            for cal in rec.calendars.values():
                for ev in cal.events.values():
                    ev.txn_at = float("-inf")
        return self

    def calendar_burst(self, writes: int | None) -> Faults:
        """Google: at most ``writes`` writes to one calendar per batch request; the rest answer
        403 rateLimitExceeded, Google's answer when a user writes "to a single calendar in quick
        succession" (Calendar API, Manage quotas: operational limits; Handle API errors: 403
        rateLimitExceeded). None lifts it."""
        with self._state.lock:
            self._state.find(self._app, self._email).write_burst = writes
        return self


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a dropped or killed worker) is normal here: no
        traceback on stderr for it. Anything else is still printed."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "calsync-sandbox/1"
    disable_nagle_algorithm = True
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send(json_response(400, {"error": "bad request body"}))
            return
        req = Request.from_target(self.command, self.path, dict(self.headers.items()), body)
        try:
            resp = self.server.sandbox._dispatch(req)
        except DropConnection:
            self.close_connection = True
            return
        except Exception as exc:  # a sandbox bug: answer 500 rather than hang the client
            resp = json_response(
                500, {"error": {"code": 500, "message": f"sandbox error: {type(exc).__name__}"}}
            )
        self._send(resp)

    def _send(self, resp: Response) -> None:
        try:
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            if resp.status not in (204, 304):
                self.send_header("Content-Length", str(len(resp.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if resp.body and resp.status not in (204, 304):
                self.wfile.write(resp.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class Sandbox:
    """Fake Google Calendar, Microsoft Graph and both OAuth servers, on loopback."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        outlook_mailbox_concurrency: int = 4,
        auto_approve: bool = True,
        *,
        retry_after: int = 1,
    ) -> None:
        self.host = host
        self.port = port
        self._state = State(
            latency=latency,
            outlook_mailbox_concurrency=outlook_mailbox_concurrency,
            auto_approve=auto_approve,
            retry_after=retry_after,
        )
        self.google = GoogleService(self._state)
        self.microsoft = MicrosoftService(self._state)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Sandbox:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._state.base_url = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"calsync-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        with server.conn_lock:
            open_connections = list(server.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve in the calling thread until stopped (KeyboardInterrupt stops it)."""
        self.start()
        assert self._thread is not None
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        finally:
            self.stop()

    # ------------------------------------------------------------------ configuration
    def env(self) -> dict[str, str]:
        u = self.url
        return {
            "CALSYNC_GOOGLE_CLIENT_ID": GOOGLE_CLIENT_ID,
            "CALSYNC_GOOGLE_CLIENT_SECRET": GOOGLE_CLIENT_SECRET,
            "CALSYNC_GOOGLE_AUTH_URL": f"{u}/google/o/oauth2/v2/auth",
            "CALSYNC_GOOGLE_TOKEN_URL": f"{u}/google/token",
            "CALSYNC_GOOGLE_REVOKE_URL": f"{u}/google/revoke",
            "CALSYNC_GOOGLE_API_URL": f"{u}/google/calendar/v3",
            "CALSYNC_GOOGLE_BATCH_URL": f"{u}/google/batch/calendar/v3",
            "CALSYNC_MICROSOFT_CLIENT_ID": MICROSOFT_CLIENT_ID,
            "CALSYNC_MICROSOFT_AUTHORITY": f"{u}/microsoft/common",
            "CALSYNC_MICROSOFT_GRAPH_URL": f"{u}/microsoft/graph/v1.0",
        }

    @property
    def latency(self) -> float:
        return self._state.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._state.lock:
            self._state.latency = max(0.0, float(seconds))

    @property
    def auto_approve(self) -> bool:
        return self._state.auto_approve

    @auto_approve.setter
    def auto_approve(self, value: bool) -> None:
        self._state.auto_approve = bool(value)

    # ------------------------------------------------------------------ accounts and data
    def add_account(
        self,
        app: str,
        email: str,
        *,
        personal: bool = False,
        calendars: list[dict[str, Any]] | None = None,
    ) -> Account:
        rec = self._state.add_account(check_app(app), email, personal=personal, calendars=calendars)
        with self._state.lock:
            return self._state.public_account(rec)

    def account(self, app: str, email: str) -> Account:
        with self._state.lock:
            return self._state.public_account(self._state.find(check_app(app), email))

    def accounts(self, app: str | None = None) -> list[Account]:
        with self._state.lock:
            return [
                self._state.public_account(rec)
                for (a, _), rec in self._state.accounts.items()
                if app is None or a == check_app(app)
            ]

    def events(
        self, app: str, email: str, calendar_id: str, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        return self._state.events(check_app(app), email, calendar_id, include_deleted)

    def issue_token(self, app: str, email: str, scopes: list[str] | None = None) -> str:
        return self._state.issue_token(check_app(app), email, scopes)

    def consent(
        self, decision: Literal["allow", "deny"] = "allow", account: str | None = None
    ) -> None:
        if decision not in ("allow", "deny"):
            raise ValueError("decision is 'allow' or 'deny'")
        with self._state.lock:
            self._state.consent = ConsentChoice(decision, account)

    def faults(self, app: str, email: str) -> Faults:
        return Faults(self._state, app, email)

    # ------------------------------------------------------------------ OAuth switches
    def register_app(
        self,
        app: str,
        *,
        publishing: Literal["production", "testing"] | None = None,
        single_tenant: str | None | Literal[False] = False,
        user_consent: bool | None = None,
    ) -> None:
        """How the OAuth client is registered. Google: ``publishing`` ("testing" gives 7-day
        refresh tokens). Microsoft: ``single_tenant`` (a tenant id: /common answers
        AADSTS50194; None: multi-tenant again), ``user_consent`` (False: only an administrator
        may consent, AADSTS65001). Arguments left out keep their value."""
        name = check_app(app)
        with self._state.lock:
            reg = self._state.oauth.apps[name]
            if publishing is not None:
                if publishing not in ("production", "testing"):
                    raise ValueError("publishing is 'production' or 'testing'")
                reg.publishing = publishing
            if single_tenant is not False:
                reg.single_tenant = single_tenant or None
            if user_consent is not None:
                reg.user_consent = bool(user_consent)

    def withhold_scopes(self, email: str, scopes: list[str]) -> None:
        """Google granular consent: the account leaves these scopes unticked."""
        with self._state.lock:
            rec = self._state.find("google", email)
            self._state.oauth.withheld[("google", rec.email.lower())] = set(scopes)

    def browser_session(self, app: str, email: str | None) -> None:
        """The account the browser is already signed in to (Microsoft single sign-on)."""
        name = check_app(app)
        with self._state.lock:
            if email is None:
                self._state.oauth.browser_session.pop(name, None)
            else:
                self._state.oauth.browser_session[name] = self._state.find(name, email).email

    def device_code_settings(
        self, *, interval: float | None = None, expires_in: float | None = None
    ) -> None:
        """The interval (for pending codes too) and lifetime of device codes issued from now
        on."""
        with self._state.lock:
            if interval is not None:
                self._state.oauth.device_interval = max(0.0, float(interval))
                for rec in self._state.oauth.device_codes.values():
                    rec.interval = self._state.oauth.device_interval
            if expires_in is not None:
                self._state.oauth.device_ttl = max(0.0, float(expires_in))

    def device_codes(self) -> list[dict[str, Any]]:
        """The device codes issued so far: user code, decision, redeemed."""
        with self._state.lock:
            return [
                {
                    "user_code": d.user_code,
                    "decision": d.decision,
                    "account": d.email,
                    "redeemed": d.redeemed,
                }
                for d in self._state.oauth.device_codes.values()
            ]

    def answer_device_code(
        self,
        user_code: str,
        decision: Literal["allow", "deny", "expire"] = "allow",
        account: str | None = None,
    ) -> None:
        """What the user does with a user code: approve it (as ``account``, default the first
        Outlook account), decline it, or let it expire."""
        with self._state.lock:
            rec = self._state.oauth.by_user_code(user_code)
            if decision == "expire":
                rec.expires_at = 0.0
                return
            if decision not in ("allow", "deny"):
                raise ValueError("decision is 'allow', 'deny' or 'expire'")
            if account is None:
                first = self._state.first_account("outlook")
                if first is None:
                    raise KeyError("no outlook account")
                account = first.email
            rec.email = self._state.find("outlook", account).email
            rec.decision = decision

    def fail_token_requests(self, app: str, n: int = 1, status: int = 400, error: str = "") -> None:
        """The next ``n`` answers of the app's token endpoint are this OAuth error."""
        name = check_app(app)
        if not error:
            raise ValueError("error is needed, e.g. temporarily_unavailable")
        with self._state.lock:
            queue = self._state.oauth.token_faults.setdefault(name, [])
            queue.extend(TokenFault(int(status), str(error)) for _ in range(n))

    def stats(self) -> dict[str, Any]:
        with self._state.lock:
            return self._state.stats.to_json()

    def api_calls(self) -> int:
        """API calls answered so far (inner batch calls count; batch envelopes do not)."""
        with self._state.lock:
            return self._state.api_calls

    def wait_for_api_calls(self, count: int, timeout: float) -> bool:
        """Block until ``count`` API calls were counted in all (False after ``timeout`` s)."""
        with self._state.activity:
            return self._state.activity.wait_for(
                lambda: self._state.api_calls >= count, timeout=timeout
            )

    def reset_stats(self) -> None:
        with self._state.lock:
            self._state.stats = Stats()

    def revocations(self, app: str, email: str) -> int:
        with self._state.lock:
            rec = self._state.find(check_app(app), email)
            return self._state.stats.revocations[(rec.app, rec.email)]

    # ------------------------------------------------------------------ routing
    def _dispatch(self, req: Request) -> Response:
        segs = req.segments()
        head = segs[0] if segs else ""
        if head == "_sandbox":
            return _control.handle(self, req, segs[1:])
        if head == "google":
            return self._google(req, segs[1:])
        if head == "microsoft":
            return self._microsoft(req, segs[1:])
        if not segs and req.method == "GET":
            return json_response(200, {"sandbox": "calsync", "env": self.env()})
        return json_response(404, {"error": "not found"})

    def _google(self, req: Request, s: list[str]) -> Response:
        g = self.google
        if s == ["o", "oauth2", "v2", "auth"] and req.method in ("GET", "POST"):
            return g.authorize(req)
        if s == ["token"] and req.method == "POST":
            return g.token(req)
        if s == ["revoke"] and req.method == "POST":
            return g.revoke(req)
        if s == ["batch", "calendar", "v3"] and req.method == "POST":
            return g.batch(req)
        if s[:2] == ["calendar", "v3"]:
            return g.api(req)
        return json_response(404, {"error": "not found"})

    def _microsoft(self, req: Request, s: list[str]) -> Response:
        m = self.microsoft
        if len(s) == 4 and s[1:3] == ["oauth2", "v2.0"]:
            if s[3] == "authorize" and req.method in ("GET", "POST"):
                return m.authorize(req)
            if s[3] == "token" and req.method == "POST":
                return m.token(req)
            if s[3] == "devicecode" and req.method == "POST":
                return m.devicecode(req)
        if s == ["devicelogin"] and req.method in ("GET", "POST"):
            return m.devicelogin(req)
        if s[:2] == ["graph", "v1.0"]:
            if s[2:] == ["$batch"] and req.method == "POST":
                return m.batch(req)
            return m.api(req)
        return json_response(404, {"error": "not found"})
