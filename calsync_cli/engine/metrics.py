"""Counters of a long-running ``calsync sync --watch``: one log line per round, and a file in
the Prometheus text exposition format for node_exporter's textfile collector (written
atomically: a temporary file in the same directory, then a rename). Counts only, never PHI."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from calsync_cli.engine.worker import COUNTERS, RunSummary

#: how each counter of a round is named in the log line
LABELS = {"pushed": "created", "skipped": "unchanged"}


@dataclass
class Metrics:
    rounds: int = 0
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    last_round: datetime | None = None
    reauth_needed: int = 0

    def add(self, summary: RunSummary, *, at: datetime) -> None:
        self.rounds += 1
        self.last_round = at
        for name, n in summary.totals().items():
            self.totals[name] += n
        self.reauth_needed = sum(1 for s in summary.integrations.values() if s.needs_reauth)

    @staticmethod
    def round_line(summary: RunSummary, *, at: datetime) -> str:
        counts = summary.totals()
        parts = ", ".join(f"{LABELS.get(k, k)} {n}" for k, n in counts.items() if n)
        return (
            f"{at.isoformat(timespec='seconds')} round: {len(summary.integrations)} "
            f"integrations; {parts or 'nothing to do'}"
        )

    def text(self) -> str:
        lines = [
            "# HELP calsync_sync_rounds_total Sync rounds run by this worker.",
            "# TYPE calsync_sync_rounds_total counter",
            f"calsync_sync_rounds_total {self.rounds}",
            "# HELP calsync_sync_jobs_total Jobs finished by outcome.",
            "# TYPE calsync_sync_jobs_total counter",
        ]
        lines += [
            f'calsync_sync_jobs_total{{outcome="{LABELS.get(k, k)}"}} {n}'
            for k, n in self.totals.items()
        ]
        lines += [
            "# HELP calsync_sync_reauth_needed Integrations that needed signing in again"
            " in the last round.",
            "# TYPE calsync_sync_reauth_needed gauge",
            f"calsync_sync_reauth_needed {self.reauth_needed}",
            "# HELP calsync_sync_last_round_timestamp_seconds When the last round ended.",
            "# TYPE calsync_sync_last_round_timestamp_seconds gauge",
            "calsync_sync_last_round_timestamp_seconds "
            f"{self.last_round.timestamp() if self.last_round else 0:.0f}",
        ]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically (readers never see half a file)."""
        directory = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.text())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
