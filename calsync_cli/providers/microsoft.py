"""Microsoft Graph v1.0 (Outlook calendar) client.

Creates carry ``transactionId = transaction_id_for(key)``: a UUID5 of ``EventData.key`` in a fixed
calsync namespace. Graph uses it to make a repeated create answer the event it already made
instead of a second one. It cannot be changed later, and Graph never "restores" a deleted event:
a create after a delete makes a new event. The engine gives every generation of a visit's event
its own key (the key changes after a delete), so the new event gets a new transactionId.

Times: ``start``/``end`` are the practice's local wall time (no offset) with the Windows name of
the practice's zone as ``timeZone``. Graph takes "any of the time zones supported by Windows" and
only a short list of IANA names (dateTimeTimeZone resource type): ``America/Detroit`` or
``Etc/UTC`` answer ``TimeZoneNotSupportedException``. The IANA -> Windows map is CLDR's
windowsZones data as ``tzlocal`` ships it; a zone it does not know is sent as UTC wall time.
``calendarView`` is read with ``Prefer: outlook.timezone="UTC"``.

Every call carries ``Prefer: IdType="ImmutableId"`` ("This header only applies to the request it
is included with", Obtain immutable identifiers for Outlook resources): otherwise an event the
user moves to another calendar gets a new id and calsync would create it again.

Calendars shared with or delegated to the user report ``canEdit: true`` but writing to them
needs ``Calendars.ReadWrite.Shared`` ("events in all calendars the user has permissions to
access ... delegate and shared calendars", Microsoft Graph permissions reference). calsync asks
for ``Calendars.ReadWrite`` only, so ``list_calendars`` marks a calendar owned by someone else
not writable: ``calendars select`` then refuses it instead of every write failing later.

Each event is private (``sensitivity``) unless the filter says otherwise, and its reminder is off
(``isReminderOn: false``) unless the reminders filter turns it on.

The calsync tag is the single-value extended property ``TAG_PROPERTY_ID``. Busy time skips
``showAs`` ``free`` and ``workingElsewhere`` and cancelled events. ``$batch`` takes at most 20
requests; Outlook allows 4 concurrent requests per mailbox, which the session enforces.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx2
from tzlocal.windows_tz import tz_win, win_tz

from calsync_cli.providers._http import (
    DEFAULT_RETRY_BUDGET,
    ApiSession,
    ErrorRule,
    SleepFunc,
    json_body,
    json_object,
    run_batch,
    translate,
)
from calsync_cli.providers.base import (
    AuthExpired,
    BusyBlock,
    Calendar,
    CalendarProvider,
    CalendarUnavailable,
    EventData,
    Gone,
    InvalidRequest,
    NotFound,
    Operation,
    OperationResult,
    PermissionDenied,
    ProviderError,
    RateLimited,
    TaggedEvent,
    TokenSource,
    Unavailable,
)

PROVIDER_NAME = "Microsoft Graph"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
#: Graph's limit of requests in one ``$batch``
BATCH_LIMIT = 20
#: the namespace of ``transaction_id_for`` (fixed forever: changing it breaks idempotency)
TRANSACTION_NAMESPACE = uuid.UUID("9b7e4c2a-5d1f-4e8b-a3c6-0f2d8e71b5a4")
#: the property set GUID of calsync's tag (fixed forever)
TAG_PROPERTY_SET = "{4f9d2a3e-8c1b-4e57-9a60-3d2b7c5e1f08}"
TAG_PROPERTY_ID = f"String {TAG_PROPERTY_SET} Name calsync"
NOT_BUSY = frozenset({"free", "workingElsewhere"})
#: on every call (see the module docstring)
IMMUTABLE_IDS = 'IdType="ImmutableId"'
#: events per page when listing calsync's own events
TAGGED_PAGE = 500
#: times in UTC, and the body as the text calsync sent (Graph answers HTML unless asked: event
#: resource type, ``body``; ``Prefer: outlook.body-content-type``)
TAGGED_PREFER = 'outlook.timezone="UTC", outlook.body-content-type="text"'


def transaction_id_for(key: str) -> str:
    """The Graph ``transactionId`` for an ``EventData.key``: a UUID5 in calsync's namespace."""
    return str(uuid.uuid5(TRANSACTION_NAMESPACE, key))


