"""Microsoft Graph v1.0 (Outlook calendar) client.

Creates carry ``transactionId = transaction_id_for(key)``: a UUID5 of ``EventData.key`` in a fixed
calsync namespace. Graph uses it to make a repeated create answer the event it already made
instead of a second one. It cannot be changed later, and Graph never "restores" a deleted event:
a create after a delete makes a new event. The engine gives every generation of a visit's event
its own key (the key changes after a delete), so the new event gets a new transactionId.

Times: ``start``/``end`` are the practice's local wall time (no offset) with the practice's IANA
zone name as ``timeZone``, which Graph accepts alongside Windows zone names; the event then shows
in the practice's zone and keeps its wall time over DST changes. An unknown zone name is sent as
UTC instead. ``calendarView`` is read with ``Prefer: outlook.timezone="UTC"``.

The calsync tag is the single-value extended property ``TAG_PROPERTY_ID``. Busy time skips
``showAs`` ``free`` and ``workingElsewhere`` and cancelled events. ``$batch`` takes at most 20
requests; Outlook allows 4 concurrent requests per mailbox, which the session enforces.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx2

from calsync_cli.providers._http import (
    DEFAULT_RETRY_BUDGET,
    ApiSession,
    SleepFunc,
    json_body,
    json_object,
    one_line,
    retry_after_of,
    slower_error,
)
from calsync_cli.providers.base import (
    AuthExpired,
    BusyBlock,
    Calendar,
    CalendarProvider,
    EventData,
    Gone,
    InvalidRequest,
    NotFound,
    Operation,
    OperationResult,
    PermissionDenied,
    ProviderError,
    RateLimited,
    ReauthRequired,
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


def transaction_id_for(key: str) -> str:
    """The Graph ``transactionId`` for an ``EventData.key``: a UUID5 in calsync's namespace."""
    return str(uuid.uuid5(TRANSACTION_NAMESPACE, key))


# -- error translation ---------------------------------------------------------------------------

ErrorClass = type[ProviderError]

#: (status or range, class): the first match wins.
GRAPH_ERROR_TABLE: tuple[tuple[int | range, ErrorClass], ...] = (
    (429, RateLimited),
    (401, AuthExpired),
    (403, PermissionDenied),
    (404, NotFound),
    (410, Gone),
    (408, Unavailable),
    (range(500, 600), Unavailable),
    (range(400, 500), InvalidRequest),
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
    status = response.status_code
    code, message = _graph_reason(json_body(response))
    text = f"{PROVIDER_NAME}: HTTP {status}"
    if code:
        text += f" {code}"
    if message:
        text += f": {message}"
    text = one_line(text)
    cls: ErrorClass = InvalidRequest
    for match, candidate in GRAPH_ERROR_TABLE:
        if status == match if isinstance(match, int) else status in match:
            cls = candidate
            break
    if cls is RateLimited:
        return RateLimited(text, retry_after=retry_after_of(response.headers), status=status)
    if cls is Unavailable:
        return Unavailable(text, retry_after=retry_after_of(response.headers), status=status)
    return cls(text, status=status)


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


def event_body(event: EventData) -> dict[str, Any]:
    """The Graph event resource for ``event`` (without ``transactionId``)."""
    zone = _zone(event.timezone)
    zone_name = event.timezone if zone is not None else "UTC"
    zone = zone if zone is not None else UTC
    return {
        "subject": event.title,
        "body": {"contentType": "text", "content": event.description},
        "location": {"displayName": event.location or ""},
        "start": {"dateTime": _wall_time(event.start, zone), "timeZone": zone_name},
        "end": {"dateTime": _wall_time(event.end, zone), "timeZone": zone_name},
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
        zone = _zone(str(value.get("timeZone") or "UTC")) or UTC
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
        items = await self._pages("/me/calendars", {"$top": "100"})
        calendars: list[Calendar] = []
        for item in items:
            if not isinstance(item.get("id"), str):
                continue
            if item.get("isDefaultCalendar") and self._account is None:
                owner = item.get("owner")
                if isinstance(owner, dict) and isinstance(owner.get("address"), str):
                    self._account = owner["address"]
            calendars.append(
                Calendar(
                    id=item["id"],
                    name=str(item.get("name") or item["id"]),
                    primary=bool(item.get("isDefaultCalendar", False)),
                    writable=bool(item.get("canEdit", False)),
                )
            )
        return calendars

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
        response = await self._http.call(
            "POST", self._url(self._events_path(calendar_id)), json=create_body(event)
        )
        return self._answered_id(response)

    async def update_event(self, calendar_id: str, event_id: str, event: EventData) -> str:
        response = await self._http.call(
            "PATCH", self._url(self._event_path(calendar_id, event_id)), json=event_body(event)
        )
        data = json_body(response)
        if isinstance(data, dict) and data.get("isCancelled"):
            raise Gone(f"{PROVIDER_NAME}: the event was cancelled", status=response.status_code)
        return self._answered_id(response, fallback=event_id)

    async def delete_event(self, calendar_id: str, event_id: str) -> None:
        await self._http.call("DELETE", self._url(self._event_path(calendar_id, event_id)))

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
                "headers": {"Content-Type": "application/json"},
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
                "headers": {"Content-Type": "application/json"},
                "body": event_body(op.event),
            }
        return {"id": request_id, "method": "DELETE", "url": url}

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
        """Run the operations through ``$batch``, 20 per request. Items throttled (429, with
        their own Retry-After) or unavailable are sent again, only they, within the retry
        budget; what still fails is reported per item. A failure of the first whole request
        raises."""
        results: list[OperationResult | None] = [None] * len(operations)
        for first in range(0, len(operations), BATCH_LIMIT):
            indices = list(range(first, min(first + BATCH_LIMIT, len(operations))))
            await self._batch_chunk(calendar_id, operations, indices, results)
        final: list[OperationResult] = []
        for result in results:
            assert result is not None
            final.append(result)
        return final

    async def _batch_chunk(
        self,
        calendar_id: str,
        operations: Sequence[Operation],
        indices: list[int],
        results: list[OperationResult | None],
    ) -> None:
        pending: list[int] = []
        for i in indices:
            try:
                self._batch_request(str(i), calendar_id, operations[i])
            except InvalidRequest as exc:
                results[i] = OperationResult(event_id=operations[i].event_id, error=exc)
            else:
                pending.append(i)
        answered_once = False
        item_error: ProviderError | None = None

        async def attempt() -> None:
            nonlocal pending, answered_once, item_error
            answers = await self._send_batch(calendar_id, [(i, operations[i]) for i in pending])
            answered_once = True
            again: list[int] = []
            worst: ProviderError | None = None
            for i in pending:
                result = self._item_result(operations[i], answers.get(i))
                results[i] = result
                if isinstance(result.error, RateLimited | Unavailable):
                    again.append(i)
                    worst = slower_error(worst, result.error)
            pending = again
            if worst is not None:
                item_error = worst
                raise worst

        if not pending:
            return
        try:
            await self._http.retrying(attempt)
        except ReauthRequired:
            raise
        except ProviderError as exc:
            if exc is not item_error:
                if not answered_once:
                    raise
                for i in pending:
                    results[i] = OperationResult(event_id=operations[i].event_id, error=exc)
