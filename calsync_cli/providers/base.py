"""The calendar provider interface, and the errors every provider translates its answers into.

The errors (``ProviderError`` and its subclasses: ``NotFound``, ``Gone``, ``RateLimited``,
``Unavailable``, ``AuthExpired``, ``ReauthRequired``, ``PermissionDenied``,
``CalendarUnavailable``, ``EventIdTaken``, ``InvalidRequest``) are drawn in ``calsync_cli.errors``
with the rest of calsync's exceptions and re-exported here. The engine never sees an HTTP status
code; it sees these classes. ``retryable`` says whether a failure may succeed later without
anyone changing anything.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Literal

from calsync_cli.errors import (
    AuthExpired,
    CalendarUnavailable,
    EventIdTaken,
    Gone,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProviderError,
    RateLimited,
    ReauthRequired,
    Unavailable,
)

__all__ = [
    "AuthExpired",
    "BusyBlock",
    "Calendar",
    "CalendarProvider",
    "CalendarUnavailable",
    "EventData",
    "EventIdTaken",
    "Gone",
    "InvalidRequest",
    "NotFound",
    "Operation",
    "OperationResult",
    "PermissionDenied",
    "ProviderError",
    "RateLimited",
    "ReauthRequired",
    "StaticTokenSource",
    "TokenSource",
    "Unavailable",
]


@dataclass(frozen=True)
class Calendar:
    id: str
    name: str
    primary: bool
    writable: bool


@dataclass(frozen=True)
class EventData:
    """What calsync writes for one visit on one integration's calendar.

    ``key`` is deterministic per (integration, visit, generation) and contains no PHI. Google
    derives its client-supplied event id from it; Graph sends it as ``transactionId``. So a create
    that is repeated after a crash yields the same event, not a second one.
    ``tag`` marks the event as calsync's own (Google ``extendedProperties.private``, Graph
    single-value extended property); it is opaque and PHI-free.
    """

    key: str
    title: str
    description: str
    location: str | None
    start: datetime  # aware
    end: datetime  # aware
    timezone: str  # IANA name of the practice
    tag: str
    #: mark the event private (Google ``visibility``, Outlook ``sensitivity``): people the
    #: calendar is shared with see "busy", not the patient
    private: bool = True
    #: reminders: None = the app's default for synced visits (Outlook off, Google the
    #: calendar's default reminders), True = the calendar's default reminders, False = none
    reminders: bool | None = None


@dataclass(frozen=True)
class TaggedEvent:
    """One of calsync's own events as the provider holds it now (``list_tagged_events``), in
    the terms of ``EventData`` so the engine can compare it with a fresh render.

    ``description`` is plain text (Google's HTML is read back to text); ``private`` and
    ``reminders_on`` are what the event says now (``reminders_on`` is None where the provider
    leaves the calendar's default in place)."""

    event_id: str
    tag: str
    title: str
    description: str
    location: str | None
    start: datetime  # aware
    end: datetime  # aware
    private: bool
    reminders_on: bool | None = None
    #: the provider's change marker (Google ``etag``, Graph ``changeKey``), when it gives one
    version: str | None = None


@dataclass(frozen=True)
class BusyBlock:
    """Busy time on an external calendar. ``tag`` is set when the event is calsync's own."""

    start: datetime
    end: datetime
    event_id: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class Operation:
    """One write in a batch."""

    kind: Literal["create", "update", "delete"]
    event: EventData | None = None  # create, update
    event_id: str | None = None  # update, delete


@dataclass
class OperationResult:
    """The answer to one ``Operation``: the event id, or the error it failed with."""

    event_id: str | None = None
    error: ProviderError | None = None


class CalendarProvider(abc.ABC):
    """One connected account at Google or Microsoft.

    Implementations take an ``httpx2.AsyncClient`` and an access-token source; they refresh an
    expired access token once per call by themselves (``AuthExpired`` never escapes unless the
    refreshed token is refused too) and raise ``ReauthRequired`` when the refresh is refused.
    """

    #: how many operations one batch request may carry
    max_batch: int = 1
    #: how many requests may be in flight at once for one account
    max_concurrency: int = 4

    # Capabilities: how the service treats repeated and restored creates. The engine's plan reads
    # these, never the app's name; the conformance suite asserts them per provider.

    #: a create with the id of an event deleted earlier restores that event (Google keeps deleted
    #: events under their id), so a visit keeps one key for life and a delete does not move it on
    create_restores_deleted: ClassVar[bool] = False
    #: a repeated create answers the event as it was first created, unchanged (Graph's
    #: ``transactionId``): after repeating a create that may have landed, update the event
    repeated_create_returns_original: ClassVar[bool] = False

    @abc.abstractmethod
    async def account(self) -> str:
        """The account's e-mail address (from the primary calendar's owner)."""

    @abc.abstractmethod
    async def list_calendars(self) -> list[Calendar]:
        """Every calendar of the account. Raises ``ReauthRequired`` when the grant is gone."""

    @abc.abstractmethod
    async def create_event(self, calendar_id: str, event: EventData) -> str:
        """Create the event and return its id. Idempotent by ``event.key``: repeating a create
        (or creating again after a delete, for Google) answers the same event, restored and
        updated to ``event``. Raises ``NotFound`` for an unknown calendar, ``PermissionDenied``
        for a read-only one, ``InvalidRequest`` for content the provider rejects."""

    @abc.abstractmethod
    async def update_event(self, calendar_id: str, event_id: str, event: EventData) -> str:
        """Replace the event's content and return its id. Raises ``NotFound`` or ``Gone`` when
        it was deleted outside calsync (the engine then creates it again)."""

    @abc.abstractmethod
    async def delete_event(self, calendar_id: str, event_id: str) -> None:
        """Delete the event. Raises ``NotFound`` or ``Gone`` when it is already gone."""

    @abc.abstractmethod
    async def find_event_by_tag(self, calendar_id: str, tag: str) -> str | None:
        """The id of the live event carrying calsync's ``tag`` on the calendar, or None. One
        request: the engine asks it before creating again a create that may have landed (Graph
        keeps a ``transactionId`` for an undocumented while only)."""

    @abc.abstractmethod
    def list_tagged_events(
        self, calendar_id: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[TaggedEvent]]:
        """calsync's live events overlapping [start, end), one list per page the provider
        answers: the number of requests grows with pages, not events."""

    @abc.abstractmethod
    async def list_busy(self, calendar_id: str, start: datetime, end: datetime) -> list[BusyBlock]:
        """Busy (not free, not cancelled) events overlapping [start, end)."""

    async def batch(
        self, calendar_id: str, operations: Sequence[Operation]
    ) -> list[OperationResult]:
        """Run several writes, at most ``max_batch`` per request. Errors are per operation;
        a failure of the whole request raises. The default runs them one by one."""
        results: list[OperationResult] = []
        for op in operations:
            try:
                if op.kind == "create":
                    assert op.event is not None
                    results.append(OperationResult(await self.create_event(calendar_id, op.event)))
                elif op.kind == "update":
                    assert op.event is not None and op.event_id is not None
                    results.append(
                        OperationResult(await self.update_event(calendar_id, op.event_id, op.event))
                    )
                else:
                    assert op.event_id is not None
                    await self.delete_event(calendar_id, op.event_id)
                    results.append(OperationResult(op.event_id))
            except ReauthRequired:
                raise
            except ProviderError as exc:
                results.append(OperationResult(error=exc))
        return results

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the provider holds (the HTTP client belongs to the caller)."""


class TokenSource(abc.ABC):
    """Where a provider gets its bearer token. Implemented by ``calsync_cli.auth``."""

    @abc.abstractmethod
    async def access_token(self) -> str:
        """A current access token (refreshing first when it has expired)."""

    @abc.abstractmethod
    async def refresh(self) -> str:
        """Force a refresh after the provider refused the token. Raises ``ReauthRequired``."""


class StaticTokenSource(TokenSource):
    """A fixed access token, for tests and the sandbox demo.

    ``refresher`` (an async callable answering a new token) serves ``refresh()``; without one a
    refresh raises ``ReauthRequired``, as a revoked grant would. ``refreshes`` counts them.
    """

    def __init__(self, token: str, refresher: Callable[[], Awaitable[str]] | None = None) -> None:
        self.token = token
        self.refresher = refresher
        self.refreshes = 0

    async def access_token(self) -> str:
        return self.token

    async def refresh(self) -> str:
        self.refreshes += 1
        if self.refresher is None:
            raise ReauthRequired("the access token was refused and cannot be refreshed")
        self.token = await self.refresher()
        return self.token
