"""The sandbox's sign-in and consent pages in a real browser: headless Chromium (Debian's
``chromium`` package, driven by Playwright's Python client; no browser download) clicks Allow
or Deny while ``calsync connect --no-browser`` waits in a subprocess.

Outside CI (``CI`` unset) the tests are skipped, with the reason, when Chromium or Playwright is
missing; in CI that is a failure (``.ci/run`` installs both). They are ``slow`` (run with
``pytest -m slow``, as CI does).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from calsync_cli.auth import TokenStore
from calsync_cli.sandbox import Sandbox
from calsync_cli.store.db import Store
from calsync_cli.store.models import AuditEntry, Integration
from tests.conftest import NOW, PRACTICES, PROVIDERS, write_jsonl

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ACCOUNTS = {"google": "ana.lee@gmail.example", "outlook": "ana.lee@outlook.example"}
APPS = ["google", "outlook"]

#: a browser and a calsync process per test (about 2-4 s each): CI runs them with -m slow
pytestmark = pytest.mark.slow


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    problem = _missing()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A seeded store and a sandbox that shows its consent page (no auto-approve)."""
    from calsync_cli.services import imports

    store = Store(os.environ["CALSYNC_DB_URL"])
    for kind, rows in (("practices", PRACTICES), ("providers", PROVIDERS)):
        imports.import_file(
            store, kind, str(write_jsonl(tmp_path / f"{kind}.jsonl", rows)), now=NOW
        )
    store.close()
    with Sandbox(port=0, auto_approve=False) as sb:
        for app_name, email in ACCOUNTS.items():
            sb.add_account(app_name, email, calendars=[{"name": "Clinic"}])
        yield sb


class Connect:
    """``calsync connect APP --no-browser`` in a subprocess; ``url`` is the address it prints."""

    def __init__(self, sb: Sandbox, app_name: str) -> None:
        calendar = sb.account(app_name, ACCOUNTS[app_name]).primary_calendar_id
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "calsync_cli", "connect", app_name, "--provider", "dr-lee",
                "--no-browser", "--calendar", calendar, "--timeout", "60", "--json",
            ],
            env={**os.environ, **sb.env()},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stderr: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                lines.put(line)
            lines.put(None)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        while True:
            line = lines.get(timeout=30)
            if line is None:
                raise AssertionError("connect ended before printing the address: " + self.text)
            if line.startswith("http://") or line.startswith("https://"):
                self.url = line.strip()
                return

    @property
    def text(self) -> str:
        return "".join(self.stderr)

    def finish(self) -> tuple[int, str]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, out


def _consent(chromium: Any, url: str, email: str, button: str) -> str:
    page = chromium.new_page()
    try:
        page.goto(url)
        page.select_option("select[name=account]", email)
        with page.expect_navigation():
            page.click(f"button[value={button}]")
        return str(page.inner_text("body"))
    finally:
        page.close()


@pytest.mark.parametrize("app_name", APPS)
def test_allow_in_chromium_connects(chromium: Any, sandbox: Sandbox, app_name: str) -> None:
    run = Connect(sandbox, app_name)
    assert "sandbox" in run.url or "127.0.0.1" in run.url
    body = _consent(chromium, run.url, ACCOUNTS[app_name], "allow")
    code, out = run.finish()
    assert code == 0, run.text
    row = json.loads(out)
    assert row["status"] == "Active" and row["account"] == ACCOUNTS[app_name]
    assert "signed in" in body.lower() or "close" in body.lower(), body
    assert TokenStore().get(row["id"]) is not None


@pytest.mark.parametrize("app_name", APPS)
def test_deny_in_chromium_is_a_clean_refusal(
    chromium: Any, sandbox: Sandbox, app_name: str
) -> None:
    run = Connect(sandbox, app_name)
    _consent(chromium, run.url, ACCOUNTS[app_name], "deny")
    code, out = run.finish()
    assert code == 1 and out == ""
    errors = [line for line in run.text.splitlines() if line.startswith("calsync: error:")]
    assert len(errors) == 1 and "Traceback" not in run.text
    assert "denied" in errors[0] or "refused" in errors[0] or "declined" in errors[0], errors
    store = Store(os.environ["CALSYNC_DB_URL"])
    try:
        with store.read() as s:
            assert s.exec(select(Integration)).all() == []
            assert s.exec(select(AuditEntry)).all() == []
    finally:
        store.close()
    assert TokenStore().get(1) is None
