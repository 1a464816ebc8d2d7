"""Google: OAuth 2.0 for installed apps, Calendar API v3 and its multipart batch endpoint."""

from __future__ import annotations

import base64
import copy
import re
import secrets
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from calsync_cli.sandbox import _oauth_common as oc
from calsync_cli.sandbox._core import (
    JSON,
    DropConnection,
    Request,
    Response,
    day_start,
    empty_response,
    error_page,
    json_response,
    merge_busy,
    now,
    overlaps,
    parse_instant,
    redirect,
    rfc3339_ms,
    with_query,
)
from calsync_cli.sandbox._oauth_state import TESTING_REFRESH_LIFETIME
from calsync_cli.sandbox._pipeline import Call, Prepared, Route, finish, prepare, run_call
from calsync_cli.sandbox._state import (
    CODE_TTL,
    GOOGLE_CLIENT_SECRET,
    AccessToken,
    AccountRec,
    App,
    AuthCode,
    CalendarRec,
    EventRec,
    FailSpec,
    State,
)

SCOPE_PREFIX = "https://www.googleapis.com/auth/"
KNOWN_SCOPES = {
    SCOPE_PREFIX + s
    for s in (
        "calendar",
        "calendar.readonly",
        "calendar.events",
        "calendar.events.readonly",
        "calendar.events.owned",
        "calendar.calendarlist",
        "calendar.calendarlist.readonly",
        "calendar.freebusy",
        "calendar.settings.readonly",
        "userinfo.email",
        "userinfo.profile",
    )
} | {"openid", "email", "profile"}

NEEDS: dict[str, set[str]] = {
    "calendarlist": {
        SCOPE_PREFIX + s
        for s in (
            "calendar",
            "calendar.readonly",
            "calendar.calendarlist",
            "calendar.calendarlist.readonly",
        )
    },
    "read": {
        SCOPE_PREFIX + s
        for s in ("calendar", "calendar.readonly", "calendar.events", "calendar.events.readonly")
    },
    "write": {SCOPE_PREFIX + s for s in ("calendar", "calendar.events")},
    "freebusy": {
        SCOPE_PREFIX + s
        for s in (
            "calendar",
            "calendar.readonly",
            "calendar.events",
            "calendar.events.readonly",
            "calendar.freebusy",
        )
    },
}

SIGN_IN_SCOPES = {
    "openid",
    "email",
    "profile",
    SCOPE_PREFIX + "userinfo.email",
    SCOPE_PREFIX + "userinfo.profile",
}

EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")
READ_ONLY_FIELDS = {
    "kind",
    "etag",
    "htmlLink",
    "created",
    "updated",
    "creator",
    "organizer",
    "iCalUID",
    "sequence",
    "id",
}
MAX_BATCH = 1000
#: a header the sandbox puts on a batch's inner requests (never sent by clients)
BATCH_MARK = "x-sandbox-in-batch"
MAX_FREEBUSY = 50
API_PREFIX = "/google/calendar/v3"


