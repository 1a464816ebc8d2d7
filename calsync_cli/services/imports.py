"""Import practices, providers and visits from JSON Lines or CSV.

Every row is validated before anything is written; the write is one transaction. A bad row
raises ``ImportValidationError`` (``file:line: what is wrong``) and the store is untouched.
Visits are compared with what is stored by a content hash: only created, changed or cancelled
visits are written, and each queues one job per integration whose practice and provider filters
match the visit now or matched it before (a reassigned visit must leave the old calendar).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlmodel import Session, col, select

from calsync_cli.engine.plan import Facts, wanted
from calsync_cli.errors import ImportValidationError, InputError
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store import jobs
from calsync_cli.store.db import Store
from calsync_cli.store.models import VISIT_STATUSES, Practice, Provider, Visit

Kind = Literal["practices", "providers", "visits"]
Format = Literal["jsonl", "csv"]
#: progress(phase, done, total): phase is "validating" or "writing"
Progress = Callable[[str, int, int], None]

FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required, optional)
    "practices": (("id", "name", "timezone"), ("location",)),
    "providers": (("id", "name"), ("email",)),
    "visits": (
        ("id", "practice_id", "provider_id", "patient_name", "start", "end"),
        ("visit_type", "room", "status", "reason"),
    ),
}

_EXTENSIONS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}


@dataclass
class ImportResult:
    kind: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    cancelled: int = 0
    jobs_queued: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "cancelled": self.cancelled,
            "jobs_queued": self.jobs_queued,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class Row:
    line: int
    values: dict[str, str]


# --------------------------------------------------------------------------- reading


def detect_format(name: str, head: str, explicit: str | None) -> Format:
    if explicit:
        if explicit not in ("jsonl", "csv"):
            raise InputError(
                f"unknown format {explicit!r}", hint="Use --format jsonl or --format csv"
            )
        return explicit  # type: ignore[return-value]
    suffix = Path(name).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if name == "-" or not suffix:
        return "jsonl" if head.lstrip().startswith("{") else "csv"
    raise InputError(
        f"cannot tell the format of {name} from its extension",
        hint="Name it .jsonl or .csv, or pass --format jsonl|csv",
    )


def _cell(value: Any, source: str, line: int, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ImportValidationError(source, line, f"{name} must be a string")
    text = str(value).strip()
    return text or None


def _read_jsonl(stream: IO[str], source: str) -> Iterator[Row]:
    for line_no, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportValidationError(source, line_no, f"not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ImportValidationError(source, line_no, "each line must be a JSON object")
        values = {}
        for key, value in obj.items():
            cell = _cell(value, source, line_no, str(key))
            if cell is not None:
                values[str(key)] = cell
        yield Row(line_no, values)


def _read_csv(stream: IO[str], source: str) -> Iterator[Row]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportValidationError(source, 1, f"not valid CSV ({exc})") from None
    header = [h.strip().lstrip("\ufeff") for h in header]
    while True:
        line_no = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportValidationError(source, line_no, f"not valid CSV ({exc})") from None
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            raise ImportValidationError(
                source, line_no, f"{len(cells)} cells but the header names {len(header)} columns"
            )
        values = {h: c.strip() for h, c in zip(header, cells, strict=False) if c.strip()}
        yield Row(line_no, values)


def read_rows(stream: IO[str], source: str, fmt: Format) -> list[Row]:
    reader = _read_jsonl if fmt == "jsonl" else _read_csv
    try:
        return list(reader(stream, source))
    except UnicodeDecodeError:
        raise InputError(f"{source} is not UTF-8 text", hint="Save the file as UTF-8") from None


def open_source(path: str, stdin: IO[str] | None = None) -> tuple[IO[str], str]:
    """Open FILE or ``-``; return the text stream and its first characters (for sniffing)."""
    if path == "-":
        import sys

        data = (stdin or sys.stdin).read()
        return io.StringIO(data), data[:64]
    try:
        handle = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - caller closes
    except FileNotFoundError:
        raise InputError(f"{path}: no such file", hint="Check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory", hint="Name a .jsonl or .csv file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        head = handle.read(64)
        handle.seek(0)
    except UnicodeDecodeError:
        handle.close()
        raise InputError(f"{path} is not UTF-8 text", hint="Save the file as UTF-8") from None
    return handle, head


# --------------------------------------------------------------------------- validating


def _check_fields(kind: str, rows: Sequence[Row], source: str) -> list[str]:
    required, optional = FIELDS[kind]
    known = set(required) | set(optional)
    unknown: dict[str, int] = {}
    seen: dict[str, int] = {}
    for row in rows:
        for name in row.values:
            if name not in known:
                unknown.setdefault(name, row.line)
        for name in required:
            if name not in row.values:
                raise ImportValidationError(source, row.line, f"missing required field {name!r}")
        first = seen.setdefault(row.values["id"], row.line)
        if first != row.line:
            raise ImportValidationError(
                source, row.line, f"id {row.values['id']!r} appears again (first on line {first})"
            )
    return [
        f"{source}: ignoring unknown column {name!r} (first seen on line {line})"
        for name, line in unknown.items()
    ]


def parse_instant(text: str, source: str, line: int, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ImportValidationError(
            source,
            line,
            f"{name} {text!r} is not an ISO 8601 time",
            hint="Use a time with an offset, e.g. 2026-12-01T09:00:00-06:00",
        ) from None
    if value.tzinfo is None:
        raise ImportValidationError(
            source,
            line,
            f"{name} {text!r} has no UTC offset",
            hint="Add the offset, e.g. 2026-12-01T09:00:00-06:00",
        )
    return value


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            f"unknown time zone {name!r}", hint="Use an IANA name such as America/Chicago"
        ) from None


def content_hash(values: Mapping[str, Any]) -> str:
    blob = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _visit_record(row: Row, source: str) -> dict[str, Any]:
    v = row.values
    start = parse_instant(v["start"], source, row.line, "start")
    end = parse_instant(v["end"], source, row.line, "end")
    if end <= start:
        raise ImportValidationError(
            source, row.line, f"end {v['end']} is not after start {v['start']}"
        )
    status = v.get("status", "scheduled").lower().replace("-", "_").replace(" ", "_")
    if status not in VISIT_STATUSES:
        raise ImportValidationError(
            source,
            row.line,
            f"unknown status {v['status']!r}",
            hint="Use one of " + ", ".join(VISIT_STATUSES),
        )
    record: dict[str, Any] = {
        "id": v["id"],
        "practice_id": v["practice_id"],
        "provider_id": v["provider_id"],
        "patient_name": v["patient_name"],
        "visit_type": v.get("visit_type"),
        "room": v.get("room"),
        "start": start,
        "end": end,
        "status": status,
        "reason": v.get("reason"),
    }
    record["content_hash"] = content_hash(
        {**record, "start": start.timestamp(), "end": end.timestamp()}
    )
    return record


def _practice_record(row: Row, source: str) -> dict[str, Any]:
    v = row.values
    try:
        check_timezone(v["timezone"])
    except InputError as exc:
        raise ImportValidationError(source, row.line, exc.message, hint=exc.hint) from None
    record = {
        "id": v["id"],
        "name": v["name"],
        "location": v.get("location"),
        "timezone": v["timezone"],
    }
    record["content_hash"] = content_hash(record)
    return record


def _provider_record(row: Row, source: str) -> dict[str, Any]:
    v = row.values
    record = {"id": v["id"], "name": v["name"], "email": v.get("email")}
    record["content_hash"] = content_hash(record)
    return record


_RECORD = {"practices": _practice_record, "providers": _provider_record, "visits": _visit_record}
_MODEL: dict[str, Any] = {"practices": Practice, "providers": Provider, "visits": Visit}


def _existing(
    session: Session, model: Any, columns: Sequence[str], ids: Sequence[str]
) -> dict[str, Any]:
    table = model.__table__
    found: dict[str, Any] = {}
    for chunk in jobs._chunks(ids):
        stmt = sa.select(*(table.c[c] for c in columns)).where(table.c.id.in_(chunk))
        for row in session.execute(stmt):
            found[row[0]] = row
    return found


# --------------------------------------------------------------------------- writing


def import_file(
    store: Store,
    kind: Kind,
    path: str,
    *,
    fmt: str | None = None,
    now: datetime,
    progress: Progress | None = None,
    stdin: IO[str] | None = None,
) -> ImportResult:
    """Validate and import one file. All or nothing."""
    stream, head = open_source(path, stdin)
    source = "<stdin>" if path == "-" else path
    with stream:
        rows = read_rows(stream, source, detect_format(path, head, fmt))
    return import_rows(store, kind, rows, source=source, now=now, progress=progress)


def import_rows(
    store: Store,
    kind: Kind,
    rows: Sequence[Row],
    *,
    source: str,
    now: datetime,
    progress: Progress | None = None,
) -> ImportResult:
    result = ImportResult(kind=kind, rows=len(rows))
    result.warnings = _check_fields(kind, rows, source)
    make = _RECORD[kind]
    records = []
    for i, row in enumerate(rows, start=1):
        records.append(make(row, source))
        if progress and i % 2000 == 0:
            progress("validating", i, len(rows))
    if progress:
        progress("validating", len(rows), len(rows))
    with store.write() as session:
        if kind == "visits":
            _write_visits(session, rows, records, source, now, result, progress)
        else:
            _write_simple(session, kind, records, now, result)
    return result


def _write_simple(
    session: Session, kind: str, records: list[dict[str, Any]], now: datetime, result: ImportResult
) -> None:
    model = _MODEL[kind]
    existing = _existing(session, model, ("id", "content_hash"), [r["id"] for r in records])
    new = [{**r, "updated_at": now} for r in records if r["id"] not in existing]
    changed = [
        {**r, "updated_at": now}
        for r in records
        if r["id"] in existing and existing[r["id"]].content_hash != r["content_hash"]
    ]
    result.created, result.updated = len(new), len(changed)
    result.unchanged = len(records) - len(new) - len(changed)
    if new:
        session.execute(sa.insert(model), new)
    if changed:
        session.execute(sa.update(model), changed)
    if kind == "practices" and changed:
        # Practice name and location are in every event: re-render its upcoming visits.
        ids = [r["id"] for r in changed]
        stmt = select(Visit.id, Visit.status, Visit.practice_id, Visit.provider_id).where(
            col(Visit.practice_id).in_(ids), Visit.end >= now
        )
        visits = [(vid, Facts(status, pid, prov)) for vid, status, pid, prov in session.exec(stmt)]
        work = [
            (integ.id, vid, "upsert")
            for integ in store_integrations.pushing(session)
            for vid, facts in visits
            if integ.id is not None and wanted(facts, integ)
        ]
        result.jobs_queued = jobs.enqueue(session, work, now)


def _facts(record: Mapping[str, Any]) -> Facts:
    return Facts(record["status"], record["practice_id"], record["provider_id"])


def _write_visits(
    session: Session,
    rows: Sequence[Row],
    records: list[dict[str, Any]],
    source: str,
    now: datetime,
    result: ImportResult,
    progress: Progress | None,
) -> None:
    known_practices = set(
        _existing(session, Practice, ("id",), sorted({r["practice_id"] for r in records}))
    )
    known_providers = set(
        _existing(session, Provider, ("id",), sorted({r["provider_id"] for r in records}))
    )
    for row, record in zip(rows, records, strict=True):
        if record["practice_id"] not in known_practices:
            raise ImportValidationError(
                source,
                row.line,
                f"unknown practice {record['practice_id']!r}",
                hint="Import it first with: calsync practices import FILE",
            )
        if record["provider_id"] not in known_providers:
            raise ImportValidationError(
                source,
                row.line,
                f"unknown provider {record['provider_id']!r}",
                hint="Import it first with: calsync providers import FILE",
            )
    existing = _existing(
        session,
        Visit,
        ("id", "content_hash", "practice_id", "provider_id", "status"),
        [r["id"] for r in records],
    )
    new: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for record in records:
        old = existing.get(record["id"])
        if old is None:
            new.append({**record, "created_at": now, "changed_at": now})
        elif old.content_hash != record["content_hash"]:
            changed.append({**record, "changed_at": now})
    result.created, result.updated = len(new), len(changed)
    result.unchanged = len(records) - len(new) - len(changed)
    result.cancelled = sum(
        1 for r in changed if r["status"] == "cancelled" and existing[r["id"]].status != "cancelled"
    )
    total = len(new) + len(changed)
    written = 0
    for chunk in jobs._chunks(new, 5000):
        session.execute(sa.insert(Visit), list(chunk))
        written += len(chunk)
        if progress:
            progress("writing", written, total)
    for chunk in jobs._chunks(changed, 5000):
        session.execute(sa.update(Visit), list(chunk))
        written += len(chunk)
        if progress:
            progress("writing", written, total)

    integrations = [i for i in store_integrations.pushing(session) if i.id is not None]
    work: list[tuple[int, str, str]] = []
    if integrations:
        # A new visit is queued where it is wanted (first seen cancelled: nowhere, there is no
        # event to remove); a changed one where it is wanted now (upsert) or was wanted before
        # (delete: cancelled, reassigned).
        for record in new:
            facts = _facts(record)
            for integ in integrations:
                if wanted(facts, integ):
                    work.append((integ.id, record["id"], "upsert"))  # type: ignore[arg-type]
        for record in changed:
            old, facts = existing[record["id"]], _facts(record)
            for integ in integrations:
                if wanted(facts, integ):
                    work.append((integ.id, record["id"], "upsert"))  # type: ignore[arg-type]
                elif wanted(old, integ):
                    work.append((integ.id, record["id"], "delete"))  # type: ignore[arg-type]
    result.jobs_queued = jobs.enqueue(session, work, now)
