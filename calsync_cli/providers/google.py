"""Google Calendar API v3 client.

Event ids are ours: ``event_id_for(key)`` is the base32hex (``0-9a-v``) spelling of the SHA-256
of ``EventData.key``, 52 characters, well inside Google's 5-1024. Inserting it twice answers 409
``duplicate``: the event exists, perhaps deleted (Google keeps deleted events with status
``cancelled``). The client then replaces it (``PUT``) with the full content and
``status: confirmed``, which restores a deleted event and refreshes a live one, and answers the
same id. So a create repeated after a crash, or after a delete, yields one event.

Updates are ``PATCH``: fields calsync does not own (reminders, colour) stay as the user set them.
An update of an event deleted outside calsync raises ``NotFound``/``Gone``; when Google answers
the patch with the event still ``cancelled``, that is ``Gone`` too, so a deleted event is never
brought back by an update (only by a create).

Batches go to the multipart/mixed endpoint in chunks of ``BATCH_CHUNK`` (50) calls. The protocol
allows 1,000, but each inner call counts against the per-user quota on its own, so large batches
mostly earn per-item ``rateLimitExceeded`` answers; 50 keeps a throttled chunk cheap to repeat.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, tzinfo
from typing import Any
from urllib.parse import quote, urlsplit
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

PROVIDER_NAME = "Google Calendar"
DEFAULT_API_URL = "https://www.googleapis.com/calendar/v3"
DEFAULT_BATCH_URL = "https://www.googleapis.com/batch/calendar/v3"
#: inner calls per batch request (see the module docstring)
BATCH_CHUNK = 50
#: the key under ``extendedProperties.private`` that marks calsync's events
TAG_PROPERTY = "calsync"
#: Google 403 reasons that mean "slow down", not "not allowed"
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"})
WRITABLE_ROLES = frozenset({"owner", "writer"})


def event_id_for(key: str) -> str:
    """The Google event id for an ``EventData.key``: base32hex of its SHA-256, lower case."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return base64.b32hexencode(digest).decode("ascii").rstrip("=").lower()


# -- error translation ---------------------------------------------------------------------------

ErrorClass = type[ProviderError]

#: (status or range, required reason or None, class): the first match wins.
GOOGLE_ERROR_TABLE: tuple[tuple[int | range, frozenset[str] | None, ErrorClass], ...] = (
    (429, None, RateLimited),
    (403, RATE_LIMIT_REASONS, RateLimited),
    (403, None, PermissionDenied),
    (401, None, AuthExpired),
    (404, None, NotFound),
    (410, None, Gone),
    (408, None, Unavailable),
    (range(500, 600), None, Unavailable),
    (range(400, 500), None, InvalidRequest),
)


def _google_reason(data: Any) -> tuple[str | None, str | None]:
    """(first ``errors[].reason``, ``error.message``) of a Google error payload."""
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, str):  # OAuth-style {"error": "invalid_token"}
        return error, None
    if not isinstance(error, dict):
        return None, None
    reason: str | None = None
    errors = error.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        raw = errors[0].get("reason")
        reason = raw if isinstance(raw, str) else None
    if reason is None and isinstance(error.get("status"), str):
        reason = error["status"]
    message = error.get("message")
    return reason, message if isinstance(message, str) else None


def google_error(response: httpx2.Response) -> ProviderError:
    """Translate a non-2xx Google answer into a ``ProviderError`` (see ``GOOGLE_ERROR_TABLE``)."""
    status = response.status_code
    reason, message = _google_reason(json_body(response))
    text = f"{PROVIDER_NAME}: HTTP {status}"
    if reason:
        text += f" {reason}"
    if message:
        text += f": {message}"
    text = one_line(text)
    cls: ErrorClass = InvalidRequest
    for match, reasons, candidate in GOOGLE_ERROR_TABLE:
        if (status == match if isinstance(match, int) else status in match) and (
            reasons is None or reason in reasons
        ):
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


