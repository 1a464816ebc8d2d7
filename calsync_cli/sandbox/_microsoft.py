"""Microsoft: identity platform v2.0 (authorize, token) and Microsoft Graph v1.0 calendars."""

from __future__ import annotations

import copy
import json
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

from calsync_cli.sandbox import _oauth_common as oc
from calsync_cli.sandbox._core import (
    JSON,
    Request,
    Response,
    empty_response,
    error_page,
    graph_stamp,
    graph_zone,
    html_response,
    json_response,
    now,
    overlaps,
    parse_instant,
    prefers,
    redirect,
    with_query,
)
from calsync_cli.sandbox._oauth_state import MULTI_TENANT_PATHS, DeviceCodeRec
from calsync_cli.sandbox._pipeline import Call, Route, run_call
from calsync_cli.sandbox._state import (
    CODE_TTL,
    AccessToken,
    AccountRec,
    App,
    AuthCode,
    CalendarRec,
    EventRec,
    FailSpec,
    State,
    graph_event_ids,
)

GRAPH_PREFIX = "/microsoft/graph/v1.0"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_BATCH = 20
RESERVED_SCOPES = {"offline_access", "openid", "profile", "email"}
READ_SCOPES = {"calendars.read", "calendars.readwrite", "calendars.readbasic"}
WRITE_SCOPES = {"calendars.readwrite"}
#: writing to a calendar shared with or delegated to the user needs this scope ("Allows the app
#: to create, read, update, and delete events in all calendars the user has permissions to
#: access. This includes delegate and shared calendars.", Microsoft Graph permissions reference)
SHARED_WRITE_SCOPES = {"calendars.readwrite.shared"}
SENSITIVITY = {"normal", "personal", "private", "confidential"}
NOT_FOUND_MSG = "The specified object was not found in the store."
ACCESS_DENIED_MSG = "Access is denied. Check credentials and try again."
SVEP = "singleValueExtendedProperties"
EXPAND_RE = re.compile(
    r"^\s*singleValueExtendedProperties\s*(?:\(\s*\$filter\s*=\s*(?P<f>.*)\)\s*)?$", re.I
)
ID_EQ_RE = re.compile(r"id\s+eq\s+'((?:[^']|'')*)'", re.I)
ANY_FILTER_RE = re.compile(
    r"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+'((?:[^']|'')*)'"
    r"(?:\s+and\s+\1/value\s+eq\s+'((?:[^']|'')*)')?\s*\)\s*$",
    re.I,
)
SHOW_AS = {"free", "tentative", "busy", "oof", "workingElsewhere", "unknown"}


def norm_scope(scope: str) -> str:
    s = scope.strip()
    for prefix in ("https://graph.microsoft.com/", "https://graph.microsoft.com//"):
        if s.lower().startswith(prefix):
            s = s[len(prefix) :]
    return s.lower()


def inner_error() -> JSON:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    rid = str(uuid.uuid4())
    return {"date": stamp, "request-id": rid, "client-request-id": rid}


def gerr(
    status: int,
    code: str,
    message: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    inner_code: str | None = None,
) -> Response:
    inner = inner_error()
    if inner_code:
        inner = {"code": inner_code, **inner}
    return json_response(
        status, {"error": {"code": code, "message": message, "innerError": inner}}, headers
    )


def item_not_found() -> Response:
    return gerr(404, "ErrorItemNotFound", NOT_FOUND_MSG)


def access_denied() -> Response:
    return gerr(403, "ErrorAccessDenied", ACCESS_DENIED_MSG)


def aad_error(status: int, error: str, code: int, message: str) -> Response:
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return json_response(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {message} Trace ID: {trace} "
            f"Correlation ID: {corr} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
    )


def consent_message(client_id: str) -> str:
    return (
        f"AADSTS65001: The user or administrator has not consented to use the application with "
        f"ID '{client_id}' named 'calsync'. Send an interactive authorization request for this "
        "user and resource."
    )


def is_localhost_redirect(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        _ = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and parts.hostname == "localhost"
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
    )


