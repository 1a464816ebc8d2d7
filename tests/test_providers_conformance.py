"""One conformance suite for every calendar provider, run against the embedded sandbox over
loopback (STYLE.md item 8). ``ProviderConformance`` holds the cases; ``TestGoogle`` and
``TestOutlook`` say only how to build their client and how to read the sandbox's stored events.

Waits are faked (the providers take a ``sleep``), so throttling with ``Retry-After`` costs no time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo

import httpx2
import pytest

from calsync_cli.config import Settings
from calsync_cli.providers.base import (
    CalendarProvider,
    CalendarUnavailable,
    EventData,
    EventIdTaken,
    Gone,
    NotFound,
    Operation,
    RateLimited,
    ReauthRequired,
    TokenSource,
    Unavailable,
)
from calsync_cli.providers.factory import make_provider
from calsync_cli.providers.google import event_id_for
from calsync_cli.providers.microsoft import event_body
from calsync_cli.sandbox import Sandbox
from calsync_cli.sandbox._core import WINDOWS_ZONES

T = TypeVar("T")
CHICAGO = ZoneInfo("America/Chicago")
_counter = itertools.count(1)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(port=0) as sb:
        yield sb


class SandboxTokens(TokenSource):
    """Tokens issued by the sandbox directly. ``refresh`` asks the sandbox for a new one, unless
    the test revoked the grant: then it raises ``ReauthRequired`` as the real refresh would."""

    def __init__(self, sb: Sandbox, app: str, email: str) -> None:
        self.sb, self.app, self.email = sb, app, email
        self.token = sb.issue_token(app, email)
        self.refreshes = 0
        self.revoked = False

    async def access_token(self) -> str:
        return self.token

    async def refresh(self) -> str:
        self.refreshes += 1
        if self.revoked:
            raise ReauthRequired("the grant was revoked (invalid_grant)")
        self.token = self.sb.issue_token(self.app, self.email)
        return self.token


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def visit_event(
    key: str, *, hour: int = 9, title: str = "[Main St] - Jane Doe - Follow Up"
) -> EventData:
    start = datetime(2026, 12, 1, hour, 0, tzinfo=CHICAGO)
    return EventData(
        key=key,
        title=title,
        description="Main St\nJane Doe\nFollow Up",
        location="12 Main St, Room 4",
        start=start,
        end=start + timedelta(minutes=30),
        timezone="America/Chicago",
        tag=f"tag-{key}",
    )


class ProviderConformance:
    """The behaviour every ``CalendarProvider`` owes the engine."""

    app: ClassVar[str]
    #: how the service stores the practice's zone America/Chicago
    chicago: ClassVar[str]
    #: a well-formed id of an event that does not exist
    missing_event_id: ClassVar[str]

    # -- what subclasses say -------------------------------------------------------------------

    def stored_title(self, event: dict[str, Any]) -> str:
        raise NotImplementedError

    def stored_tag(self, event: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def stored_start(self, event: dict[str, Any]) -> datetime:
        raise NotImplementedError

    def stored_timezone(self, event: dict[str, Any]) -> str:
        raise NotImplementedError

    # -- plumbing ------------------------------------------------------------------------------

    @pytest.fixture
    def account(self, sandbox: Sandbox) -> str:
        email = f"dr{next(_counter)}@{self.app}.example.com"
        sandbox.add_account(self.app, email, calendars=[{"name": "Holidays", "writable": False}])
        return email

    def primary(self, sb: Sandbox, email: str) -> str:
        return next(str(c["id"]) for c in sb.account(self.app, email).calendars if c["primary"])

    def read_only(self, sb: Sandbox, email: str) -> str:
        calendars = sb.account(self.app, email).calendars
        return next(str(c["id"]) for c in calendars if not c["writable"])

    def run(
        self,
        sb: Sandbox,
        email: str,
        body: Callable[[CalendarProvider], Awaitable[T]],
        *,
        budget: float = 30.0,
        sleep: FakeSleep | None = None,
        tokens: SandboxTokens | None = None,
    ) -> T:
        env = sb.env()
        settings = Settings(
            db_url="sqlite://",
            google_api_url=env["CALSYNC_GOOGLE_API_URL"],
            google_batch_url=env["CALSYNC_GOOGLE_BATCH_URL"],
            microsoft_graph_url=env["CALSYNC_MICROSOFT_GRAPH_URL"],
        )
        source = tokens or SandboxTokens(sb, self.app, email)

        async def main() -> T:
            async with httpx2.AsyncClient(timeout=10) as client:
                provider = make_provider(
                    self.app,  # type: ignore[arg-type]
                    client,
                    source,
                    settings,
                    retry_budget=budget,
                    sleep=sleep or FakeSleep(),
                )
                try:
                    return await body(provider)
                finally:
                    await provider.aclose()

        return asyncio.run(main())

    def live(self, sb: Sandbox, email: str) -> list[dict[str, Any]]:
        return sb.events(self.app, email, self.primary(sb, email))

    # -- calendars -----------------------------------------------------------------------------

    def test_list_calendars(self, sandbox: Sandbox, account: str) -> None:
        calendars = self.run(sandbox, account, lambda p: p.list_calendars())
        expected = sandbox.account(self.app, account).calendars
        assert {(c.id, c.name, c.primary, c.writable) for c in calendars} == {
            (c["id"], c["name"], c["primary"], c["writable"]) for c in expected
        }
        primary = [c for c in calendars if c.primary]
        assert len(primary) == 1 and primary[0].writable
        assert any(c.name == "Holidays" and not c.writable for c in calendars)

    def test_account_is_the_email(self, sandbox: Sandbox, account: str) -> None:
        assert self.run(sandbox, account, lambda p: p.account()).lower() == account.lower()

    # -- writes --------------------------------------------------------------------------------

    def test_create_is_visible(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        event = visit_event("k-create")
        event_id = self.run(sandbox, account, lambda p: p.create_event(cal, event))
        (stored,) = self.live(sandbox, account)
        assert stored["id"] == event_id
        assert self.stored_title(stored) == event.title
        assert self.stored_tag(stored) == event.tag
        assert self.stored_start(stored) == event.start
        assert self.stored_timezone(stored) == self.chicago

    def test_create_twice_with_one_key_makes_one_event(
        self, sandbox: Sandbox, account: str
    ) -> None:
        cal = self.primary(sandbox, account)
        event = visit_event("k-twice")

        async def twice(p: CalendarProvider) -> tuple[str, str]:
            return await p.create_event(cal, event), await p.create_event(cal, event)

        first, second = self.run(sandbox, account, twice)
        assert first == second
        assert [e["id"] for e in self.live(sandbox, account)] == [first]

    def test_create_after_delete_with_a_new_key(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)

        async def flow(p: CalendarProvider) -> str:
            old = await p.create_event(cal, visit_event("k-gen0"))
            await p.delete_event(cal, old)
            return await p.create_event(cal, visit_event("k-gen1", title="Visit"))

        new_id = self.run(sandbox, account, flow)
        (stored,) = self.live(sandbox, account)
        assert stored["id"] == new_id and self.stored_title(stored) == "Visit"

    def test_update(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        event = visit_event("k-update")

        async def flow(p: CalendarProvider) -> tuple[str, str]:
            event_id = await p.create_event(cal, event)
            moved = replace(
                event,
                title="Visit",
                start=event.start + timedelta(hours=1),
                end=event.end + timedelta(hours=1),
            )
            return event_id, await p.update_event(cal, event_id, moved)

        created, updated = self.run(sandbox, account, flow)
        assert created == updated
        (stored,) = self.live(sandbox, account)
        assert self.stored_title(stored) == "Visit"
        assert self.stored_start(stored) == event.start + timedelta(hours=1)

    def test_update_after_outside_delete(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        event = visit_event("k-outside")
        event_id = self.run(sandbox, account, lambda p: p.create_event(cal, event))
        self.run(sandbox, account, lambda p: p.delete_event(cal, event_id))  # "the user" deletes
        with pytest.raises((NotFound, Gone)):
            self.run(sandbox, account, lambda p: p.update_event(cal, event_id, event))
        assert self.live(sandbox, account) == []

    def test_delete_twice(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)

        async def flow(p: CalendarProvider) -> None:
            event_id = await p.create_event(cal, visit_event("k-del"))
            await p.delete_event(cal, event_id)
            with pytest.raises((NotFound, Gone)):
                await p.delete_event(cal, event_id)

        self.run(sandbox, account, flow)
        assert self.live(sandbox, account) == []

    def test_read_only_calendar(self, sandbox: Sandbox, account: str) -> None:
        cal = self.read_only(sandbox, account)
        with pytest.raises(CalendarUnavailable):
            self.run(sandbox, account, lambda p: p.create_event(cal, visit_event("k-ro")))

    def test_unknown_event(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        with pytest.raises((NotFound, Gone)):
            self.run(sandbox, account, lambda p: p.delete_event(cal, self.missing_event_id))

    # -- faults --------------------------------------------------------------------------------

    def test_throttle_is_retried_within_budget(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        sandbox.faults(self.app, account).fail_next(2, status=429, retry_after=3)
        sleep = FakeSleep()
        self.run(sandbox, account, lambda p: p.create_event(cal, visit_event("k-429")), sleep=sleep)
        assert len(sleep.waits) == 2 and all(w >= 3 for w in sleep.waits)
        assert len(self.live(sandbox, account)) == 1

    def test_throttle_without_budget_is_raised(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        sandbox.faults(self.app, account).fail_next(1, status=429, retry_after=3)
        with pytest.raises(RateLimited) as info:
            self.run(sandbox, account, lambda p: p.create_event(cal, visit_event("k")), budget=0)
        assert info.value.retry_after == 3

    def test_throttle_longer_than_budget_is_raised_at_once(
        self, sandbox: Sandbox, account: str
    ) -> None:
        sandbox.faults(self.app, account).fail_next(1, status=429, retry_after=300)
        sleep = FakeSleep()
        with pytest.raises(RateLimited) as info:
            self.run(sandbox, account, lambda p: p.list_calendars(), sleep=sleep)
        assert info.value.retry_after == 300 and sleep.waits == []
        sandbox.faults(self.app, account).clear()

    def test_server_error_is_unavailable(self, sandbox: Sandbox, account: str) -> None:
        sandbox.faults(self.app, account).fail_next(1, status=503)
        with pytest.raises(Unavailable):
            self.run(sandbox, account, lambda p: p.list_calendars(), budget=0)
        assert self.run(sandbox, account, lambda p: p.list_calendars())

    def test_dropped_connection_is_unavailable(self, sandbox: Sandbox, account: str) -> None:
        sandbox.faults(self.app, account).drop_next(1)
        with pytest.raises(Unavailable):
            self.run(sandbox, account, lambda p: p.list_calendars(), budget=0)

    def test_dropped_connection_is_retried(self, sandbox: Sandbox, account: str) -> None:
        sandbox.faults(self.app, account).drop_next(1)
        assert self.run(sandbox, account, lambda p: p.list_calendars())

    def test_expired_access_token_is_refreshed(self, sandbox: Sandbox, account: str) -> None:
        tokens = SandboxTokens(sandbox, self.app, account)
        sandbox.faults(self.app, account).expire_access_tokens()
        assert self.run(sandbox, account, lambda p: p.list_calendars(), tokens=tokens)
        assert tokens.refreshes == 1

    def test_revoked_grant_needs_reauth(self, sandbox: Sandbox, account: str) -> None:
        tokens = SandboxTokens(sandbox, self.app, account)
        sandbox.faults(self.app, account).revoke_grant()
        tokens.revoked = True
        with pytest.raises(ReauthRequired):
            self.run(sandbox, account, lambda p: p.list_calendars(), tokens=tokens)
        assert tokens.refreshes == 1

    # -- reads ---------------------------------------------------------------------------------

    def test_list_busy(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        inside, outside = visit_event("k-in", hour=9), visit_event("k-out", hour=15)

        async def flow(p: CalendarProvider) -> Any:
            a = await p.create_event(cal, inside)
            await p.create_event(cal, outside)
            gone = await p.create_event(cal, visit_event("k-gone", hour=10))
            await p.delete_event(cal, gone)
            window = (inside.start - timedelta(minutes=15), inside.start + timedelta(hours=2))
            return a, await p.list_busy(cal, *window)

        event_id, blocks = self.run(sandbox, account, flow)
        assert [(b.event_id, b.tag) for b in blocks] == [(event_id, inside.tag)]
        assert blocks[0].start == inside.start and blocks[0].end == inside.end

    def test_batch_with_per_item_failures(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)

        async def flow(p: CalendarProvider) -> Any:
            keep = await p.create_event(cal, visit_event("k-b1"))
            drop = await p.create_event(cal, visit_event("k-b2", hour=11))
            ops = [
                Operation("create", event=visit_event("k-b3", hour=12)),
                Operation("update", event=visit_event("k-b1", title="Visit"), event_id=keep),
                Operation("delete", event_id=drop),
                Operation("delete", event_id=self.missing_event_id),
            ]
            return keep, await p.batch(cal, ops)

        batches_before = sandbox.stats()["batches"].get(self.app, 0)
        keep, results = self.run(sandbox, account, flow)
        assert sandbox.stats()["batches"].get(self.app, 0) == batches_before + 1
        assert [r.error is None for r in results] == [True, True, True, False]
        assert isinstance(results[3].error, (NotFound, Gone))
        assert results[1].event_id == keep
        live = {e["id"]: self.stored_title(e) for e in self.live(sandbox, account)}
        assert live == {keep: "Visit", results[0].event_id: visit_event("x").title}

    def test_batch_item_throttle_is_retried(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        ops = [Operation("create", event=visit_event(f"k-bt{i}", hour=8 + i)) for i in range(3)]
        sandbox.faults(self.app, account).fail_next(1, status=429, retry_after=2)
        sleep = FakeSleep()
        results = self.run(sandbox, account, lambda p: p.batch(cal, ops), sleep=sleep)
        assert all(r.error is None for r in results)
        assert sleep.waits and sleep.waits[0] >= 2
        assert len(self.live(sandbox, account)) == 3

    def test_batch_item_throttle_without_budget(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        ops = [Operation("create", event=visit_event(f"k-bn{i}", hour=8 + i)) for i in range(3)]
        sandbox.faults(self.app, account).fail_next(1, status=429, retry_after=2)
        results = self.run(sandbox, account, lambda p: p.batch(cal, ops), budget=0)
        errors = [r.error for r in results if r.error is not None]
        assert len(errors) == 1
        assert isinstance(errors[0], RateLimited) and errors[0].retry_after == 2
        assert len(self.live(sandbox, account)) == 2


# -- issue 8 item 4 and issue 9: the behaviours of the real services ---------------------------------


class RealServiceConformance:
    """Cases that follow the real services' documents (issue 9), for both providers."""

    def test_capabilities_are_what_the_service_does(self, sandbox: Sandbox, account: str) -> None:
        """``create_restores_deleted`` and ``repeated_create_returns_original``, by behaviour."""
        cal = self.primary(sandbox, account)
        event = visit_event("k-cap", title="One")

        async def flow(p: CalendarProvider) -> tuple[bool, str, bool]:
            first = await p.create_event(cal, event)
            await p.update_event(cal, first, replace(event, title="Two"))
            again = await p.create_event(cal, event)  # a repeated create, same key
            assert again == first
            (after_repeat,) = [self.stored_title(e) for e in self.live(sandbox, account)]
            await p.delete_event(cal, first)
            restored = await p.create_event(cal, event)  # a create after a delete, same key
            return restored == first, after_repeat, True

        restored_same, after_repeat, _ = self.run(sandbox, account, flow)
        provider = make_provider(self.app, None, None, Settings(db_url="sqlite://"))  # type: ignore[arg-type]
        assert restored_same == provider.create_restores_deleted
        # Graph's transactionId answers the event as it is, untouched; Google's restore rewrites it
        assert (after_repeat == "Two") == provider.repeated_create_returns_original

    def test_batch_item_401_refreshes_once_and_repeats_at_once(
        self, sandbox: Sandbox, account: str
    ) -> None:
        cal = self.primary(sandbox, account)
        tokens = SandboxTokens(sandbox, self.app, account)
        ops = [Operation("create", event=visit_event(f"k-401-{i}", hour=8 + i)) for i in range(3)]
        sandbox.faults(self.app, account).expire_access_tokens()
        sleep = FakeSleep()
        before = sandbox.stats()["batches"].get(self.app, 0)
        results = self.run(
            sandbox, account, lambda p: p.batch(cal, ops), tokens=tokens, sleep=sleep
        )
        assert [r.error for r in results] == [None, None, None]
        assert tokens.refreshes == 1 and sleep.waits == []
        assert sandbox.stats()["batches"].get(self.app, 0) == before + 2
        assert len(self.live(sandbox, account)) == 3

    def test_deleted_calendar_is_calendar_unavailable(self, sandbox: Sandbox, account: str) -> None:
        email = f"cal{next(_counter)}@{self.app}.example.com"
        acct = sandbox.add_account(self.app, email, calendars=[{"name": "Clinic"}])
        cal = acct.calendar_id("Clinic")
        event_id = self.run(sandbox, email, lambda p: p.create_event(cal, visit_event("k-d0")))
        sandbox.faults(self.app, email).delete_calendar(cal)
        for body in (
            lambda p: p.create_event(cal, visit_event("k-d1")),
            lambda p: p.update_event(cal, event_id, visit_event("k-d0", title="Visit")),
        ):
            with pytest.raises(CalendarUnavailable):
                self.run(sandbox, email, body)
        results = self.run(
            sandbox, email, lambda p: p.batch(cal, [Operation("create", event=visit_event("k-d2"))])
        )
        assert isinstance(results[0].error, CalendarUnavailable)

    def test_lost_write_access_is_calendar_unavailable(
        self, sandbox: Sandbox, account: str
    ) -> None:
        email = f"ro{next(_counter)}@{self.app}.example.com"
        acct = sandbox.add_account(self.app, email, calendars=[{"name": "Clinic"}])
        cal = acct.calendar_id("Clinic")
        event_id = self.run(sandbox, email, lambda p: p.create_event(cal, visit_event("k-w0")))
        sandbox.faults(self.app, email).set_writable(cal, False)
        with pytest.raises(CalendarUnavailable):
            self.run(sandbox, email, lambda p: p.update_event(cal, event_id, visit_event("k-w0")))
        with pytest.raises(CalendarUnavailable):
            self.run(sandbox, email, lambda p: p.delete_event(cal, event_id))

    def test_find_event_by_tag(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        event = visit_event("k-find")

        async def flow(p: CalendarProvider) -> tuple[str, str | None, str | None]:
            made = await p.create_event(cal, event)
            return (
                made,
                await p.find_event_by_tag(cal, event.tag),
                await p.find_event_by_tag(cal, "tag-nobody"),
            )

        made, found, missing = self.run(sandbox, account, flow)
        assert found == made and missing is None

    def test_list_tagged_events_costs_pages_not_events(
        self, sandbox: Sandbox, account: str
    ) -> None:
        cal = self.primary(sandbox, account)
        base = datetime(2026, 12, 1, 8, 0, tzinfo=CHICAGO)
        events = [
            replace(
                visit_event(f"k-many-{i}"),
                start=base + timedelta(minutes=10 * i),
                end=base + timedelta(minutes=10 * i + 5),
            )
            for i in range(600)
        ]
        results = self.run(
            sandbox, account, lambda p: p.batch(cal, [Operation("create", event=e) for e in events])
        )
        assert all(r.error is None for r in results)
        sandbox.reset_stats()

        async def collect(p: CalendarProvider) -> list[Any]:
            pages = []
            async for page in p.list_tagged_events(
                cal, base - timedelta(hours=1), base + timedelta(days=6)
            ):
                pages.append(page)
            return pages

        pages = self.run(sandbox, account, collect)
        found = [e for page in pages for e in page]
        assert len(found) == 600 and {e.tag for e in found} == {e.tag for e in events}
        assert found[0].title == events[0].title and found[0].private
        requests = sum(sandbox.stats()["calls"][self.app].values())
        assert requests == len(pages) <= 2

    def test_private_and_reminders(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        self.run(sandbox, account, lambda p: p.create_event(cal, visit_event("k-p0")))
        quiet = replace(visit_event("k-p1", hour=11), private=False, reminders=False)
        self.run(sandbox, account, lambda p: p.create_event(cal, quiet))
        default, chosen = self.live(sandbox, account)
        self.check_privacy(default, private=True, reminders=None)
        self.check_privacy(chosen, private=False, reminders=False)


class TestGoogle(ProviderConformance, RealServiceConformance):
    app = "google"
    chicago = "America/Chicago"
    missing_event_id = "nosuchevent0"

    def stored_title(self, event: dict[str, Any]) -> str:
        return str(event["summary"])

    def stored_tag(self, event: dict[str, Any]) -> str | None:
        tag = event.get("extendedProperties", {}).get("private", {}).get("calsync")
        return str(tag) if tag is not None else None

    def stored_start(self, event: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(event["start"]["dateTime"].replace("Z", "+00:00"))

    def stored_timezone(self, event: dict[str, Any]) -> str:
        return str(event["start"]["timeZone"])

    def test_create_after_delete_with_the_same_key_restores(
        self, sandbox: Sandbox, account: str
    ) -> None:
        cal = self.primary(sandbox, account)
        event = visit_event("k-restore")

        async def flow(p: CalendarProvider) -> str:
            event_id = await p.create_event(cal, event)
            await p.delete_event(cal, event_id)
            return await p.create_event(cal, replace(event, title="Visit"))

        event_id = self.run(sandbox, account, flow)
        assert event_id == event_id_for(event.key)
        (stored,) = self.live(sandbox, account)
        assert stored["id"] == event_id and stored["status"] == "confirmed"
        assert self.stored_title(stored) == "Visit"

    def test_403_rate_limit_is_rate_limited(self, sandbox: Sandbox, account: str) -> None:
        sandbox.faults(self.app, account).fail_next(1, status=403, reason="rateLimitExceeded")
        with pytest.raises(RateLimited):
            self.run(sandbox, account, lambda p: p.list_calendars(), budget=0)

    def check_privacy(
        self, event: dict[str, Any], *, private: bool, reminders: bool | None
    ) -> None:
        assert event.get("visibility", "default") == ("private" if private else "default")
        expected = (
            {"useDefault": True} if reminders is None else {"useDefault": False, "overrides": []}
        )
        assert event["reminders"] == expected

    def test_event_deleted_in_the_ui_is_event_id_taken(
        self, sandbox: Sandbox, account: str
    ) -> None:
        cal = self.primary(sandbox, account)
        for purge in (False, True):
            event = visit_event(f"k-ui-{purge}")
            event_id = self.run(sandbox, account, lambda p, e=event: p.create_event(cal, e))
            sandbox.faults(self.app, account).delete_in_ui(cal, event_id, purge=purge)
            with pytest.raises(EventIdTaken):
                self.run(sandbox, account, lambda p, e=event: p.create_event(cal, e))
            results = self.run(
                sandbox, account, lambda p, e=event: p.batch(cal, [Operation("create", event=e)])
            )
            assert isinstance(results[0].error, EventIdTaken)
            if not purge:
                with pytest.raises(Gone):
                    self.run(
                        sandbox,
                        account,
                        lambda p, i=event_id, e=event: p.update_event(cal, i, e),
                    )
        # the next generation (a new key) lands
        self.run(sandbox, account, lambda p: p.create_event(cal, visit_event("k-ui-next")))
        assert [e["id"] for e in self.live(sandbox, account)] == [event_id_for("k-ui-next")]

    def test_batch_conflict_is_sent_again(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        ops = [Operation("create", event=visit_event(f"k-cf{i}", hour=8 + i)) for i in range(3)]
        sandbox.faults(self.app, account).fail_next(1, status=409, reason="conflict")
        results = self.run(sandbox, account, lambda p: p.batch(cal, ops))
        assert [r.error for r in results] == [None, None, None]
        assert len(self.live(sandbox, account)) == 3

    def test_quota_exceeded_backs_off_for_hours(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        sandbox.faults(self.app, account).fail_next(1, status=403, reason="quotaExceeded")
        sleep = FakeSleep()
        with pytest.raises(RateLimited) as info:
            self.run(
                sandbox, account, lambda p: p.create_event(cal, visit_event("k-q")), sleep=sleep
            )
        assert info.value.retry_after is not None and info.value.retry_after >= 3600
        assert sleep.waits == []  # no quick retries against a calendar that is read-only for hours

    def test_batches_to_one_calendar_stay_modest(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        sandbox.faults(self.app, account).calendar_burst(20)
        ops = [Operation("create", event=visit_event(f"k-burst{i}", hour=8)) for i in range(45)]
        sleep = FakeSleep()
        results = self.run(sandbox, account, lambda p: p.batch(cal, ops), sleep=sleep)
        sandbox.faults(self.app, account).clear()
        assert all(r.error is None for r in results) and sleep.waits == []
        assert sandbox.stats()["throttled"].get(self.app, {}).get(account, 0) == 0

    def test_description_is_escaped_html(self, sandbox: Sandbox, account: str) -> None:
        cal = self.primary(sandbox, account)
        event = replace(
            visit_event("k-html"), description='Reason: BP <140\n<a href="x">y</a> & co'
        )
        self.run(sandbox, account, lambda p: p.create_event(cal, event))
        (stored,) = self.live(sandbox, account)
        assert stored["description"] == (
            'Reason: BP &lt;140<br>&lt;a href="x"&gt;y&lt;/a&gt; &amp; co'
        )

        async def read(p: CalendarProvider) -> list[Any]:
            return [page async for page in p.list_tagged_events(cal, event.start, event.end)]

        [[tagged]] = self.run(sandbox, account, read)
        assert tagged.description == event.description


class TestOutlook(ProviderConformance, RealServiceConformance):
    app = "outlook"
    chicago = "Central Standard Time"  # Graph takes Windows zone names
    missing_event_id = "AAMkAGnosuchevent0="

    def stored_title(self, event: dict[str, Any]) -> str:
        return str(event["subject"])

    def stored_tag(self, event: dict[str, Any]) -> str | None:
        from calsync_cli.providers.microsoft import TAG_PROPERTY_ID

        for prop in event.get("singleValueExtendedProperties") or ():
            if prop.get("id", "").lower() == TAG_PROPERTY_ID.lower():
                return str(prop["value"])
        return None

    def stored_start(self, event: dict[str, Any]) -> datetime:
        raw = event["start"]["dateTime"]
        head, _, frac = raw.partition(".")
        moment = datetime.fromisoformat(head)
        zone = event["start"].get("timeZone") or "UTC"
        zone = WINDOWS_ZONES.get(zone, zone)
        return moment.replace(tzinfo=UTC if zone in ("UTC", "Etc/UTC") else ZoneInfo(zone))

    def stored_timezone(self, event: dict[str, Any]) -> str:
        return str(event.get("originalStartTimeZone") or event["start"]["timeZone"])

    def test_concurrency_stays_within_the_mailbox_limit(
        self, sandbox: Sandbox, account: str
    ) -> None:
        cal = self.primary(sandbox, account)
        sandbox.faults(self.app, account).latency(0.02)

        async def flow(p: CalendarProvider) -> list[str]:
            events = [visit_event(f"k-c{i}", hour=8 + i % 8) for i in range(10)]
            return list(await asyncio.gather(*(p.create_event(cal, e) for e in events)))

        ids = self.run(sandbox, account, flow, budget=0)
        sandbox.faults(self.app, account).clear()
        assert len(set(ids)) == 10
        stats = sandbox.stats()
        assert 1 < stats["max_concurrency"]["outlook"][account] <= 4

    def check_privacy(
        self, event: dict[str, Any], *, private: bool, reminders: bool | None
    ) -> None:
        assert event["sensitivity"] == ("private" if private else "normal")
        assert event["isReminderOn"] is bool(reminders)  # off unless the filter turns it on

    @pytest.mark.parametrize("zone", ["America/Detroit", "America/Boise", "Etc/UTC"])
    def test_zones_graph_refuses_are_sent_as_windows_names(
        self, sandbox: Sandbox, account: str, zone: str
    ) -> None:
        cal = self.primary(sandbox, account)
        raw = dict(
            event_body(visit_event("k-raw")),
            start={"dateTime": "2026-12-01T09:00:00", "timeZone": zone},
            end={"dateTime": "2026-12-01T09:30:00", "timeZone": zone},
        )
        token = sandbox.issue_token(self.app, account)
        answer = httpx2.post(
            f"{sandbox.env()['CALSYNC_MICROSOFT_GRAPH_URL']}/me/calendars/{cal}/events",
            json=raw,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 400  # what Graph answers for an IANA name off its list
        assert answer.json()["error"]["code"] == "TimeZoneNotSupportedException"
        start = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo(zone))
        event = replace(
            visit_event("k-zone"), start=start, end=start + timedelta(minutes=30), timezone=zone
        )
        self.run(sandbox, account, lambda p: p.create_event(cal, event))
        (stored,) = self.live(sandbox, account)
        assert self.stored_start(stored) == start
        [block] = self.run(
            sandbox,
            account,
            lambda p: p.list_busy(cal, start - timedelta(hours=1), start + timedelta(hours=1)),
        )
        assert block.start == start

    def test_event_moved_to_another_calendar_keeps_its_id(
        self, sandbox: Sandbox, account: str
    ) -> None:
        email = f"mv{next(_counter)}@outlook.example.com"
        acct = sandbox.add_account(self.app, email, calendars=[{"name": "Other"}])
        cal, other = acct.primary_calendar_id, acct.calendar_id("Other")
        event = visit_event("k-move")
        event_id = self.run(sandbox, email, lambda p: p.create_event(cal, event))
        rest_id = sandbox.faults(self.app, email).move_event(event_id, other)
        assert rest_id != event_id  # without the Prefer header the id would have changed
        blocks = self.run(sandbox, email, lambda p: p.list_busy(other, event.start, event.end))
        assert [b.event_id for b in blocks] == [event_id]

    def test_transaction_id_is_forgotten_but_the_tag_finds_the_event(
        self, sandbox: Sandbox, account: str
    ) -> None:
        cal = self.primary(sandbox, account)
        event = visit_event("k-txn")
        first = self.run(sandbox, account, lambda p: p.create_event(cal, event))
        sandbox.faults(self.app, account).forget_transactions()
        assert self.run(sandbox, account, lambda p: p.find_event_by_tag(cal, event.tag)) == first
        second = self.run(sandbox, account, lambda p: p.create_event(cal, event))
        assert second != first and len(self.live(sandbox, account)) == 2  # the window is real

    def test_shared_calendar_is_not_writable(self, sandbox: Sandbox, account: str) -> None:
        email = f"sh{next(_counter)}@outlook.example.com"
        acct = sandbox.add_account(
            self.app, email, calendars=[{"name": "Dr Smith", "shared_from": "smith@example.com"}]
        )
        shared = acct.calendar_id("Dr Smith")
        calendars = {c.id: c for c in self.run(sandbox, email, lambda p: p.list_calendars())}
        assert calendars[shared].writable is False and calendars[acct.primary_calendar_id].writable
        with pytest.raises(CalendarUnavailable):
            self.run(sandbox, email, lambda p: p.create_event(shared, visit_event("k-sh")))
