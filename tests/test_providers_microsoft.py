"""Microsoft Graph client against ``httpx2.MockTransport``: error table, transactionId, payloads,
calendarView paging, and JSON ``$batch`` with per-item throttling."""

from __future__ import annotations

import asyncio
import json
import uuid
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
from calsync_cli.providers.microsoft import (
    TAG_PROPERTY_ID,
    OutlookCalendarProvider,
    event_body,
    graph_error,
    transaction_id_for,
)

T = TypeVar("T")
GRAPH = "https://graph.test/v1.0"
CST = timezone(timedelta(hours=-6))

EVENT = EventData(
    key="int-2/visit-9/gen-0",
    title="[Main Street] - Jane Doe - Follow Up",
    description="Jane Doe\nFollow Up",
    location=None,
    start=datetime(2026, 12, 1, 15, 0, tzinfo=UTC),
    end=datetime(2026, 12, 1, 15, 30, tzinfo=UTC),
    timezone="America/Chicago",
    tag="calsync:int-2:visit-9",
)


class NoSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run(
    handler: Callable[[httpx2.Request], httpx2.Response],
    body: Callable[[OutlookCalendarProvider], Awaitable[T]],
    *,
    budget: float = 30.0,
    sleep: NoSleep | None = None,
) -> T:
    async def main() -> T:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
            provider = OutlookCalendarProvider(
                client,
                StaticTokenSource("tok"),
                graph_url=GRAPH,
                retry_budget=budget,
                sleep=sleep or NoSleep(),
            )
            return await body(provider)

    return asyncio.run(main())


def merror(status: int, code: str = "ErrorSomething", message: str = "boom") -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (merror(400, "ErrorInvalidRequest"), InvalidRequest),
        (merror(401, "InvalidAuthenticationToken"), AuthExpired),
        (merror(403, "ErrorAccessDenied"), PermissionDenied),
        (merror(404, "ErrorItemNotFound"), NotFound),
        (merror(409, "ErrorIrresolvableConflict"), InvalidRequest),
        (merror(410, "ErrorGone"), Gone),
        (merror(429, "ApplicationThrottled"), RateLimited),
        (merror(500, "generalException"), Unavailable),
        (merror(503, "serviceNotAvailable"), Unavailable),
        (httpx2.Response(504, text="gateway timeout"), Unavailable),
    ],
)
def test_error_table(response: httpx2.Response, expected: type[ProviderError]) -> None:
    error = graph_error(response)
    assert type(error) is expected
    assert error.status == response.status_code


def test_error_message_and_retry_after() -> None:
    error = graph_error(
        httpx2.Response(
            429,
            headers={"Retry-After": "12"},
            json={"error": {"code": "TooManyRequests", "message": "Too\nmany " + "y" * 300}},
        )
    )
    assert isinstance(error, RateLimited) and error.retry_after == 12
    assert error.message.startswith("Microsoft Graph: HTTP 429 TooManyRequests: Too many")
    assert len(error.message) <= 200
    unavailable = graph_error(httpx2.Response(503, headers={"Retry-After": "4"}))
    assert isinstance(unavailable, Unavailable) and unavailable.retry_after == 4


def test_transaction_id_is_a_stable_uuid() -> None:
    tid = transaction_id_for(EVENT.key)
    assert uuid.UUID(tid).version == 5
    assert tid == transaction_id_for(EVENT.key) != transaction_id_for("int-2/visit-9/gen-1")


def test_event_body_uses_wall_time_and_windows_zone() -> None:
    body = event_body(EVENT)
    assert body["start"] == {"dateTime": "2026-12-01T09:00:00", "timeZone": "Central Standard Time"}
    assert body["end"] == {"dateTime": "2026-12-01T09:30:00", "timeZone": "Central Standard Time"}
    assert body["body"] == {"contentType": "text", "content": EVENT.description}
    assert body["location"] == {"displayName": ""}
    assert body["singleValueExtendedProperties"] == [{"id": TAG_PROPERTY_ID, "value": EVENT.tag}]


