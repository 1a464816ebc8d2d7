"""Benchmark: cold start of the commands people and cron run most, against the bare interpreter.

    python benchmarks/cold_start.py [--runs 15] [--db-url URL]

Targets (issue 10): `calsync --help` within 2.5x of `python -c pass`, `calsync status --json`
within 3.5x, measured in the same run (the runs are interleaved, so a busy machine slows all
alike). Tab completion starts no Python at all: the completion scripts in completions/ are
static (generated from the command tree), so it costs the shell's own lookup.
It also lists what each path imports beyond the standard library (from ``-X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = {
    "python -c pass": ["-c", "pass"],
    "calsync --help": ["-m", "calsync_cli", "--help"],
    "calsync status --json": ["-m", "calsync_cli", "status", "--json"],
}
TARGETS = {"calsync --help": 2.5, "calsync status --json": 3.5}


def third_party_imports(args: list[str], env: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", *args], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    names = set()
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        module = line.rsplit("|", 1)[1].strip()
        top = module.split(".")[0]
        if top and top not in sys.stdlib_module_names and not top.startswith("_"):
            names.add(top)
    return sorted(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--db-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db_url or f"sqlite:///{Path(tmp) / 'calsync.db'}"
        env = {**os.environ, "CALSYNC_DB_URL": url, "CALSYNC_CONFIG": os.devnull}
        subprocess.run(
            [sys.executable, "-m", "calsync_cli", "status"],
            env=env,
            check=True,
            capture_output=True,
        )  # fmt: skip  (creates the schema once)
        times: dict[str, list[float]] = {name: [] for name in PATHS}
        for _ in range(args.runs):
            for name, cmd in PATHS.items():
                started = time.perf_counter()
                subprocess.run([sys.executable, *cmd], env=env, check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
        floor = statistics.median(times["python -c pass"])
        print(
            f"{'path':<24} {'median s':>9} {'x floor':>8} {'target':>7}  imports beyond the stdlib"
        )
        for name, cmd in PATHS.items():
            med = statistics.median(times[name])
            ratio = med / floor
            target = TARGETS.get(name)
            verdict = "" if target is None else f"{target:g}x {'ok' if ratio <= target else 'OVER'}"
            extra = ", ".join(third_party_imports(cmd, env)) if name != "python -c pass" else ""
            print(f"{name:<24} {med:>9.3f} {ratio:>8.2f} {verdict:>7}  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