def _rfc3339(moment: datetime, zone: tzinfo | None = None) -> str:
    if moment.tzinfo is None:
        raise ValueError("calendar times must be timezone-aware")
    return (moment.astimezone(zone) if zone is not None else moment).isoformat()


def event_body(event: EventData) -> dict[str, Any]:
    """The Google event resource for ``event`` (without id or status)."""
    zone = _zone(event.timezone)
    body: dict[str, Any] = {
        "summary": event.title,
        "description": event.description,
        "start": {"dateTime": _rfc3339(event.start, zone), "timeZone": event.timezone},
        "end": {"dateTime": _rfc3339(event.end, zone), "timeZone": event.timezone},
        "extendedProperties": {"private": {TAG_PROPERTY: event.tag}},
    }
    if zone is None:  # an unknown zone name would make Google refuse the event: send UTC
        body["start"]["timeZone"] = body["end"]["timeZone"] = "UTC"
    body["location"] = event.location if event.location is not None else ""
    return body


def _parse_time(value: Any, zone: tzinfo) -> datetime | None:
    """A Google ``{dateTime}`` or all-day ``{date}`` as an aware datetime."""
    if not isinstance(value, dict):
        return None
    raw = value.get("dateTime")
    if isinstance(raw, str):
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)
    raw = value.get("date")
    if isinstance(raw, str):
        return datetime.combine(date.fromisoformat(raw), time(0), tzinfo=zone)
    return None


def _is_busy(item: dict[str, Any]) -> bool:
    if item.get("status") == "cancelled" or item.get("transparency") == "transparent":
        return False
    for attendee in item.get("attendees") or ():
        if isinstance(attendee, dict) and attendee.get("self"):
            return attendee.get("responseStatus") != "declined"
    return True


# -- batch encoding ------------------------------------------------------------------------------

CRLF = "\r\n"


def encode_batch(
    parts: Sequence[tuple[str, str, str, dict[str, Any] | None]], boundary: str
) -> bytes:
    """A multipart/mixed batch body from (content id, method, path, JSON body or None)."""
    chunks: list[str] = []
    for content_id, method, path, body in parts:
        chunks.append(f"--{boundary}{CRLF}")
        chunks.append(f"Content-Type: application/http{CRLF}")
        chunks.append(f"Content-ID: <{content_id}>{CRLF}{CRLF}")
        chunks.append(f"{method} {path} HTTP/1.1{CRLF}")
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False)
            chunks.append(f"Content-Type: application/json; charset=UTF-8{CRLF}")
            chunks.append(f"Content-Length: {len(payload.encode('utf-8'))}{CRLF}{CRLF}")
            chunks.append(payload + CRLF)
        else:
            chunks.append(CRLF)
    chunks.append(f"--{boundary}--{CRLF}")
    return "".join(chunks).encode("utf-8")