def test_unknown_zone_falls_back_to_utc() -> None:
    body = event_body(EventData(**{**EVENT.__dict__, "timezone": "Mars/Olympus"}))
    assert body["start"] == {"dateTime": "2026-12-01T15:00:00", "timeZone": "UTC"}


def test_list_calendars_and_account() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1.0/me/calendars"
        if "skip" in str(request.url):
            return httpx2.Response(
                200, json={"value": [{"id": "H", "name": "Holidays", "canEdit": False}]}
            )
        return httpx2.Response(
            200,
            json={
                "value": [
                    {
                        "id": "C1",
                        "name": "Calendar",
                        "canEdit": True,
                        "isDefaultCalendar": True,
                        "owner": {"name": "Dr", "address": "dr@example.com"},
                    }
                ],
                "@odata.nextLink": f"{GRAPH}/me/calendars?$skip=1",
            },
        )

    calendars = run(handler, lambda p: p.list_calendars())
    assert [(c.id, c.name, c.primary, c.writable) for c in calendars] == [
        ("C1", "Calendar", True, True),
        ("H", "Holidays", False, False),
    ]
    assert run(handler, lambda p: p.account()) == "dr@example.com"


def test_create_and_update() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        seen.append((request.method, request.url.path, body))
        return httpx2.Response(201 if request.method == "POST" else 200, json=dict(body, id="E1"))

    assert run(handler, lambda p: p.create_event("C=1", EVENT)) == "E1"
    assert run(handler, lambda p: p.update_event("C=1", "E1", EVENT)) == "E1"
    (m1, path1, body1), (m2, path2, body2) = seen
    assert (m1, path1) == ("POST", "/v1.0/me/calendars/C=1/events")
    assert body1["transactionId"] == transaction_id_for(EVENT.key)
    assert (m2, path2) == ("PATCH", "/v1.0/me/calendars/C=1/events/E1")
    assert "transactionId" not in body2


@pytest.mark.parametrize(("status", "expected"), [(404, NotFound), (410, Gone)])
def test_update_and_delete_missing(status: int, expected: type[ProviderError]) -> None:
    with pytest.raises(expected):
        run(lambda r: merror(status), lambda p: p.update_event("C", "E", EVENT))
    with pytest.raises(expected):
        run(lambda r: merror(status), lambda p: p.delete_event("C", "E"))


def test_list_busy() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    end = start + timedelta(days=1)

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["Prefer"] == 'IdType="ImmutableId", outlook.timezone="UTC"'
        assert request.url.path == "/v1.0/me/calendars/C/calendarView"
        if "skiptoken" in str(request.url):
            return httpx2.Response(
                200,
                json={
                    "value": [
                        {
                            "id": "b",
                            "showAs": "tentative",
                            "start": {"dateTime": "2026-12-01T18:00:00.0000000", "timeZone": "UTC"},
                            "end": {"dateTime": "2026-12-01T19:00:00.0000000", "timeZone": "UTC"},
                        }
                    ]
                },
            )
        params = request.url.params
        assert params["startDateTime"] == "2026-12-01T00:00:00Z"
        assert params["endDateTime"] == "2026-12-02T00:00:00Z"
        return httpx2.Response(
            200,
            json={
                "value": [
                    {
                        "id": "a",
                        "showAs": "busy",
                        "isCancelled": False,
                        "start": {"dateTime": "2026-12-01T15:00:00.0000000", "timeZone": "UTC"},
                        "end": {"dateTime": "2026-12-01T15:30:00.0000000", "timeZone": "UTC"},
                        "singleValueExtendedProperties": [{"id": TAG_PROPERTY_ID, "value": "t1"}],
                    },
                    {"id": "free", "showAs": "free", "start": {}, "end": {}},
                    {"id": "x", "showAs": "busy", "isCancelled": True, "start": {}, "end": {}},
                ],
                "@odata.nextLink": f"{GRAPH}/me/calendars/C/calendarView?$skiptoken=abc",
            },
        )

    blocks = run(handler, lambda p: p.list_busy("C", start, end))
    assert [(b.event_id, b.tag) for b in blocks] == [("a", "t1"), ("b", None)]
    assert blocks[0].start == datetime(2026, 12, 1, 15, tzinfo=UTC)
    assert blocks[1].end == datetime(2026, 12, 1, 19, tzinfo=UTC)


