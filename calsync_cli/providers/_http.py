"""What the Google and Microsoft clients share: one authenticated request with a single token
refresh, transport failures as ``Unavailable``, quick in-call retries under a time budget, error
translation from a provider's table, the batch loop, and the small parsers (``Retry-After``,
one-line messages).

The batch loop (``run_batch``) is written once: chunk the operations, send a chunk, read each
item's answer, send again at once the items refused for an expired token (after one refresh),
send again after a wait only the throttled or transient items, and report the rest per item.
Google and Graph supply how to encode a chunk and decode one item's answer.

Nothing here formats a request body into a message: bodies carry patient names. Error messages
are built from the status code and the provider's own error text, cut to one short line.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx2
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from calsync_cli import errors
from calsync_cli.providers.base import (
    AuthExpired,
    InvalidRequest,
    Operation,
    OperationResult,
    ProviderError,
    RateLimited,
    ReauthRequired,
    TokenSource,
    Unavailable,
)

T = TypeVar("T")

SleepFunc = Callable[[float], Awaitable[None]]
Translator = Callable[[httpx2.Response], ProviderError]

#: how long one provider message may be in an error (they are shown on one line, and stored)
MESSAGE_LIMIT = 200
#: default overall budget for quick in-call retries, seconds (DESIGN.md "Retry and lease details")
DEFAULT_RETRY_BUDGET = 30.0


#: seconds for one OAuth or API exchange
HTTP_TIMEOUT = 30.0
#: loopback (the sandbox, ``calsync demo``) is reached directly, never through a proxy named in
#: HTTP(S)_PROXY / ALL_PROXY: a corporate proxy cannot reach this machine's 127.0.0.1. Real
#: providers still go through the proxy. (httpx2 mounts; None means "no proxy".)
DIRECT_LOOPBACK: dict[str, None] = {
    "all://127.0.0.1": None,
    "all://localhost": None,
    "all://[::1]": None,
}


def client_options(transport: Any = None, timeout: Any = HTTP_TIMEOUT) -> dict[str, Any]:
    """Keyword arguments for every httpx2 client calsync makes (Authlib's included)."""
    options: dict[str, Any] = {"timeout": timeout, "mounts": DIRECT_LOOPBACK}
    if transport is not None:
        options["transport"] = transport
    return options


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A provider's text as one line of at most ``limit`` characters (``errors.one_line``)."""
    return errors.one_line(text, limit)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    Answers ``None`` when the header is missing or unreadable; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
            return None
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def json_body(response: httpx2.Response) -> Any:
    """The response's JSON, or ``None`` when it has none (or it is not JSON)."""
    if not response.content:
        return None
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def json_object(response: httpx2.Response, provider: str) -> dict[str, Any]:
    """The JSON object a successful call answered; a malformed answer counts as transient."""
    data = json_body(response)
    if not isinstance(data, dict):
        raise Unavailable(
            f"{provider} answered HTTP {response.status_code} without a JSON object",
            status=response.status_code,
        )
    return data


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            return parse_retry_after(value)
    return None


class ApiSession:
    """Authenticated calls to one provider for one account.

    * ``send`` makes one HTTP exchange with the current bearer token. A 401 refreshes the token
      through ``TokenSource.refresh()`` (whose ``ReauthRequired`` propagates) and repeats the
      exchange once; a second 401 raises ``AuthExpired``.
    * Transport failures (connect errors, dropped connections, timeouts) raise ``Unavailable``.
    * A status outside 2xx (and outside ``accept``) goes through the provider's ``translate``.
    * ``retrying`` repeats a coroutine while it raises ``RateLimited`` or ``Unavailable``, with
      exponential backoff and jitter, honouring ``retry_after``, for at most ``retry_budget``
      seconds in all. A wait that would overrun the budget is not started: the last error is
      raised at once, so the engine's stored schedule takes over. ``retry_budget <= 0`` disables
      the quick retries.
    """

    def __init__(
        self,
        client: httpx2.AsyncClient,
        tokens: TokenSource,
        *,
        provider: str,
        translate: Translator,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        sleep: SleepFunc | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_concurrency: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        #: sent on every exchange (Graph: ``Prefer: IdType="ImmutableId"``)
        self.headers = dict(headers or {})
        self.tokens = tokens
        self.provider = provider
        self.translate = translate
        self.retry_budget = retry_budget
        self.sleep: SleepFunc = sleep if sleep is not None else asyncio.sleep
        self.clock = clock
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._gate = asyncio.Semaphore(max_concurrency)
        self._backoff = wait_exponential_jitter(
            multiplier=initial_backoff, max=max_backoff, jitter=initial_backoff
        )

    # -- one exchange --------------------------------------------------------------------------

    async def _exchange(
        self, method: str, url: str, token: str, kwargs: dict[str, Any]
    ) -> httpx2.Response:
        headers = dict(self.headers)
        for name, value in (kwargs.pop("headers", None) or {}).items():
            if name.lower() == "prefer" and "Prefer" in headers:  # preferences add up
                headers["Prefer"] = f"{headers['Prefer']}, {value}"
            else:
                headers[name] = value
        headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._gate:
                return await self.client.request(method, url, headers=headers, **kwargs)
        except httpx2.TimeoutException:
            raise Unavailable(f"{self.provider} did not answer in time") from None
        except httpx2.TransportError as exc:
            raise Unavailable(f"{self.provider} connection failed ({type(exc).__name__})") from None

    async def send(
        self,
        method: str,
        url: str,
        *,
        accept: Collection[int] = (),
        **kwargs: Any,
    ) -> httpx2.Response:
        """One call (with at most one token refresh); 2xx or ``accept`` answers are returned,
        everything else raises the translated ``ProviderError``."""
        token = await self.tokens.access_token()
        response = await self._exchange(method, url, token, dict(kwargs))
        if response.status_code == 401:
            token = await self.tokens.refresh()
            response = await self._exchange(method, url, token, dict(kwargs))
            if response.status_code == 401:
                raise AuthExpired(f"{self.provider} refused the refreshed access token", status=401)
        if 200 <= response.status_code < 300 or response.status_code in accept:
            return response
        raise self.translate(response)

    async def call(
        self,
        method: str,
        url: str,
        *,
        accept: Collection[int] = (),
        **kwargs: Any,
    ) -> httpx2.Response:
        """``send`` with quick retries of transient failures (see ``retrying``)."""
        return await self.retrying(lambda: self.send(method, url, accept=accept, **kwargs))

    # -- quick retries -------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        assert state.outcome is not None
        exc = state.outcome.exception()
        hinted = getattr(exc, "retry_after", None)
        if isinstance(hinted, int | float) and hinted > backoff:
            return float(hinted)
        return float(backoff)

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` and repeat it on ``RateLimited``/``Unavailable`` within the budget."""
        budget = self.retry_budget
        if budget <= 0:
            return await attempt()
        started = self.clock()

        def out_of_budget(state: RetryCallState) -> bool:
            # The time spent so far is at least what we slept (a fake sleep does not move the
            # clock) and at least what the clock says (real sleeps plus the calls themselves).
            spent = max(self.clock() - started, state.idle_for)
            return spent + (state.upcoming_sleep or 0.0) > budget

        retryer = AsyncRetrying(
            sleep=self.sleep,
            retry=retry_if_exception_type((RateLimited, Unavailable)),
            wait=self._wait,
            stop=out_of_budget,
            reraise=True,
        )

        async def run() -> T:  # tenacity needs a coroutine function, not a lambda
            return await attempt()

        return await retryer(run)


def slower_error(current: ProviderError | None, candidate: ProviderError) -> ProviderError:
    """Of two retryable errors, the one to wait for: ``RateLimited`` first, then the longer
    ``retry_after``."""
    if current is None:
        return candidate
    if isinstance(candidate, RateLimited) != isinstance(current, RateLimited):
        return candidate if isinstance(candidate, RateLimited) else current
    wait_now = getattr(current, "retry_after", None) or 0.0
    wait_new = getattr(candidate, "retry_after", None) or 0.0
    return candidate if wait_new > wait_now else current


# -- error translation ---------------------------------------------------------------------------

ErrorClass = type[ProviderError]


@dataclass(frozen=True)
class ErrorRule:
    """One row of a provider's error table: a status (or range), the provider's reasons it
    requires (None: any), and the class it becomes. ``retry_after`` overrides the header's
    wait (seconds), for errors whose provider documents a long back-off."""

    status: int | range
    reasons: frozenset[str] | None
    cls: ErrorClass
    retry_after: float | None = None

    def matches(self, status: int, reason: str | None) -> bool:
        hit = status == self.status if isinstance(self.status, int) else status in self.status
        return hit and (self.reasons is None or reason in self.reasons)


def translate(
    response: httpx2.Response,
    *,
    provider: str,
    table: Sequence[ErrorRule],
    reason: str | None,
    message: str | None,
) -> ProviderError:
    """A non-2xx answer as the ``ProviderError`` of the first matching rule (``InvalidRequest``
    when none matches). The message is the status, the provider's reason and its own text on
    one short line: never a request body."""
    status = response.status_code
    text = f"{provider}: HTTP {status}"
    if reason:
        text += f" {reason}"
    if message:
        text += f": {message}"
    text = one_line(text)
    rule = next((r for r in table if r.matches(status, reason)), None)
    cls: ErrorClass = rule.cls if rule is not None else InvalidRequest
    if cls is RateLimited or cls is Unavailable:
        wait = retry_after_of(response.headers)
        if rule is not None and rule.retry_after is not None:
            wait = max(wait or 0.0, rule.retry_after)
        if cls is RateLimited:
            return RateLimited(text, retry_after=wait, status=status)
        return Unavailable(text, retry_after=wait, status=status)
    return cls(text, status=status)


# -- the batch loop ------------------------------------------------------------------------------

#: a step to take after the chunk was answered, for one item (Google restores a create whose id
#: exists with a separate PUT): it answers the item's result
FollowUp = Callable[[], Awaitable[OperationResult]]
#: send one chunk of (index, operation) as one request; answers each index's inner response
SendChunk = Callable[[Sequence[tuple[int, Operation]]], Awaitable[dict[int, httpx2.Response]]]
#: one item's answer (None when the batch answer left it out) as a result or a follow-up
DecodeItem = Callable[[Operation, "httpx2.Response | None"], "OperationResult | FollowUp"]


async def run_batch(
    session: ApiSession,
    operations: Sequence[Operation],
    *,
    chunk: int,
    check: Callable[[Operation], None],
    send: SendChunk,
    decode: DecodeItem,
) -> list[OperationResult]:
    """Run ``operations`` ``chunk`` per request (see the module docstring).

    ``check`` raises ``InvalidRequest`` for an operation that cannot be encoded (reported for
    that item alone). A failure of a chunk's first request as a whole raises; a later repeat
    that fails as a whole is reported on the items it carried. ``ReauthRequired`` propagates.
    """
    results: list[OperationResult | None] = [None] * len(operations)
    for first in range(0, len(operations), max(1, chunk)):
        indices = range(first, min(first + max(1, chunk), len(operations)))
        await _run_chunk(session, operations, list(indices), results, check, send, decode)
    final: list[OperationResult] = []
    for result in results:
        assert result is not None
        final.append(result)
    return final


async def _run_chunk(
    session: ApiSession,
    operations: Sequence[Operation],
    indices: list[int],
    results: list[OperationResult | None],
    check: Callable[[Operation], None],
    send: SendChunk,
    decode: DecodeItem,
) -> None:
    pending: list[int] = []
    for i in indices:
        try:
            check(operations[i])
        except InvalidRequest as exc:
            results[i] = OperationResult(event_id=operations[i].event_id, error=exc)
        else:
            pending.append(i)
    follow_ups: dict[int, FollowUp] = {}
    answered_once = False
    refreshed = False
    item_error: ProviderError | None = None

    async def one_request(batch: list[int]) -> tuple[list[int], list[int], ProviderError | None]:
        """Send ``batch``; answers (expired, again, the error to wait for)."""
        nonlocal answered_once
        answers = await send([(i, operations[i]) for i in batch])
        answered_once = True
        expired: list[int] = []
        again: list[int] = []
        worst: ProviderError | None = None
        for i in batch:
            outcome = decode(operations[i], answers.get(i))
            if not isinstance(outcome, OperationResult):
                follow_ups[i] = outcome
                continue
            results[i] = outcome
            error = outcome.error
            if isinstance(error, AuthExpired):
                expired.append(i)
            elif isinstance(error, RateLimited | Unavailable):
                again.append(i)
                worst = slower_error(worst, error)
        return expired, again, worst

    async def attempt() -> None:
        nonlocal pending, refreshed, item_error
        expired, again, worst = await one_request(pending)
        if expired and not refreshed:
            # Those items were refused with the current token: refresh once (ReauthRequired
            # propagates) and send them again at once, without waiting.
            refreshed = True
            await session.tokens.refresh()
            still, more, slower = await one_request(expired)
            again += more
            if slower is not None:
                worst = slower_error(worst, slower)
            for i in still:  # refused again with a fresh token: reported as is
                results[i] = OperationResult(
                    event_id=operations[i].event_id,
                    error=AuthExpired(f"{session.provider} refused the refreshed access token"),
                )
        pending = again
        if worst is not None:
            item_error = worst
            raise worst

    if pending:
        try:
            await session.retrying(attempt)
        except ReauthRequired:
            raise
        except ProviderError as exc:
            if exc is not item_error:
                if not answered_once:
                    raise
                for i in pending:  # a later repeat failed as a whole: report it per item
                    results[i] = OperationResult(event_id=operations[i].event_id, error=exc)
    for i, follow_up in follow_ups.items():
        try:
            results[i] = await follow_up()
        except ReauthRequired:
            raise
        except ProviderError as exc:
            results[i] = OperationResult(event_id=operations[i].event_id, error=exc)
