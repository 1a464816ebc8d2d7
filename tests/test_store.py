"""The store on SQLite and PostgreSQL: schema, imports, change detection, outbox coalescing."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select

from calsync_cli.errors import ConfigError, ImportValidationError, InputError, StoreError
from calsync_cli.services import imports as importers
from calsync_cli.services import integrations as core
from calsync_cli.store import jobs
from calsync_cli.store import status as store_status
from calsync_cli.store.db import Store
from calsync_cli.store.models import JOB_RUNNING, SCHEMA_VERSION, Integration, Job, Visit
from tests.conftest import NOW, PRACTICES, PROVIDERS, visit, write_jsonl


def seed(store: Store, tmp_path: Path) -> None:
    importers.import_file(
        store, "practices", str(write_jsonl(tmp_path / "p.jsonl", PRACTICES)), now=NOW
    )
    importers.import_file(
        store, "providers", str(write_jsonl(tmp_path / "d.jsonl", PROVIDERS)), now=NOW
    )


def connect(store: Store, provider: str = "dr-lee", **filters: list[str]) -> int:
    with store.write() as s:
        integ = core.create(s, provider_id=provider, app="google", now=NOW, calendar_id="cal")
        for key, value in filters.items():
            setattr(integ, key, value)
        s.add(integ)
        s.flush()
        assert integ.id is not None
        return integ.id


def live_jobs(store: Store) -> list[tuple[int, str, str]]:
    with store.read() as s:
        rows = s.exec(select(Job).where(Job.state.in_(("queued", "running"))))  # type: ignore[attr-defined]
        return sorted((j.integration_id, j.visit_id, j.action) for j in rows)


def import_visits(
    store: Store, tmp_path: Path, rows: list[dict[str, object]], name: str = "v.jsonl", now=NOW
):
    return importers.import_file(store, "visits", str(write_jsonl(tmp_path / name, rows)), now=now)


def test_schema_is_created_once_and_reopened(db_url: str) -> None:
    Store(db_url).close()
    s = Store(db_url)  # a second open finds the current version and changes nothing
    with s.read() as session:
        assert session.exec(select(Visit)).all() == []
    s.close()


def test_newer_schema_is_refused(db_url: str) -> None:
    s = Store(db_url)
    with s.write() as session:
        session.execute(
            sa.text("UPDATE calsync_meta SET value = '999' WHERE key = 'schema_version'")
        )
    s.close()
    with pytest.raises(StoreError, match="newer than this calsync"):
        Store(db_url)


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calsync.db"
    s = Store(f"sqlite:///{path}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with s.read() as session:
        assert session.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(sa.text("PRAGMA busy_timeout")).scalar() == 30000
    s.close()


def test_bad_db_url_is_one_line_error() -> None:
    # a bad setting: exit 2 (issue 13, class 4)
    with pytest.raises(ConfigError, match="not a database URL"):
        Store("not a url")


def test_import_then_reimport_is_a_noop(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    iid = connect(store)
    rows = [visit(f"v{i}") for i in range(5)]
    first = import_visits(store, tmp_path, rows)
    assert (first.created, first.updated, first.unchanged, first.jobs_queued) == (5, 0, 0, 5)
    again = import_visits(store, tmp_path, rows)
    assert (again.created, again.updated, again.unchanged, again.jobs_queued) == (0, 0, 5, 0)
    assert len(live_jobs(store)) == 5
    assert {j[0] for j in live_jobs(store)} == {iid}


def test_bad_row_fails_whole_import_with_line_number(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    rows = [visit("a"), visit("b"), visit("c", start="2026-12-01T09:00:00"), visit("d")]
    with pytest.raises(ImportValidationError) as info:
        import_visits(store, tmp_path, rows)
    assert info.value.message.startswith(f"{tmp_path / 'v.jsonl'}:3: start")
    assert "no UTC offset" in info.value.message
    with store.read() as s:
        assert s.exec(select(Visit)).all() == []


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (visit("x", end="2026-12-01T08:00:00-06:00"), "is not after start"),
        (visit("x", practice_id="nowhere"), "unknown practice 'nowhere'"),
        (visit("x", provider_id="dr-who"), "unknown provider 'dr-who'"),
        (visit("x", status="postponed"), "unknown status"),
        (visit("x", start="tomorrow"), "is not an ISO 8601 time"),
        (
            {k: v for k, v in visit("x").items() if k != "patient_name"},
            "missing required field 'patient_name'",
        ),
    ],
)
def test_each_kind_of_bad_row(
    store: Store, tmp_path: Path, row: dict[str, object], problem: str
) -> None:
    seed(store, tmp_path)
    with pytest.raises(ImportValidationError, match=problem) as info:
        import_visits(store, tmp_path, [visit("ok"), row])
    assert info.value.line == 2


def test_bad_json_and_bad_timezone(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "name": "A", "timezone": "UTC"}\n{not json\n')
    with pytest.raises(ImportValidationError, match=r"bad.jsonl:2: not valid JSON"):
        importers.import_file(store, "practices", str(bad), now=NOW)
    tz = write_jsonl(tmp_path / "tz.jsonl", [{"id": "a", "name": "A", "timezone": "Mars/Olympus"}])
    with pytest.raises(ImportValidationError, match="unknown time zone 'Mars/Olympus'"):
        importers.import_file(store, "practices", str(tz), now=NOW)


def test_csv_import_with_empty_cells_and_unknown_columns(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    path = tmp_path / "v.csv"
    path.write_text(
        "id,practice_id,provider_id,patient_name,visit_type,room,start,end,status,reason,colour\n"
        "c1,main,dr-lee,Jane Doe,Follow Up,,2026-12-01T09:00:00-06:00,2026-12-01T09:30:00-06:00,,,blue\n"
    )
    result = importers.import_file(store, "visits", str(path), now=NOW)
    assert result.created == 1
    assert result.warnings and "colour" in result.warnings[0]
    with store.read() as s:
        v = s.get(Visit, "c1")
        assert v is not None and v.room is None and v.status == "scheduled"
        assert v.start == NOW.replace(year=2026, month=12, day=1, hour=15, minute=0)


def test_duplicate_id_in_one_file_is_an_error(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    with pytest.raises(ImportValidationError, match="appears again"):
        import_visits(store, tmp_path, [visit("a"), visit("a")])


def test_change_detection_respects_practice_and_provider_filters(
    store: Store, tmp_path: Path
) -> None:
    seed(store, tmp_path)
    lee = connect(store, "dr-lee")  # provider filter: dr-lee (its own provider)
    patel = connect(store, "dr-patel")
    river_all = connect(store, "dr-patel", provider_filter=[], practice_filter=["river"])
    import_visits(
        store,
        tmp_path,
        [
            visit("a"),
            visit("b", provider_id="dr-patel"),
            visit("c", practice_id="river", provider_id="dr-lee"),
        ],
    )
    assert live_jobs(store) == [
        (lee, "a", "upsert"),
        (lee, "c", "upsert"),
        (patel, "b", "upsert"),
        (river_all, "c", "upsert"),
    ]


def test_reassignment_queues_delete_at_the_old_integration(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee, patel = connect(store, "dr-lee"), connect(store, "dr-patel")
    import_visits(store, tmp_path, [visit("a")])
    with store.write() as s:  # the first job ran
        s.execute(sa.update(Job).values(state="done"))
    result = import_visits(store, tmp_path, [visit("a", provider_id="dr-patel")], name="v2.jsonl")
    assert result.updated == 1
    assert live_jobs(store) == [(lee, "a", "delete"), (patel, "a", "upsert")]


def test_cancel_queues_delete_and_first_seen_cancelled_queues_nothing(
    store: Store, tmp_path: Path
) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    import_visits(store, tmp_path, [visit("a"), visit("z", status="cancelled")])
    assert live_jobs(store) == [(lee, "a", "upsert")]
    with store.write() as s:
        s.execute(sa.update(Job).values(state="done"))
    result = import_visits(store, tmp_path, [visit("a", status="cancelled")], name="v2.jsonl")
    assert result.cancelled == 1
    assert live_jobs(store) == [(lee, "a", "delete")]


def test_jobs_coalesce_and_running_jobs_are_marked_dirty(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    import_visits(store, tmp_path, [visit("a"), visit("b")])
    import_visits(
        store, tmp_path, [visit("a", room="Room 9"), visit("b", room="Room 9")], name="v2.jsonl"
    )
    assert live_jobs(store) == [(lee, "a", "upsert"), (lee, "b", "upsert")]  # still one each
    with store.write() as s:
        s.execute(sa.update(Job).where(Job.visit_id == "a").values(state=JOB_RUNNING))
    import_visits(
        store, tmp_path, [visit("a", room="Room 1"), visit("b", room="Room 9")], name="v3.jsonl"
    )
    with store.read() as s:
        job = s.exec(select(Job).where(Job.visit_id == "a")).one()
        assert job.dirty and job.state == JOB_RUNNING
    assert len(live_jobs(store)) == 2


def test_paused_and_pull_only_integrations_queue_nothing(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    core.toggle(store, lee, True, now=NOW)
    patel = connect(store, "dr-patel")
    core.set_direction(store, patel, "pull", now=NOW)
    result = import_visits(store, tmp_path, [visit("a"), visit("b", provider_id="dr-patel")])
    assert result.jobs_queued == 0


def test_filter_change_requeues_upcoming_visits_only(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    past = visit("old", start="2026-11-01T09:00:00-06:00", end="2026-11-01T09:30:00-06:00")
    import_visits(store, tmp_path, [visit("a"), past])
    with store.write() as s:
        s.execute(sa.update(Job).values(state="done"))
    out = core.set_filters(store, lee, core.FilterChange(patient_name=False), now=NOW)
    assert out["changed"] == ["patient_name"] and out["jobs_queued"] == 1
    assert live_jobs(store) == [(lee, "a", "upsert")]
    same = core.set_filters(store, lee, core.FilterChange(patient_name=False), now=NOW)
    assert same["changed"] == [] and same["jobs_queued"] == 0


def test_filters_reject_unknown_ids_and_formats(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    with pytest.raises(InputError, match="unknown practice 'nope'"):
        core.set_filters(store, lee, core.FilterChange(practices=["nope"]), now=NOW)
    with pytest.raises(InputError, match="unknown patient name format"):
        core.set_filters(store, lee, core.FilterChange(patient_name_format="nickname"), now=NOW)
    with pytest.raises(InputError, match="no integration 99"):
        core.show_filters(store, 99)


def test_new_integration_defaults(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    f = core.show_filters(store, lee)
    assert f == {
        "integration": lee,
        "patient_name": True,
        "patient_name_format": "full",
        "visit_type": True,
        "location": True,
        "notes": False,
        "practice_name": True,
        "private": True,
        "reminders": None,
        "practices": [],
        "providers": ["dr-lee"],
    }
    [row] = core.status_rows(store)
    assert row["status"] == "Active" and row["direction"] == "push" and row["paused"] is False


def test_resume_does_not_backfill_and_old_jobs_wait_while_paused(
    store: Store, tmp_path: Path
) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    import_visits(store, tmp_path, [visit("a")])
    core.toggle(store, lee, None, now=NOW)  # pause: the queued job waits
    import_visits(
        store, tmp_path, [visit("a"), visit("b")], name="v2.jsonl"
    )  # b changes while paused
    later = NOW + timedelta(hours=1)
    out = core.toggle(store, lee, None, now=later)
    assert out["paused"] is False
    assert live_jobs(store) == [(lee, "a", "upsert")]
    with store.read() as s:
        integ = s.get(Integration, lee)
        assert integ is not None and integ.active_since == later


def test_enqueue_direct_is_idempotent(store: Store, tmp_path: Path) -> None:
    seed(store, tmp_path)
    lee = connect(store)
    import_visits(store, tmp_path, [visit("a")])
    with store.write() as s:
        assert jobs.enqueue(s, [(lee, "a", "upsert"), (lee, "a", "upsert")], NOW) == 0
    assert len(live_jobs(store)) == 1


def test_status_fast_path_matches_the_store(tmp_path: Path, db_url: str) -> None:
    from calsync_cli.store import fast_status as quick
    from calsync_cli.store.models import SCHEMA_VERSION

    assert quick.SCHEMA_VERSION == SCHEMA_VERSION
    url = db_url
    assert quick.status_rows(url) is None  # no schema yet: the full path creates it
    store = Store(url)
    seed(store, tmp_path)
    lee, patel = connect(store), connect(store, "dr-patel")
    import_visits(store, tmp_path, [visit("a"), visit("b"), visit("c", provider_id="dr-patel")])
    with store.write() as s:
        s.execute(
            sa.update(Job)
            .where(Job.visit_id == "b")
            .values(state="failed", last_error="Google: HTTP 400 invalid")
        )
        integ = s.get(Integration, lee)
        assert integ is not None
        integ.last_synced_at = NOW
        integ.status, integ.status_detail = "Error", "HTTP 503 from Google"
        s.add(integ)
    core.toggle(store, patel, True, now=NOW)
    assert quick.status_rows(url) == core.status_rows(store)
    assert quick.status_rows(url, patel) == core.status_rows(store, patel)
    [row] = core.status_rows(store, lee)
    [failure] = row["failures"]
    assert failure["visit_id"] == "b" and failure["action"] == "upsert"
    assert failure["start"] == "2026-12-01T15:00:00+00:00"
    assert failure["error"] == "Google: HTTP 400 invalid" and failure["failed_at"]
    assert quick.status_rows(url, lee) == [row]
    assert quick.FAILURES_SHOWN == store_status.FAILURES_SHOWN
    assert quick.status_rows(url, 99) is None
    with store.write() as s:  # a database of another calsync version: the full path decides
        s.execute(sa.text("UPDATE calsync_meta SET value = '99' WHERE key = 'schema_version'"))
    assert quick.status_rows(url) is None
    store.close()


def test_status_fast_path_gives_way_when_the_database_is_unreachable() -> None:
    from calsync_cli.store import fast_status as quick

    assert quick.status_rows("postgresql+psycopg://nobody@127.0.0.1:1/none") is None
    assert quick.status_rows("mysql://x@127.0.0.1/none") is None
    assert quick.status_rows("sqlite://") is None  # in memory: nothing to read


V3_COLUMNS = {
    "integration": (
        "needs_reauth",
        "needs_calendar",
        "error_source",
        "f_private",
        "f_reminders",
        "filter_version",
    ),
    "event_link": ("visit_hash", "filter_version"),
}


def _make_v2(session: Any) -> None:
    """What a version-2 database looked like: no v3 columns, no sealed tokens."""
    for table, columns in V3_COLUMNS.items():
        for column in columns:
            session.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    session.execute(sa.text("DROP TABLE sealed_token"))
    session.execute(sa.text("DROP TABLE worker_seen"))
    session.execute(sa.text("UPDATE calsync_meta SET value = '2' WHERE key = 'schema_version'"))


def _version(session: Any) -> str:
    return str(
        session.execute(
            sa.text("SELECT value FROM calsync_meta WHERE key = 'schema_version'")
        ).scalar()
    )


def test_version_1_database_is_upgraded_in_place(db_url: str, tmp_path: Path) -> None:
    """A database written by the first release (no job-count index, version 1) keeps its data
    and gains the index when a newer calsync opens it."""
    s = Store(db_url)
    seed(s, tmp_path)
    with s.write() as session:  # what a version-1 database looked like
        _make_v2(session)
        session.execute(sa.text("DROP INDEX ix_job_integration_state"))
        session.execute(sa.text("UPDATE calsync_meta SET value = '1' WHERE key = 'schema_version'"))
    s.close()
    s = Store(db_url)
    with s.read() as session:
        indexes = {ix["name"] for ix in sa.inspect(session.connection()).get_indexes("job")}
        assert _version(session) == str(SCHEMA_VERSION) and "ix_job_integration_state" in indexes
        assert len(core.store_counts(s)) == 3 and core.store_counts(s)["practices"] == 2
    s.close()


def test_version_2_database_gains_the_state_flag_filters_and_render_inputs(
    db_url: str, tmp_path: Path
) -> None:
    """v2 -> v3 in place: "reconnect needed" moves from the status text to the flag, the new
    filters take their defaults, Google links go back to generation 0, sealed tokens appear."""
    s = Store(db_url)
    seed(s, tmp_path)
    with s.write() as session:
        _make_v2(session)
        session.execute(
            sa.text(
                "INSERT INTO integration (provider_id, app, direction, paused, status, "
                "status_detail, created_at, active_since, f_patient_name, f_patient_name_format, "
                "f_visit_type, f_location, f_notes, f_practice_name, practice_filter, "
                "provider_filter) VALUES ('dr-lee', 'google', 'push', :f, 'Error', "
                "'reconnect needed: calsync connect google --provider dr-lee', :now, :now, :t, "
                "'full', :t, :t, :f, :t, '[]', '[]')"
            ),
            {"f": False, "t": True, "now": datetime(2026, 11, 1)},
        )
    s.close()
    s = Store(db_url)
    with s.read() as session:
        assert _version(session) == "3"
        columns = {
            t: {c["name"] for c in sa.inspect(session.connection()).get_columns(t)}
            for t in V3_COLUMNS
        }
        for table, wanted in V3_COLUMNS.items():
            assert set(wanted) <= columns[table]
        assert sa.inspect(session.connection()).has_table("sealed_token")
        row = session.execute(
            sa.text("SELECT needs_reauth, f_private, f_reminders, filter_version FROM integration")
        ).one()
        assert (bool(row[0]), bool(row[1]), row[2], row[3]) == (True, True, None, 0)
    s.close()


def test_the_literal_live_states_match_the_models() -> None:
    """The sweep spells the live states as literal SQL (so SQLite uses the partial index)."""
    from calsync_cli.store.links import LIVE_STATES_SQL
    from calsync_cli.store.models import LIVE_JOB_STATES

    literal = str(LIVE_STATES_SQL)
    assert literal == "job.state IN (" + ", ".join(f"'{s}'" for s in LIVE_JOB_STATES) + ")"
