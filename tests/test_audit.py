"""``calsync audit``: the disclosure log, streamed, filtered, exported, pruned; no patient data."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calsync_cli.cli.app import app
from calsync_cli.errors import InputError
from calsync_cli.services import audit as core
from calsync_cli.services import integrations
from calsync_cli.store import audit as store_audit
from calsync_cli.store.db import Store
from tests.conftest import NOW, visit
from tests.engine_support import EMAILS, Env, connect

runner = CliRunner()
PUSHES = ("push_create", "push_update", "push_delete")
#: every field name an event may carry (``integrations.disclosed_fields``)
FIELD_NAMES = {"start", "end", "practice_name", "visit_type", "location", "room", "reason"}


def _seed(store: Store, n_integrations: int = 2) -> list[int]:
    from calsync_cli.store.models import Provider

    with store.write() as s:
        s.add(Provider(id="dr-lee", name="Dr. Lee", content_hash="x", updated_at=NOW))
    ids = []
    for n in range(n_integrations):
        with store.write() as s:
            integ = integrations.create(
                s, provider_id="dr-lee", app=("google", "outlook")[n % 2], now=NOW,
                account=f"a{n}@example.com", calendar_id="primary",
            )  # fmt: skip
            assert integ.id is not None
            ids.append(integ.id)
    return ids


def _record(store: Store, rows: list[tuple[str, int | None, str | None, datetime]]) -> None:
    with store.write() as s:
        for action, iid, vid, at in rows:
            store_audit.record(
                s, action, now=at, integration_id=iid, visit_id=vid, fields=["start", "end"]
            )


def test_stream_filters_and_prune_on_both_backends(store: Store) -> None:
    g, o = _seed(store)
    _record(
        store,
        [
            ("push_create", g, "v1", NOW + timedelta(hours=1)),
            ("push_create", o, "v1", NOW + timedelta(hours=2)),
            ("push_update", g, "v2", NOW + timedelta(days=3)),
        ],
    )
    with core.entries(store, core.AuditQuery()) as rows:
        every = [core.entry_json(r) for r in rows]
    # connect x2 (integrations.create) + 3 pushes, oldest first, with the app and account joined
    assert [e["action"] for e in every] == ["connect", "connect", *PUSHES[:1] * 2, "push_update"]
    assert every[2] | {"id": 0} == {
        "id": 0, "at": (NOW + timedelta(hours=1)).isoformat(), "actor": every[2]["actor"],
        "action": "push_create", "integration_id": g, "app": "google", "account": "a0@example.com",
        "visit_id": "v1", "fields": ["start", "end"], "detail": None,
    }  # fmt: skip

    def ids(**kw: object) -> list[tuple[str, str | None]]:
        with core.entries(store, core.AuditQuery(**kw)) as rows:  # type: ignore[arg-type]
            return [(r[3], r[7]) for r in rows]

    assert ids(integration_id=o) == [("connect", None), ("push_create", "v1")]
    assert ids(visit_id="v1") == [("push_create", "v1"), ("push_create", "v1")]
    assert ids(since=NOW + timedelta(days=1)) == [("push_update", "v2")]
    assert ids(integration_id=g, visit_id="v2") == [("push_update", "v2")]

    # a small batch streams the same rows (several fetches)
    with store.read() as s:
        assert len(list(store_audit.stream(s, batch=2))) == 5

    result = core.prune(store, NOW + timedelta(days=1), now=NOW + timedelta(days=10))
    assert result.deleted == 4
    with core.entries(store, core.AuditQuery()) as rows:
        left = [core.entry_json(r) for r in rows]
    assert [e["action"] for e in left] == ["push_update", "audit_prune"]
    assert "deleted 4 entries" in left[1]["detail"]
    with pytest.raises(InputError, match="in the future"):
        core.prune(store, NOW + timedelta(days=30), now=NOW)


def test_parse_when() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert core.parse_when("30d", now=now) == now - timedelta(days=30)
    assert core.parse_when("12h", now=now) == now - timedelta(hours=12)
    assert core.parse_when("2026-11-01", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert core.parse_when("2026-11-01T09:00:00-06:00", now=now) == datetime(
        2026, 11, 1, 15, tzinfo=UTC
    )
    assert core.parse_when("2026-11-01T09:00:00Z", now=now) == datetime(2026, 11, 1, 9, tzinfo=UTC)
    assert core.parse_when("2026-11-01T09:00", now=now) == datetime(2026, 11, 1, 9, tzinfo=UTC)
    for bad in ("", "yesterday", "30x", "2026-13-01", "d30"):
        with pytest.raises(InputError, match="cannot read the time|empty"):
            core.parse_when(bad, now=now)


def _cli(*args: str):
    return runner.invoke(app, ["audit", *args])


def test_cli_formats_and_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("CALSYNC_DB_URL", url)
    store = Store(url)
    g, _ = _seed(store)
    _record(store, [("push_create", g, "v1", NOW + timedelta(hours=1))])
    store.close()

    jsonl = _cli("--json")
    assert jsonl.exit_code == 0, jsonl.stderr
    lines = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [e["action"] for e in lines] == ["connect", "connect", "push_create"]
    assert _cli("--format", "jsonl").stdout == jsonl.stdout

    table = _cli("--visit", "v1")
    assert table.exit_code == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:4] == ["when", "integ", "app", "account"]
    assert "push_create" in row and "start,end" in row and "a0@example.com" in row

    as_csv = _cli("--format", "csv", "--integration", str(g))
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["action"] for r in parsed] == ["connect", "push_create"]
    assert parsed[1]["fields"] == "start,end" and parsed[1]["app"] == "google"

    bad = _cli("--json", "--format", "csv")
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.startswith("calsync: error: --json prints JSON Lines")
    assert _cli("--since", "last week").exit_code == 2
    assert _cli("--prune-before", "30d", "--visit", "v1").exit_code == 2

    pruned = _cli("--prune-before", "2026-11-25", "--json")
    assert pruned.exit_code == 0, pruned.stderr
    assert json.loads(pruned.stdout) == {"pruned_before": "2026-11-25T00:00:00+00:00", "deleted": 3}
    after = [json.loads(line) for line in _cli("--json").stdout.splitlines()]
    assert [e["action"] for e in after] == ["audit_prune"]


@pytest.mark.parametrize("app_name", ["google", "outlook"])
def test_export_of_a_synced_integration_names_fields_never_patients(
    env: Env, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    iid = connect(env, app_name)
    env.import_visits([visit("a"), visit("b", patient_name="Zelda Quimby", reason="knee pain")])
    env.sync()
    integrations.set_filters(env.store, iid, integrations.FilterChange(notes=True), now=env.clock())
    env.import_visits(
        [visit("a", start="2026-12-01T10:00:00-06:00", end="2026-12-01T10:30:00-06:00")], "2.jsonl"
    )
    env.sync()
    env.import_visits([visit("b", status="cancelled", patient_name="Zelda Quimby")], "3.jsonl")
    env.sync()
    assert env.events(app_name) and len(env.events(app_name)) == 1

    monkeypatch.setenv("CALSYNC_DB_URL", env.settings.db_url)
    exported = {}
    for fmt in ("jsonl", "csv", "table"):
        result = _cli("--format", fmt)
        assert result.exit_code == 0, result.stderr
        exported[fmt] = result.stdout
        for secret in ("Jane", "Doe", "Zelda", "Quimby", "knee"):
            assert secret not in result.stdout, (fmt, secret)
    rows = [json.loads(line) for line in exported["jsonl"].splitlines()]
    pushes = [r for r in rows if r["action"] in PUSHES]
    # every push of each visit is there: both created; after the notes filter went on, a moved
    # and b re-rendered (updates); b deleted when cancelled
    assert sorted((r["visit_id"], r["action"]) for r in pushes) == [
        ("a", "push_create"), ("a", "push_update"),
        ("b", "push_create"), ("b", "push_delete"), ("b", "push_update"),
    ]  # fmt: skip
    for r in pushes:
        assert r["integration_id"] == iid and r["app"] == app_name
        assert r["account"] == EMAILS[app_name]
        if r["action"] != "push_delete":
            assert r["fields"], r
        names = {f.split(":", 1)[0] for f in r["fields"]}
        assert names <= FIELD_NAMES | {"patient_name"}, r
    update = next(r for r in pushes if r["action"] == "push_update" and r["visit_id"] == "b")
    assert {"reason", "patient_name", "start"} <= set(update["fields"])
    # the filters change is in the log too, by field name
    assert any(r["action"] == "filters_set" and r["integration_id"] == iid for r in rows)
