"""Google Calendar API v3 client.

Event ids are ours: ``event_id_for(key)`` is the base32hex (``0-9a-v``) spelling of the SHA-256
of ``EventData.key``, 52 characters, well inside Google's 5-1024. Inserting it twice answers 409
``duplicate``: the event exists, perhaps deleted (Google keeps deleted events with status
``cancelled``). The client then replaces it (``PUT``) with the full content and
``status: confirmed``, which restores a deleted event and refreshes a live one, and answers the
same id. So a create repeated after a crash, or after a delete, yields one event.

An event deleted by its owner in the Calendar UI is different: inserting its id answers 409
``duplicate`` and the ``PUT`` answers 403 (404 once purged), as field reports show
(google-api-python-client#846, google-api-ruby-client#1811). The create then raises
``EventIdTaken`` and the engine creates the event under the visit's next generation.

Updates are ``PATCH``: fields calsync does not own (colour, reminders unless the filter turns
them off) stay as the user set them. An update of an event deleted outside calsync raises
``NotFound``/``Gone``; when Google answers the patch with the event still ``cancelled``, or
refuses it (403) while the calendar is still writable, that is ``Gone`` too, so a deleted event
is never brought back by an update (only by a create).

A write answered 404, or 403 for a reason other than throttling, asks the calendar list once
whether the calendar itself is gone or no longer writable: then ``CalendarUnavailable``.

``description`` is HTML for Google ("can contain HTML", Events resource): what calsync puts there
is escaped, so a visit reason ``BP <140`` shows as text.

Batches go to the multipart/mixed endpoint in chunks of ``BATCH_CHUNK`` (20) calls, all to one
calendar. The protocol allows 1,000, but each inner call counts against the per-user quota, and
Google's usage-limits guide warns of operational limits "if you attempt to write to a single
calendar in quick succession" (developers.google.com/workspace/calendar/api/guides/quota): a
small chunk keeps the burst on one calendar modest and a throttled chunk cheap to repeat.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime, time, tzinfo
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx2

from calsync_cli.providers._http import (
    DEFAULT_RETRY_BUDGET,
    ApiSession,
    ErrorRule,
    FollowUp,
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
    EventIdTaken,
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

PROVIDER_NAME = "Google Calendar"
DEFAULT_API_URL = "https://www.googleapis.com/calendar/v3"
DEFAULT_BATCH_URL = "https://www.googleapis.com/batch/calendar/v3"
#: inner calls per batch request (see the module docstring)
BATCH_CHUNK = 20
#: the key under ``extendedProperties.private`` that marks calsync's events
TAG_PROPERTY = "calsync"
#: Google 403 reasons that mean "slow down", not "not allowed"
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
#: "Calendar usage limits exceeded" (403 ``quotaExceeded``): the account hit a Calendar use
#: limit and "might become read-only for a few hours" (Google Workspace Admin Help, "Avoid
#: Calendar use limits", support.google.com/a/answer/2905486): wait hours, not seconds
QUOTA_REASONS = frozenset({"quotaExceeded"})
QUOTA_BACKOFF = 3 * 3600.0
#: 403 reasons that say the calendar itself refuses writes (read-only, access removed)
CALENDAR_REFUSALS = frozenset({"requiredAccessLevel", "forbidden", "forbiddenForNonOrganizer"})
#: 409 ``conflict`` inside a batch: "retry in another batch" (Calendar API, Handle API errors)
CONFLICT_REASONS = frozenset({"conflict"})
WRITABLE_ROLES = frozenset({"owner", "writer"})


def event_id_for(key: str) -> str:
    """The Google event id for an ``EventData.key``: base32hex of its SHA-256, lower case."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return base64.b32hexencode(digest).decode("ascii").rstrip("=").lower()


# -- error translation ---------------------------------------------------------------------------