class MicrosoftService:
    app: App = "outlook"

    def __init__(self, state: State) -> None:
        self.state = state

    # ------------------------------------------------------------------ pipeline protocol
    def unauthorized(self, req: Request, known_but_expired: bool) -> Response:
        message = (
            "Access token is empty."
            if req.bearer() is None
            else "Access token has expired or is not yet valid."
            if known_but_expired
            else "IDX14100: JWT is not well formed, there are no dots (.)."
        )
        return gerr(
            401,
            "InvalidAuthenticationToken",
            message,
            headers=[
                (
                    "WWW-Authenticate",
                    'Bearer realm="", authorization_uri="'
                    f'{self.state.base_url}/microsoft/common/oauth2/authorize", '
                    f'client_id="00000003-0000-0000-c000-000000000000"',
                )
            ],
        )

    def insufficient_scope(self, route: Route, token: AccessToken) -> Response | None:
        scopes = {norm_scope(s) for s in token.scopes}
        if route.need == "read" and not scopes & READ_SCOPES:
            return access_denied()
        if route.need == "write" and not scopes & WRITE_SCOPES:
            return access_denied()
        return None

    def fault_response(self, spec: FailSpec) -> Response:
        headers: list[tuple[str, str]] = []
        retry_after = spec.retry_after
        if retry_after is None and spec.status == 429:
            retry_after = self.state.retry_after
        if retry_after is not None:
            headers.append(("Retry-After", str(max(0, round(retry_after)))))
        code, message = {
            400: ("BadRequest", "The request is malformed or incorrect."),
            401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
            403: ("ErrorAccessDenied", ACCESS_DENIED_MSG),
            404: ("ErrorItemNotFound", NOT_FOUND_MSG),
            409: (
                "ErrorIrresolvableConflict",
                "The send or update operation could not be "
                "performed because the change key passed in the request does not match the "
                "current change key for the item.",
            ),
            429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
            500: (
                "InternalServerError",
                "An internal server error occurred. The operation failed.",
            ),
            502: ("BadGateway", "The service is temporarily unavailable."),
            503: (
                "ServiceNotAvailable",
                "The service is temporarily unavailable. Please retry later.",
            ),
            504: ("GatewayTimeout", "The service did not answer in time."),
        }.get(spec.status, ("UnknownError", ""))
        inner = "MailboxConcurrency" if spec.status == 429 and spec.reason is None else None
        return gerr(spec.status, spec.reason or code, message, headers=headers, inner_code=inner)

    def throttled(self) -> Response:
        return gerr(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
            headers=[("Retry-After", str(self.state.retry_after))],
            inner_code="MailboxConcurrency",
        )

    def resolve(self, req: Request) -> Route | Response:
        segs = req.segments()
        if segs[:3] != ["microsoft", "graph", "v1.0"]:
            return gerr(400, "BadRequest", "Invalid request.")
        s = segs[3:]
        low = [x.lower() for x in s]
        m = req.method
        if not s or low[0] != "me":
            seg = s[0] if s else ""
            return gerr(400, "BadRequest", f"Resource not found for the segment '{seg}'.")
        rest, rlow = s[1:], low[1:]
        if not rest:
            if m == "GET":
                return Route("me.get", self.me, "any")
            return self._method_not_allowed()
        # Normalise the calendar part: calendars/{id}/..., calendar/..., or events directly.
        params: dict[str, str] = {}
        if rlow[0] == "calendars":
            if len(rest) == 1:
                return (
                    Route("calendars.list", self.calendars_list, "read")
                    if m == "GET"
                    else (self._method_not_allowed())
                )
            params["cal"] = rest[1]
            tail, tlow = rest[2:], rlow[2:]
            if not tail:
                return (
                    Route("calendar.get", self.calendar_get, "read", params)
                    if m == "GET"
                    else (self._method_not_allowed())
                )
        elif rlow[0] == "calendar":
            params["cal"] = ""
            tail, tlow = rest[1:], rlow[1:]
            if not tail:
                return (
                    Route("calendar.get", self.calendar_get, "read", params)
                    if m == "GET"
                    else (self._method_not_allowed())
                )
        elif rlow[0] in ("events", "calendarview"):
            params["cal"] = "*" if rlow[0] == "events" else ""
            tail, tlow = rest, rlow
        else:
            return gerr(400, "BadRequest", f"Resource not found for the segment '{rest[0]}'.")
        if tlow == ["events"]:
            if m == "GET":
                return Route("events.list", self.events_list, "read", params)
            if m == "POST":
                if params["cal"] == "*":
                    params["cal"] = ""
                return Route("events.create", self.events_create, "write", params)
            return self._method_not_allowed()
        if len(tlow) == 2 and tlow[0] == "events":
            params["event"] = tail[1]
            if m == "GET":
                return Route("events.get", self.events_get, "read", params)
            if m == "PATCH":
                return Route("events.update", self.events_update, "write", params)
            if m == "DELETE":
                return Route("events.delete", self.events_delete, "write", params)
            return self._method_not_allowed()
        if tlow == ["calendarview"] and m == "GET":
            return Route("calendarView", self.calendar_view, "read", params)
        if tlow in (["getschedule"], ["microsoft.graph.getschedule"]) and m == "POST":
            return Route("getSchedule", self.get_schedule, "read", params)
        seg = tail[0] if tail else ""
        return gerr(400, "BadRequest", f"Resource not found for the segment '{seg}'.")

    @staticmethod
    def _method_not_allowed() -> Response:
        return gerr(
            405,
            "Request_BadRequest",
            "Specified HTTP method is not allowed for the request target.",
        )

    # ------------------------------------------------------------------ helpers
    def _calendar(self, call: Call) -> CalendarRec | Response:
        cal_id = call.params.get("cal", "")
        if cal_id in ("", "*"):
            return call.account.primary()
        cal = call.account.calendars.get(cal_id)
        if cal is not None:
            return cal
        if not cal_id.startswith("AAMk"):
            return gerr(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        return item_not_found()

    @staticmethod
    def _event_in(cal: CalendarRec, event_id: str) -> EventRec | None:
        """An event by its immutable id (the key) or its current REST id."""
        ev = cal.events.get(event_id)
        if ev is None:
            ev = next((e for e in cal.events.values() if e.rest_id == event_id), None)
        return ev if ev is not None and not ev.deleted else None

    def _find_event(self, call: Call) -> tuple[CalendarRec, EventRec] | Response:
        event_id = call.params["event"]
        if call.params.get("cal") == "*":
            for cal in call.account.calendars.values():
                ev = self._event_in(cal, event_id)
                if ev is not None:
                    return cal, ev
        else:
            found = self._calendar(call)
            if isinstance(found, Response):
                return found
            ev = self._event_in(found, event_id)
            if ev is not None:
                return found, ev
        if not event_id.startswith("AAMk"):
            return gerr(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        return item_not_found()

    def _calendar_json(self, account: AccountRec, cal: CalendarRec) -> JSON:
        return {
            "id": cal.id,
            "name": cal.name,
            "color": "auto",
            "hexColor": "",
            "isDefaultCalendar": cal.primary,
            "changeKey": "DwAAABYAAAA" + str(abs(hash(cal.id)) % 10**8),
            "canShare": cal.primary,
            "canViewPrivateItems": True,
            "canEdit": cal.writable,
            "allowedOnlineMeetingProviders": ["teamsForBusiness"] if not account.personal else [],
            "defaultOnlineMeetingProvider": "teamsForBusiness" if not account.personal else "none",
            "isTallyingResponses": True,
            "isRemovable": not cal.primary,
            "owner": (
                {"name": cal.shared_from, "address": cal.shared_from}
                if cal.shared_from
                else {"name": account.display_name, "address": account.email}
            ),
        }

    def _event_out(self, req: Request, ev: EventRec) -> JSON:
        data = copy.deepcopy(ev.data)
        prefer = prefers(req)
        # The default id changes when the event moves; the immutable one only with the header
        # (Obtain immutable identifiers for Outlook resources: "This header only applies to the
        # request it is included with").
        if prefer.get("idtype", "").lower() != "immutableid" and ev.rest_id:
            data["id"] = ev.rest_id
        # Prefer: outlook.timezone: start and end come back in that zone (event resource type)
        out_zone_name = prefer.get("outlook.timezone")
        out_zone = graph_zone(out_zone_name) if out_zone_name else None
        if out_zone is not None and out_zone_name is not None:
            for which in ("start", "end"):
                value = data.get(which)
                if isinstance(value, dict) and isinstance(value.get("dateTime"), str):
                    moment = parse_instant(value["dateTime"], value.get("timeZone") or "UTC")
                    if moment is not None:
                        local = moment.astimezone(out_zone).replace(tzinfo=None)
                        data[which] = {
                            "dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                            "timeZone": out_zone_name,
                        }
        props = data.pop(SVEP, None) or []
        expand = req.q("$expand")
        if expand:
            match = EXPAND_RE.match(expand)
            if match is not None:
                flt = match.group("f")
                if flt:
                    wanted = {i.replace("''", "'").lower() for i in ID_EQ_RE.findall(flt)}
                    chosen = [p for p in props if str(p.get("id", "")).lower() in wanted]
                else:
                    chosen = props
                if chosen:
                    data[SVEP] = chosen
        return data

    def _validate(self, body: JSON, *, partial: bool) -> Response | None:
        for which in ("start", "end"):
            if which not in body:
                if partial:
                    continue
                return gerr(
                    400,
                    "ErrorInvalidRequest",
                    f"Your request can't be completed. The {which} time is missing.",
                )
            value = body[which]
            if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
                return gerr(400, "ErrorInvalidRequest", f"Invalid {which} dateTimeTimeZone.")
            tz = value.get("timeZone")
            if not isinstance(tz, str) or graph_zone(tz) is None:
                return gerr(
                    400,
                    "TimeZoneNotSupportedException",
                    "A valid TimeZone value must be specified. The following TimeZone value is "
                    f"not supported: '{tz}'.",
                )
            if parse_instant(value["dateTime"], tz) is None:
                return gerr(
                    400,
                    "UnableToDeserializePostBody",
                    f"Cannot convert the literal '{value['dateTime']}' to the expected type "
                    "'Edm.DateTimeOffset'.",
                )
        if "showAs" in body and body["showAs"] not in SHOW_AS:
            return gerr(400, "RequestBodyRead", f"Invalid value for showAs: {body['showAs']}")
        if "sensitivity" in body and body["sensitivity"] not in SENSITIVITY:
            return gerr(
                400, "RequestBodyRead", f"Invalid value for sensitivity: {body['sensitivity']}"
            )
        if "isReminderOn" in body and not isinstance(body["isReminderOn"], bool):
            return gerr(400, "RequestBodyRead", "Invalid value for isReminderOn.")
        props = body.get(SVEP)
        props_ok = isinstance(props, list) and all(
            isinstance(p, dict) and isinstance(p.get("id"), str) and "value" in p for p in props
        )
        if props is not None and not props_ok:
            return gerr(400, "ErrorInvalidRequest", "Invalid singleValueExtendedProperties.")
        return None

    @staticmethod
    def _write_denied(call: Call, cal: CalendarRec) -> Response | None:
        """403 for a read-only calendar, and for a shared or delegated one unless the token
        carries Calendars.ReadWrite.Shared (see ``SHARED_WRITE_SCOPES``)."""
        if not cal.writable:
            return access_denied()
        if cal.shared_from:
            scopes = {norm_scope(s) for s in call.token.scopes}
            if not scopes & SHARED_WRITE_SCOPES:
                return access_denied()
        return None

    @staticmethod
    def _span(data: JSON) -> tuple[datetime | None, datetime | None]:
        out: list[datetime | None] = []
        for which in ("start", "end"):
            value = data.get(which) or {}
            out.append(
                parse_instant(str(value.get("dateTime", "")), value.get("timeZone") or "UTC")
                if isinstance(value, dict)
                else None
            )
        return out[0], out[1]

    def _touch(self, ev: EventRec) -> None:
        stamp = now()
        key = "DwAAABYAAAA" + secrets.token_urlsafe(18)
        ev.data["lastModifiedDateTime"] = graph_stamp(stamp)
        ev.data["changeKey"] = key
        ev.data["@odata.etag"] = f'W/"{key}"'
        ev.mod = self.state.tick()

    def _context(self, account: AccountRec, what: str) -> str:
        return f"{self.state.base_url}{GRAPH_PREFIX}/$metadata#users('{account.email}')/{what}"

    # ------------------------------------------------------------------ handlers
    def me(self, call: Call) -> Response:
        a = call.account
        return json_response(
            200,
            {
                "@odata.context": f"{self.state.base_url}{GRAPH_PREFIX}/$metadata#users/$entity",
                "id": a.user_id,
                "displayName": a.display_name,
                "mail": a.email,
                "userPrincipalName": a.email,
            },
        )

    def calendars_list(self, call: Call) -> Response:
        value = [self._calendar_json(call.account, c) for c in call.account.calendars.values()]
        return json_response(
            200, {"@odata.context": self._context(call.account, "calendars"), "value": value}
        )

    def calendar_get(self, call: Call) -> Response:
        cal = self._calendar(call)
        if isinstance(cal, Response):
            return cal
        body = {
            "@odata.context": self._context(call.account, "calendars/$entity"),
            **self._calendar_json(call.account, cal),
        }
        return json_response(200, body)

    def events_create(self, call: Call) -> Response:
        cal = self._calendar(call)
        if isinstance(cal, Response):
            return cal
        body = _json_body(call.req)
        if not isinstance(body, dict):
            return gerr(400, "BadRequest", "Empty Payload. JSON content expected.")
        denied = self._write_denied(call, cal)
        if denied is not None:
            return denied
        txn = body.get("transactionId")
        if isinstance(txn, str) and txn:
            horizon = time.monotonic() - self.state.transaction_window
            for other in call.account.calendars.values():
                for ev in other.events.values():
                    if (
                        not ev.deleted
                        and ev.data.get("transactionId") == txn
                        and ev.txn_at >= horizon
                    ):
                        return json_response(201, self._event_out(call.req, ev))
        invalid = self._validate(body, partial=False)
        if invalid is not None:
            return invalid
        stamp = now()
        event_id, rest_id = graph_event_ids()
        a = call.account
        data: JSON = {
            "@odata.context": self._context(a, f"calendars('{cal.id}')/events/$entity"),
            "@odata.etag": "",
            "id": event_id,
            "createdDateTime": graph_stamp(stamp),
            "lastModifiedDateTime": graph_stamp(stamp),
            "changeKey": "",
            "categories": [],
            "transactionId": txn if isinstance(txn, str) else None,
            "originalStartTimeZone": body["start"]["timeZone"],
            "originalEndTimeZone": body["end"]["timeZone"],
            "iCalUId": "040000008200E00074C5B7101A82E008" + secrets.token_hex(28).upper(),
            "reminderMinutesBeforeStart": 15,
            "isReminderOn": True,
            "hasAttachments": False,
            "subject": "",
            "bodyPreview": "",
            "importance": "normal",
            "sensitivity": "normal",
            "isAllDay": False,
            "isCancelled": False,
            "isOrganizer": True,
            "responseRequested": True,
            "seriesMasterId": None,
            "showAs": "busy",
            "type": "singleInstance",
            "webLink": f"{self.state.base_url}/microsoft/owa/?itemid={event_id}&exvsurl=1",
            "onlineMeetingUrl": None,
            "isOnlineMeeting": False,
            "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
            "body": {"contentType": "text", "content": ""},
            "start": None,
            "end": None,
            "location": {
                "displayName": "",
                "locationType": "default",
                "uniqueIdType": "unknown",
                "address": {},
                "coordinates": {},
            },
            "locations": [],
            "attendees": [],
            "organizer": {"emailAddress": {"name": a.display_name, "address": a.email}},
        }
        self._apply(data, body)
        ev = EventRec(
            data=data, created_seq=self.state.tick(), rest_id=rest_id, txn_at=time.monotonic()
        )
        self._touch(ev)
        cal.events[event_id] = ev
        return json_response(201, self._event_out(call.req, ev))

    @staticmethod
    def _apply(data: JSON, body: JSON) -> None:
        for key, value in body.items():
            if key in (
                "id",
                "@odata.etag",
                "@odata.context",
                "createdDateTime",
                "changeKey",
                "lastModifiedDateTime",
                "iCalUId",
                "organizer",
            ):
                continue
            if key == "transactionId" and data.get("transactionId"):
                continue
            if key == SVEP:
                props = {str(p["id"]).lower(): p for p in data.get(SVEP) or []}
                for p in value or []:
                    props[str(p["id"]).lower()] = {"id": p["id"], "value": p["value"]}
                data[SVEP] = list(props.values())
            elif key == "location" and isinstance(value, dict):
                loc = dict(data.get("location") or {})
                loc.update(value)
                data["location"] = loc
            else:
                data[key] = copy.deepcopy(value)
        content = (data.get("body") or {}).get("content") or ""
        data["bodyPreview"] = re.sub(r"<[^>]+>", "", str(content))[:255]

    def events_get(self, call: Call) -> Response:
        found = self._find_event(call)
        if isinstance(found, Response):
            return found
        return json_response(200, self._event_out(call.req, found[1]))

    def events_update(self, call: Call) -> Response:
        found = self._find_event(call)
        if isinstance(found, Response):
            return found
        cal, ev = found
        body = _json_body(call.req)
        if not isinstance(body, dict):
            return gerr(400, "BadRequest", "Empty Payload. JSON content expected.")
        denied = self._write_denied(call, cal)
        if denied is not None:
            return denied
        invalid = self._validate(body, partial=True)
        if invalid is not None:
            return invalid
        new = copy.deepcopy(ev.data)
        self._apply(new, body)
        start, end = self._span(new)
        if start is None or end is None:
            return gerr(400, "ErrorInvalidRequest", "Invalid start or end.")
        ev.data = new
        self._touch(ev)
        return json_response(200, self._event_out(call.req, ev))

    def events_delete(self, call: Call) -> Response:
        found = self._find_event(call)
        if isinstance(found, Response):
            return found
        cal, ev = found
        denied = self._write_denied(call, cal)
        if denied is not None:
            return denied
        ev.deleted = True
        self._touch(ev)
        return empty_response(204)

    def _listing(self, call: Call, events: list[EventRec], what: str, default_top: int) -> Response:
        req = call.req
        flt = req.q("$filter")
        if flt:
            match = ANY_FILTER_RE.match(flt)
            if match is None:
                return gerr(
                    400,
                    "ErrorInvalidUrlQueryFilter",
                    "The query filter contains one or more invalid nodes.",
                )
            pid = match.group(2).replace("''", "'").lower()
            pval = match.group(3).replace("''", "'") if match.group(3) is not None else None
            events = [
                ev
                for ev in events
                if any(
                    str(p.get("id", "")).lower() == pid and (pval is None or p.get("value") == pval)
                    for p in ev.data.get(SVEP) or []
                )
            ]
        try:
            top = int(req.q("$top") or default_top)
            skip = int(req.q("$skip") or 0)
        except ValueError:
            return gerr(400, "BadRequest", "Invalid $top or $skip.")
        if top < 1 or skip < 0:
            return gerr(400, "BadRequest", "Invalid $top or $skip.")
        top = min(top, 1000)
        page = events[skip : skip + top]
        body: JSON = {
            "@odata.context": self._context(call.account, what),
            "value": [self._event_out(req, ev) for ev in page],
        }
        if skip + top < len(events):
            query = {k: v[0] for k, v in req.query.items()}
            query["$top"] = str(top)
            query["$skip"] = str(skip + top)
            body["@odata.nextLink"] = f"{self.state.base_url}{req.raw_path}?{urlencode(query)}"
        return json_response(200, body)

    def _live(self, call: Call) -> list[EventRec] | Response:
        if call.params.get("cal") == "*":
            cals = list(call.account.calendars.values())
        else:
            cal = self._calendar(call)
            if isinstance(cal, Response):
                return cal
            cals = [cal]
        out = [ev for c in cals for ev in c.events.values() if not ev.deleted]
        return sorted(out, key=lambda e: e.created_seq)

    def events_list(self, call: Call) -> Response:
        events = self._live(call)
        if isinstance(events, Response):
            return events
        return self._listing(call, events, "events", 10)

    def calendar_view(self, call: Call) -> Response:
        req = call.req
        start_text, end_text = req.q("startDateTime"), req.q("endDateTime")
        if not start_text or not end_text:
            return gerr(
                400,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters "
                "StartDateTime and EndDateTime.",
            )
        lo, hi = parse_instant(start_text, "UTC"), parse_instant(end_text, "UTC")
        if lo is None or hi is None:
            return gerr(
                400,
                "ErrorInvalidParameter",
                "The value of StartDateTime or EndDateTime is not a valid date and time.",
            )
        events = self._live(call)
        if isinstance(events, Response):
            return events
        chosen = []
        for ev in events:
            start, end = self._span(ev.data)
            if start is not None and end is not None and overlaps(start, end, lo, hi):
                chosen.append((start, ev))
        chosen.sort(key=lambda pair: (pair[0], pair[1].created_seq))
        return self._listing(call, [ev for _, ev in chosen], "calendarView", 10)

    def get_schedule(self, call: Call) -> Response:
        if call.account.personal:
            return gerr(
                400,
                "ErrorInvalidRequest",
                "Your request can't be completed. getSchedule is not available for personal "
                "Microsoft accounts.",
            )
        body = _json_body(call.req)
        if not isinstance(body, dict):
            return gerr(400, "BadRequest", "Empty Payload. JSON content expected.")
        schedules = body.get("schedules")
        start_obj, end_obj = body.get("startTime"), body.get("endTime")
        if not isinstance(schedules, list) or not schedules:
            return gerr(400, "ErrorInvalidParameter", "The parameter 'schedules' is missing.")
        if not isinstance(start_obj, dict) or not isinstance(end_obj, dict):
            return gerr(400, "ErrorInvalidParameter", "startTime and endTime are required.")
        lo = parse_instant(str(start_obj.get("dateTime", "")), start_obj.get("timeZone") or "UTC")
        hi = parse_instant(str(end_obj.get("dateTime", "")), end_obj.get("timeZone") or "UTC")
        if lo is None or hi is None or hi <= lo:
            return gerr(400, "ErrorInvalidParameter", "Invalid time window.")
        try:
            interval = int(body.get("availabilityViewInterval") or 30)
        except (TypeError, ValueError):
            interval = 30
        interval = min(max(interval, 5), 1440)
        value = []
        for address in schedules:
            rec = self.state.accounts.get(("outlook", str(address).lower()))
            if rec is None or rec.personal:
                value.append(
                    {
                        "scheduleId": address,
                        "availabilityView": "",
                        "error": {
                            "message": "The user doesn't exist or isn't licensed.",
                            "responseCode": "ErrorMailRecipientNotFound",
                        },
                        "scheduleItems": [],
                    }
                )
                continue
            items = []
            for ev in rec.primary().events.values():
                show = ev.data.get("showAs", "busy")
                if ev.deleted or ev.data.get("isCancelled") or show == "free":
                    continue
                start, end = self._span(ev.data)
                if start is None or end is None or not overlaps(start, end, lo, hi):
                    continue
                items.append((start, end, show, ev))
            items.sort(key=lambda t: t[0])
            view = []
            rank = {"free": 0, "tentative": 1, "busy": 2, "oof": 3, "workingElsewhere": 4}
            slot = lo
            step = timedelta(minutes=interval)
            while slot < hi:
                level = 0
                for start, end, show, _ in items:
                    if start < slot + step and end > slot:
                        level = max(level, rank.get(show, 2))
                view.append(str(level))
                slot += step
            value.append(
                {
                    "scheduleId": address,
                    "availabilityView": "".join(view),
                    "scheduleItems": [
                        {
                            "isPrivate": False,
                            "status": show,
                            "subject": ev.data.get("subject", ""),
                            "location": (ev.data.get("location") or {}).get("displayName", ""),
                            "start": {"dateTime": _naive_utc(start), "timeZone": "UTC"},
                            "end": {"dateTime": _naive_utc(end), "timeZone": "UTC"},
                        }
                        for start, end, show, ev in items
                    ],
                    "workingHours": {
                        "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                        "startTime": "08:00:00.0000000",
                        "endTime": "17:00:00.0000000",
                        "timeZone": {"name": "UTC"},
                    },
                }
            )
        return json_response(
            200,
            {
                "@odata.context": f"{self.state.base_url}{GRAPH_PREFIX}/$metadata#"
                "Collection(microsoft.graph.scheduleInformation)",
                "value": value,
            },
        )

    # ------------------------------------------------------------------ direct calls and $batch
    def api(self, req: Request) -> Response:
        return run_call(self, self.state, req, take_slot=True)

    def batch(self, req: Request) -> Response:
        # JSON batching: the $batch request answers 200 and each request inside it has its own
        # status (Microsoft Graph, "Combine multiple requests in one HTTP call using JSON
        # batching"). Each is authenticated on its own: an expired token shows as a 401 inside
        # a 200 answer (msgraph-sdk-dotnet#2660). Without any bearer the call is refused whole.
        if req.bearer() is None:
            return self.unauthorized(req, False)
        body = _json_body(req)
        items = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return gerr(400, "BadRequest", "Invalid batch payload format.")
        if len(items) > MAX_BATCH:
            return gerr(
                400,
                "BadRequest",
                f"The batch request contains {len(items)} requests; at most {MAX_BATCH} are "
                "allowed.",
            )
        ids: set[str] = set()
        for item in items:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("id"), str | int)
                or not isinstance(item.get("method"), str)
                or not isinstance(item.get("url"), str)
            ):
                return gerr(400, "BadRequest", "Each batch request needs id, method and url.")
            if str(item["id"]) in ids:
                return gerr(400, "BadRequest", "Batch request ids must be unique.")
            ids.add(str(item["id"]))
        with self.state.lock:
            self.state.stats.batches["outlook"] += 1
        sequential = any(item.get("dependsOn") for item in items)
        results: dict[str, JSON] = {}
        if sequential:
            for item in items:
                deps = [str(d) for d in item.get("dependsOn") or []]
                if any(not (200 <= results.get(d, {}).get("status", 0) < 300) for d in deps):
                    results[str(item["id"])] = {
                        "id": str(item["id"]),
                        "status": 424,
                        "headers": {"Content-Type": "application/json"},
                        "body": {
                            "error": {
                                "code": "FailedDependency",
                                "message": "A request it depends on failed.",
                            }
                        },
                    }
                    continue
                results[str(item["id"])] = self._batch_item(req, item)
        else:
            workers = max(1, min(len(items), self.state.mailbox_concurrency))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graph-batch") as pool:
                futures = [pool.submit(self._batch_item, req, item) for item in items]
                for item, fut in zip(items, futures, strict=True):
                    results[str(item["id"])] = fut.result()
        return json_response(200, {"responses": [results[str(i["id"])] for i in items]})

    def _batch_item(self, outer: Request, item: JSON) -> JSON:
        url = str(item["url"])
        if "://" in url:
            parts = urlsplit(url)
            url = parts.path + (f"?{parts.query}" if parts.query else "")
            url = url.removeprefix("/v1.0")
        if not url.startswith("/"):
            url = "/" + url
        headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
        if outer.headers.get("authorization"):
            headers["authorization"] = outer.headers["authorization"]
        raw = item.get("body")
        payload = b""
        if raw is not None:
            payload = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
        inner = Request.from_target(str(item["method"]), GRAPH_PREFIX + url, headers, payload)
        resp = run_call(self, self.state, inner, in_batch=True, take_slot=True)
        out: JSON = {"id": str(item["id"]), "status": resp.status}
        hdrs = {name: value for name, value in resp.headers if name.lower() != "content-length"}
        if hdrs:
            out["headers"] = hdrs
        if resp.body:
            try:
                out["body"] = json.loads(resp.body)
            except ValueError:
                out["body"] = resp.body.decode("utf-8", "replace")
        return out

    # ------------------------------------------------------------------ OAuth
    def authorize(self, req: Request) -> Response:
        params = req.form() if req.method == "POST" else {k: v[0] for k, v in req.query.items()}
        client_id = params.get("client_id", "")
        if client_id != self.state.clients["outlook"]:
            return error_page(
                400,
                "Sign in error",
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the "
                "directory.",
            )
        redirect_uri = params.get("redirect_uri", "")
        if not is_localhost_redirect(redirect_uri):
            return error_page(
                400,
                "Sign in error",
                f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does "
                "not match the redirect URIs configured for the application.",
            )
        state_param = params.get("state")

        def fail(error: str, description: str) -> Response:
            out = {"error": error, "error_description": description}
            if state_param is not None:
                out["state"] = state_param
            return redirect(with_query(redirect_uri, out))

        if params.get("response_type") != "code":
            return fail(
                "unsupported_response_type",
                "AADSTS700054: response_type 'id_token' is not enabled for the application.",
            )
        scopes = params.get("scope", "").split()
        if not scopes:
            return fail(
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'scope'.",
            )
        challenge = params.get("code_challenge", "")
        if not challenge or params.get("code_challenge_method") != "S256":
            return fail(
                "invalid_request",
                "AADSTS9002325: Proof Key for Code Exchange is required for this client.",
            )
        tenant_refusal = self._tenant_refusal(req, client_id)
        if tenant_refusal is not None:
            # Entra redirects AADSTS50194 back to the app as invalid_request (field reports:
            # microsoftgraph/aspnetcore-connect-sample#65, microsoftgraph/msgraph-sample-phpapp#199)
            return fail("invalid_request", tenant_refusal)
        if req.method == "GET" and not self.state.auto_approve:
            return oc.consent_page("Microsoft", req.raw_path, params, self.state, "outlook")
        decision, email = oc.decide(self.state, "outlook", params)
        prompt = params.get("prompt", "").split()
        with self.state.lock:
            session = self.state.oauth.browser_session.get("outlook")
        if session is not None and not {"select_account", "login"} & set(prompt):
            # Single sign-on: the browser's current Microsoft session is used without asking
            # unless prompt=select_account (or login) "interrupts single sign-on" (Microsoft
            # identity platform and OAuth 2.0 authorization code flow, Request an authorization
            # code: prompt). The harsher reading: login_hint does not override the session.
            email = session
        if email is None:
            return error_page(400, "No account", "The sandbox has no Microsoft account.")
        if decision != "allow":
            return fail("access_denied", "AADSTS65004: User declined to consent to access the app.")
        with self.state.lock:
            rec = self.state.find("outlook", email)
            if not self.state.oauth.apps["outlook"].user_consent:
                # A tenant where only administrators may consent ("Configure how users consent
                # to applications", Microsoft Entra): the user cannot grant Calendars.ReadWrite.
                return fail("consent_required", consent_message(client_id))
            grant = self.state.locked_grant_for("outlook", client_id, rec.email)
            if grant is None:
                grant = self.state.locked_new_grant("outlook", client_id, rec.email, set(scopes))
            grant.scopes |= set(scopes)
            code = "0.A" + secrets.token_urlsafe(60)
            self.state.codes[code] = AuthCode(
                code=code,
                app="outlook",
                client_id=client_id,
                email=rec.email,
                redirect_uri=redirect_uri,
                challenge=challenge,
                scopes=scopes,
                issue_refresh="offline_access" in scopes,
                include_granted=False,
                expires_at=time.monotonic() + CODE_TTL,
            )
        out = {"code": code}
        if state_param is not None:
            out["state"] = state_param
        return redirect(with_query(redirect_uri, out))

    def _tenant_refusal(self, req: Request, client_id: str) -> str | None:
        """AADSTS50194 for a single-tenant registration reached through /common: "Application
        is not configured as a multi-tenant application. Usage of the /common endpoint is not
        supported for such applications created after '10/15/2018'" (Microsoft Entra
        authentication and authorization error codes)."""
        segs = req.segments()
        tenant = segs[1] if len(segs) > 1 else "common"
        with self.state.lock:
            single = self.state.oauth.apps["outlook"].single_tenant
        if single is None or tenant.lower() not in MULTI_TENANT_PATHS:
            return None
        return (
            f"AADSTS50194: Application '{client_id}'(calsync) is not configured as a "
            "multi-tenant application. Usage of the /common endpoint is not supported for such "
            "applications created after '10/15/2018'. Use a tenant-specific endpoint or "
            "configure the application to be multi-tenant."
        )

    def _refuse_client(self, req: Request, client_id: str) -> Response | None:
        """An unknown client (AADSTS700016), or a single-tenant app asked through ``/common``
        (AADSTS50194): the answer Entra gives; None when the client may go on."""
        if client_id != self.state.clients["outlook"]:
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )
        refusal = self._tenant_refusal(req, client_id)
        if refusal is not None:
            return aad_error(400, "invalid_request", 50194, refusal.split(": ", 1)[1])
        return None

    def devicecode(self, req: Request) -> Response:
        """The device authorization endpoint ("Microsoft identity platform and the OAuth 2.0
        device authorization grant flow", Device authorization request)."""
        form = req.form()
        client_id = form.get("client_id", "")
        refused = self._refuse_client(req, client_id)
        if refused is not None:
            return refused
        scopes = form.get("scope", "").split()
        if not scopes:
            return aad_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'scope'.",
            )
        with self.state.lock:
            od = self.state.oauth
            user_code = od.new_user_code()
            device_code = "DAQABAAEAAA" + secrets.token_urlsafe(60)
            od.device_codes[device_code] = DeviceCodeRec(
                device_code=device_code,
                user_code=user_code,
                client_id=client_id,
                scopes=scopes,
                expires_at=time.monotonic() + od.device_ttl,
                interval=od.device_interval,
            )
            uri = f"{self.state.base_url}/microsoft/devicelogin"
            out = {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": uri,
                "expires_in": int(od.device_ttl),
                "interval": int(od.device_interval)
                if od.device_interval.is_integer()
                else od.device_interval,
                "message": f"To sign in, use a web browser to open the page {uri} and enter the "
                f"code {user_code} to authenticate.",
            }
        return json_response(200, out, [("Cache-Control", "no-store")])

    def devicelogin(self, req: Request) -> Response:
        """The page the user enters the code on (the sandbox's microsoft.com/devicelogin): a
        form with the code, the account, and Allow / Deny."""
        if req.method == "POST":
            form = req.form()
            with self.state.lock:
                try:
                    rec = self.state.oauth.by_user_code(form.get("code", ""))
                except KeyError:
                    return error_page(400, "Code not found", "That code was not recognised.")
                acct = self.state.accounts.get(("outlook", form.get("account", "").lower()))
                first = self.state.first_account("outlook")
                chosen = acct or first
                if chosen is None:
                    return error_page(400, "No account", "The sandbox has no Microsoft account.")
                rec.email = chosen.email
                rec.decision = "allow" if form.get("decision") == "allow" else "deny"
            return error_page(200, "Done", "You can close this window and return to the device.")
        with self.state.lock:
            emails = [r.email for (a, _), r in self.state.accounts.items() if a == "outlook"]
        options = "".join(f"<option>{escape(e)}</option>" for e in emails)
        body = (
            "<h1>Microsoft sandbox: enter code</h1>"
            '<form method="post"><label>Code <input name="code"></label> '
            f'<label>Account <select name="account">{options}</select></label> '
            '<button name="decision" value="allow">Allow</button> '
            '<button name="decision" value="deny">Deny</button></form>'
        )
        return html_response(200, "Enter code", body)

    def _token_device(self, form: dict[str, str], client_id: str) -> Response:
        """Polling with the device code: authorization_pending until the user acts,
        authorization_declined, expired_token after expires_in, slow_down when polled faster
        than the interval (RFC 8628 §3.5), then the tokens once."""
        with self.state.lock:
            od = self.state.oauth
            rec = od.device_codes.get(form.get("device_code", ""))
            if rec is None or rec.client_id != client_id:
                return aad_error(
                    400,
                    "bad_verification_code",
                    70019,
                    "The provided value for the input parameter 'device_code' is not valid.",
                )
            now_m = time.monotonic()
            if now_m > rec.expires_at:
                return aad_error(
                    400, "expired_token", 70020, "The provided device code has expired."
                )
            if rec.redeemed:
                return aad_error(
                    400, "invalid_grant", 54005, "The device code was already redeemed."
                )
            previous, rec.last_poll = rec.last_poll, now_m
            if previous is not None and now_m - previous < rec.interval:
                return aad_error(400, "slow_down", 70016, "Polling faster than the interval.")
            if rec.decision is None:
                return aad_error(
                    400,
                    "authorization_pending",
                    70016,
                    "The provided request has not yet been authorized by the user. The user must "
                    "input their code.",
                )
            if rec.decision == "deny":
                return aad_error(
                    400, "authorization_declined", 70000, "The user declined the authorization."
                )
            if not od.apps["outlook"].user_consent:
                return aad_error(400, "invalid_grant", 65001, consent_message(client_id)[13:])
            email = rec.email or ""
            acct = self.state.accounts.get(("outlook", email.lower()))
            if acct is None:
                return aad_error(400, "invalid_grant", 50034, "The user account does not exist.")
            grant = self.state.locked_grant_for("outlook", client_id, acct.email)
            if grant is None:
                grant = self.state.locked_new_grant(
                    "outlook", client_id, acct.email, set(rec.scopes)
                )
            grant.scopes |= set(rec.scopes)
            rec.redeemed = True
            self.state.stats.code_exchanges[("outlook", acct.email)] += 1
            out = self._issue(rec.scopes, grant, "offline_access" in rec.scopes)
        return json_response(200, out, [("Cache-Control", "no-store"), ("Pragma", "no-cache")])

    def token(self, req: Request) -> Response:
        form = req.form()
        with self.state.lock:
            fault = self.state.oauth.take_token_fault("outlook")
        if fault is not None:
            return aad_error(fault.status, fault.error, 0, "Injected by the sandbox.")
        client_id, secret = oc.client_credentials(req, form)
        refused = self._refuse_client(req, client_id)
        if refused is not None:
            return refused
        if secret is not None or form.get("client_assertion"):
            return aad_error(
                401,
                "invalid_client",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be "
                "presented.",
            )
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._token_code(form, client_id)
        if grant_type == "refresh_token":
            return self._token_refresh(form, client_id)
        if grant_type == DEVICE_GRANT:
            return self._token_device(form, client_id)
        if grant_type is None:
            return aad_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    def _issue(self, grant_scopes: list[str], grant: Any, refresh: bool) -> JSON:
        api_scopes = [s for s in grant_scopes if s.lower() not in RESERVED_SCOPES]
        access = self.state.locked_issue_access(grant, set(grant_scopes))
        out: JSON = {
            "token_type": "Bearer",
            "scope": " ".join(api_scopes),
            "expires_in": 3600,
            "ext_expires_in": 3600,
            "access_token": access,
        }
        if refresh:
            out["refresh_token"] = self.state.locked_issue_refresh(grant)
        return out

    def _token_code(self, form: dict[str, str], client_id: str) -> Response:
        with self.state.lock:
            code = self.state.codes.get(form.get("code", ""))
            if code is None or code.app != "outlook" or code.client_id != client_id:
                return aad_error(
                    400,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                )
            if code.used:
                return aad_error(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new "
                    "valid code or use an existing refresh token.",
                )
            if time.monotonic() > code.expires_at:
                return aad_error(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code "
                    "or refresh token has expired due to inactivity.",
                )
            if form.get("redirect_uri") != code.redirect_uri:
                return aad_error(
                    400,
                    "invalid_grant",
                    500112,
                    "The reply address does not match the reply address provided when "
                    "requesting Authorization code.",
                )
            verifier = form.get("code_verifier", "")
            if not verifier or not oc.s256_matches(verifier, code.challenge):
                return aad_error(
                    400,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the "
                    "authorization request.",
                )
            grant = self.state.locked_grant_for("outlook", client_id, code.email)
            if grant is None:
                return aad_error(
                    400,
                    "invalid_grant",
                    50173,
                    "The provided grant has expired due to it being revoked.",
                )
            code.used = True
            self.state.stats.code_exchanges[("outlook", code.email)] += 1
            out = self._issue(code.scopes, grant, code.issue_refresh)
        return json_response(200, out, [("Cache-Control", "no-store"), ("Pragma", "no-cache")])

    def _token_refresh(self, form: dict[str, str], client_id: str) -> Response:
        with self.state.lock:
            token = form.get("refresh_token", "")
            grant = self.state.refresh_tokens.get(token)
            if grant is None or not grant.alive or grant.app != "outlook":
                return aad_error(
                    400,
                    "invalid_grant",
                    70000,
                    "The provided value for the 'refresh_token' is not valid. The refresh token "
                    "has been used, revoked or has expired.",
                )
            if grant.client_id != client_id:
                return aad_error(
                    400,
                    "invalid_grant",
                    70000,
                    "The refresh token was issued to a different client.",
                )
            wanted = form.get("scope", "").split() or sorted(grant.scopes)
            granted = {norm_scope(s) for s in grant.scopes}
            extra = [
                s
                for s in wanted
                if s.lower() not in RESERVED_SCOPES and norm_scope(s) not in granted
            ]
            if extra:
                return aad_error(
                    400,
                    "invalid_grant",
                    65001,
                    "The user or administrator has not consented to use the application for "
                    f"the scope '{extra[0]}'.",
                )
            # A new refresh token comes with every refresh, but "the Microsoft identity platform
            # doesn't revoke old refresh tokens when used to fetch new access tokens" (Microsoft
            # identity platform, Refresh tokens): two clients refreshing at once both succeed.
            self.state.stats.refreshes[("outlook", grant.email)] += 1
            keep = sorted(set(wanted) | ({"offline_access"} & grant.scopes))
            out = self._issue(keep, grant, True)
        return json_response(200, out, [("Cache-Control", "no-store"), ("Pragma", "no-cache")])


def _json_body(req: Request) -> Any:
    try:
        return req.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _naive_utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000")
