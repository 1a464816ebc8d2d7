"""Google Calendar v3 client against ``httpx2.MockTransport``: error table, ids, payloads, the
409-restore path, busy time, and the multipart batch codec."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx2
import pytest

from calsync_cli.config import Settings
from calsync_cli.providers.base import (
    AuthExpired,
    EventData,
    Gone,
    InvalidRequest,
    NotFound,
    Operation,
    PermissionDenied,
    ProviderError,
    RateLimited,
    StaticTokenSource,
    Unavailable,
)
from calsync_cli.providers.factory import make_provider
from calsync_cli.providers.google import (
    GoogleCalendarProvider,
    decode_batch,
    encode_batch,
    event_body,
    event_id_for,
    google_error,
)

T = TypeVar("T")
API = "https://g.test/calendar/v3"
BATCH = "https://g.test/batch/calendar/v3"
CST = timezone(timedelta(hours=-6))

EVENT = EventData(
    key="int-1/visit-9/gen-0",
    title="[Main Street] - Jane Doe - Follow Up",
    description="Jane Doe\nFollow Up",
    location="12 Main St, Room 4",
    start=datetime(2026, 12, 1, 9, 0, tzinfo=CST),
    end=datetime(2026, 12, 1, 9, 30, tzinfo=CST),
    timezone="America/Chicago",
    tag="calsync:int-1:visit-9",
)


class NoSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run(
    handler: Callable[[httpx2.Request], httpx2.Response],
    body: Callable[[GoogleCalendarProvider], Awaitable[T]],
    *,
    budget: float = 30.0,
) -> T:
    def routed(request: httpx2.Request) -> httpx2.Response:
        # a failed write asks the calendar list whether the calendar itself is the problem
        if request.url.path.endswith("/users/me/calendarList/cal"):
            return httpx2.Response(200, json={"id": "cal", "accessRole": "owner"})
        return handler(request)

    async def main() -> T:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(routed)) as client:
            provider = GoogleCalendarProvider(
                client,
                StaticTokenSource("tok"),
                api_url=API,
                batch_url=BATCH,
                retry_budget=budget,
                sleep=NoSleep(),
            )
            return await body(provider)

    return asyncio.run(main())


def gerror(status: int, reason: str | None = None, message: str = "boom") -> httpx2.Response:
    error: dict[str, Any] = {"code": status, "message": message}
    if reason:
        error["errors"] = [{"domain": "global", "reason": reason, "message": message}]
    return httpx2.Response(status, json={"error": error})


# -- error table -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (gerror(400, "badRequest"), InvalidRequest),
        (gerror(401, "authError"), AuthExpired),
        (gerror(403, "rateLimitExceeded"), RateLimited),
        (gerror(403, "userRateLimitExceeded"), RateLimited),
        (gerror(403, "quotaExceeded"), RateLimited),
        (gerror(403, "forbidden"), PermissionDenied),
        (gerror(403, "requiredAccessLevel"), PermissionDenied),
        (gerror(404, "notFound"), NotFound),
        (gerror(409, "duplicate"), InvalidRequest),
        (gerror(410, "deleted"), Gone),
        (gerror(412, "conditionNotMet"), InvalidRequest),
        (gerror(429, "rateLimitExceeded"), RateLimited),
        (httpx2.Response(429), RateLimited),
        (gerror(500, "backendError"), Unavailable),
        (httpx2.Response(502, text="<html>bad gateway</html>"), Unavailable),
        (gerror(503), Unavailable),
        (httpx2.Response(408), Unavailable),
    ],
)
def test_error_table(response: httpx2.Response, expected: type[ProviderError]) -> None:
    error = google_error(response)
    assert type(error) is expected
    assert error.status == response.status_code


def test_error_message_is_one_short_line_with_the_providers_text() -> None:
    error = google_error(gerror(400, "invalid", "Bad\nvalue " + "x" * 400))
    assert "\n" not in error.message
    assert len(error.message) <= 200
    assert error.message.startswith("Google Calendar: HTTP 400 invalid: Bad value")


def test_rate_limit_carries_retry_after() -> None:
    error = google_error(httpx2.Response(429, headers={"Retry-After": "7"}))
    assert isinstance(error, RateLimited) and error.retry_after == 7


# -- ids and payloads ------------------------------------------------------------------------------


def test_event_id_is_deterministic_base32hex() -> None:
    event_id = event_id_for("int-1/visit-9/gen-0")
    assert event_id == event_id_for("int-1/visit-9/gen-0")
    assert event_id != event_id_for("int-1/visit-9/gen-1")
    assert re.fullmatch(r"[0-9a-v]{5,1024}", event_id)
    assert len(event_id) == 52


def test_event_body() -> None:
    body = event_body(EVENT)
    assert body["summary"] == EVENT.title
    assert body["start"] == {"dateTime": "2026-12-01T09:00:00-06:00", "timeZone": "America/Chicago"}
    assert body["end"]["dateTime"] == "2026-12-01T09:30:00-06:00"
    assert body["extendedProperties"] == {"private": {"calsync": EVENT.tag}}
    assert body["location"] == EVENT.location


def test_event_body_shows_the_practice_zone() -> None:
    utc_event = EventData(**{**EVENT.__dict__, "start": datetime(2026, 12, 1, 15, tzinfo=UTC)})
    assert event_body(utc_event)["start"]["dateTime"] == "2026-12-01T09:00:00-06:00"


# -- calls -----------------------------------------------------------------------------------------


def test_list_calendars_pages_and_roles() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/calendar/v3/users/me/calendarList"
        if request.url.params.get("pageToken") == "p2":
            return httpx2.Response(
                200, json={"items": [{"id": "hol", "summary": "Holidays", "accessRole": "reader"}]}
            )
        items = [
            {"id": "dr@example.com", "summary": "dr", "primary": True, "accessRole": "owner"},
            {"id": "team", "summary": "Team", "summaryOverride": "My team", "accessRole": "writer"},
        ]
        return httpx2.Response(200, json={"items": items, "nextPageToken": "p2"})

    calendars = run(handler, lambda p: p.list_calendars())
    assert [(c.id, c.name, c.primary, c.writable) for c in calendars] == [
        ("dr@example.com", "dr", True, True),
        ("team", "My team", False, True),
        ("hol", "Holidays", False, False),
    ]
    assert run(handler, lambda p: p.account()) == "dr@example.com"


def test_create_sends_id_and_body() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        body = json.loads(request.content)
        return httpx2.Response(200, json=dict(body, status="confirmed"))

    event_id = run(handler, lambda p: p.create_event("dr@example.com", EVENT))
    assert event_id == event_id_for(EVENT.key)
    (request,) = seen
    assert request.method == "POST"
    assert request.url.raw_path == b"/calendar/v3/calendars/dr%40example.com/events"
    assert json.loads(request.content)["id"] == event_id


def test_create_conflict_restores_with_put() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        seen.append((request.method, body))
        if request.method == "POST":
            return gerror(409, "duplicate", "The requested identifier already exists.")
        return httpx2.Response(200, json=dict(body, id=request.url.path.rsplit("/", 1)[-1]))

    event_id = run(handler, lambda p: p.create_event("cal", EVENT))
    assert event_id == event_id_for(EVENT.key)
    assert [method for method, _ in seen] == ["POST", "PUT"]
    assert seen[1][1]["status"] == "confirmed"
    assert seen[1][1]["summary"] == EVENT.title


def test_update_of_a_cancelled_event_is_gone() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.method == "PATCH"
        return httpx2.Response(200, json={"id": "abc", "status": "cancelled"})

    with pytest.raises(Gone):
        run(handler, lambda p: p.update_event("cal", "abc", EVENT))


@pytest.mark.parametrize(("status", "expected"), [(404, NotFound), (410, Gone)])
def test_delete_missing(status: int, expected: type[ProviderError]) -> None:
    with pytest.raises(expected):
        run(lambda r: gerror(status), lambda p: p.delete_event("cal", "abc"))


def test_delete_ok() -> None:
    assert run(lambda r: httpx2.Response(204), lambda p: p.delete_event("cal", "abc")) is None


def test_error_messages_never_carry_the_event() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return gerror(400, "invalid", "Invalid start time.")

    with pytest.raises(InvalidRequest) as info:
        run(handler, lambda p: p.create_event("cal", EVENT))
    assert "Jane" not in str(info.value) and "Jane" not in repr(info.value.args)


def test_list_busy_filters_pages_and_tags() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    end = start + timedelta(days=1)

    def handler(request: httpx2.Request) -> httpx2.Response:
        params = request.url.params
        assert params["singleEvents"] == "true"
        assert params["timeMin"] == "2026-12-01T00:00:00+00:00"
        if params.get("pageToken") != "next":
            return httpx2.Response(
                200,
                json={
                    "timeZone": "America/Chicago",
                    "nextPageToken": "next",
                    "items": [
                        {
                            "id": "a",
                            "status": "confirmed",
                            "start": {"dateTime": "2026-12-01T09:00:00-06:00"},
                            "end": {"dateTime": "2026-12-01T10:00:00-06:00"},
                            "extendedProperties": {"private": {"calsync": "t1"}},
                        },
                        {"id": "gone", "status": "cancelled"},
                        {
                            "id": "free",
                            "transparency": "transparent",
                            "start": {"dateTime": "2026-12-01T11:00:00Z"},
                            "end": {"dateTime": "2026-12-01T12:00:00Z"},
                        },
                    ],
                },
            )
        return httpx2.Response(
            200,
            json={
                "timeZone": "America/Chicago",
                "items": [
                    {"id": "day", "start": {"date": "2026-12-01"}, "end": {"date": "2026-12-02"}},
                    {
                        "id": "declined",
                        "start": {"dateTime": "2026-12-01T13:00:00Z"},
                        "end": {"dateTime": "2026-12-01T14:00:00Z"},
                        "attendees": [{"self": True, "responseStatus": "declined"}],
                    },
                ],
            },
        )

    blocks = run(handler, lambda p: p.list_busy("cal", start, end))
    assert [(b.event_id, b.tag) for b in blocks] == [("a", "t1"), ("day", None)]
    assert blocks[0].start == datetime(2026, 12, 1, 15, tzinfo=UTC)
    assert blocks[1].start == datetime(2026, 12, 1, 6, tzinfo=UTC)  # midnight in Chicago


# -- batch -----------------------------------------------------------------------------------------


def batch_answer(parts: list[tuple[str, int, Any]], boundary: str = "batch_xyz") -> httpx2.Response:
    lines: list[str] = []
    for content_id, status, body in parts:
        lines += [
            f"--{boundary}",
            "Content-Type: application/http",
            f"Content-ID: <{content_id}>",
            "",
        ]
        lines.append(f"HTTP/1.1 {status} Whatever")
        if body is not None:
            payload = json.dumps(body)
            lines += [
                "Content-Type: application/json; charset=UTF-8",
                f"Content-Length: {len(payload)}",
                "",
            ]
            lines.append(payload)
        else:
            lines += ["Content-Length: 0", ""]
        lines.append("")
    lines.append(f"--{boundary}--")
    return httpx2.Response(
        200,
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        content="\r\n".join(lines).encode(),
    )


def parse_batch_request(request: httpx2.Request) -> list[tuple[str, str, str, Any]]:
    """(content id, method, path, body) of each part, read back with the response decoder's
    building blocks (a request part looks like a response part with a request line)."""
    content_type = request.headers["Content-Type"]
    boundary = content_type.split("boundary=")[1]
    out = []
    for raw in request.content.split(f"--{boundary}".encode())[1:]:
        if raw.startswith(b"--"):
            break
        head, _, inner = raw.strip(b"\r\n").partition(b"\r\n\r\n")
        content_id = re.search(rb"Content-ID: <([^>]*)>", head)
        assert content_id is not None
        request_line, _, rest = inner.partition(b"\r\n")
        method, path, _ = request_line.decode().split(" ")
        _, _, body = rest.partition(b"\r\n\r\n")
        body = body.strip(b"\r\n")
        out.append((content_id.group(1).decode(), method, path, json.loads(body) if body else None))
    return out


def test_batch_codec_round_trip() -> None:
    body = encode_batch(
        [
            ("item-0", "POST", "/calendar/v3/calendars/c/events", {"summary": "é"}),
            ("item-1", "DELETE", "/calendar/v3/calendars/c/events/x", None),
        ],
        "b1",
    )
    request = httpx2.Request(
        "POST", BATCH, content=body, headers={"Content-Type": "multipart/mixed; boundary=b1"}
    )
    assert parse_batch_request(request) == [
        ("item-0", "POST", "/calendar/v3/calendars/c/events", {"summary": "é"}),
        ("item-1", "DELETE", "/calendar/v3/calendars/c/events/x", None),
    ]
    answer = batch_answer([("response-item-1", 204, None), ("response-item-0", 200, {"id": "e"})])
    decoded = decode_batch(answer.headers["Content-Type"], answer.content)
    assert [(cid, r.status_code) for cid, r in decoded] == [
        ("response-item-1", 204),
        ("response-item-0", 200),
    ]
    assert decoded[1][1].json() == {"id": "e"}


def test_decode_batch_without_boundary_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        decode_batch("multipart/mixed", b"")


def test_batch_mixed_results_retry_and_restore() -> None:
    other = EventData(**{**EVENT.__dict__, "key": "int-1/visit-10/gen-0"})
    ops = [
        Operation("create", event=EVENT),  # 409 -> restored by PUT
        Operation("update", event=EVENT, event_id="gone1"),  # 410
        Operation("delete", event_id="x"),  # 429 once, then 204
        Operation("create", event=other),  # 200
        Operation("delete", event_id="nope"),  # 404
        Operation("update", event=None, event_id="bad"),  # invalid, never sent
    ]
    calls: list[list[str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.method == "PUT":
            assert request.url.path.endswith(event_id_for(EVENT.key))
            return httpx2.Response(200, json={"id": event_id_for(EVENT.key)})
        assert str(request.url) == BATCH
        parts = parse_batch_request(request)
        calls.append([cid for cid, *_ in parts])
        answers: list[tuple[str, int, Any]] = []
        for cid, _method, path, body in parts:
            assert path.startswith("/calendar/v3/calendars/cal/events")
            rid = "response-" + cid
            if cid == "item-0":
                answers.append((rid, 409, {"error": {"code": 409, "message": "duplicate"}}))
            elif cid == "item-1":
                answers.append((rid, 410, {"error": {"code": 410, "message": "deleted"}}))
            elif cid == "item-2" and len(calls) == 1:
                answers.append((rid, 429, {"error": {"code": 429, "message": "slow down"}}))
            elif cid == "item-3":
                answers.append((rid, 200, dict(body, status="confirmed")))
            elif cid == "item-4":
                answers.append((rid, 404, {"error": {"code": 404, "message": "Not Found"}}))
            else:
                answers.append((rid, 204, None))
        return batch_answer(answers)

    results = run(handler, lambda p: p.batch("cal", ops))
    assert calls == [["item-0", "item-1", "item-2", "item-3", "item-4"], ["item-2"]]
    assert results[0].event_id == event_id_for(EVENT.key) and results[0].error is None
    assert isinstance(results[1].error, Gone)
    assert results[2].error is None and results[2].event_id == "x"
    assert results[3].event_id == event_id_for(other.key) and results[3].error is None
    assert isinstance(results[4].error, NotFound)
    assert isinstance(results[5].error, InvalidRequest)


def test_batch_throttled_items_reported_when_budget_is_zero() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        parts = parse_batch_request(request)
        return batch_answer(
            [
                ("response-" + cid, 403, {"error": {"errors": [{"reason": "rateLimitExceeded"}]}})
                for cid, *_ in parts
            ]
        )

    results = run(handler, lambda p: p.batch("cal", [Operation("delete", event_id="x")]), budget=0)
    assert isinstance(results[0].error, RateLimited)


def test_batch_whole_request_failure_raises() -> None:
    with pytest.raises(Unavailable):
        run(
            lambda r: httpx2.Response(503),
            lambda p: p.batch("cal", [Operation("delete", event_id="x")]),
            budget=0,
        )


def test_batch_chunks() -> None:
    sizes: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        parts = parse_batch_request(request)
        sizes.append(len(parts))
        return batch_answer([("response-" + cid, 204, None) for cid, *_ in parts])

    ops = [Operation("delete", event_id=f"e{i}") for i in range(50)]
    results = run(handler, lambda p: p.batch("cal", ops))
    assert sizes == [20, 20, 10]
    assert [r.event_id for r in results] == [f"e{i}" for i in range(50)]


def test_factory_uses_settings() -> None:
    settings = Settings(db_url="sqlite://", google_api_url=API, google_batch_url=BATCH)

    async def main() -> None:
        async with httpx2.AsyncClient() as client:
            provider = make_provider("google", client, StaticTokenSource("t"), settings)
            assert isinstance(provider, GoogleCalendarProvider)
            assert provider.api_url == API and provider.batch_url == BATCH
            with pytest.raises(ValueError):
                make_provider("yahoo", client, StaticTokenSource("t"), settings)  # type: ignore[arg-type]

    asyncio.run(main())


def test_account_after_list_calendars_needs_no_second_call() -> None:
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        items = [{"id": "dr@example.com", "summary": "dr", "primary": True, "accessRole": "owner"}]
        return httpx2.Response(200, json={"items": items})

    async def both(p: GoogleCalendarProvider) -> str:
        await p.list_calendars()
        return await p.account()

    assert run(handler, both) == "dr@example.com"
    assert calls == 1