#: the first matching rule wins (Calendar API, "Handle API errors")
GOOGLE_ERROR_TABLE: tuple[ErrorRule, ...] = (
    ErrorRule(429, None, RateLimited),
    ErrorRule(403, QUOTA_REASONS, RateLimited, retry_after=QUOTA_BACKOFF),
    ErrorRule(403, RATE_LIMIT_REASONS, RateLimited),
    ErrorRule(403, None, PermissionDenied),
    ErrorRule(401, None, AuthExpired),
    ErrorRule(404, None, NotFound),
    ErrorRule(409, CONFLICT_REASONS, Unavailable),
    ErrorRule(410, None, Gone),
    ErrorRule(408, None, Unavailable),
    ErrorRule(range(500, 600), None, Unavailable),
    ErrorRule(range(400, 500), None, InvalidRequest),
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
    reason, message = _google_reason(json_body(response))
    return translate(
        response, provider=PROVIDER_NAME, table=GOOGLE_ERROR_TABLE, reason=reason, message=message
    )


def reason_of(response: httpx2.Response) -> str | None:
    return _google_reason(json_body(response))[0]


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


def description_html(text: str) -> str:
    """calsync's plain-text description as Google's HTML: escaped, one ``<br>`` per line."""
    return "<br>".join(html.escape(line, quote=False) for line in text.split("\n"))


_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")


def description_text(value: str) -> str:
    """A Google description read back as the plain text calsync wrote."""
    return html.unescape(_TAG.sub("", _BREAK.sub("\n", value)))


def event_body(event: EventData) -> dict[str, Any]:
    """The Google event resource for ``event`` (without id or status).

    ``visibility`` ``private`` shows others who see the calendar only "busy" (Events resource,
    ``visibility``). Reminders: ``reminders=False`` sends ``useDefault: false`` with no
    overrides; ``True`` restores the calendar's default reminders; None leaves them alone.
    """
    zone = _zone(event.timezone)
    body: dict[str, Any] = {
        "summary": event.title,
        "description": description_html(event.description),
        "visibility": "private" if event.private else "default",
        "start": {"dateTime": _rfc3339(event.start, zone), "timeZone": event.timezone},
        "end": {"dateTime": _rfc3339(event.end, zone), "timeZone": event.timezone},
        "extendedProperties": {"private": {TAG_PROPERTY: event.tag}},
    }
    if zone is None:  # an unknown zone name would make Google refuse the event: send UTC
        body["start"]["timeZone"] = body["end"]["timeZone"] = "UTC"
    body["location"] = event.location if event.location is not None else ""
    if event.reminders is False:
        body["reminders"] = {"useDefault": False, "overrides": []}
    elif event.reminders is True:
        body["reminders"] = {"useDefault": True}
    return body


def _tag_of(item: dict[str, Any]) -> str | None:
    private = (item.get("extendedProperties") or {}).get("private") or {}
    tag = private.get(TAG_PROPERTY) if isinstance(private, dict) else None
    return tag if isinstance(tag, str) else None


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
                blocks.append(
                    BusyBlock(
                        start=first,
                        end=last,
                        event_id=item.get("id") if isinstance(item.get("id"), str) else None,
                        tag=_tag_of(item),
                    )
                )
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return blocks
            params = dict(base_params, pageToken=token)

    async def find_event_by_tag(self, calendar_id: str, tag: str) -> str | None:
        """``events.list`` with ``privateExtendedProperty=calsync=TAG`` (live events only)."""
        page = json_object(
            await self._call_on_calendar(
                calendar_id,
                "GET",
                self._events_url(calendar_id),
                params={
                    "privateExtendedProperty": f"{TAG_PROPERTY}={tag}",
                    "maxResults": "10",
                    "showDeleted": "false",
                },
            ),
            PROVIDER_NAME,
        )
        for item in page.get("items") or ():
            if (
                isinstance(item, dict)
                and isinstance(item.get("id"), str)
                and item.get("status") != "cancelled"
                and _tag_of(item) == tag
            ):
                return str(item["id"])
        return None

    async def list_tagged_events(
        self, calendar_id: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[TaggedEvent]]:
        """The window's events, 2,500 a page, keeping calsync's. ``privateExtendedProperty``
        matches one ``key=value`` only ("propertyName=value", events.list), and calsync's tags
        differ per visit, so the filter is applied here."""
        base = {
            "timeMin": _rfc3339(start),
            "timeMax": _rfc3339(end),
            "singleEvents": "true",
            "maxResults": "2500",
        }
        params = dict(base)
        while True:
            page = json_object(
                await self._call_on_calendar(
                    calendar_id, "GET", self._events_url(calendar_id), params=params
                ),
                PROVIDER_NAME,
            )
            zone = _zone(str(page.get("timeZone") or "UTC")) or ZoneInfo("UTC")
            found: list[TaggedEvent] = []
            for item in page.get("items") or ():
                if not isinstance(item, dict) or item.get("status") == "cancelled":
                    continue
                tagged = _tagged(item, zone)
                if tagged is not None:
                    found.append(tagged)
            yield found
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return
            params = dict(base, pageToken=token)

    # -- the calendar itself -------------------------------------------------------------------

    async def calendar_problem(self, calendar_id: str) -> CalendarUnavailable | None:
        """``CalendarUnavailable`` when the calendar is gone from the account's calendar list or
        no longer writable; None when it is fine (so the failure was the event's)."""
        url = f"{self.api_url}/users/me/calendarList/{quote(calendar_id, safe='')}"
        try:
            entry = json_object(await self._http.call("GET", url), PROVIDER_NAME)
        except NotFound:
            return CalendarUnavailable(
                f"{PROVIDER_NAME}: the calendar is gone from the account", status=404
            )
        if entry.get("accessRole") not in WRITABLE_ROLES:
            return CalendarUnavailable(
                f"{PROVIDER_NAME}: the account can no longer write to the calendar", status=403
            )
        return None

    async def _call_on_calendar(self, calendar_id: str, method: str, url: str, **kw: Any) -> Any:
        """A call on the calendar's events collection: 404 means the calendar is gone."""
        try:
            return await self._http.call(method, url, **kw)
        except NotFound as exc:
            raise CalendarUnavailable(
                f"{PROVIDER_NAME}: the calendar does not exist", status=exc.status
            ) from None

    def _refused(self, exc: ProviderError) -> bool:
        """A 403 that is not throttling: read-only calendar, lost access, UI-deleted event."""
        return isinstance(exc, PermissionDenied) and exc.status == 403

    async def _explain(self, calendar_id: str, exc: ProviderError, *, event_level: bool) -> None:
        """Raise what an event write's 404/403 means: the calendar's problem, or the event's."""
        if isinstance(exc, NotFound | Gone) or self._refused(exc):
            problem = await self.calendar_problem(calendar_id)
            if problem is not None:
                raise problem from None
            if event_level and self._refused(exc):
                raise Gone(
                    f"{PROVIDER_NAME}: the event was deleted and cannot be changed"
                ) from None
        raise exc

    # -- writes --------------------------------------------------------------------------------

    async def create_event(self, calendar_id: str, event: EventData) -> str:
        event_id = event_id_for(event.key)
        body = dict(event_body(event), id=event_id)
        try:
            response = await self._http.call(
                "POST", self._events_url(calendar_id), json=body, accept=(409,)
            )
        except NotFound:
            raise CalendarUnavailable(
                f"{PROVIDER_NAME}: the calendar does not exist", status=404
            ) from None
        except PermissionDenied as exc:
            await self._explain(calendar_id, exc, event_level=False)
            raise
        if response.status_code == 409:
            if reason_of(response) in CONFLICT_REASONS:
                raise google_error(response)
            return await self._restore(calendar_id, event_id, event)
        return self._answered_id(response, event_id)

    async def _restore(self, calendar_id: str, event_id: str, event: EventData) -> str:
        """The id exists (live or cancelled): replace it with ``event``, confirmed. An event
        deleted in the Calendar UI refuses this (403), a purged one answers 404: the id is
        taken for good (``EventIdTaken``)."""
        body = dict(event_body(event), status="confirmed")
        try:
            response = await self._http.call(
                "PUT", self._event_url(calendar_id, event_id), json=body
            )
        except (NotFound, Gone) as exc:
            raise EventIdTaken(
                f"{PROVIDER_NAME}: the event id is taken by an event that was purged",
                status=exc.status,
            ) from None
        except PermissionDenied as exc:
            if not self._refused(exc):
                raise
            raise EventIdTaken(
                f"{PROVIDER_NAME}: the event id is taken by an event deleted in Google Calendar",
                status=exc.status,
            ) from None
        return self._answered_id(response, event_id)

    async def update_event(self, calendar_id: str, event_id: str, event: EventData) -> str:
        try:
            response = await self._http.call(
                "PATCH", self._event_url(calendar_id, event_id), json=event_body(event)
            )
        except (NotFound, Gone, PermissionDenied) as exc:
            await self._explain(calendar_id, exc, event_level=True)
            raise
        return self._checked_update(response, event_id)

    async def delete_event(self, calendar_id: str, event_id: str) -> None:
        try:
            await self._http.call("DELETE", self._event_url(calendar_id, event_id))
        except (NotFound, Gone, PermissionDenied) as exc:
            await self._explain(calendar_id, exc, event_level=True)
            raise

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

    def _check(self, calendar_id: str, op: Operation) -> None:
        self._batch_request(calendar_id, op)

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
        self, calendar_id: str, op: Operation, response: httpx2.Response | None
    ) -> OperationResult | FollowUp:
        """The result of one answered item, or the follow-up a create whose id exists needs
        (restore with ``PUT``)."""
        if response is None:
            return OperationResult(
                event_id=op.event_id,
                error=Unavailable(f"{PROVIDER_NAME} batch answer left out an item"),
            )
        status = response.status_code
        if op.kind == "create" and status == 409 and reason_of(response) not in CONFLICT_REASONS:
            event = op.event
            assert event is not None

            async def restore() -> OperationResult:
                return OperationResult(
                    await self._restore(calendar_id, event_id_for(event.key), event)
                )

            return restore
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
        """Run the operations through the batch endpoint, ``batch_chunk`` per request (the
        shared loop of ``_http.run_batch``). A create whose id exists is restored with a
        separate ``PUT``. Items answered 404/403 are explained once per call: when the calendar
        is gone or read-only they fail with ``CalendarUnavailable``."""
        results = await run_batch(
            self._http,
            operations,
            chunk=self.batch_chunk,
            check=lambda op: self._check(calendar_id, op),
            send=lambda items: self._send_batch(calendar_id, items),
            decode=lambda op, response: self._item_result(calendar_id, op, response),
        )
        return await self._explain_items(calendar_id, operations, results)

    async def _explain_items(
        self, calendar_id: str, operations: Sequence[Operation], results: list[OperationResult]
    ) -> list[OperationResult]:
        suspects = [
            i
            for i, r in enumerate(results)
            if r.error is not None
            and (isinstance(r.error, NotFound | Gone) or self._refused(r.error))
            and not isinstance(r.error, EventIdTaken)
        ]
        if not suspects:
            return results
        problem = await self.calendar_problem(calendar_id)
        for i in suspects:
            error = results[i].error
            if problem is not None:
                results[i] = OperationResult(event_id=results[i].event_id, error=problem)
            elif operations[i].kind != "create" and error is not None and self._refused(error):
                results[i] = OperationResult(
                    event_id=results[i].event_id,
                    error=Gone(f"{PROVIDER_NAME}: the event was deleted and cannot be changed"),
                )
        return results


def _tagged(item: dict[str, Any], zone: tzinfo) -> TaggedEvent | None:
    tag = _tag_of(item)
    event_id = item.get("id")
    if tag is None or not isinstance(event_id, str):
        return None
    first = _parse_time(item.get("start"), zone)
    last = _parse_time(item.get("end"), zone)
    if first is None or last is None:
        return None
    reminders = item.get("reminders")
    reminders_on: bool | None = None
    if isinstance(reminders, dict) and reminders.get("useDefault") is False:
        reminders_on = bool(reminders.get("overrides"))
    location = item.get("location")
    etag = item.get("etag")
    return TaggedEvent(
        event_id=event_id,
        tag=tag,
        title=str(item.get("summary") or ""),
        description=description_text(str(item.get("description") or "")),
        location=location if isinstance(location, str) and location else None,
        start=first,
        end=last,
        private=item.get("visibility") in ("private", "confidential"),
        reminders_on=reminders_on,
        version=etag if isinstance(etag, str) else None,
    )
