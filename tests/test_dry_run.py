"""``calsync sync --dry-run``: the plan per integration, nothing sent, claimed or changed; and
the per-round log line and metrics file of ``sync --watch``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from calsync_cli.cli.app import app as cli
from calsync_cli.engine.metrics import Metrics
from calsync_cli.engine.worker import IntegrationSummary, RunSummary
from calsync_cli.store.models import Job
from tests.conftest import visit
from tests.engine_support import Env, connect


def _cli_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**env.sb.env(), "CALSYNC_DB_URL": env.settings.db_url}.items():
        monkeypatch.setenv(key, value)
    env.clock.now = datetime.now(UTC) - timedelta(minutes=1)  # the CLI runs on real time


def _jobs(env: Env) -> list[tuple[str, str, str | None]]:
    with env.store.read() as session:
        return [(j.visit_id, j.state, j.lease_owner) for j in session.exec(select(Job))]


def test_dry_run_reports_the_plan_and_writes_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(env, monkeypatch)
    google, outlook = connect(env, "google"), connect(env, "outlook", provider_id="dr-patel")
    env.import_visits([visit("a"), visit("b"), visit("c", provider_id="dr-patel")])
    runner = CliRunner()
    status_before = json.loads(runner.invoke(cli, ["status", "--json"]).stdout)
    jobs_before = _jobs(env)
    env.sb.reset_stats()

    result = runner.invoke(cli, ["sync", "--dry-run", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["totals"]["create"] == 3
    by_id = {i["id"]: i for i in data["integrations"]}
    assert by_id[google]["counts"]["create"] == 2 and by_id[outlook]["counts"]["create"] == 1
    assert sorted(by_id[google]["visits"]["create"]) == ["a", "b"]
    assert by_id[outlook]["visits"] == {"create": ["c"]}
    # nothing reached the sandbox, nothing was claimed, nothing changed
    assert env.sb.stats()["requests"] == {}
    assert _jobs(env) == jobs_before and all(s == "queued" for _, s, _ in jobs_before)
    assert json.loads(runner.invoke(cli, ["status", "--json"]).stdout) == status_before

    human = runner.invoke(cli, ["-v", "sync", "--dry-run"])
    assert human.exit_code == 0
    assert "dry run" in human.stderr.lower() or "dry run" in human.stdout.lower()
    assert f"integration {google} create: " in human.stderr

    # after the real sync the plan is empty, and a cancellation plans a delete
    assert runner.invoke(cli, ["sync"]).exit_code == 0
    assert json.loads(runner.invoke(cli, ["sync", "--dry-run", "--json"]).stdout)["totals"] == {
        "create": 0, "update": 0, "move": 0, "delete": 0, "recover": 0, "skip": 0, "invalid": 0,
    }  # fmt: skip
    env.import_visits([visit("a", status="cancelled")], "v2.jsonl")
    again = json.loads(runner.invoke(cli, ["sync", "--dry-run", "--json"]).stdout)
    assert again["integrations"][0]["visits"] == {"delete": ["a"]}


def test_dry_run_refuses_contradictions(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _cli_env(env, monkeypatch)
    runner = CliRunner()
    for args in (["sync", "--dry-run", "--watch"], ["sync", "--interval", "5"],
                 ["sync", "--metrics-file", "m.prom"]):  # fmt: skip
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("calsync: error: ") and len(result.stderr.splitlines()) == 1


def test_watch_round_line_and_metrics_file(tmp_path: Path) -> None:
    summary = RunSummary()
    summary.merge(IntegrationSummary(id=1, app="google", pushed=3, skipped=2))
    summary.merge(IntegrationSummary(id=2, app="outlook", failed=1, needs_reauth=True))
    at = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    metrics = Metrics()
    metrics.add(summary, at=at)
    metrics.add(RunSummary(), at=at + timedelta(seconds=10))
    line = Metrics.round_line(summary, at=at)
    assert (
        line == "2026-11-29T03:00:00+00:00 round: 2 integrations; created 3, unchanged 2, failed 1"
    )
    (tmp_path / "metrics").mkdir()
    target = tmp_path / "metrics" / "calsync.prom"
    metrics.write(target)
    text = target.read_text()
    assert "calsync_sync_rounds_total 2\n" in text
    assert 'calsync_sync_jobs_total{outcome="created"} 3\n' in text
    assert 'calsync_sync_jobs_total{outcome="failed"} 1\n' in text
    assert "calsync_sync_reauth_needed 0\n" in text  # the last round had none
    assert [p.name for p in target.parent.iterdir()] == ["calsync.prom"]  # no temporary file left