def _split_head(blob: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, rest = blob.partition(sep)
        if found:
            return head, rest
    return blob, b""


def _header_lines(head: bytes) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if colon:
            out.append((name.strip(), value.strip()))
    return out


def _boundary_of(content_type: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        name, _, value = piece.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    return None


def decode_batch(content_type: str, body: bytes) -> list[tuple[str | None, httpx2.Response]]:
    """(content id, inner response) of every part of a multipart/mixed batch answer."""
    boundary = _boundary_of(content_type)
    if not boundary:
        raise Unavailable(f"{PROVIDER_NAME} batch answer has no multipart boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    answers: list[tuple[str | None, httpx2.Response]] = []
    for raw_part in body.split(delimiter)[1:]:
        if raw_part.startswith(b"--"):
            break
        part = raw_part.lstrip(b"\r\n")
        outer_head, inner = _split_head(part)
        content_id = None
        for name, value in _header_lines(outer_head):
            if name.lower() == "content-id":
                content_id = value.strip("<>")
        inner = inner.lstrip(b"\r\n")
        status_line, _, rest = inner.partition(b"\n")
        pieces = status_line.decode("latin-1").split()
        if len(pieces) < 2 or not pieces[1].isdigit():
            raise Unavailable(f"{PROVIDER_NAME} batch answer has an unreadable part")
        inner_head, inner_body = _split_head(rest)
        headers = [(n, v) for n, v in _header_lines(inner_head) if n.lower() != "content-length"]
        content = inner_body.rstrip(b"\r\n")
        answers.append(
            (content_id, httpx2.Response(int(pieces[1]), headers=headers, content=content))
        )
    return answers


def _strip_item_prefix(content_id: str | None) -> str | None:
    if content_id is None:
        return None
    return content_id[len("response-") :] if content_id.startswith("response-") else content_id


# -- the provider --------------------------------------------------------------------------------


class GoogleCalendarProvider(CalendarProvider):
    """One Google account, through Calendar API v3 (see the module docstring)."""

    max_batch = BATCH_CHUNK
    max_concurrency = 4
    create_restores_deleted = True

    def __init__(
        self,
        client: httpx2.AsyncClient,
        tokens: TokenSource,
        *,
        api_url: str = DEFAULT_API_URL,
        batch_url: str = DEFAULT_BATCH_URL,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        sleep: SleepFunc | None = None,
        clock: Callable[[], float] | None = None,
        batch_chunk: int = BATCH_CHUNK,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.batch_url = batch_url
        self.batch_chunk = max(1, min(batch_chunk, 1000))
        self.max_batch = self.batch_chunk
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        self._http = ApiSession(
            client,
            tokens,
            provider=PROVIDER_NAME,
            translate=google_error,
            retry_budget=retry_budget,
            sleep=sleep,
            max_concurrency=self.max_concurrency,
            **extra,
        )
        self._account: str | None = None

    # -- paths ---------------------------------------------------------------------------------

    def _events_url(self, calendar_id: str) -> str:
        return f"{self.api_url}/calendars/{quote(calendar_id, safe='')}/events"

    def _event_url(self, calendar_id: str, event_id: str) -> str:
        return f"{self._events_url(calendar_id)}/{quote(event_id, safe='')}"

    # -- reads ---------------------------------------------------------------------------------

    async def list_calendars(self) -> list[Calendar]:
        calendars: list[Calendar] = []
        params: dict[str, str] = {"maxResults": "250"}
        while True:
            page = json_object(
                await self._http.call(
                    "GET", f"{self.api_url}/users/me/calendarList", params=params
                ),
                PROVIDER_NAME,
            )
            for item in page.get("items") or ():
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    continue
                name = item.get("summaryOverride") or item.get("summary") or item["id"]
                calendars.append(
                    Calendar(
                        id=item["id"],
                        name=str(name),
                        primary=bool(item.get("primary", False)),
                        writable=item.get("accessRole") in WRITABLE_ROLES,
                    )
                )
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token:
                primary = next((c for c in calendars if c.primary), None)
                if primary is not None:
                    self._account = primary.id
                return calendars
            params = {"maxResults": "250", "pageToken": token}

    async def account(self) -> str:
        """The primary calendar's id, which for Google is the account's e-mail address."""
        if self._account is None:
            calendars = await self.list_calendars()
            primary = next((c for c in calendars if c.primary), None)
            if primary is None:
                raise NotFound(f"{PROVIDER_NAME}: the account has no primary calendar")
            self._account = primary.id
        return self._account

    async def list_busy(self, calendar_id: str, start: datetime, end: datetime) -> list[BusyBlock]:
        blocks: list[BusyBlock] = []
        base_params = {
            "timeMin": _rfc3339(start),
            "timeMax": _rfc3339(end),
            "singleEvents": "true",
            "orderBy": "startTime",
            "maxResults": "2500",
        }
        params = dict(base_params)
        while True:
            page = json_object(
                await self._http.call("GET", self._events_url(calendar_id), params=params),
                PROVIDER_NAME,
            )
            zone = _zone(str(page.get("timeZone") or "UTC")) or ZoneInfo("UTC")
            for item in page.get("items") or ():
                if not isinstance(item, dict) or not _is_busy(item):
                    continue
                first = _parse_time(item.get("start"), zone)
                last = _parse_time(item.get("end"), zone)
                if first is None or last is None or not (first < end and last > start):
                    continue
                private = (item.get("extendedProperties") or {}).get("private") or {}
                tag = private.get(TAG_PROPERTY) if isinstance(private, dict) else None
                blocks.append(
                    BusyBlock(
                        start=first,
                        end=last,
                        event_id=item.get("id") if isinstance(item.get("id"), str) else None,
                        tag=tag if isinstance(tag, str) else None,
                    )
                )
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return blocks
            params = dict(base_params, pageToken=token)

    # -- writes --------------------------------------------------------------------------------

    async def create_event(self, calendar_id: str, event: EventData) -> str:
        event_id = event_id_for(event.key)
        body = dict(event_body(event), id=event_id)
        response = await self._http.call(
            "POST", self._events_url(calendar_id), json=body, accept=(409,)
        )
        if response.status_code == 409:
            return await self._restore(calendar_id, event_id, event)
        return self._answered_id(response, event_id)

    async def _restore(self, calendar_id: str, event_id: str, event: EventData) -> str:
        """The id exists (live or cancelled): replace it with ``event``, confirmed."""
        body = dict(event_body(event), status="confirmed")
        response = await self._http.call("PUT", self._event_url(calendar_id, event_id), json=body)
        return self._answered_id(response, event_id)

    async def update_event(self, calendar_id: str, event_id: str, event: EventData) -> str:
        response = await self._http.call(
            "PATCH", self._event_url(calendar_id, event_id), json=event_body(event)
        )
        return self._checked_update(response, event_id)

    async def delete_event(self, calendar_id: str, event_id: str) -> None:
        await self._http.call("DELETE", self._event_url(calendar_id, event_id))

    @staticmethod
    def _answered_id(response: httpx2.Response, fallback: str) -> str:
        data = json_body(response)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            return str(data["id"])
        return fallback

    def _checked_update(self, response: httpx2.Response, event_id: str) -> str:
        data = json_body(response)
        if isinstance(data, dict) and data.get("status") == "cancelled":
            raise Gone(f"{PROVIDER_NAME}: the event was deleted", status=response.status_code)
        return self._answered_id(response, event_id)

    # -- batch ---------------------------------------------------------------------------------

    def _inner_path(self, url: str) -> str:
        parts = urlsplit(url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def _batch_request(
        self, calendar_id: str, op: Operation
    ) -> tuple[str, str, dict[str, Any] | None]:
        if op.kind == "create":
            if op.event is None:
                raise InvalidRequest("a create operation needs an event")
            body = dict(event_body(op.event), id=event_id_for(op.event.key))
            return "POST", self._inner_path(self._events_url(calendar_id)), body
        if op.event_id is None:
            raise InvalidRequest(f"an {op.kind} operation needs an event id")
        path = self._inner_path(self._event_url(calendar_id, op.event_id))
        if op.kind == "update":
            if op.event is None:
                raise InvalidRequest("an update operation needs an event")
            return "PATCH", path, event_body(op.event)
        return "DELETE", path, None

    async def _send_batch(
        self, calendar_id: str, items: Sequence[tuple[int, Operation]]
    ) -> dict[int, httpx2.Response]:
        boundary = "batch_calsync_" + secrets.token_hex(12)
        parts = [(f"item-{index}", *self._batch_request(calendar_id, op)) for index, op in items]
        response = await self._http.send(
            "POST",
            self.batch_url,
            content=encode_batch(parts, boundary),
            headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        )
        decoded = decode_batch(response.headers.get("content-type", ""), response.content)
        by_id: dict[int, httpx2.Response] = {}
        for position, (content_id, inner) in enumerate(decoded):
            key = _strip_item_prefix(content_id)
            if key is not None and key.startswith("item-") and key[5:].isdigit():
                by_id[int(key[5:])] = inner
            elif position < len(items):  # no usable Content-ID: answers come in order
                by_id.setdefault(items[position][0], inner)
        return by_id

    def _item_result(
        self, op: Operation, response: httpx2.Response | None
    ) -> OperationResult | None:
        """The result of one answered item; ``None`` for a create that needs a restore."""
        if response is None:
            return OperationResult(
                event_id=op.event_id,
                error=Unavailable(f"{PROVIDER_NAME} batch answer left out an item"),
            )
        status = response.status_code
        if op.kind == "create" and status == 409:
            return None
        if not 200 <= status < 300:
            return OperationResult(event_id=op.event_id, error=google_error(response))
        if op.kind == "create":
            assert op.event is not None
            return OperationResult(self._answered_id(response, event_id_for(op.event.key)))
        assert op.event_id is not None
        if op.kind == "update":
            try:
                return OperationResult(self._checked_update(response, op.event_id))
            except Gone as exc:
                return OperationResult(event_id=op.event_id, error=exc)
        return OperationResult(op.event_id)

    async def batch(
        self, calendar_id: str, operations: Sequence[Operation]
    ) -> list[OperationResult]:
        """Run the operations through the batch endpoint, ``batch_chunk`` per request.

        Items that fail with ``RateLimited``/``Unavailable`` are sent again (only they) within
        the retry budget; what still fails is reported per item. A create whose id exists is
        restored with a separate ``PUT``. A failure of the whole first request raises.
        """
        results: list[OperationResult | None] = [None] * len(operations)
        for first in range(0, len(operations), self.batch_chunk):
            indices = list(range(first, min(first + self.batch_chunk, len(operations))))
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
        pending = [i for i in indices if self._valid(operations[i], results, i)]
        restore: list[int] = []
        answered_once = False
        refreshed = False
        item_error: ProviderError | None = None

        async def attempt() -> None:
            nonlocal pending, answered_once, item_error, refreshed
            answers = await self._send_batch(calendar_id, [(i, operations[i]) for i in pending])
            answered_once = True
            again: list[int] = []
            expired: list[int] = []
            worst: ProviderError | None = None
            for i in pending:
                result = self._item_result(operations[i], answers.get(i))
                if result is None:
                    restore.append(i)
                    continue
                results[i] = result
                error = result.error
                if isinstance(error, AuthExpired) and not refreshed:
                    expired.append(i)
                elif isinstance(error, RateLimited | Unavailable):
                    again.append(i)
                    worst = slower_error(worst, error)
            if expired:
                # The parts were refused with the current token: refresh once (ReauthRequired
                # propagates) and send those parts again at once.
                refreshed = True
                await self._http.tokens.refresh()
                pending = expired
                await attempt()
                pending = again + pending
                return
            pending = again
            if worst is not None:
                item_error = worst
                raise worst

        if pending:
            try:
                await self._http.retrying(attempt)
            except ReauthRequired:
                raise
            except ProviderError as exc:
                if exc is not item_error:
                    if not answered_once:
                        raise
                    for i in pending:  # a later repeat failed as a whole: report it per item
                        results[i] = OperationResult(event_id=operations[i].event_id, error=exc)
        for i in restore:
            op = operations[i]
            assert op.event is not None
            try:
                restored = await self._restore(calendar_id, event_id_for(op.event.key), op.event)
            except ReauthRequired:
                raise
            except ProviderError as exc:
                results[i] = OperationResult(error=exc)
            else:
                results[i] = OperationResult(restored)

    def _valid(self, op: Operation, results: list[OperationResult | None], index: int) -> bool:
        try:
            self._batch_request("primary", op)
        except InvalidRequest as exc:
            results[index] = OperationResult(event_id=op.event_id, error=exc)
            return False
        return True
