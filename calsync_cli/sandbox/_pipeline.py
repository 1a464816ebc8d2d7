"""The path every API call takes: route, authenticate, count, throttle, sleep, fault, handle.

Direct requests and the inner calls of a batch go through the same steps, so statistics,
faults and latency apply to each call alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from calsync_cli.sandbox._core import DropConnection, Request, Response
from calsync_cli.sandbox._state import AccessToken, AccountRec, App, FailSpec, State


@dataclass
class Call:
    """What a handler sees: the request, the signed-in account, the token, path parameters."""

    state: State
    req: Request
    account: AccountRec
    token: AccessToken
    params: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Call], Response]


@dataclass
class Route:
    kind: str  # e.g. "events.insert"; used in statistics
    handler: Handler
    need: str  # the permission class the service checks against the token's scopes
    params: dict[str, str] = field(default_factory=dict)


class Service(Protocol):
    app: App

    def resolve(self, req: Request) -> Route | Response: ...

    def unauthorized(self, req: Request, known_but_expired: bool) -> Response: ...

    def insufficient_scope(self, route: Route, token: AccessToken) -> Response | None: ...

    def fault_response(self, spec: FailSpec) -> Response: ...

    def throttled(self) -> Response: ...


@dataclass
class Prepared:
    route: Route
    token: AccessToken
    account: AccountRec
    latency: float
    slot: bool = False


def prepare(
    service: Service, state: State, req: Request, *, in_batch: bool, take_slot: bool
) -> Prepared | Response:
    """Route and authenticate one call, count it, and take a mailbox slot when needed."""
    route = service.resolve(req)
    if isinstance(route, Response):
        return route
    token_text = req.bearer()
    token = state.authenticate(service.app, token_text)
    if token is None:
        with state.lock:
            known = token_text is not None and (
                token_text in state.access_tokens
                or any(token_text in g.access_tokens for g in state.grants)
            )
        return service.unauthorized(req, known)
    with state.lock:
        account = state.accounts.get((service.app, token.grant.email.lower()))
        if account is None:
            return service.unauthorized(req, False)
        state.stats.requests[(service.app, account.email, req.method, route.kind)] += 1
        if route.kind != "batch":
            state.api_calls += 1
            state.activity.notify_all()
        if in_batch:
            state.stats.batch_calls[(service.app, account.email)] += 1
        prepared = Prepared(route, token, account, state.latency + account.latency)
        if take_slot:
            if account.in_flight >= state.mailbox_concurrency:
                state.stats.throttled[(service.app, account.email)] += 1
                return service.throttled()
            account.in_flight += 1
            prepared.slot = True
            seen = state.stats.max_concurrency.get(account.email, 0)
            if account.in_flight > seen:
                state.stats.max_concurrency[account.email] = account.in_flight
    return prepared


def finish(service: Service, state: State, req: Request, prepared: Prepared) -> Response:
    """Apply a fault or run the handler. Releases the mailbox slot. Raises DropConnection."""
    try:
        with state.lock:
            fault = state.locked_take_fault(prepared.account)
        if fault == "drop":
            raise DropConnection()
        if fault is not None:
            return service.fault_response(fault)
        denied = service.insufficient_scope(prepared.route, prepared.token)
        if denied is not None:
            return denied
        call = Call(state, req, prepared.account, prepared.token, prepared.route.params)
        with state.lock:
            return prepared.route.handler(call)
    finally:
        release(state, prepared)


def release(state: State, prepared: Prepared) -> None:
    if prepared.slot:
        with state.lock:
            prepared.account.in_flight -= 1
        prepared.slot = False


def run_call(
    service: Service, state: State, req: Request, *, in_batch: bool = False, take_slot: bool = False
) -> Response:
    """One whole call, latency included."""
    prepared = prepare(service, state, req, in_batch=in_batch, take_slot=take_slot)
    if isinstance(prepared, Response):
        return prepared
    try:
        if prepared.latency > 0:
            time.sleep(prepared.latency)
    except BaseException:
        release(state, prepared)
        raise
    return finish(service, state, req, prepared)
