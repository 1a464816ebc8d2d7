"""connect, calendars list|select and disconnect, end to end over loopback HTTP against the
sandbox: the CLI runs the real sign-in, and the test follows the announced URL like a browser."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from calsync_cli.auth import TokenStore
from calsync_cli.cli import connect as connect_cli
from calsync_cli.cli.app import app
from calsync_cli.errors import KeyringError
from calsync_cli.sandbox import Sandbox
from calsync_cli.store.db import Store
from calsync_cli.store.models import AuditEntry, Integration
from tests.conftest import PRACTICES, PROVIDERS, visit, write_jsonl

GMAIL = "ana.lee@gmail.example"
OUTLOOK = "raj.patel@outlook.example"
runner = CliRunner()


class Browser:
    """Stands in for the user's browser: follows each announced sign-in URL (unless told not
    to) and keeps the URLs it saw."""

    def __init__(self) -> None:
        self.follow = True
        self.urls: list[str] = []
        self.pages: list[httpx2.Response] = []

    def __call__(self, url: str) -> None:
        self.urls.append(url)
        if self.follow:
            # The loopback listener serves in its own thread, so following the redirect here,
            # before sign_in waits, is deterministic.
            with httpx2.Client(follow_redirects=True, timeout=10) as client:
                self.pages.append(client.get(url))


@pytest.fixture
def sb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    write_jsonl(tmp_path / "practices.jsonl", PRACTICES)
    write_jsonl(tmp_path / "providers.jsonl", PROVIDERS)
    write_jsonl(tmp_path / "visits.jsonl", [visit("a"), visit("b", provider_id="dr-patel")])
    for kind in ("practices", "providers", "visits"):
        assert run(kind, "import", str(tmp_path / f"{kind}.jsonl")).exit_code == 0
    with Sandbox(port=0, auto_approve=True) as sandbox:
        sandbox.add_account(
            "google",
            GMAIL,
            calendars=[{"name": "Clinic"}, {"name": "Holidays", "writable": False}],
        )
        sandbox.add_account(
            "outlook",
            OUTLOOK,
            calendars=[{"name": "Clinic"}, {"name": "Shared", "writable": False}],
        )
        for key, value in sandbox.env().items():
            monkeypatch.setenv(key, value)
        yield sandbox


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Browser:
    b = Browser()
    original = connect_cli.announce_url

    def announce(url: str) -> None:
        original(url)
        b(url)

    monkeypatch.setattr(connect_cli, "announce_url", announce)
    # Never open a real browser, whatever the test machine has.
    monkeypatch.setattr(connect_cli, "open_browser", lambda url: pytest.fail("browser opened"))
    return b


def run(*args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input)


def run_json(*args: str, code: int = 0) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == code, (result.exit_code, result.stderr)
    return json.loads(result.stdout)


def status_of(iid: int) -> dict[str, Any]:
    data = run_json("status", str(iid))
    return data["integrations"][0]  # type: ignore[no-any-return]


def db() -> Store:
    return Store(os.environ["CALSYNC_DB_URL"])


def integration_rows() -> list[Integration]:
    store = db()
    try:
        with store.read() as s:
            rows = list(s.exec(select(Integration)))
            for r in rows:
                s.expunge(r)
            return rows
    finally:
        store.close()


def audit_actions(iid: int) -> list[str]:
    store = db()
    try:
        with store.read() as s:
            return [
                e.action
                for e in s.exec(
                    select(AuditEntry)
                    .where(AuditEntry.integration_id == iid)
                    .order_by(col(AuditEntry.id))
                )
            ]
    finally:
        store.close()


def cal_id(sb: Sandbox, app: str, email: str, name: str) -> str:
    acct = sb.account(app, email)
    return str(next(c["id"] for c in acct.calendars if c["name"] == name))


def primary_id(sb: Sandbox, app: str, email: str) -> str:
    acct = sb.account(app, email)
    return str(next(c["id"] for c in acct.calendars if c["primary"]))


# -- connect ----------------------------------------------------------------------------------


def test_connect_google_pending_then_select(sb: Sandbox, browser: Browser) -> None:
    result = run("connect", "google", "--provider", "dr-lee", "--no-browser", "--json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    iid = row["id"]
    # the URL is announced on a line of its own, and the disclosure notice comes first
    assert browser.urls and browser.urls[0] in result.stderr.splitlines()
    assert browser.urls[0].startswith(sb.url + "/google/o/oauth2/v2/auth?")
    assert "patient name" in result.stderr
    assert "calsync filters set ID --no-patient-name" in result.stderr
    assert browser.pages[0].status_code == 200  # the listener's "Signed in" page
    # Pending without a terminal to ask at; same object as status --json
    assert row["status"] == "Pending" and row["account"] == GMAIL
    assert row["calendar_id"] is None
    assert f"calsync calendars select {iid} CAL_ID" in row["status_detail"]
    assert row == status_of(iid)
    assert "calendars select" in result.stderr
    # tokens in the keyring, not the database
    tokens = TokenStore().get(iid)
    assert tokens is not None and tokens.refresh_token
    db_file = Path(os.environ["CALSYNC_DB_URL"].removeprefix("sqlite:///"))
    for path in (db_file, *db_file.parent.glob(db_file.name + "-wal")):
        content = path.read_bytes()
        assert tokens.access_token.encode() not in content
        assert tokens.refresh_token.encode() not in content

    listed = run_json("calendars", "list", str(iid))
    names = {c["name"]: c for c in listed["calendars"]}
    assert set(names) == {GMAIL, "Clinic", "Holidays"}
    assert names[GMAIL] == {"id": GMAIL, "name": GMAIL, "primary": True, "writable": True}
    assert names["Holidays"]["writable"] is False

    # a read-only calendar is refused with the reason; an unknown one too
    refused = run("calendars", "select", str(iid), names["Holidays"]["id"])
    assert refused.exit_code == 2
    assert "read-only" in refused.stderr and f"calsync calendars list {iid}" in refused.stderr
    assert run("calendars", "select", str(iid), "nope@example").exit_code == 2
    assert status_of(iid)["status"] == "Pending"

    clinic = names["Clinic"]["id"]
    chosen = run_json("calendars", "select", str(iid), clinic)
    assert chosen["status"] == "Active" and chosen["calendar_id"] == clinic
    assert chosen["jobs_queued"] == 1  # dr-lee's upcoming visit "a"
    st = status_of(iid)
    assert (st["status"], st["calendar_id"], st["calendar_name"]) == ("Active", clinic, "Clinic")
    assert st["status_detail"] is None and st["queued"] == 1

    text = run("calendars", "list", str(iid))
    assert text.exit_code == 0
    assert "Clinic" in text.stdout and "*" in text.stdout
    assert audit_actions(iid) == ["connect", "calendar_select"]


def test_connect_outlook_with_calendar_is_active(sb: Sandbox, browser: Browser) -> None:
    clinic = cal_id(sb, "outlook", OUTLOOK, "Clinic")
    result = run(
        "connect", "outlook", "--provider", "dr-patel", "--calendar", clinic, "--no-browser"
    )
    assert result.exit_code == 0, result.stderr
    iid = int(result.stdout.strip())
    assert browser.urls[0].startswith(sb.url + "/microsoft/common/oauth2/v2.0/authorize?")
    assert "redirect_uri=http%3A%2F%2Flocalhost%3A" in browser.urls[0]
    st = status_of(iid)
    assert st["status"] == "Active" and st["app"] == "outlook" and st["account"] == OUTLOOK
    assert (st["calendar_id"], st["calendar_name"]) == (clinic, "Clinic")
    assert st["queued"] == 1  # dr-patel's upcoming visit "b"
    assert "Active" in run("status").stdout


def test_connect_with_unusable_calendar_keeps_the_sign_in_pending(
    sb: Sandbox, browser: Browser
) -> None:
    shared = cal_id(sb, "outlook", OUTLOOK, "Shared")
    result = run(
        "connect",
        "outlook",
        "--provider",
        "dr-patel",
        "--calendar",
        shared,
        "--no-browser",
        "--json",
    )
    assert result.exit_code == 2 and result.stdout == ""
    assert "read-only" in result.stderr and "calsync calendars list 1" in result.stderr
    assert status_of(1)["status"] == "Pending"


def test_interactive_pick_defaults_to_the_primary(
    sb: Sandbox, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connect_cli, "interactive", lambda: True)
    result = run("connect", "google", "--provider", "dr-lee", "--no-browser", "--json", input="\n")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["status"] == "Active" and row["calendar_id"] == GMAIL
    assert "1. " in result.stderr and "(primary)" in result.stderr


def test_refresh_revoked_grant_disconnect_and_reconnect(sb: Sandbox, browser: Browser) -> None:
    row = run_json("connect", "google", "--provider", "dr-lee", "--calendar", GMAIL, "--no-browser")
    iid = row["id"]
    assert row["status"] == "Active"

    # an expired access token is refreshed on the way
    sb.faults("google", GMAIL).expire_access_tokens()
    before = sb.stats()["token_refreshes"].get("google", {}).get(GMAIL, 0)
    assert len(run_json("calendars", "list", str(iid))["calendars"]) == 3
    assert sb.stats()["token_refreshes"]["google"][GMAIL] == before + 1

    # a revoked grant: exit 4, status Error naming the exact command
    sb.faults("google", GMAIL).revoke_grant()
    result = run("calendars", "list", str(iid), "--json")
    assert result.exit_code == 4 and result.stdout == ""
    assert "calsync connect google --provider dr-lee" in result.stderr
    st = status_of(iid)
    assert st["status"] == "Error"
    assert st["status_detail"] == "reconnect needed: calsync connect google --provider dr-lee"
    assert run("calendars", "select", str(iid), GMAIL).exit_code == 4

    # signing in again re-authenticates the same integration (no twin)
    again = run_json("connect", "google", "--provider", "dr-lee", "--no-browser")
    assert again["id"] == iid and again["status"] == "Active" and again["calendar_id"] == GMAIL
    assert again["status_detail"] is None
    assert len(integration_rows()) == 1

    # an event on the calendar, made outside calsync's bookkeeping
    token = sb.issue_token("google", GMAIL)
    made = httpx2.post(
        f"{sb.url}/google/calendar/v3/calendars/{quote(GMAIL, safe='')}/events",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "summary": "Follow Up",
            "start": {"dateTime": "2026-12-01T15:00:00Z"},
            "end": {"dateTime": "2026-12-01T15:30:00Z"},
        },
    )
    assert made.status_code == 200, made.text
    event_id = made.json()["id"]

    # disconnect: needs --yes without a terminal
    refused = run("disconnect", str(iid))
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr
    assert status_of(iid)["status"] == "Active"

    gone = run_json("disconnect", str(iid), "--yes")
    assert gone["integration"] == iid and gone["status"] == "Disconnected"
    assert gone["revocation"] == "revoked" and gone["jobs_dropped"] == 1
    assert "whole grant" in gone["message"] and "client project" in gone["message"]
    assert sb.revocations("google", GMAIL) == 1
    assert TokenStore().get(iid) is None
    assert [e["id"] for e in sb.events("google", GMAIL, GMAIL)] == [event_id]
    st = status_of(iid)
    assert st["status"] == "Disconnected" and st["queued"] == 0

    # again: a no-op that says so
    noop = run("disconnect", str(iid))
    assert noop.exit_code == 0 and "already disconnected" in noop.stderr
    assert sb.revocations("google", GMAIL) == 1
    # calendar commands refuse a disconnected integration with the reconnect command
    listed = run("calendars", "select", str(iid), GMAIL)
    assert listed.exit_code == 2 and "calsync connect google --provider dr-lee" in listed.stderr

    # reconnect: same id, Active again
    back = run_json("connect", "google", "--provider", "dr-lee", "--no-browser")
    assert back["id"] == iid and back["status"] == "Active" and back["calendar_id"] == GMAIL
    assert TokenStore().get(iid) is not None
    assert len(integration_rows()) == 1
    actions = audit_actions(iid)
    assert actions[0] == "connect" and "calendar_select" in actions
    assert actions.count("reconnect") == 2 and "disconnect" in actions
    assert "reauth_required" in actions


def test_disconnect_outlook_explains_where_to_remove_access(sb: Sandbox, browser: Browser) -> None:
    iid = run_json("connect", "outlook", "--provider", "dr-patel", "--no-browser")["id"]
    result = run("disconnect", str(iid), "--yes")
    assert result.exit_code == 0, result.stderr
    assert "no endpoint to revoke" in result.stderr
    assert "myapplications.microsoft.com" in result.stderr
    data = run_json("disconnect", str(iid), "--yes")  # already disconnected
    assert data["revocation"] is None and data["jobs_dropped"] == 0
    assert TokenStore().get(iid) is None


def test_google_revocation_marks_integrations_sharing_the_grant(
    sb: Sandbox, browser: Browser
) -> None:
    lee = run_json("connect", "google", "--provider", "dr-lee", "--calendar", GMAIL, "--no-browser")
    patel = run_json("connect", "google", "--provider", "dr-patel", "--no-browser")
    assert lee["account"] == patel["account"] == GMAIL and lee["id"] != patel["id"]
    result = run("disconnect", str(lee["id"]), "--yes")
    assert result.exit_code == 0, result.stderr
    assert f"integration {patel['id']} used the same Google grant" in result.stderr
    st = status_of(patel["id"])
    assert st["status"] == "Error"
    assert st["status_detail"] == "reconnect needed: calsync connect google --provider dr-patel"
    # its stored tokens are dead at the provider: listing says so with exit 4
    assert run("calendars", "list", str(patel["id"])).exit_code == 4


def test_reconnect_replaces_a_damaged_keyring_entry(sb: Sandbox, browser: Browser) -> None:
    import keyring

    iid = run_json("connect", "google", "--provider", "dr-lee", "--no-browser")["id"]
    keyring.set_password("calsync", f"integration:{iid}", "not json")
    assert run("calendars", "list", str(iid)).exit_code == 1  # KeyringError: damaged
    assert run_json("connect", "google", "--provider", "dr-lee", "--no-browser")["id"] == iid
    assert TokenStore().get(iid) is not None


def test_disconnect_asks_on_a_terminal(
    sb: Sandbox, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    iid = run_json("connect", "google", "--provider", "dr-lee", "--no-browser")["id"]
    monkeypatch.setattr(connect_cli, "stdin_is_terminal", lambda: True)
    declined = run("disconnect", str(iid), input="n\n")
    assert declined.exit_code == 1 and "nothing changed" in declined.stderr
    assert status_of(iid)["status"] == "Pending"
    accepted = run("disconnect", str(iid), input="y\n")
    assert accepted.exit_code == 0, accepted.stderr
    assert status_of(iid)["status"] == "Disconnected"


# -- failures: nothing stored -----------------------------------------------------------------


def assert_nothing_stored() -> None:
    assert integration_rows() == []
    for iid in (1, 2):
        assert TokenStore().get(iid) is None


def test_consent_denied_stores_nothing(sb: Sandbox, browser: Browser) -> None:
    sb.consent("deny")
    result = run("connect", "google", "--provider", "dr-lee", "--no-browser", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert "declined" in result.stderr
    assert_nothing_stored()


def test_timeout_stores_nothing(sb: Sandbox, browser: Browser) -> None:
    browser.follow = False
    result = run("connect", "outlook", "--provider", "dr-patel", "--no-browser", "--timeout", "1")
    assert result.exit_code == 1
    assert "no sign-in within 1 s" in result.stderr and "--timeout" in result.stderr
    assert len(browser.urls) == 1
    assert_nothing_stored()


def test_port_in_use_is_a_clear_message(sb: Sandbox, browser: Browser) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run(
            "connect", "google", "--provider", "dr-lee", "--no-browser", "--port", str(port)
        )
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert browser.urls == []
    assert_nothing_stored()


def test_keyring_failure_rolls_the_integration_back(
    sb: Sandbox, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: TokenStore, integration_id: object, tokens: object, **kw: object) -> None:
        raise KeyringError("the keyring failed to write: test")

    monkeypatch.setattr(TokenStore, "put", broken)
    result = run("connect", "google", "--provider", "dr-lee", "--calendar", GMAIL, "--no-browser")
    assert result.exit_code == 1 and "keyring" in result.stderr
    assert_nothing_stored()


def test_unknown_provider_and_missing_client_fail_before_sign_in(
    sb: Sandbox, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run("connect", "google", "--provider", "dr-nobody", "--no-browser")
    assert result.exit_code == 2 and "unknown provider 'dr-nobody'" in result.stderr
    monkeypatch.delenv("CALSYNC_MICROSOFT_CLIENT_ID")
    result = run("connect", "outlook", "--provider", "dr-patel", "--no-browser", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert "CALSYNC_MICROSOFT_CLIENT_ID" in result.stderr and "Entra" in result.stderr
    assert browser.urls == []
    assert_nothing_stored()


def test_unknown_integration_is_exit_2(sb: Sandbox) -> None:
    for args in (
        ("calendars", "list", "9"),
        ("calendars", "select", "9", "x"),
        ("disconnect", "9", "--yes"),
    ):
        result = run(*args)
        assert result.exit_code == 2 and "no integration 9" in result.stderr


def test_browser_only_with_a_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert connect_cli.can_open_browser() is False
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert connect_cli.can_open_browser() is True
