"""Several hosts on one PostgreSQL store (issue 10): three ``calsync sync --watch`` worker
processes, each with its own home directory and its own (empty) keyring, share one database and
the sandbox; tokens are sealed in the database under a key file every host has. 300 visits
arrive over several integrations while they run; one worker is SIGKILLed mid-run. Afterwards
every visit has exactly one correct event, and every worker pushed some."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from calsync_cli.sandbox import Sandbox
from calsync_cli.services import imports as importers
from calsync_cli.services import integrations as core
from calsync_cli.store.models import LIVE_JOB_STATES, Job
from tests.conftest import write_jsonl
from tests.engine_support import sign_in_tokens
from tests.sync_support import calendar_problems, connect_both, import_rows, make_db_env, visit_rows

WORKERS = 3
#: besides dr-lee (Google) and dr-patel (Outlook): more clinicians than workers
MORE = {"dr-kim": "google", "dr-ortiz": "outlook", "dr-silva": "google", "dr-chen": "outlook"}
VISITS = 300
BATCHES = 6


def _worker(tmp: Path, name: str, env_vars: dict[str, str]) -> subprocess.Popen[str]:
    """One host: its own HOME, data dirs and keyring file; the shared database and key file."""
    home = tmp / name
    for sub in ("config", "data", "cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **env_vars,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "calsync_cli", "sync", "--watch", "--interval", "0.2",
         "--metrics-file", str(tmp / f"{name}.prom")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _live_jobs(env: object) -> int:
    with env.store.read() as s:  # type: ignore[attr-defined]
        return int(
            s.exec(
                select(func.count()).select_from(Job).where(col(Job.state).in_(LIVE_JOB_STATES))
            ).one()
        )


def _created(tmp: Path, name: str) -> int:
    """What a worker's metrics file says it created (its last finished round)."""
    path = tmp / f"{name}.prom"
    if not path.exists():
        return 0
    found = re.search(r'calsync_sync_jobs_total\{outcome="created"\} (\d+)', path.read_text())
    return int(found.group(1)) if found else 0


def _wait(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.postgres
def test_three_hosts_share_the_work_and_survive_a_killed_worker(
    tmp_path: Path, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the fleet shares a PostgreSQL store")
    from calsync_cli.auth.sealed import SealedTokenStore
    from calsync_cli.auth.tokens import TokenStore

    rng = random.Random(20261129)
    key_file = tmp_path / "token.key"
    key_file.write_bytes(os.urandom(32).hex().encode() + b"\n")
    key_file.chmod(0o600)
    base = datetime.now(UTC) - timedelta(minutes=2)  # the workers run on the real clock
    with Sandbox(port=0, latency=0.01) as sb:
        env = make_db_env(tmp_path, sb, db_url, base)
        try:
            ids = connect_both(env)
            # the test signed in through the keyring; a fleet keeps tokens sealed in the store
            sealed = SealedTokenStore(env.store, key_file=str(key_file))
            for iid in ids.values():
                tokens = TokenStore().get(iid)
                assert tokens is not None
                sealed.put(iid, tokens)
                TokenStore().delete(iid)  # no host has them in a keyring
            # four more clinicians, each with an account of their own: six mailboxes to share
            importers.import_file(
                env.store, "providers",
                str(write_jsonl(tmp_path / "more.jsonl", [{"id": p, "name": p} for p in MORE])),
                now=base,
            )  # fmt: skip
            for pid, app in MORE.items():
                email = f"{pid}@{app}.example"
                sb.add_account(app, email)
                tokens = sign_in_tokens(sb, app, email, datetime.now(UTC))
                with env.store.write() as s:
                    integ = core.create(
                        s, provider_id=pid, app=app, now=base, account=email,
                        calendar_id=sb.account(app, email).primary_calendar_id,
                        calendar_name="Calendar",
                    )  # fmt: skip
                    assert integ.id is not None
                    new_id = integ.id
                sealed.put(new_id, tokens)
            shared = {
                **sb.env(),
                "CALSYNC_DB_URL": db_url,
                "CALSYNC_TOKEN_STORE": "database",
                "CALSYNC_SECRET_KEY_FILE": str(key_file),
                "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
            }
            rows = visit_rows(VISITS, rng, datetime(2026, 12, 1, 14, tzinfo=UTC))
            clinicians = ["dr-lee", "dr-patel", *MORE]
            for i, row in enumerate(rows):
                row["provider_id"] = clinicians[i % len(clinicians)]
            names = [f"host{i}" for i in range(WORKERS)]
            # the first host starts alone and pushes some; then the other two join
            workers = [_worker(tmp_path, names[0], shared)]
            victim = workers[0]
            for n in range(BATCHES):  # the practice system sends visits while they work
                batch = rows[n * VISITS // BATCHES : (n + 1) * VISITS // BATCHES]
                import_rows(env, batch, f"v{n}.jsonl", datetime.now(UTC))
                if n == 0:
                    assert _wait(lambda: _created(tmp_path, names[0]) > 0, 60)
                    workers += [_worker(tmp_path, name, shared) for name in names[1:]]
                if n == BATCHES // 2:
                    sb.wait_for_api_calls(sb.api_calls() + 5, timeout=30)
                    victim.send_signal(signal.SIGKILL)  # mid-run, leases held
                time.sleep(0.3)
            deadline = time.monotonic() + 60
            while _live_jobs(env) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = _live_jobs(env)
            logs = []
            for proc in workers:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                _out, err = proc.communicate(timeout=30)
                logs.append(err)
            assert left == 0, f"work left after two minutes: {logs}"
            for proc in workers[1:]:
                assert proc.returncode == 0, logs
            pushed = [_created(tmp_path, name) for name in names]
            assert all(n > 0 for n in pushed), pushed  # every host pushed some
            assert sum(pushed[1:]) <= VISITS
            env.clock.now = datetime.now(UTC)
            assert calendar_problems(env) == []
            # the killed host's work was taken over: nothing failed, nothing doubled
            with env.store.read() as s:
                failed = s.exec(
                    select(func.count()).select_from(Job).where(Job.state == "failed")
                ).one()
            assert failed == 0
            assert "Traceback" not in "".join(logs[1:])
        finally:
            env.store.close()
