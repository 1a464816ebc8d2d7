"""The shared provider session: Retry-After parsing, one-line messages, refresh once, transport
failures, and the tenacity retry budget (with a fake sleep: nothing really waits)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx2
import pytest

from calsync_cli.providers._http import ApiSession, one_line, parse_retry_after, slower_error
from calsync_cli.providers.base import (
    AuthExpired,
    InvalidRequest,
    ProviderError,
    RateLimited,
    ReauthRequired,
    StaticTokenSource,
    Unavailable,
)

T = TypeVar("T")
Handler = Callable[[httpx2.Request], httpx2.Response]


class FakeSleep:
    """Records the waits instead of sleeping; advances a fake clock by them."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 0.0

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def translate(response: httpx2.Response) -> ProviderError:
    status = response.status_code
    if status == 429:
        return RateLimited(
            "throttled",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            status=status,
        )
    if status >= 500:
        return Unavailable("down", status=status)
    return InvalidRequest(f"HTTP {status}", status=status)


def run_session(
    handler: Handler,
    body: Callable[[ApiSession], Awaitable[T]],
    *,
    tokens: StaticTokenSource | None = None,
    budget: float = 30.0,
    sleep: FakeSleep | None = None,
) -> T:
    sleeper = sleep or FakeSleep()

    async def main() -> T:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
            session = ApiSession(
                client,
                tokens or StaticTokenSource("tok"),
                provider="Test",
                translate=translate,
                retry_budget=budget,
                sleep=sleeper,
                clock=sleeper.clock,
            )
            return await body(session)

    return asyncio.run(main())


# -- parsers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == expected


def test_one_line_collapses_and_truncates() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    long = one_line("x" * 500)
    assert len(long) == 200 and long.endswith("…")


def test_slower_error_prefers_rate_limits_and_longer_waits() -> None:
    short, long = RateLimited("a", retry_after=1), RateLimited("b", retry_after=9)
    down = Unavailable("c", retry_after=50)
    assert slower_error(None, short) is short
    assert slower_error(short, long) is long
    assert slower_error(long, short) is long
    assert slower_error(down, short) is short
    assert slower_error(short, down) is short


# -- one exchange ----------------------------------------------------------------------------------


def test_bearer_token_is_sent() -> None:
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers["Authorization"])
        return httpx2.Response(200, json={})

    run_session(handler, lambda s: s.call("GET", "https://api.test/x"))
    assert seen == ["Bearer tok"]


def test_401_refreshes_once_and_repeats() -> None:
    async def refresher() -> str:
        return "fresh"

    tokens = StaticTokenSource("stale", refresher)

    def handler(request: httpx2.Request) -> httpx2.Response:
        ok = request.headers["Authorization"] == "Bearer fresh"
        return httpx2.Response(200 if ok else 401, json={})

    response = run_session(handler, lambda s: s.call("GET", "https://api.test/x"), tokens=tokens)
    assert response.status_code == 200
    assert tokens.refreshes == 1


def test_401_after_refresh_is_auth_expired() -> None:
    async def refresher() -> str:
        return "still-bad"

    tokens = StaticTokenSource("stale", refresher)
    with pytest.raises(AuthExpired):
        run_session(
            lambda r: httpx2.Response(401, json={}),
            lambda s: s.call("GET", "https://api.test/x"),
            tokens=tokens,
        )
    assert tokens.refreshes == 1


def test_refused_refresh_is_reauth_required() -> None:
    with pytest.raises(ReauthRequired):
        run_session(
            lambda r: httpx2.Response(401, json={}),
            lambda s: s.call("GET", "https://api.test/x"),
            tokens=StaticTokenSource("stale"),  # no refresher: refresh raises ReauthRequired
        )


@pytest.mark.parametrize(
    "exc",
    [
        httpx2.ConnectError("refused"),
        httpx2.RemoteProtocolError("server disconnected"),
        httpx2.ReadTimeout("slow"),
        httpx2.ReadError("reset"),
    ],
)
def test_transport_failures_are_unavailable(exc: Exception) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise exc

    with pytest.raises(Unavailable):
        run_session(handler, lambda s: s.call("GET", "https://api.test/x"), budget=0)


def test_accepted_status_is_returned() -> None:
    response = run_session(
        lambda r: httpx2.Response(409, json={}),
        lambda s: s.call("POST", "https://api.test/x", accept=(409,)),
    )
    assert response.status_code == 409


# -- retry budget ----------------------------------------------------------------------------------


class Script:
    """Answers the given statuses in turn, then 200."""

    def __init__(self, *answers: httpx2.Response | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.calls += 1
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return httpx2.Response(200, json={"ok": True})


def call(session: ApiSession) -> Awaitable[httpx2.Response]:
    return session.call("GET", "https://api.test/x")


def throttled(retry_after: str | None = None) -> httpx2.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx2.Response(429, headers=headers, json={})


def test_retry_after_is_honoured_within_budget() -> None:
    script, sleep = Script(throttled("3"), throttled("3")), FakeSleep()
    response = run_session(script, call, sleep=sleep)
    assert response.status_code == 200
    assert script.calls == 3
    assert len(sleep.waits) == 2 and all(w >= 3 for w in sleep.waits)


def test_unavailable_is_retried_with_growing_backoff() -> None:
    script, sleep = Script(*(httpx2.Response(503) for _ in range(4))), FakeSleep()
    run_session(script, call, sleep=sleep)
    assert script.calls == 5
    assert sleep.waits == sorted(sleep.waits) or max(sleep.waits) <= 8.5
    assert all(0 < w <= 8.5 for w in sleep.waits)


def test_budget_zero_disables_retry() -> None:
    script, sleep = Script(throttled("3")), FakeSleep()
    with pytest.raises(RateLimited) as info:
        run_session(script, call, sleep=sleep, budget=0)
    assert info.value.retry_after == 3
    assert script.calls == 1 and sleep.waits == []


def test_retry_after_longer_than_budget_raises_at_once() -> None:
    script, sleep = Script(throttled("120")), FakeSleep()
    with pytest.raises(RateLimited) as info:
        run_session(script, call, sleep=sleep, budget=30)
    assert info.value.retry_after == 120
    assert script.calls == 1 and sleep.waits == []


def test_budget_bounds_total_waiting() -> None:
    script, sleep = Script(*(httpx2.Response(503) for _ in range(1000))), FakeSleep()
    with pytest.raises(Unavailable):
        run_session(script, call, sleep=sleep, budget=30)
    assert sum(sleep.waits) <= 30
    assert script.calls >= 4


def test_final_errors_are_not_retried() -> None:
    script, sleep = Script(httpx2.Response(400, json={})), FakeSleep()
    with pytest.raises(InvalidRequest):
        run_session(script, call, sleep=sleep)
    assert script.calls == 1 and sleep.waits == []


def test_dropped_connection_is_retried() -> None:
    script = Script(httpx2.RemoteProtocolError("Server disconnected"))
    assert run_session(script, call).status_code == 200
    assert script.calls == 2


def test_concurrency_is_capped() -> None:
    active, peak = 0, 0

    async def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        active -= 1
        return httpx2.Response(200, json={})

    async def many(session: ApiSession) -> list[Any]:
        return await asyncio.gather(*(call(session) for _ in range(12)))

    run_session(handler, many)  # type: ignore[arg-type]
    assert peak <= 4