def gerror(
    status: int,
    reason: str,
    message: str,
    *,
    domain: str = "global",
    location: str | None = None,
    location_type: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    item: dict[str, str] = {"domain": domain, "reason": reason, "message": message}
    if location is not None:
        item["locationType"] = location_type or "parameter"
        item["location"] = location
    body = {"error": {"errors": [item], "code": status, "message": message}}
    return json_response(status, body, headers)


def not_found() -> Response:
    return gerror(404, "notFound", "Not Found")


def oauth_error(status: int, error: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": description})


def is_loopback_redirect(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and parts.hostname in ("127.0.0.1", "::1", "localhost")
        and port is not None
        and not parts.query
        and not parts.fragment
    )


class GoogleService:
    app: App = "google"

    def __init__(self, state: State) -> None:
        self.state = state

    # ------------------------------------------------------------------ pipeline protocol
    def unauthorized(self, req: Request, known_but_expired: bool) -> Response:
        hdr = [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')]
        if req.bearer() is None:
            return gerror(
                401,
                "required",
                "Login Required.",
                location="Authorization",
                location_type="header",
                headers=hdr,
            )
        return gerror(
            401,
            "authError",
            "Invalid Credentials",
            location="Authorization",
            location_type="header",
            headers=hdr,
        )

    def insufficient_scope(self, route: Route, token: AccessToken) -> Response | None:
        allowed = NEEDS.get(route.need)
        if allowed is None or token.scopes & allowed:
            return None
        return gerror(
            403,
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
            headers=[
                (
                    "WWW-Authenticate",
                    'Bearer realm="https://accounts.google.com/", error="insufficient_scope"',
                )
            ],
        )

    def fault_response(self, spec: FailSpec) -> Response:
        headers: list[tuple[str, str]] = []
        retry_after = spec.retry_after
        if retry_after is None and spec.status == 429:
            retry_after = self.state.retry_after
        if retry_after is not None:
            headers.append(("Retry-After", str(max(0, round(retry_after)))))
        status = spec.status
        if status == 403:
            reason = spec.reason or "rateLimitExceeded"
            message = {
                "rateLimitExceeded": "Rate Limit Exceeded",
                "userRateLimitExceeded": "User Rate Limit Exceeded",
                "quotaExceeded": "Calendar usage limits exceeded.",
            }.get(reason, "Forbidden")
            domain = "usageLimits" if reason != "quotaExceeded" else "usageLimits"
            return gerror(403, reason, message, domain=domain, headers=headers)
        if status == 429:
            return gerror(
                429,
                spec.reason or "rateLimitExceeded",
                "Rate Limit Exceeded",
                domain="usageLimits",
                headers=headers,
            )
        if status in (500, 502, 503, 504):
            message = "Backend Error" if status == 500 else "The service is currently unavailable."
            return gerror(status, spec.reason or "backendError", message, headers=headers)
        if status == 401:
            return gerror(
                401,
                spec.reason or "authError",
                "Invalid Credentials",
                location="Authorization",
                location_type="header",
                headers=headers,
            )
        if status == 404:
            return gerror(404, spec.reason or "notFound", "Not Found", headers=headers)
        if status == 410:
            return gerror(
                410, spec.reason or "deleted", "Resource has been deleted", headers=headers
            )
        if status == 409:
            return gerror(
                409, spec.reason or "conflict", "The requested resource is busy.", headers=headers
            )
        return gerror(status, spec.reason or "badRequest", "Bad Request", headers=headers)

    def throttled(self) -> Response:  # Google has no per-mailbox slot model
        return gerror(429, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")

    def resolve(self, req: Request) -> Route | Response:
        segs = req.segments()
        # strip "google", "calendar", "v3"
        if segs[:3] != ["google", "calendar", "v3"]:
            return not_found()
        s = segs[3:]
        m = req.method
        if s[:3] == ["users", "me", "calendarList"]:
            if len(s) == 3 and m == "GET":
                return Route("calendarList.list", self.calendar_list, "calendarlist")
            if len(s) == 4 and m == "GET":
                return Route(
                    "calendarList.get", self.calendar_list_get, "calendarlist", {"cal": s[3]}
                )
        if s == ["freeBusy"] and m == "POST":
            return Route("freeBusy.query", self.freebusy, "freebusy")
        if len(s) >= 2 and s[0] == "calendars":
            cal = s[1]
            if len(s) == 2 and m == "GET":
                return Route("calendars.get", self.calendar_get, "read", {"cal": cal})
            if len(s) == 3 and s[2] == "events":
                if m == "GET":
                    return Route("events.list", self.events_list, "read", {"cal": cal})
                if m == "POST":
                    return Route("events.insert", self.events_insert, "write", {"cal": cal})
            if len(s) == 4 and s[2] == "events":
                p = {"cal": cal, "event": s[3]}
                if m == "GET":
                    return Route("events.get", self.events_get, "read", p)
                if m == "PATCH":
                    return Route("events.patch", self.events_patch, "write", p)
                if m == "PUT":
                    return Route("events.update", self.events_update, "write", p)
                if m == "DELETE":
                    return Route("events.delete", self.events_delete, "write", p)
        return not_found()

    # ------------------------------------------------------------------ helpers
    def _calendar(self, call: Call) -> CalendarRec | None:
        cal_id = call.params["cal"]
        if cal_id == "primary":
            return call.account.primary()
        cal = call.account.calendars.get(cal_id)
        if cal is None:
            for c in call.account.calendars.values():
                if c.id.lower() == cal_id.lower():
                    return c
        return cal

    @staticmethod
    def _access_role(cal: CalendarRec) -> str:
        if cal.primary:
            return "owner"
        return "writer" if cal.writable else "reader"

    def _list_entry(self, account: AccountRec, cal: CalendarRec) -> JSON:
        entry: JSON = {
            "kind": "calendar#calendarListEntry",
            "etag": f'"{abs(hash(cal.id)) % 10**16}"',
            "id": cal.id,
            "summary": cal.name,
            "timeZone": "UTC",
            "colorId": "1",
            "backgroundColor": "#9fe1e7",
            "foregroundColor": "#000000",
            "selected": True,
            "accessRole": self._access_role(cal),
            "defaultReminders": [],
        }
        if cal.primary:
            entry["primary"] = True
        return entry

    @staticmethod
    def _read_only(cal: CalendarRec) -> Response:
        return gerror(
            403,
            "requiredAccessLevel",
            "You need to have writer access to this calendar.",
            domain="calendar",
        )

    def _validate_times(self, body: JSON) -> Response | None:
        for which in ("start", "end"):
            value = body.get(which)
            if not isinstance(value, dict):
                return gerror(400, "required", f"Missing {which} time.")
            if "dateTime" in value:
                text = value.get("dateTime")
                tz = value.get("timeZone")
                if not isinstance(text, str):
                    return gerror(400, "invalid", f"Invalid {which} time.")
                if tz is not None and (
                    not isinstance(tz, str) or parse_instant("2000-01-01T00:00:00", tz) is None
                ):
                    return gerror(400, "invalid", f"Invalid time zone definition for {which} time.")
                naive = parse_instant(text, "UTC")
                if naive is None:
                    return gerror(400, "invalid", f"Invalid {which} time.")
                if parse_instant(text, tz) is None:
                    return gerror(
                        400, "required", f"Missing time zone definition for {which} time."
                    )
            elif "date" in value:
                if not isinstance(value["date"], str) or day_start(value["date"]) is None:
                    return gerror(400, "invalid", f"Invalid {which} time.")
            else:
                return gerror(400, "required", f"Missing {which} time.")
        start, end = event_span(body)
        if start is None or end is None:
            return gerror(400, "invalid", "Invalid start or end time.")
        if end < start:
            return gerror(
                400, "timeRangeEmpty", "The specified time range is empty.", domain="calendar"
            )
        status = body.get("status", "confirmed")
        if status not in ("confirmed", "tentative", "cancelled"):
            return gerror(400, "invalid", "Invalid value for: status")
        transparency = body.get("transparency", "opaque")
        if transparency not in ("opaque", "transparent"):
            return gerror(400, "invalid", "Invalid value for: transparency")
        # Events resource: visibility is default, public, private or confidential
        if body.get("visibility", "default") not in (
            "default",
            "public",
            "private",
            "confidential",
        ):
            return gerror(400, "invalid", "Invalid value for: visibility")
        reminders = body.get("reminders")
        if reminders is not None:
            if not isinstance(reminders, dict):
                return gerror(400, "invalid", "Invalid value for: reminders")
            if reminders.get("useDefault") and reminders.get("overrides"):
                return gerror(
                    400,
                    "cannotUseDefaultRemindersAndSpecifyOverride",
                    "Cannot specify both default reminders and overrides at the same time.",
                )
        return None

    def _burst(self, call: Call, cal: CalendarRec) -> Response | None:
        """The per-calendar write limit inside one batch request (``Faults.calendar_burst``):
        Google's "operational limits ... if you attempt to write to a single calendar in quick
        succession" (Calendar API, Manage quotas), answered as 403 rateLimitExceeded (Handle API
        errors). Inner calls of a batch run at once, so one batch is one burst."""
        limit = call.account.write_burst
        if limit is None or call.req.headers.get(BATCH_MARK) is None:
            return None
        cal.burst_writes += 1
        if cal.burst_writes <= limit:
            return None
        with self.state.lock:
            self.state.stats.throttled[("google", call.account.email)] += 1
        return gerror(403, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")

    def _touch(self, ev: EventRec, *, times_changed: bool) -> None:
        stamp = now()
        ev.data["updated"] = rfc3339_ms(stamp)
        ev.data["etag"] = f'"{int(stamp.timestamp() * 1000)}{secrets.randbelow(1000):03d}"'
        if times_changed:
            ev.data["sequence"] = int(ev.data.get("sequence", 0)) + 1
        ev.mod = self.state.tick()

    def _event_out(self, ev: EventRec) -> JSON:
        return copy.deepcopy(ev.data)

    # ------------------------------------------------------------------ calendarList
    def calendar_list(self, call: Call) -> Response:
        items = [self._list_entry(call.account, c) for c in call.account.calendars.values()]
        return json_response(
            200,
            {
                "kind": "calendar#calendarList",
                "etag": f'"{secrets.token_hex(8)}"',
                "nextSyncToken": secrets.token_urlsafe(12),
                "items": items,
            },
        )

    def calendar_list_get(self, call: Call) -> Response:
        cal = self._calendar(call)
        if cal is None:
            return not_found()
        return json_response(200, self._list_entry(call.account, cal))

    def calendar_get(self, call: Call) -> Response:
        cal = self._calendar(call)
        if cal is None:
            return not_found()
        return json_response(
            200,
            {
                "kind": "calendar#calendar",
                "etag": f'"{abs(hash(cal.id)) % 10**16}"',
                "id": cal.id,
                "summary": cal.name,
                "timeZone": "UTC",
            },
        )

    # ------------------------------------------------------------------ events
    def events_insert(self, call: Call) -> Response:
        cal = self._calendar(call)
        if cal is None:
            return not_found()
        body = _json_body(call.req)
        if not isinstance(body, dict):
            return gerror(400, "parseError", "Parse Error")
        if not cal.writable:
            return self._read_only(cal)
        burst = self._burst(call, cal)
        if burst is not None:
            return burst
        event_id = body.get("id")
        if event_id is not None:
            if not isinstance(event_id, str) or not EVENT_ID.match(event_id):
                return gerror(400, "invalid", "Invalid resource id value.")
            if event_id in cal.events or event_id in cal.purged:
                return gerror(409, "duplicate", "The requested identifier already exists.")
        else:
            event_id = "".join(
                secrets.choice("abcdefghijklmnopqrstuv0123456789") for _ in range(26)
            )
        invalid = self._validate_times(body)
        if invalid is not None:
            return invalid
        stamp = now()
        data: JSON = {
            "kind": "calendar#event",
            "etag": "",
            "id": event_id,
            "status": "confirmed",
            "htmlLink": self._html_link(cal, event_id),
            "created": rfc3339_ms(stamp),
            "updated": rfc3339_ms(stamp),
        }
        for key, value in body.items():
            if key not in READ_ONLY_FIELDS:
                data[key] = copy.deepcopy(value)
        data["creator"] = {"email": call.account.email, "self": True}
        data["organizer"] = {"email": cal.id, "displayName": cal.name, "self": True}
        data["iCalUID"] = f"{event_id}@google.com"
        data["sequence"] = 0
        data.setdefault("reminders", {"useDefault": True})
        data.setdefault("eventType", "default")
        ev = EventRec(data=data, created_seq=self.state.tick())
        self._touch(ev, times_changed=False)
        ev.deleted = data.get("status") == "cancelled"
        cal.events[event_id] = ev
        return json_response(200, self._event_out(ev))

    def _html_link(self, cal: CalendarRec, event_id: str) -> str:
        eid = base64.urlsafe_b64encode(f"{event_id} {cal.id}".encode()).decode().rstrip("=")
        return f"{self.state.base_url}/google/calendar/event?eid={eid}"

    def events_get(self, call: Call) -> Response:
        cal = self._calendar(call)
        if cal is None:
            return not_found()
        ev = cal.events.get(call.params["event"])
        if ev is None:
            return not_found()
        return json_response(200, self._event_out(ev))

    def _write(self, call: Call, *, replace: bool) -> Response:
        cal = self._calendar(call)
        if cal is None:
            return not_found()
        body = _json_body(call.req)
        if not isinstance(body, dict):
            return gerror(400, "parseError", "Parse Error")
        ev = cal.events.get(call.params["event"])
        if ev is None:
            return not_found()
        if not cal.writable:
            return self._read_only(cal)
        if ev.ui_deleted:
            # Deleted in the Calendar UI: neither PATCH nor PUT brings it back, the API answers
            # 403 Forbidden (google-api-ruby-client#1811, google-api-python-client#846).
            return gerror(403, "forbidden", "Forbidden")
        burst = self._burst(call, cal)
        if burst is not None:
            return burst
        old = ev.data
        if replace:
            new: JSON = {k: v for k, v in old.items() if k in READ_ONLY_FIELDS}
            new["status"] = "confirmed"
            for key, value in body.items():
                if key not in READ_ONLY_FIELDS:
                    new[key] = copy.deepcopy(value)
            new.setdefault("reminders", {"useDefault": True})
            new.setdefault("eventType", "default")
            new["htmlLink"] = old.get("htmlLink")
        else:
            new = copy.deepcopy(old)
            _merge(new, {k: v for k, v in body.items() if k not in READ_ONLY_FIELDS})
        invalid = self._validate_times(new)
        if invalid is not None:
            return invalid
        times_changed = new.get("start") != old.get("start") or new.get("end") != old.get("end")
        ev.data = new
        ev.deleted = new.get("status") == "cancelled"
        self._touch(ev, times_changed=times_changed)
        return json_response(200, self._event_out(ev))

    def events_patch(self, call: Call) -> Response:
        return self._write(call, replace=False)

    def events_update(self, call: Call) -> Response:
        return self._write(call, replace=True)

    def events_delete(self, call: Call) -> Response:
        cal = self._calendar(call)
        if cal is None:
            return not_found()
        ev = cal.events.get(call.params["event"])
        if ev is None:
            return not_found()
        if not cal.writable:
            return self._read_only(cal)
        if ev.deleted:
            return gerror(410, "deleted", "Resource has been deleted")
        burst = self._burst(call, cal)
        if burst is not None:
            return burst
        ev.deleted = True
        ev.data["status"] = "cancelled"
        self._touch(ev, times_changed=False)
        return empty_response(204)

    def events_list(self, call: Call) -> Response:
        cal = self._calendar(call)
        if cal is None:
            return not_found()
        req = call.req
        account = call.account
        try:
            max_results = int(req.q("maxResults") or "250")
        except ValueError:
            return gerror(400, "invalid", "Invalid value for: maxResults", location="maxResults")
        if max_results < 1:
            return gerror(400, "invalid", "Invalid value for: maxResults", location="maxResults")
        max_results = min(max_results, 2500)
        page_token = req.q("pageToken")
        if page_token:
            page = self.state.page_tokens.get(page_token)
            if page is None or page["cal"] != cal.id or page["email"] != account.email:
                return gerror(400, "invalid", "Invalid page token value.", location="pageToken")
            ids: list[str] = page["ids"]
            sync_mod: int = page["sync_mod"]
            epoch: int = page["epoch"]
        else:
            selected = self._select(call, cal)
            if isinstance(selected, Response):
                return selected
            ids = selected
            sync_mod = self.state.counter
            epoch = account.sync_epoch
        chunk, rest = ids[:max_results], ids[max_results:]
        items = [self._event_out(cal.events[i]) for i in chunk if i in cal.events]
        body: JSON = {
            "kind": "calendar#events",
            "etag": f'"{self.state.counter}"',
            "summary": cal.name,
            "updated": rfc3339_ms(now()),
            "timeZone": "UTC",
            "accessRole": self._access_role(cal),
            "defaultReminders": [],
            "items": items,
        }
        if rest:
            token = secrets.token_urlsafe(24)
            self.state.page_tokens[token] = {
                "cal": cal.id,
                "email": account.email,
                "ids": rest,
                "sync_mod": sync_mod,
                "epoch": epoch,
            }
            body["nextPageToken"] = token
        else:
            token = secrets.token_urlsafe(24)
            self.state.sync_tokens[token] = (account.email, cal.id, epoch, sync_mod)
            body["nextSyncToken"] = token
        return json_response(200, body)

    def _select(self, call: Call, cal: CalendarRec) -> list[str] | Response:
        req = call.req
        sync_token = req.q("syncToken")
        events = sorted(cal.events.values(), key=lambda e: e.created_seq)
        if sync_token is not None:
            clash = [
                p
                for p in (
                    "timeMin",
                    "timeMax",
                    "orderBy",
                    "privateExtendedProperty",
                    "sharedExtendedProperty",
                    "q",
                    "updatedMin",
                    "iCalUID",
                )
                if p in req.query
            ]
            if clash:
                return gerror(
                    400,
                    "invalid",
                    f"Sync token cannot be used with {', '.join(clash)}.",
                    location="syncToken",
                )
            known = self.state.sync_tokens.get(sync_token)
            if (
                known is None
                or known[0] != call.account.email
                or known[1] != cal.id
                or known[2] != call.account.sync_epoch
            ):
                return gerror(
                    410,
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                    domain="calendar",
                )
            return [ev.data["id"] for ev in events if ev.mod > known[3]]
        lo = hi = None
        for name in ("timeMin", "timeMax"):
            text = req.q(name)
            if text is None:
                continue
            value = parse_instant(text)
            if value is None:
                return gerror(400, "badRequest", "Bad Request", location=name)
            if name == "timeMin":
                lo = value
            else:
                hi = value
        if lo is not None and hi is not None and hi <= lo:
            return gerror(
                400,
                "timeRangeEmpty",
                "The specified time range is empty.",
                domain="calendar",
                location="timeMax",
            )
        order = req.q("orderBy")
        single = (req.q("singleEvents") or "false").lower() == "true"
        if order not in (None, "startTime", "updated"):
            return gerror(400, "invalid", "Invalid value for: orderBy", location="orderBy")
        if order == "startTime" and not single:
            return gerror(
                400,
                "badRequest",
                "The requested ordering is not available for the particular query.",
            )
        show_deleted = (req.q("showDeleted") or "false").lower() == "true"
        updated_min = parse_instant(req.q("updatedMin") or "") if req.q("updatedMin") else None
        props: list[tuple[str, str]] = []
        for raw in req.query.get("privateExtendedProperty", []):
            pkey, sep, pvalue = raw.partition("=")
            if not sep:
                return gerror(
                    400,
                    "invalid",
                    "Invalid value for: privateExtendedProperty",
                    location="privateExtendedProperty",
                )
            props.append((pkey, pvalue))
        text_q = (req.q("q") or "").lower()
        chosen: list[EventRec] = []
        for ev in events:
            if ev.deleted and not show_deleted:
                continue
            start, end = event_span(ev.data)
            if start is None or end is None or not overlaps(start, end, lo, hi):
                continue
            private = ev.data.get("extendedProperties", {}).get("private", {}) or {}
            if any(private.get(k) != v for k, v in props):
                continue
            if updated_min is not None:
                upd = parse_instant(str(ev.data.get("updated", "")))
                if upd is None or upd < updated_min:
                    continue
            if text_q and not any(
                text_q in str(ev.data.get(f, "")).lower()
                for f in ("summary", "description", "location")
            ):
                continue
            chosen.append(ev)
        if order == "startTime":
            chosen.sort(key=lambda e: event_span(e.data)[0] or datetime.max)
        elif order == "updated":
            chosen.sort(key=lambda e: str(e.data.get("updated", "")))
        return [ev.data["id"] for ev in chosen]

    # ------------------------------------------------------------------ freeBusy
    def freebusy(self, call: Call) -> Response:
        body = _json_body(call.req)
        if not isinstance(body, dict):
            return gerror(400, "parseError", "Parse Error")
        lo = parse_instant(str(body.get("timeMin", "")))
        hi = parse_instant(str(body.get("timeMax", "")))
        if lo is None:
            return gerror(400, "required", "Missing timeMin parameter.")
        if hi is None:
            return gerror(400, "required", "Missing timeMax parameter.")
        if hi <= lo:
            return gerror(
                400, "timeRangeEmpty", "The specified time range is empty.", domain="calendar"
            )
        items = body.get("items") or []
        if not isinstance(items, list):
            return gerror(400, "invalid", "Invalid value for: items")
        if len(items) > MAX_FREEBUSY:
            return gerror(
                400,
                "tooManyCalendarsRequested",
                "The number of calendars requested is too large.",
                domain="calendar",
            )
        calendars: JSON = {}
        for item in items:
            cal_id = str(item.get("id", "")) if isinstance(item, dict) else ""
            call.params["cal"] = cal_id
            cal = self._calendar(call)
            if cal is None:
                calendars[cal_id] = {
                    "errors": [{"domain": "global", "reason": "notFound"}],
                    "busy": [],
                }
                continue
            blocks = []
            for ev in cal.events.values():
                if ev.deleted or ev.data.get("transparency") == "transparent":
                    continue
                start, end = event_span(ev.data)
                if start is not None and end is not None:
                    blocks.append((start, end))
            calendars[cal_id] = {
                "busy": [
                    {
                        "start": rfc3339_ms(s).replace(".000", ""),
                        "end": rfc3339_ms(e).replace(".000", ""),
                    }
                    for s, e in merge_busy(blocks, lo, hi)
                ]
            }
        return json_response(
            200,
            {
                "kind": "calendar#freeBusy",
                "timeMin": rfc3339_ms(lo),
                "timeMax": rfc3339_ms(hi),
                "calendars": calendars,
            },
        )

    # ------------------------------------------------------------------ batch
    def batch(self, req: Request) -> Response:
        ctype = req.headers.get("content-type", "")
        boundary = _boundary(ctype)
        if not ctype.lower().startswith("multipart/") or boundary is None:
            return gerror(400, "badRequest", "Batch requests must be multipart/mixed.")
        try:
            parts = _split_multipart(req.body, boundary)
        except ValueError as exc:
            return gerror(400, "badRequest", f"Malformed multipart body: {exc}")
        if not parts:
            return gerror(400, "badRequest", "The batch request has no parts.")
        if len(parts) > MAX_BATCH:
            return gerror(
                400,
                "badRequest",
                f"Too many calls in one batch request: at most {MAX_BATCH} are allowed.",
            )
        with self.state.lock:
            self.state.stats.batches["google"] += 1
            for (app, _), rec in self.state.accounts.items():
                if app == "google":
                    for cal in rec.calendars.values():
                        cal.burst_writes = 0
        calls: list[tuple[str, Request | None]] = []
        for headers, payload in parts:
            cid = headers.get("content-id", "")
            inner = _parse_inner_request(payload, req)
            calls.append((cid, inner))
        prepared: list[Prepared | Response] = []
        for _, inner in calls:
            if inner is None:
                prepared.append(gerror(400, "badRequest", "Malformed inner request."))
            else:
                prepared.append(prepare(self, self.state, inner, in_batch=True, take_slot=False))
        # The inner calls run as if at once: one wait, as long as the slowest of them.
        waits = [p.latency for p in prepared if isinstance(p, Prepared)]
        if waits and max(waits) > 0:
            time.sleep(max(waits))
        out_boundary = "batch_" + secrets.token_hex(12)
        chunks: list[bytes] = []
        for (cid, inner), prep in zip(calls, prepared, strict=True):
            if isinstance(prep, Prepared):
                assert inner is not None
                try:
                    resp = finish(self, self.state, inner, prep)
                except DropConnection:
                    for other in prepared:
                        if isinstance(other, Prepared):
                            other.slot = False
                    raise
            else:
                resp = prep
            chunks.append(_render_part(out_boundary, cid, resp))
        body = b"".join(chunks) + f"--{out_boundary}--\r\n".encode()
        return Response(200, body, [("Content-Type", f"multipart/mixed; boundary={out_boundary}")])

    def api(self, req: Request) -> Response:
        return run_call(self, self.state, req)

    # ------------------------------------------------------------------ OAuth
    def authorize(self, req: Request) -> Response:
        params = req.form() if req.method == "POST" else {k: v[0] for k, v in req.query.items()}
        client_id = params.get("client_id", "")
        if client_id != self.state.clients["google"]:
            return error_page(401, "Error 401: invalid_client", "The OAuth client was not found.")
        redirect_uri = params.get("redirect_uri", "")
        if not is_loopback_redirect(redirect_uri):
            return error_page(
                400,
                "Error 400: redirect_uri_mismatch",
                "The redirect URI in the request does not match the ones authorized for the "
                f"OAuth client: {redirect_uri}",
            )
        state_param = params.get("state")

        def fail(error: str, description: str | None = None) -> Response:
            out = {"error": error}
            if description:
                out["error_description"] = description
            if state_param is not None:
                out["state"] = state_param
            return redirect(with_query(redirect_uri, out))

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "Only response_type=code is supported.")
        scopes = params.get("scope", "").split()
        if not scopes:
            return fail("invalid_request", "Missing required parameter: scope")
        unknown = [s for s in scopes if s not in KNOWN_SCOPES]
        if unknown:
            return fail("invalid_scope", f"Some requested scopes were invalid: {unknown[0]}")
        challenge = params.get("code_challenge", "")
        if not challenge or params.get("code_challenge_method") != "S256":
            return fail("invalid_request", "code_challenge with code_challenge_method=S256 needed.")
        if req.method == "GET" and not self.state.auto_approve:
            return oc.consent_page("Google", req.raw_path, params, self.state, "google")
        decision, email = oc.decide(self.state, "google", params)
        if email is None:
            return error_page(400, "No account", "The sandbox has no Google account to sign in.")
        if decision != "allow":
            return fail("access_denied")
        prompt = params.get("prompt", "").split()
        with self.state.lock:
            rec = self.state.find("google", email)
            # Granular consent: "If an app requests more than one scope, the user can choose to
            # grant access to only some of them" by ticking a checkbox per scope; sign-in scopes
            # (openid, email, profile) have none ("How to handle granular permissions", Google
            # Identity). The token answer's scope lists what was granted.
            withheld = self.state.oauth.withheld.get(("google", rec.email.lower()), set())
            if len([s for s in scopes if s not in SIGN_IN_SCOPES]) > 1:
                scopes = [s for s in scopes if s not in withheld]
            grant = self.state.locked_grant_for("google", client_id, rec.email)
            first = grant is None
            if grant is None:
                grant = self.state.locked_new_grant("google", client_id, rec.email, set(scopes))
            code_scopes = set(scopes)
            if params.get("include_granted_scopes") == "true":
                code_scopes |= grant.scopes
            grant.scopes |= set(scopes)
            code = "4/" + secrets.token_urlsafe(40)
            self.state.codes[code] = AuthCode(
                code=code,
                app="google",
                client_id=client_id,
                email=rec.email,
                redirect_uri=redirect_uri,
                challenge=challenge,
                scopes=sorted(code_scopes),
                issue_refresh=params.get("access_type") == "offline"
                and (first or "consent" in prompt),
                include_granted=False,
                expires_at=time.monotonic() + CODE_TTL,
            )
        out = {"code": code, "scope": " ".join(sorted(code_scopes))}
        if state_param is not None:
            out = {"state": state_param, **out}
        return redirect(with_query(redirect_uri, out))

    def token(self, req: Request) -> Response:
        form = req.form()
        with self.state.lock:
            fault = self.state.oauth.take_token_fault("google")
        if fault is not None:
            return oauth_error(fault.status, fault.error, "Injected by the sandbox.")
        client_id, secret = oc.client_credentials(req, form)
        if client_id != self.state.clients["google"]:
            return oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if secret != GOOGLE_CLIENT_SECRET:
            return oauth_error(401, "invalid_client", "Unauthorized")
        grant_type = form.get("grant_type")
        if grant_type is None:
            return oauth_error(400, "invalid_request", "Required parameter is missing: grant_type")
        if grant_type == "authorization_code":
            return self._token_code(form, client_id)
        if grant_type == "refresh_token":
            return self._token_refresh(form, client_id)
        return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _token_code(self, form: dict[str, str], client_id: str) -> Response:
        with self.state.lock:
            code = self.state.codes.get(form.get("code", ""))
            if code is None or code.app != "google" or code.client_id != client_id:
                return oauth_error(400, "invalid_grant", "Malformed auth code.")
            if code.used or time.monotonic() > code.expires_at:
                return oauth_error(400, "invalid_grant", "Bad Request")
            if form.get("redirect_uri") != code.redirect_uri:
                return oauth_error(400, "redirect_uri_mismatch", "Bad Request")
            verifier = form.get("code_verifier")
            if not verifier:
                return oauth_error(400, "invalid_grant", "Missing code verifier.")
            if oc.s256_matches(verifier, code.challenge) is False:
                return oauth_error(400, "invalid_grant", "Invalid code verifier.")
            grant = self.state.locked_grant_for("google", client_id, code.email)
            if grant is None:
                return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            code.used = True
            self.state.stats.code_exchanges[("google", code.email)] += 1
            access = self.state.locked_issue_access(grant, set(code.scopes))
            out: JSON = {
                "access_token": access,
                "expires_in": 3600,
                "scope": " ".join(code.scopes),
                "token_type": "Bearer",
            }
            if code.issue_refresh:
                refresh = self.state.locked_issue_refresh(grant)
                out["refresh_token"] = refresh
                if self.state.oauth.apps["google"].publishing == "testing":
                    lifetime = TESTING_REFRESH_LIFETIME
                    out["refresh_token_expires_in"] = lifetime
                    self.state.oauth.refresh_deadlines[refresh] = time.monotonic() + lifetime
        return json_response(200, out, [("Cache-Control", "no-store"), ("Pragma", "no-cache")])

    def _token_refresh(self, form: dict[str, str], client_id: str) -> Response:
        with self.state.lock:
            token = form.get("refresh_token", "")
            grant = self.state.refresh_tokens.get(token)
            if grant is None or not grant.alive:
                return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            deadline = self.state.oauth.refresh_deadlines.get(token)
            if deadline is not None and time.monotonic() > deadline:
                return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            if grant.client_id != client_id:
                return oauth_error(401, "unauthorized_client", "Unauthorized")
            wanted = set(form.get("scope", "").split()) or set(grant.scopes)
            if not wanted <= grant.scopes:
                return oauth_error(
                    400,
                    "invalid_scope",
                    "Some requested scopes were invalid or exceed the scopes granted.",
                )
            self.state.stats.refreshes[("google", grant.email)] += 1
            access = self.state.locked_issue_access(grant, wanted)
            out: JSON = {
                "access_token": access,
                "expires_in": 3600,
                "scope": " ".join(sorted(wanted)),
                "token_type": "Bearer",
            }
        return json_response(200, out, [("Cache-Control", "no-store"), ("Pragma", "no-cache")])

    def revoke(self, req: Request) -> Response:
        token = req.form().get("token") or req.q("token") or ""
        with self.state.lock:
            grant = self.state.refresh_tokens.get(token)
            if grant is None:
                info = self.state.access_tokens.get(token)
                grant = info.grant if info is not None and info.valid() else None
            if grant is None or grant.app != "google" or not grant.alive:
                return oauth_error(400, "invalid_token", "Token expired or revoked")
            self.state.locked_withdraw(grant)
            self.state.stats.revocations[("google", grant.email)] += 1
        return Response(200, b"", [("Content-Type", "application/json; charset=utf-8")])


# ---------------------------------------------------------------------- module helpers
def _json_body(req: Request) -> Any:
    try:
        return req.json()
    except (ValueError, UnicodeDecodeError):
        return None


def event_span(data: JSON) -> tuple[datetime | None, datetime | None]:
    out: list[datetime | None] = []
    for which in ("start", "end"):
        value = data.get(which) or {}
        if not isinstance(value, dict):
            out.append(None)
        elif "dateTime" in value:
            out.append(parse_instant(str(value["dateTime"]), value.get("timeZone")))
        elif "date" in value:
            out.append(day_start(str(value["date"])))
        else:
            out.append(None)
    return out[0], out[1]


def _merge(target: JSON, patch: JSON) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = copy.deepcopy(value)


def _boundary(content_type: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"')
    return None


def _split_headers(blob: bytes) -> tuple[list[str], bytes]:
    """Split ``headers CRLF CRLF body`` (LF alone tolerated)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = blob.find(sep)
        if idx >= 0:
            head = blob[:idx].decode("utf-8", "replace")
            return [line.rstrip("\r") for line in head.split("\n")], blob[idx + len(sep) :]
    head = blob.decode("utf-8", "replace")
    return [line.rstrip("\r") for line in head.split("\n")], b""


def _header_dict(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    delimiter = b"--" + boundary.encode()
    pieces = body.split(delimiter)
    if len(pieces) < 2:
        raise ValueError("no boundary found")
    parts: list[tuple[dict[str, str], bytes]] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        piece = piece.removeprefix(b"\r\n").removeprefix(b"\n")
        lines, payload = _split_headers(piece)
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        elif payload.endswith(b"\n"):
            payload = payload[:-1]
        parts.append((_header_dict(lines), payload))
    return parts


def _parse_inner_request(payload: bytes, outer: Request) -> Request | None:
    lines, body = _split_headers(payload.lstrip(b"\r\n"))
    if not lines or not lines[0].strip():
        return None
    words = lines[0].split()
    if len(words) < 2:
        return None
    method, target = words[0].upper(), words[1]
    if "://" in target:
        parts = urlsplit(target)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    if target.startswith("/calendar/v3"):
        target = "/google" + target
    elif not target.startswith(API_PREFIX):
        target = API_PREFIX + "/__unknown__" + target
    headers = _header_dict(lines[1:])
    headers.pop(BATCH_MARK, None)
    headers[BATCH_MARK] = "1"
    if "authorization" not in headers and "authorization" in outer.headers:
        headers["authorization"] = outer.headers["authorization"]
    return Request.from_target(method, target, headers, body.strip())


def _render_part(boundary: str, cid: str, resp: Response) -> bytes:
    if cid.startswith("<") and cid.endswith(">"):
        out_id = f"<response-{cid[1:-1]}>"
    else:
        out_id = f"response-{cid}"
    reason = oc.reason(resp.status)
    head = [
        f"--{boundary}",
        "Content-Type: application/http",
        f"Content-ID: {out_id}",
        "",
        f"HTTP/1.1 {resp.status} {reason}",
    ]
    for name, value in resp.headers:
        head.append(f"{name}: {value}")
    head.append(f"Content-Length: {len(resp.body)}")
    head.append("")
    head.append("")
    return "\r\n".join(head).encode() + resp.body + b"\r\n"