# -- error translation ---------------------------------------------------------------------------

#: the first matching rule wins (Microsoft Graph error responses and resource types)
GRAPH_ERROR_TABLE: tuple[ErrorRule, ...] = (
    ErrorRule(429, None, RateLimited),
    ErrorRule(401, None, AuthExpired),
    ErrorRule(403, None, PermissionDenied),
    ErrorRule(404, None, NotFound),
    ErrorRule(410, None, Gone),
    ErrorRule(408, None, Unavailable),
    ErrorRule(range(500, 600), None, Unavailable),
    ErrorRule(range(400, 500), None, InvalidRequest),
)


def _graph_reason(data: Any) -> tuple[str | None, str | None]:
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, str):
        description = data.get("error_description")
        return error, description if isinstance(description, str) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )


def graph_error(response: httpx2.Response) -> ProviderError:
    """Translate a non-2xx Graph answer into a ``ProviderError`` (see ``GRAPH_ERROR_TABLE``)."""
    code, message = _graph_reason(json_body(response))
    return translate(
        response, provider=PROVIDER_NAME, table=GRAPH_ERROR_TABLE, reason=code, message=message
    )


# -- event payloads ------------------------------------------------------------------------------


def _zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _wall_time(moment: datetime, zone: tzinfo) -> str:
    if moment.tzinfo is None:
        raise ValueError("calendar times must be timezone-aware")
    return moment.astimezone(zone).replace(tzinfo=None).isoformat()


def windows_zone(name: str) -> str | None:
    """The Windows zone name Graph takes for an IANA zone (CLDR windowsZones), or None."""
    if name in ("UTC", "Etc/UTC", "Etc/GMT", "Etc/Universal", "Etc/Zulu", "GMT", "Zulu"):
        return "UTC"
    windows = tz_win.get(name)
    if windows is None:
        zone = _zone(name)
        key = getattr(zone, "key", None)
        windows = tz_win.get(key) if isinstance(key, str) else None
    return windows


def event_body(event: EventData) -> dict[str, Any]:
    """The Graph event resource for ``event`` (without ``transactionId``)."""
    zone = _zone(event.timezone)
    zone_name = windows_zone(event.timezone) if zone is not None else None
    if zone is None or zone_name is None:  # unknown to Graph: the same instant as UTC
        zone, zone_name = UTC, "UTC"
    return {
        "subject": event.title,
        "body": {"contentType": "text", "content": event.description},
        "location": {"displayName": event.location or ""},
        "start": {"dateTime": _wall_time(event.start, zone), "timeZone": zone_name},
        "end": {"dateTime": _wall_time(event.end, zone), "timeZone": zone_name},
        "sensitivity": "private" if event.private else "normal",
        "isReminderOn": bool(event.reminders),
        "singleValueExtendedProperties": [{"id": TAG_PROPERTY_ID, "value": event.tag}],
    }


def create_body(event: EventData) -> dict[str, Any]:
    return dict(event_body(event), transactionId=transaction_id_for(event.key))


def _parse_time(value: Any) -> datetime | None:
    """A Graph ``dateTimeTimeZone`` as an aware datetime (UTC when the zone is unknown)."""
    if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
        return None
    raw: str = value["dateTime"].replace("Z", "+00:00")
    head, dot, rest = raw.partition(".")
    if dot:  # Graph sends seven fractional digits; Python reads at most six
        digits = "".join(c for c in rest if c.isdigit())
        raw = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    parsed = datetime.fromisoformat(raw)
    if parsed.tzinfo is None:
        name = str(value.get("timeZone") or "UTC")
        zone = _zone(name) or (_zone(win_tz[name]) if name in win_tz else None) or UTC
        parsed = parsed.replace(tzinfo=zone)
    return parsed


