"""The one owner of integration state (``store.states``): transitions, guards, audit entries."""

from __future__ import annotations

import pytest
from sqlmodel import col, select

from calsync_cli.services import integrations as core
from calsync_cli.store import states
from calsync_cli.store.db import Store
from calsync_cli.store.models import AuditEntry, Integration
from tests.conftest import NOW, PRACTICES, PROVIDERS, write_jsonl


@pytest.fixture
def iid(store: Store, tmp_path: object) -> int:
    from pathlib import Path

    from calsync_cli.services import imports

    base = Path(str(tmp_path))
    imports.import_file(store, "practices", str(write_jsonl(base / "p.jsonl", PRACTICES)), now=NOW)
    imports.import_file(store, "providers", str(write_jsonl(base / "d.jsonl", PROVIDERS)), now=NOW)
    with store.write() as s:
        integ = core.create(
            s, provider_id="dr-lee", app="google", now=NOW, account="a@example.com",
            calendar_id="cal", calendar_name="Cal",
        )  # fmt: skip
        assert integ.id is not None
        return integ.id


def _do(store: Store, iid: int, change: object, **kw: object) -> Integration:
    with store.write() as s:
        integ = s.get(Integration, iid)
        assert integ is not None
        change(s, integ, now=NOW, **kw)  # type: ignore[operator]
    with store.read() as s:
        fresh = s.get(Integration, iid)
        assert fresh is not None
        return fresh


def _audit(store: Store, iid: int) -> list[tuple[str, str | None]]:
    with store.read() as s:
        rows = s.exec(
            select(AuditEntry).where(AuditEntry.integration_id == iid).order_by(col(AuditEntry.id))
        )
        return [(r.action, r.detail) for r in rows if r.action in ("state", "reauth_required")]


def test_push_and_pull_each_clear_only_their_own_error(store: Store, iid: int) -> None:
    integ = _do(store, iid, states.mark_error, source="push", detail="HTTP 503")
    assert (integ.status, integ.status_detail, integ.error_source) == ("Error", "HTTP 503", "push")
    # a pull failure does not overwrite the push's error, a pull success does not hide it
    assert _do(store, iid, states.mark_error, source="pull", detail="x").status_detail == "HTTP 503"
    assert _do(store, iid, states.mark_active, source="pull").status == "Error"
    integ = _do(store, iid, states.mark_active, source="push", synced=True)
    assert (integ.status, integ.status_detail, integ.last_synced_at) == ("Active", None, NOW)
    # and the other way round
    _do(store, iid, states.mark_error, source="pull", detail="pull failed: HTTP 500")
    assert _do(store, iid, states.mark_active, source="push").status == "Error"
    assert _do(store, iid, states.mark_active, source="pull").status == "Active"


def test_reauth_is_a_flag_that_only_a_sign_in_clears(store: Store, iid: int) -> None:
    integ = _do(store, iid, states.mark_reauth)
    assert integ.needs_reauth and integ.status == "Error"
    assert integ.status_detail == "reconnect needed: calsync connect google --provider dr-lee"
    # neither a push success nor another failure clears or overwrites it
    assert _do(store, iid, states.mark_active, source="push").needs_reauth
    assert _do(store, iid, states.mark_error, source="push", detail="x").status_detail.startswith(
        "reconnect needed"
    )
    integ = _do(store, iid, states.mark_active, source="connect")
    assert not integ.needs_reauth and integ.status == "Active"


def test_a_lost_calendar_holds_until_one_is_chosen(store: Store, iid: int) -> None:
    integ = _do(store, iid, states.mark_calendar_lost, why="Google Calendar: HTTP 404 notFound")
    assert integ.needs_calendar and integ.status == "Error"
    assert f"calsync calendars select {iid} CAL_ID" in (integ.status_detail or "")
    assert _do(store, iid, states.mark_active, source="push").needs_calendar
    assert not _do(store, iid, states.mark_active, source="connect").needs_calendar


@pytest.mark.parametrize(
    ("change", "kw"),
    [
        (states.mark_active, {"source": "push", "synced": True}),
        (states.mark_active, {"source": "connect"}),
        (states.mark_error, {"source": "push", "detail": "late failure"}),
        (states.mark_reauth, {}),
        (states.mark_calendar_lost, {"why": "gone"}),
        (states.mark_pending, {}),
    ],
)
def test_nothing_brings_a_disconnected_integration_back(
    store: Store, iid: int, change: object, kw: dict[str, object]
) -> None:
    """A worker finishing, a refresh or a pull that races a disconnect changes nothing."""
    _do(store, iid, states.mark_disconnected)
    integ = _do(store, iid, change, **kw)
    assert integ.status == "Disconnected" and not integ.needs_reauth
    assert integ.last_synced_at is None
    # only a new sign-in revives it
    assert _do(store, iid, states.mark_active, source="connect", revive=True).status == "Active"


def test_each_change_of_state_is_audited_once(store: Store, iid: int) -> None:
    for _ in range(3):  # a busy integration does not fill the audit log
        _do(store, iid, states.mark_active, source="push", synced=True)
    _do(store, iid, states.mark_error, source="push", detail="HTTP 503")
    _do(store, iid, states.mark_error, source="push", detail="HTTP 503")
    _do(store, iid, states.mark_reauth)
    _do(store, iid, states.mark_reauth)
    _do(store, iid, states.mark_active, source="connect", audited=True)  # connect audits itself
    assert _audit(store, iid) == [
        ("state", "Active -> Error"),
        ("reauth_required", "Error -> Error"),
    ]


def test_no_calendar_means_pending(store: Store, iid: int) -> None:
    with store.write() as s:
        integ = s.get(Integration, iid)
        assert integ is not None
        integ.calendar_id = None
        s.add(integ)
    integ = _do(store, iid, states.mark_active, source="connect")
    assert integ.status == "Pending" and f"calendars select {iid}" in (integ.status_detail or "")