def test_batch_per_item_results_and_throttling() -> None:
    ops = [
        Operation("create", event=EVENT),
        Operation("update", event=EVENT, event_id="E2"),
        Operation("delete", event_id="E3"),
        Operation("delete", event_id="E4"),
        Operation("create", event=None),
    ]
    rounds: list[list[str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1.0/$batch"
        requests = json.loads(request.content)["requests"]
        rounds.append([r["id"] for r in requests])
        responses = []
        for r in requests:
            assert r["url"].startswith("/me/calendars/C/events")
            if r["id"] == "0":
                assert r["body"]["transactionId"] == transaction_id_for(EVENT.key)
                responses.append({"id": "0", "status": 201, "body": {"id": "NEW"}})
            elif r["id"] == "1":
                responses.append(
                    {"id": "1", "status": 404, "body": {"error": {"code": "ErrorItemNotFound"}}}
                )
            elif r["id"] == "2" and len(rounds) == 1:
                responses.append(
                    {
                        "id": "2",
                        "status": 429,
                        "headers": {"Retry-After": "5"},
                        "body": {"error": {"code": "ApplicationThrottled"}},
                    }
                )
            else:
                responses.append({"id": r["id"], "status": 204})
        return httpx2.Response(200, json={"responses": list(reversed(responses))})

    sleep = NoSleep()
    results = run(handler, lambda p: p.batch("C", ops), sleep=sleep)
    assert rounds == [["0", "1", "2", "3"], ["2"]]
    assert sleep.waits and sleep.waits[0] >= 5
    assert results[0].event_id == "NEW" and results[0].error is None
    assert isinstance(results[1].error, NotFound)
    assert results[2].error is None and results[3].error is None
    assert isinstance(results[4].error, InvalidRequest)


def test_batch_item_throttle_beyond_budget_is_reported() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        requests = json.loads(request.content)["requests"]
        return httpx2.Response(
            200,
            json={
                "responses": [
                    {"id": r["id"], "status": 429, "headers": {"Retry-After": "600"}}
                    for r in requests
                ]
            },
        )

    sleep = NoSleep()
    results = run(handler, lambda p: p.batch("C", [Operation("delete", event_id="E")]), sleep=sleep)
    assert isinstance(results[0].error, RateLimited) and results[0].error.retry_after == 600
    assert sleep.waits == []


def test_batch_chunks_of_twenty() -> None:
    sizes: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests = json.loads(request.content)["requests"]
        sizes.append(len(requests))
        return httpx2.Response(
            200, json={"responses": [{"id": r["id"], "status": 204} for r in requests]}
        )

    results = run(handler, lambda p: p.batch("C", [Operation("delete", event_id="E")] * 45))
    assert sizes == [20, 20, 5] and all(r.error is None for r in results)


def test_factory_uses_settings() -> None:
    settings = Settings(db_url="sqlite://", microsoft_graph_url=GRAPH)

    async def main() -> None:
        async with httpx2.AsyncClient() as client:
            provider = make_provider("outlook", client, StaticTokenSource("t"), settings)
            assert isinstance(provider, OutlookCalendarProvider)
            assert provider.graph_url == GRAPH and provider.max_batch == 20
            assert provider.max_concurrency == 4

    asyncio.run(main())
