"""The ``/_sandbox/...`` control API: the Python API over HTTP, for a sandbox in another process.

====================================  ============================================================
``GET  /_sandbox/env``                the CALSYNC_* variables pointing at this sandbox
``GET  /_sandbox/accounts``           every account (``?app=`` narrows); with ``&email=`` one
``POST /_sandbox/accounts``           ``{app, email, personal?, calendars?}`` -> the account
``GET  /_sandbox/events``             ``?app&email&calendar[&include_deleted=true]``
``POST /_sandbox/tokens``             ``{app, email, scopes?}`` -> ``{access_token}``
``POST /_sandbox/consent``            ``{decision: allow|deny, account?}``
``POST /_sandbox/faults``             ``{app, email, action, ...}``; action is one of fail_next
                                      (n, status, reason, retry_after), drop_next (n), latency
                                      (seconds), expire_access_tokens, revoke_grant,
                                      invalidate_sync_tokens, clear, delete_calendar
                                      (calendar), set_writable (calendar, writable),
                                      delete_in_ui (calendar, event, purge?), move_event
                                      (event, to) -> {rest_id}, forget_transactions,
                                      calendar_burst (writes or null)
``POST /_sandbox/latency``            ``{seconds}``: the global latency
``GET  /_sandbox/stats``              counters; ``POST /_sandbox/stats/reset`` clears them
``GET  /_sandbox/revocations``        ``?app&email`` -> ``{revocations}``
``POST /_sandbox/apps``               ``{app, publishing?, single_tenant?, user_consent?}``: how
                                      the OAuth client is registered (see ``Sandbox.register_app``)
``POST /_sandbox/granular``           ``{email, withhold: [scope...]}``: Google scopes the
                                      account leaves unticked on the consent screen
``POST /_sandbox/browser_session``    ``{app, email|null}``: the account already signed in
``GET  /_sandbox/devicecodes``        ``{device_codes: [{user_code, decision, account, redeemed}]}``
``POST /_sandbox/devicecodes``        ``{user_code, decision: allow|deny|expire, account?}``
``POST /_sandbox/devicecodes/settings`` ``{interval?, expires_in?}`` for codes issued from now
``POST /_sandbox/token_faults``       ``{app, error, status?, n?}``: the next token answers
====================================  ============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from calsync_cli.sandbox._core import Request, Response, json_response

if TYPE_CHECKING:
    from calsync_cli.sandbox._server import Sandbox


def _bad(message: str, status: int = 400) -> Response:
    return json_response(status, {"error": message})


def handle(sb: Sandbox, req: Request, segs: list[str]) -> Response:
    try:
        return _route(sb, req, segs)
    except KeyError as exc:
        return _bad(str(exc.args[0]) if exc.args else "not found", 404)
    except (ValueError, TypeError) as exc:
        return _bad(str(exc))


def _body(req: Request) -> dict[str, Any]:
    data = req.json() if req.body else {}
    if not isinstance(data, dict):
        raise ValueError("a JSON object is expected")
    return data


def _need(source: dict[str, Any], *names: str) -> list[Any]:
    missing = [n for n in names if source.get(n) in (None, "")]
    if missing:
        raise ValueError(f"missing: {', '.join(missing)}")
    return [source[n] for n in names]


def _route(sb: Sandbox, req: Request, segs: list[str]) -> Response:
    m = req.method
    q = {k: v[0] for k, v in req.query.items()}
    if segs == ["env"] and m == "GET":
        return json_response(200, sb.env())
    if segs == ["accounts"]:
        if m == "GET":
            if q.get("email"):
                app, email = _need(q, "app", "email")
                return json_response(200, sb.account(app, email).to_json())
            return json_response(
                200, {"accounts": [a.to_json() for a in sb.accounts(q.get("app"))]}
            )
        if m == "POST":
            data = _body(req)
            app, email = _need(data, "app", "email")
            acct = sb.add_account(
                app,
                email,
                personal=bool(data.get("personal", False)),
                calendars=data.get("calendars"),
            )
            return json_response(201, acct.to_json())
    if segs == ["events"] and m == "GET":
        app, email, calendar = _need(q, "app", "email", "calendar")
        include = q.get("include_deleted", "false").lower() in ("1", "true", "yes")
        return json_response(200, {"events": sb.events(app, email, calendar, include)})
    if segs == ["tokens"] and m == "POST":
        data = _body(req)
        app, email = _need(data, "app", "email")
        return json_response(200, {"access_token": sb.issue_token(app, email, data.get("scopes"))})
    if segs == ["consent"] and m == "POST":
        data = _body(req)
        decision = data.get("decision", "allow")
        if decision not in ("allow", "deny"):
            raise ValueError("decision is 'allow' or 'deny'")
        sb.consent(decision, data.get("account"))
        return json_response(200, {"decision": decision, "account": data.get("account")})
    if segs == ["faults"] and m == "POST":
        data = _body(req)
        app, email, action = _need(data, "app", "email", "action")
        faults = sb.faults(app, email)
        if action == "fail_next":
            retry = data.get("retry_after")
            faults.fail_next(
                int(data.get("n", 1)),
                int(data.get("status", 503)),
                reason=data.get("reason"),
                retry_after=float(retry) if retry is not None else None,
            )
        elif action == "drop_next":
            faults.drop_next(int(data.get("n", 1)))
        elif action == "latency":
            faults.latency(float(data.get("seconds", 0.0)))
        elif action == "expire_access_tokens":
            faults.expire_access_tokens()
        elif action == "revoke_grant":
            faults.revoke_grant()
        elif action == "invalidate_sync_tokens":
            faults.invalidate_sync_tokens()
        elif action == "clear":
            faults.clear()
        elif action == "delete_calendar":
            faults.delete_calendar(str(_need(data, "calendar")[0]))
        elif action == "set_writable":
            faults.set_writable(str(_need(data, "calendar")[0]), bool(data.get("writable")))
        elif action == "delete_in_ui":
            calendar, event = _need(data, "calendar", "event")
            faults.delete_in_ui(str(calendar), str(event), purge=bool(data.get("purge", False)))
        elif action == "move_event":
            event, target = _need(data, "event", "to")
            return json_response(200, {"rest_id": faults.move_event(str(event), str(target))})
        elif action == "forget_transactions":
            faults.forget_transactions()
        elif action == "calendar_burst":
            writes = data.get("writes")
            faults.calendar_burst(int(writes) if writes is not None else None)
        else:
            raise ValueError(f"unknown action {action!r}")
        return json_response(200, {"ok": True})
    if segs == ["latency"] and m == "POST":
        sb.latency = float(_body(req).get("seconds", 0.0))
        return json_response(200, {"latency": sb.latency})
    if segs == ["stats"] and m == "GET":
        return json_response(200, sb.stats())
    if segs == ["stats", "reset"] and m == "POST":
        sb.reset_stats()
        return json_response(200, {"ok": True})
    if segs == ["apps"] and m == "POST":
        data = _body(req)
        (app,) = _need(data, "app")
        sb.register_app(
            app,
            publishing=data.get("publishing"),
            single_tenant=data.get("single_tenant", False),
            user_consent=data.get("user_consent"),
        )
        return json_response(200, {"ok": True})
    if segs == ["granular"] and m == "POST":
        data = _body(req)
        (email,) = _need(data, "email")
        sb.withhold_scopes(email, list(data.get("withhold") or []))
        return json_response(200, {"ok": True})
    if segs == ["browser_session"] and m == "POST":
        data = _body(req)
        (app,) = _need(data, "app")
        sb.browser_session(app, data.get("email"))
        return json_response(200, {"ok": True})
    if segs == ["devicecodes"] and m == "GET":
        return json_response(200, {"device_codes": sb.device_codes()})
    if segs == ["devicecodes"] and m == "POST":
        data = _body(req)
        (user_code,) = _need(data, "user_code")
        sb.answer_device_code(user_code, data.get("decision", "allow"), data.get("account"))
        return json_response(200, {"ok": True})
    if segs == ["devicecodes", "settings"] and m == "POST":
        data = _body(req)
        interval, expires_in = data.get("interval"), data.get("expires_in")
        sb.device_code_settings(
            interval=float(interval) if interval is not None else None,
            expires_in=float(expires_in) if expires_in is not None else None,
        )
        return json_response(200, {"ok": True})
    if segs == ["token_faults"] and m == "POST":
        data = _body(req)
        app, error = _need(data, "app", "error")
        sb.fail_token_requests(app, int(data.get("n", 1)), int(data.get("status", 400)), str(error))
        return json_response(200, {"ok": True})
    if segs == ["revocations"] and m == "GET":
        app, email = _need(q, "app", "email")
        return json_response(200, {"revocations": sb.revocations(app, email)})
    return _bad("unknown control endpoint", 404)
