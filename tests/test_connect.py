"""connect, calendars list|select and disconnect, end to end over loopback HTTP against the
sandbox: the CLI runs the real sign-in, and the test follows the announced URL like a browser."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx2
import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from calsync_cli.auth import Tokens, TokenStore
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


# -- issue 11: device code and remote sign-in ---------------------------------------------------


class DeviceUser:
    """The clinician at another device: on the CLI's n-th pause between polls, does ``act``
    with the newest user code (approve, decline, let it expire). No sleeping: the pause
    returns at once and the sandbox's interval is 0."""

    def __init__(self, sb: Sandbox, act: str | None, *, at: int = 1, account: str = OUTLOOK):
        self.sb, self.act, self.at, self.account = sb, act, at, account
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.act is not None and len(self.waits) == self.at:
            code = self.sb.device_codes()[-1]["user_code"]
            self.sb.answer_device_code(code, self.act, self.account)  # type: ignore[arg-type]
        if len(self.waits) > 50:
            pytest.fail("polled forever")


@pytest.fixture
def device(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[DeviceUser]:
    sb.device_code_settings(interval=0)
    user = DeviceUser(sb, "allow", at=2)
    monkeypatch.setattr(connect_cli, "device_wait", user)
    yield user


def stderr_json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_device_code_approved_connects_outlook(
    sb: Sandbox, device: DeviceUser, browser: Browser
) -> None:
    clinic = cal_id(sb, "outlook", OUTLOOK, "Clinic")
    result = run(
        "connect", "outlook", "--provider", "dr-patel", "--device-code", "--calendar", clinic,
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["status"] == "Active" and row["account"] == OUTLOOK
    assert row["calendar_id"] == clinic and row["queued"] == 1
    # the code and the address, in words and as one JSON line a script can forward
    (line,) = stderr_json_lines(result.stderr)
    code = sb.device_codes()[-1]["user_code"]
    assert line == {
        "event": "device_code",
        "user_code": code,
        "verification_uri": f"{sb.url}/microsoft/devicelogin",
        "expires_in": 900,
        "provider_id": "dr-patel",
    }
    assert f"enter the code {code}" in result.stderr
    assert len(device.waits) == 2  # one "authorization_pending", then the tokens
    assert browser.urls == []  # no browser, no redirect
    assert TokenStore().get(row["id"]) is not None
    assert audit_actions(row["id"]) == ["connect", "calendar_select"]


def test_device_code_signs_an_existing_integration_in_again(
    sb: Sandbox, device: DeviceUser, browser: Browser
) -> None:
    first = run_json("connect", "outlook", "--provider", "dr-patel", "--no-browser")
    sb.faults("outlook", OUTLOOK).revoke_grant()
    again = run_json("connect", "outlook", "--provider", "dr-patel", "--device-code")
    assert again["id"] == first["id"] and again["status"] == "Pending"
    assert len(integration_rows()) == 1
    assert "reconnect" in audit_actions(first["id"])


@pytest.mark.parametrize(
    ("act", "message"),
    [(None, "expired"), ("expire", "expired"), ("deny", "declined")],
)
def test_device_code_not_approved_stores_nothing(
    sb: Sandbox, device: DeviceUser, act: str | None, message: str
) -> None:
    device.act, device.at = act, 3
    if act is None:  # nobody ever enters the code: the sandbox lets it run out
        sb.device_code_settings(expires_in=0)
    result = run("connect", "outlook", "--provider", "dr-patel", "--device-code", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert message in result.stderr.splitlines()[-1]
    assert result.stderr.splitlines()[-1].startswith("calsync: error: ")
    assert_nothing_stored()
    assert sb.stats()["code_exchanges"] == {}


def test_device_code_timeout_ends_cleanly(
    sb: Sandbox, device: DeviceUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]

    def wait(seconds: float) -> None:
        now[0] += 7.0  # the fake clock moves; nobody approves

    monkeypatch.setattr(connect_cli, "device_wait", wait)
    monkeypatch.setattr(connect_cli, "sign_in_clock", lambda: now[0])
    result = run("connect", "outlook", "--provider", "dr-patel", "--device-code", "--timeout", "20")
    assert result.exit_code == 1
    assert "no sign-in within 20 s" in result.stderr and "--timeout" in result.stderr
    assert_nothing_stored()


def test_device_code_is_outlook_only(sb: Sandbox, browser: Browser) -> None:
    result = run("connect", "google", "--provider", "dr-lee", "--device-code")
    assert result.exit_code == 2
    assert "--remote" in result.stderr and "device code" in result.stderr
    both = run("connect", "outlook", "--provider", "dr-patel", "--device-code", "--remote")
    assert both.exit_code == 2 and "Choose one" in both.stderr
    assert sb.device_codes() == [] and browser.urls == []
    assert_nothing_stored()


class LazyStdin(io.BytesIO):
    """Standard input whose line is made when calsync first reads it: by then the sign-in
    address has been announced, and ``answer`` plays the clinician who opened it elsewhere."""

    def __init__(self, answer: Callable[[], str]) -> None:
        super().__init__()
        self._answer: Callable[[], str] | None = answer

    def _fill(self) -> None:
        if self._answer is not None:
            text, self._answer = self._answer(), None
            pos = self.tell()
            self.write(text.encode("utf-8"))
            self.seek(pos)

    def read(self, n: int | None = -1) -> bytes:
        if n == 0:
            return b""
        self._fill()
        return super().read(n)

    def read1(self, n: int = -1) -> bytes:
        self._fill()
        return super().read1(n)

    def readline(self, n: int | None = -1) -> bytes:
        self._fill()
        return super().readline(n)

    def readinto(self, b: Any) -> int:
        self._fill()
        return super().readinto(b)


class Clinician:
    """Opens the announced sign-in link in "their" browser (against the sandbox), which ends on
    the unreachable loopback address, and sends back what ``reply`` makes of that address."""

    def __init__(self, reply: Callable[[str], str] = lambda address: address) -> None:
        self.reply = reply
        self.prompts: list[dict[str, Any]] = []
        self.addresses: list[str] = []

    def announce(self, prompt: Any, *, provider_id: str, as_json: bool) -> None:
        self.prompts.append({"url": prompt.url, "redirect_uri": prompt.redirect_uri})
        self.original(prompt, provider_id=provider_id, as_json=as_json)

    def answer(self) -> str:
        url = self.prompts[-1]["url"]
        with httpx2.Client(trust_env=False) as client:
            response = client.get(url)  # the provider's redirect; the browser follows it...
        assert response.status_code == 302, response.text
        address = response.headers["location"]  # ...to a page nothing answers on
        self.addresses.append(address)
        return self.reply(address) + "\n"


@pytest.fixture
def clinician(monkeypatch: pytest.MonkeyPatch) -> Clinician:
    import typer.testing

    plain = typer.testing.make_input_stream
    monkeypatch.setattr(
        typer.testing,
        "make_input_stream",
        lambda data, charset: data if isinstance(data, LazyStdin) else plain(data, charset),
    )
    c = Clinician()
    c.original = connect_cli.announce_remote  # type: ignore[attr-defined]
    monkeypatch.setattr(connect_cli, "announce_remote", c.announce)
    monkeypatch.setattr(connect_cli, "open_browser", lambda url: pytest.fail("browser opened"))
    return c


def run_remote(clinician: Clinician, *args: str) -> Any:
    return runner.invoke(app, ["connect", *args, "--remote"], input=LazyStdin(clinician.answer))


@pytest.mark.parametrize(
    ("name", "provider", "email", "host"),
    [
        ("google", "dr-lee", GMAIL, "http://127.0.0.1:"),
        ("outlook", "dr-patel", OUTLOOK, "http://localhost:"),
    ],
)
def test_remote_sign_in_with_the_pasted_address(
    sb: Sandbox, clinician: Clinician, name: str, provider: str, email: str, host: str
) -> None:
    primary = primary_id(sb, name, email)
    result = run_remote(clinician, name, "--provider", provider, "--calendar", primary, "--json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["status"] == "Active" and row["account"] == email
    (line,) = stderr_json_lines(result.stderr)
    assert line["event"] == "remote_sign_in" and line["provider_id"] == provider
    assert line["sign_in_url"] == clinician.prompts[0]["url"]
    assert line["redirect_uri"].startswith(host)
    assert "code_challenge_method=S256" in line["sign_in_url"]
    assert "can't be reached" in line["instructions"]  # plain words for the clinician
    assert clinician.addresses[0].startswith(line["redirect_uri"])
    assert "Send this sign-in link" in result.stderr
    assert sb.stats()["code_exchanges"][name][email] == 1
    assert TokenStore().get(row["id"]) is not None


@pytest.mark.parametrize(
    ("reply", "code", "message"),
    [
        (lambda a: a.replace("state=", "state=x"), 1, "belongs to another sign-in"),
        (lambda a: re.sub(r"state=[^&]*", "state=", a), 1, "belongs to another sign-in"),
        (
            lambda a: a.split("?")[0] + "?error=access_denied&state=" + _state_of(a),
            1,
            "declined",
        ),
        (lambda a: "I clicked allow, it says site can't be reached", 2, "not a web address"),
        (lambda a: "", 1, "no address was pasted back"),
        (lambda a: a.split("?")[0], 2, "cut short"),
        (lambda a: a.replace("127.0.0.1", "example.com"), 2, "not the one"),
    ],
)
def test_a_bad_pasted_address_redeems_nothing_and_stores_nothing(
    sb: Sandbox,
    clinician: Clinician,
    reply: Callable[[str], str],
    code: int,
    message: str,
) -> None:
    clinician.reply = reply
    result = run_remote(clinician, "google", "--provider", "dr-lee", "--json")
    assert result.exit_code == code, result.stderr
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("calsync: error: ") and message in last
    assert "code=" not in last  # the pasted text is never quoted back
    assert sb.stats()["code_exchanges"] == {}
    assert_nothing_stored()


def _state_of(address: str) -> str:
    return parse_qs(urlsplit(address).query)["state"][0]


# -- issue 9: sign-in against a strict sandbox ------------------------------------------------


def test_google_permission_left_unticked_fails_and_stores_nothing(
    sb: Sandbox, browser: Browser
) -> None:
    sb.withhold_scopes(GMAIL, ["https://www.googleapis.com/auth/calendar.events"])
    result = run("connect", "google", "--provider", "dr-lee", "--calendar", GMAIL, "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert "View and edit events on all your calendars" in result.stderr
    assert "tick" in result.stderr
    assert_nothing_stored()


def test_google_refresh_asks_only_for_granted_scopes(sb: Sandbox, browser: Browser) -> None:
    """A sign-in stored with fewer scopes than calsync asks for today still refreshes."""
    import asyncio

    from calsync_cli.auth import KeyringTokenSource, Tokens, oauth_app
    from calsync_cli.config import load_settings
    from calsync_cli.sandbox.testing import google_sign_in

    events = "https://www.googleapis.com/auth/calendar.events"
    with httpx2.Client(trust_env=False) as client:
        answer = google_sign_in(client, sb.url, GMAIL, scopes=(events,))
    tokens = Tokens.from_token_response(answer, datetime.now(UTC) - timedelta(hours=2))
    TokenStore().put(7, tokens)
    source = KeyringTokenSource(oauth_app("google", load_settings()), TokenStore(), 7)
    assert asyncio.run(source.refresh())
    assert source.refresh_count == 1


def test_google_testing_app_warns_of_the_seven_day_sign_in(sb: Sandbox, browser: Browser) -> None:
    sb.register_app("google", publishing="testing")
    result = run("connect", "google", "--provider", "dr-lee", "--calendar", GMAIL, "--json")
    assert result.exit_code == 0, result.stderr
    assert "in 7 days" in result.stderr and "In production" in result.stderr
    assert "Internal" in result.stderr


def test_single_tenant_registration_names_the_authority_fix(
    sb: Sandbox, browser: Browser, device: DeviceUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb.register_app("outlook", single_tenant="0b5e3f6a-tenant")
    fix = "CALSYNC_MICROSOFT_AUTHORITY=https://login.microsoftonline.com/<tenant id>"
    for extra in ((), ("--device-code",)):
        result = run("connect", "outlook", "--provider", "dr-patel", *extra)
        assert result.exit_code == 1, result.stderr
        assert "AADSTS50194" in result.stderr and fix in result.stderr
        assert "Trace ID" not in result.stderr  # Microsoft's description is not echoed
    assert_nothing_stored()
    monkeypatch.setenv("CALSYNC_MICROSOFT_AUTHORITY", f"{sb.url}/microsoft/0b5e3f6a-tenant")
    assert run_json("connect", "outlook", "--provider", "dr-patel")["account"] == OUTLOOK


def test_admin_only_consent_says_an_administrator_must_approve(
    sb: Sandbox, browser: Browser, device: DeviceUser
) -> None:
    sb.register_app("outlook", user_consent=False)
    for extra in ((), ("--device-code",)):
        result = run("connect", "outlook", "--provider", "dr-patel", *extra)
        assert result.exit_code == 1, result.stderr
        assert "administrator" in result.stderr and "admin consent" in result.stderr
    assert_nothing_stored()


def test_outlook_asks_which_account_instead_of_taking_the_browser_session(
    sb: Sandbox, browser: Browser
) -> None:
    sb.add_account("outlook", "front.desk@outlook.example")
    sb.browser_session("outlook", "front.desk@outlook.example")
    sb.consent("allow", account=OUTLOOK)  # the clinician picks their own mailbox when asked
    row = run_json("connect", "outlook", "--provider", "dr-patel")
    assert "prompt=select_account" in browser.urls[0]
    assert row["account"] == OUTLOOK


@pytest.mark.parametrize(
    ("name", "email", "status", "error"),
    [
        ("google", GMAIL, 429, "rate_limit_exceeded"),
        ("outlook", OUTLOOK, 400, "temporarily_unavailable"),
        ("outlook", OUTLOOK, 400, "server_error"),
        ("google", GMAIL, 503, "backend_error"),
    ],
)
def test_a_transient_token_endpoint_error_is_not_reconnect_needed(
    sb: Sandbox, browser: Browser, name: str, email: str, status: int, error: str
) -> None:
    iid = run_json(
        "connect", name, "--provider", "dr-lee", "--calendar", primary_id(sb, name, email)
    )["id"]
    sb.faults(name, email).expire_access_tokens()
    sb.fail_token_requests(name, 1, status, error)
    # Retried like any transient failure (before: "reconnect needed", exit 4, status Error).
    result = run("calendars", "list", str(iid))
    assert result.exit_code == 0, result.stderr
    assert "reconnect" not in result.stderr
    st = status_of(iid)
    assert st["status"] == "Active" and st["status_detail"] is None


# -- issue 13 class 5: the token store is checked first; an unstored grant is revoked ---------


def test_an_unusable_token_store_stops_connect_before_the_sign_in(
    sb: Sandbox, browser: Browser, device: DeviceUser, clinician: Clinician,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def broken(self: TokenStore, integration_id: object) -> None:
        raise KeyringError("no usable keyring backend")

    monkeypatch.setattr(TokenStore, "get", broken)
    for args in (
        ("google", "--provider", "dr-lee"),
        ("outlook", "--provider", "dr-patel", "--device-code"),
    ):
        result = run("connect", *args)
        assert result.exit_code == 1 and "keyring" in result.stderr
    remote = run_remote(clinician, "google", "--provider", "dr-lee")
    assert remote.exit_code == 1 and "keyring" in remote.stderr
    assert browser.urls == [] and clinician.prompts == [] and sb.device_codes() == []
    assert sb.stats()["code_exchanges"] == {}


def test_a_grant_that_cannot_be_stored_is_revoked(
    sb: Sandbox, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: TokenStore, integration_id: object, tokens: object, **_kw: object) -> None:
        raise KeyringError("the keyring failed to write: test")

    monkeypatch.setattr(TokenStore, "put", broken)
    result = run("connect", "google", "--provider", "dr-lee", "--calendar", GMAIL)
    assert result.exit_code == 1
    assert "revoked at Google" in result.stderr
    assert sb.revocations("google", GMAIL) == 1
    assert_nothing_stored()


def test_reading_the_pasted_address_gives_up_at_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(read_end, "r", closefd=True) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            assert connect_cli.read_answer(0.2) is None  # nothing typed: None, not a hang
            os.write(write_end, b"late\n")  # lets the abandoned reader finish before close
    finally:
        os.close(write_end)


def test_connect_with_an_unknown_calendar_creates_nothing(sb: Sandbox, browser: Browser) -> None:
    """Issue 13, class 10: a mistyped --calendar stores no integration and no tokens."""
    result = run("connect", "google", "--provider", "dr-lee", "--calendar", "no-such-calendar")
    assert result.exit_code == 2 and result.stdout == ""
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("calsync: error: ") and "no calendar 'no-such-calendar'" in line
    assert "nothing was connected" in line and GMAIL in line
    assert_nothing_stored()


def test_a_testing_status_google_app_is_named_by_doctor(sb: Sandbox, browser: Browser) -> None:
    """The 7-day end of a Testing app's refresh token is kept with the tokens (the token answer's
    ``refresh_token_expires_in``), so ``doctor`` can say what is wrong days later."""
    sb.register_app("google", publishing="testing")
    iid = run_json("connect", "google", "--provider", "dr-lee", "--calendar", GMAIL)["id"]
    tokens = TokenStore().get(iid)
    assert tokens is not None and tokens.refresh_expires_at is not None
    left = tokens.refresh_expires_at - datetime.now(UTC)
    assert timedelta(days=6, hours=23) < left <= timedelta(days=7)
    assert Tokens.from_json(tokens.to_json()) == tokens  # stored and read back whole
    result = run("doctor", "--offline", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    check = checks[f"sign-in {iid}"]
    assert check["status"] == "warn" and "Testing status" in check["message"]
    assert "Publish app" in check["fix"]