def _graph_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("calendar times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tag_of(item: dict[str, Any]) -> str | None:
    for prop in item.get("singleValueExtendedProperties") or ():
        if (
            isinstance(prop, dict)
            and str(prop.get("id", "")).lower() == TAG_PROPERTY_ID.lower()
            and isinstance(prop.get("value"), str)
        ):
            return str(prop["value"])
    return None


# -- the provider --------------------------------------------------------------------------------


class OutlookCalendarProvider(CalendarProvider):
    """One Microsoft account's Outlook calendars, through Graph v1.0 (see the module docstring)."""

    max_batch = BATCH_LIMIT
    max_concurrency = 4
    repeated_create_returns_original = True

    def __init__(
        self,
        client: httpx2.AsyncClient,
        tokens: TokenSource,
        *,
        graph_url: str = DEFAULT_GRAPH_URL,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        sleep: SleepFunc | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.graph_url = graph_url.rstrip("/")
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        self._http = ApiSession(
            client,
            tokens,
            provider=PROVIDER_NAME,
            translate=graph_error,
            retry_budget=retry_budget,
            sleep=sleep,
            max_concurrency=self.max_concurrency,
            headers={"Prefer": IMMUTABLE_IDS},
            **extra,
        )
        self._account: str | None = None

    # -- paths (relative to the version root, as $batch wants them) ----------------------------

    @staticmethod
    def _events_path(calendar_id: str) -> str:
        return f"/me/calendars/{quote(calendar_id, safe='')}/events"

    def _event_path(self, calendar_id: str, event_id: str) -> str:
        return f"{self._events_path(calendar_id)}/{quote(event_id, safe='')}"

    def _url(self, path: str) -> str:
        return self.graph_url + path

    async def _pages(
        self, path: str, params: dict[str, str], headers: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        url: str | None = self._url(path)
        query: dict[str, str] | None = params
        while url is not None:
            page = json_object(
                await self._http.call("GET", url, params=query, headers=headers), PROVIDER_NAME
            )
            items.extend(item for item in page.get("value") or () if isinstance(item, dict))
            link = page.get("@odata.nextLink")
            url, query = (link, None) if isinstance(link, str) and link else (None, None)
        return items

    # -- reads ---------------------------------------------------------------------------------

    async def list_calendars(self) -> list[Calendar]:
        items = list(await self._pages("/me/calendars", {"$top": "100"}))
        for item in items:
            if item.get("isDefaultCalendar") and self._account is None:
                address = _owner(item)
                if address is not None:
                    self._account = address
        calendars: list[Calendar] = []
        for item in items:
            if not isinstance(item.get("id"), str):
                continue
            calendars.append(
                Calendar(
                    id=item["id"],
                    name=str(item.get("name") or item["id"]),
                    primary=bool(item.get("isDefaultCalendar", False)),
                    writable=self._writable(item),
                )
            )
        return calendars

    def _writable(self, item: dict[str, Any]) -> bool:
        """``canEdit``, except for a calendar someone else owns (shared or delegated): that
        needs ``Calendars.ReadWrite.Shared``, which calsync does not hold."""
        if not item.get("canEdit"):
            return False
        if item.get("isDefaultCalendar"):
            return True
        owner = _owner(item)
        return owner is None or self._account is None or owner.lower() == self._account.lower()

    async def calendar_problem(self, calendar_id: str) -> CalendarUnavailable | None:
        """``CalendarUnavailable`` when the calendar is gone or calsync may not write to it;
        None when it is fine (so the failure was the event's)."""
        if self._account is None:
            await self.account()
        try:
            item = json_object(
                await self._http.call(
                    "GET", self._url(f"/me/calendars/{quote(calendar_id, safe='')}")
                ),
                PROVIDER_NAME,
            )
        except NotFound:
            return CalendarUnavailable(
                f"{PROVIDER_NAME}: the calendar is gone from the mailbox", status=404
            )
        if not self._writable(item):
            return CalendarUnavailable(
                f"{PROVIDER_NAME}: calsync may not write to the calendar (read-only, shared or "
                "delegated)",
                status=403,
            )
        return None

    async def _explain(self, calendar_id: str, exc: ProviderError, *, create: bool) -> None:
        """Raise what a write's 404/403 means: the calendar's problem, or the event's."""
        if isinstance(exc, PermissionDenied) or (create and isinstance(exc, NotFound)):
            problem = await self.calendar_problem(calendar_id)
            if problem is not None:
                raise problem from None
        elif isinstance(exc, NotFound):
            problem = await self.calendar_problem(calendar_id)
            if problem is not None and problem.status == 404:
                raise problem from None
        raise exc

    async def find_event_by_tag(self, calendar_id: str, tag: str) -> str | None:
        """One ``$filter`` on the tag's single-value extended property (Get
        singleValueLegacyExtendedProperty: "apply an eq operator on the id property" and, for a
        string, "eq" on ``value``)."""
        value = tag.replace("'", "''")
        params = {
            "$filter": (
                f"singleValueExtendedProperties/any(ep: ep/id eq '{TAG_PROPERTY_ID}'"
                f" and ep/value eq '{value}')"
            ),
            "$select": "id",
            "$top": "10",
        }
        try:
            page = json_object(
                await self._http.call(
                    "GET", self._url(self._events_path(calendar_id)), params=params
                ),
                PROVIDER_NAME,
            )
        except (NotFound, PermissionDenied) as exc:
            await self._explain(calendar_id, exc, create=True)
            raise
        for item in page.get("value") or ():
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                return str(item["id"])
        return None

    async def list_tagged_events(
        self, calendar_id: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[TaggedEvent]]:
        """``calendarView`` of the window, filtered on the tag property's id and expanded with
        it, ``TAGGED_PAGE`` events a page."""
        url: str | None = self._url(f"/me/calendars/{quote(calendar_id, safe='')}/calendarView")
        query: dict[str, str] | None = {
            "startDateTime": _graph_utc(start),
            "endDateTime": _graph_utc(end),
            "$top": str(TAGGED_PAGE),
            "$filter": f"singleValueExtendedProperties/any(ep: ep/id eq '{TAG_PROPERTY_ID}')",
            "$expand": f"singleValueExtendedProperties($filter=id eq '{TAG_PROPERTY_ID}')",
        }
        while url is not None:
            page = json_object(
                await self._http.call("GET", url, params=query, headers={"Prefer": TAGGED_PREFER}),
                PROVIDER_NAME,
            )
            found: list[TaggedEvent] = []
            for item in page.get("value") or ():
                if isinstance(item, dict) and not item.get("isCancelled"):
                    tagged = _tagged(item)
                    if tagged is not None:
                        found.append(tagged)
            yield found
            link = page.get("@odata.nextLink")
            url, query = (link, None) if isinstance(link, str) and link else (None, None)

    async def account(self) -> str:
        """The default calendar owner's address (``/me`` when the calendar does not say)."""
        if self._account is None:
            await self.list_calendars()
        if self._account is None:
            me = json_object(await self._http.call("GET", self._url("/me")), PROVIDER_NAME)
            address = me.get("mail") or me.get("userPrincipalName")
            if not isinstance(address, str) or not address:
                raise NotFound(f"{PROVIDER_NAME}: the account has no address")
            self._account = address
        return self._account

    async def list_busy(self, calendar_id: str, start: datetime, end: datetime) -> list[BusyBlock]:
        params = {
            "startDateTime": _graph_utc(start),
            "endDateTime": _graph_utc(end),
            "$top": "250",
            "$select": "id,start,end,showAs,isCancelled",
            "$expand": f"singleValueExtendedProperties($filter=id eq '{TAG_PROPERTY_ID}')",
        }
        items = await self._pages(
            f"/me/calendars/{quote(calendar_id, safe='')}/calendarView",
            params,
            headers={"Prefer": 'outlook.timezone="UTC"'},
        )
        blocks: list[BusyBlock] = []
        for item in items:
            if item.get("isCancelled") or item.get("showAs") in NOT_BUSY:
                continue
            first, last = _parse_time(item.get("start")), _parse_time(item.get("end"))
            if first is None or last is None or not (first < end and last > start):
                continue
            blocks.append(
                BusyBlock(
                    start=first,
                    end=last,
                    event_id=item.get("id") if isinstance(item.get("id"), str) else None,
                    tag=_tag_of(item),
                )
            )
        return blocks

    # -- writes --------------------------------------------------------------------------------

    async def create_event(self, calendar_id: str, event: EventData) -> str:
        try:
            response = await self._http.call(
                "POST", self._url(self._events_path(calendar_id)), json=create_body(event)
            )
        except (NotFound, PermissionDenied) as exc:
            await self._explain(calendar_id, exc, create=True)
            raise
        return self._answered_id(response)

    async def update_event(self, calendar_id: str, event_id: str, event: EventData) -> str:
        try:
            response = await self._http.call(
                "PATCH", self._url(self._event_path(calendar_id, event_id)), json=event_body(event)
            )
        except (NotFound, PermissionDenied) as exc:
            await self._explain(calendar_id, exc, create=False)
            raise
        data = json_body(response)
        if isinstance(data, dict) and data.get("isCancelled"):
            raise Gone(f"{PROVIDER_NAME}: the event was cancelled", status=response.status_code)
        return self._answered_id(response, fallback=event_id)

    async def delete_event(self, calendar_id: str, event_id: str) -> None:
        try:
            await self._http.call("DELETE", self._url(self._event_path(calendar_id, event_id)))
        except (NotFound, PermissionDenied) as exc:
            await self._explain(calendar_id, exc, create=False)
            raise

    @staticmethod
    def _answered_id(response: httpx2.Response, fallback: str | None = None) -> str:
        data = json_body(response)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            return str(data["id"])
        if fallback is not None:
            return fallback
        raise Unavailable(
            f"{PROVIDER_NAME} answered HTTP {response.status_code} without an event id",
            status=response.status_code,
        )

    # -- batch ---------------------------------------------------------------------------------

    def _batch_request(self, request_id: str, calendar_id: str, op: Operation) -> dict[str, Any]:
        if op.kind == "create":
            if op.event is None:
                raise InvalidRequest("a create operation needs an event")
            return {
                "id": request_id,
                "method": "POST",
                "url": self._events_path(calendar_id),
                "headers": {"Content-Type": "application/json", "Prefer": IMMUTABLE_IDS},
                "body": create_body(op.event),
            }
        if op.event_id is None:
            raise InvalidRequest(f"an {op.kind} operation needs an event id")
        url = self._event_path(calendar_id, op.event_id)
        if op.kind == "update":
            if op.event is None:
                raise InvalidRequest("an update operation needs an event")
            return {
                "id": request_id,
                "method": "PATCH",
                "url": url,
                "headers": {"Content-Type": "application/json", "Prefer": IMMUTABLE_IDS},
                "body": event_body(op.event),
            }
        return {
            "id": request_id,
            "method": "DELETE",
            "url": url,
            "headers": {"Prefer": IMMUTABLE_IDS},
        }

    async def _send_batch(
        self, calendar_id: str, items: Sequence[tuple[int, Operation]]
    ) -> dict[int, httpx2.Response]:
        requests = [self._batch_request(str(i), calendar_id, op) for i, op in items]
        response = await self._http.send("POST", self._url("/$batch"), json={"requests": requests})
        data = json_object(response, PROVIDER_NAME)
        answers: dict[int, httpx2.Response] = {}
        for item in data.get("responses") or ():
            if not isinstance(item, dict):
                continue
            raw_id, status = item.get("id"), item.get("status")
            if not isinstance(raw_id, str) or not raw_id.isdigit() or not isinstance(status, int):
                continue
            headers = item.get("headers") if isinstance(item.get("headers"), dict) else {}
            body = item.get("body")
            answers[int(raw_id)] = (
                httpx2.Response(status, headers=headers, json=body)
                if body is not None
                else httpx2.Response(status, headers=headers)
            )
        return answers

    def _item_result(self, op: Operation, response: httpx2.Response | None) -> OperationResult:
        if response is None:
            return OperationResult(
                event_id=op.event_id,
                error=Unavailable(f"{PROVIDER_NAME} $batch answer left out a request"),
            )
        if not 200 <= response.status_code < 300:
            return OperationResult(event_id=op.event_id, error=graph_error(response))
        try:
            if op.kind == "create":
                return OperationResult(self._answered_id(response))
            if op.kind == "update":
                data = json_body(response)
                if isinstance(data, dict) and data.get("isCancelled"):
                    raise Gone(f"{PROVIDER_NAME}: the event was cancelled")
                return OperationResult(self._answered_id(response, fallback=op.event_id))
        except ProviderError as exc:
            return OperationResult(event_id=op.event_id, error=exc)
        return OperationResult(op.event_id)

    async def batch(
        self, calendar_id: str, operations: Sequence[Operation]
    ) -> list[OperationResult]:
        """Run the operations through ``$batch``, 20 per request, with the shared loop of
        ``_http.run_batch``: ``$batch`` answers 200 with a status per request, so an item's 401
        refreshes the token and repeats those items at once, and throttled items (429, with
        their own Retry-After) are repeated after a wait. Items answered 404/403 are explained
        once: when the calendar is gone or calsync may not write to it, ``CalendarUnavailable``.
        """
        results = await run_batch(
            self._http,
            operations,
            chunk=BATCH_LIMIT,
            check=lambda op: self._check(calendar_id, op),
            send=lambda items: self._send_batch(calendar_id, items),
            decode=self._item_result,
        )
        suspects = [
            i
            for i, r in enumerate(results)
            if isinstance(r.error, PermissionDenied)
            or (isinstance(r.error, NotFound) and operations[i].kind == "create")
        ]
        if suspects:
            problem = await self.calendar_problem(calendar_id)
            if problem is not None:
                for i in suspects:
                    results[i] = OperationResult(event_id=results[i].event_id, error=problem)
        return results

    def _check(self, calendar_id: str, op: Operation) -> None:
        self._batch_request("0", calendar_id, op)


def _owner(item: dict[str, Any]) -> str | None:
    owner = item.get("owner")
    if isinstance(owner, dict) and isinstance(owner.get("address"), str):
        return str(owner["address"])
    return None


def _tagged(item: dict[str, Any]) -> TaggedEvent | None:
    tag = _tag_of(item)
    event_id = item.get("id")
    if tag is None or not isinstance(event_id, str):
        return None
    first, last = _parse_time(item.get("start")), _parse_time(item.get("end"))
    if first is None or last is None:
        return None
    body = item.get("body")
    content = body.get("content") if isinstance(body, dict) else None
    location = item.get("location")
    place = location.get("displayName") if isinstance(location, dict) else None
    change_key = item.get("changeKey")
    return TaggedEvent(
        event_id=event_id,
        tag=tag,
        title=str(item.get("subject") or ""),
        description=content if isinstance(content, str) else "",
        location=place if isinstance(place, str) and place else None,
        start=first,
        end=last,
        private=item.get("sensitivity") in ("private", "confidential"),
        reminders_on=bool(item.get("isReminderOn")),
        version=change_key if isinstance(change_key, str) else None,
    )
