"""Import practices, providers and visits from JSON Lines or CSV.

Every row is validated before anything is written; the write is one transaction. A bad row
raises ``ImportValidationError`` (``file:line: what is wrong``) and the store is untouched.
Visits are compared with what is stored by a content hash: only created, changed or cancelled
visits are written, and each queues one job per integration whose practice and provider filters
match the visit now or matched it before (a reassigned visit must leave the old calendar).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import sqlalchemy as sa
from sqlmodel import Session

from calsync_cli.engine.plan import Facts, wanted
from calsync_cli.errors import ImportValidationError, InputError, StoreError
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store import jobs
from calsync_cli.store import records as store_records
from calsync_cli.store import visits as store_visits
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

#: how often an import's transaction runs when concurrent imports insert the same new ids
WRITE_ATTEMPTS = 5

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
#
# Every way a file can be misread ends here in one line naming the real problem, before
# anything is written: an encoding that is not UTF-8 (with or without a byte-order mark, on
# every path), JSON Lines given as CSV and the reverse, a CSV whose first line is not a header,
# a header missing required columns, another delimiter, an unterminated quote, control
# characters or lone surrogates in a value, and a file with no rows at all.

#: byte-order marks of encodings calsync does not read (UTF-32 first: its LE mark starts with
#: UTF-16's)
_FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
#: C0 controls other than tab and line breaks, DEL, and lone surrogates (JSON's "\ud800")
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


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


def _check_text(text: str, source: str, line: int, name: str) -> None:
    bad = _BAD_TEXT.search(text)
    if bad:
        what = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "a control character"
        raise ImportValidationError(
            source,
            line,
            f"{name} contains {what} (U+{ord(bad.group()):04X})",
            hint="Remove it from the file",
        )


def _cell(value: Any, source: str, line: int, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ImportValidationError(source, line, f"{name} is not a finite number")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ImportValidationError(source, line, f"{name} must be a string")
    text = str(value).strip()
    _check_text(text, source, line, name)
    return text or None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a value")


def _read_jsonl(text: str, source: str) -> Iterator[Row]:
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw, parse_constant=_no_constants)
        except json.JSONDecodeError as exc:
            looks_csv = line_no == 1 and not raw.lstrip().startswith(("{", "["))
            raise ImportValidationError(
                source,
                line_no,
                f"not valid JSON ({exc.msg})",
                hint="It looks like CSV: use --format csv" if looks_csv else None,
            ) from None
        except (ValueError, RecursionError):  # NaN, Infinity, a 5000-digit number, [[[[...
            raise ImportValidationError(
                source, line_no, "not valid JSON for calsync (NaN, Infinity, or too deep/long)"
            ) from None
        if not isinstance(obj, dict):
            raise ImportValidationError(source, line_no, "each line must be a JSON object")
        values = {}
        for key, value in obj.items():
            _check_text(key, source, line_no, "a field name")
            cell = _cell(value, source, line_no, key)
            if cell is not None:
                values[key] = cell
        yield Row(line_no, values)


def _csv_header(header: list[str], raw: str, source: str, line: int, kind: str | None) -> None:
    """Refuse a first line that is not a usable header, naming why."""
    if kind is None:
        return
    required, optional = FIELDS[kind]
    known = set(required) | set(optional)
    names = set(header)
    for delimiter, word in _DELIMITERS.items():
        split = {h.strip() for h in raw.split(delimiter)}
        if delimiter in raw and len(split & known) > len(names & known):
            raise ImportValidationError(
                source,
                line,
                f"the columns are separated by {word}; calsync reads comma-separated CSV",
                hint="Save the file with commas as delimiters",
            )
    if not names & known:
        raise ImportValidationError(
            source,
            line,
            "the first line is not a header: it names none of the columns "
            + ", ".join(required + optional),
            hint="Add a header line such as " + ",".join(required),
        )
    missing = [c for c in required if c not in names]
    if missing:
        raise ImportValidationError(
            source,
            line,
            "the header lacks the required column"
            + ("s " if len(missing) > 1 else " ")
            + ", ".join(missing),
            hint="Name every required column: " + ",".join(required),
        )
    seen: set[str] = set()
    for h in header:
        if h and h in seen:
            raise ImportValidationError(source, line, f"the header names {h!r} twice")
        seen.add(h)


def _read_csv(text: str, source: str, kind: str | None = None) -> Iterator[Row]:
    lines = text.splitlines()
    first = next((n for n, line in enumerate(lines, 1) if line.strip()), None)
    if first is not None and lines[first - 1].lstrip().startswith("{"):
        raise ImportValidationError(
            source, first, "this is JSON Lines, not CSV", hint="Use --format jsonl"
        )
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    while True:
        line_no = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problem = (
                "a quoted cell is never closed (unterminated quote)"
                if "end of data" in str(exc)
                else f"not valid CSV ({exc})"
            )
            raise ImportValidationError(source, line_no, problem) from None
        if not any(c.strip() for c in cells):
            continue
        for c in cells:
            _check_text(c, source, line_no, "a cell" if header is None else "a value")
        if header is None:
            header = [h.strip() for h in cells]
            raw = lines[line_no - 1] if line_no <= len(lines) else ""
            _csv_header(header, raw, source, line_no, kind)
            continue
        if len(cells) > len(header):
            raise ImportValidationError(
                source, line_no, f"{len(cells)} cells but the header names {len(header)} columns"
            )
        values = {h: c.strip() for h, c in zip(header, cells, strict=False) if h and c.strip()}
        yield Row(line_no, values)


def decode(data: bytes, source: str) -> str:
    """UTF-8 text, a UTF-8 byte-order mark dropped; anything else refused with its name."""
    for bom, name in _FOREIGN_BOMS:
        if data.startswith(bom):
            raise InputError(
                f"{source} is {name} text; calsync reads UTF-8", hint="Save it as UTF-8"
            )
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        raise ImportValidationError(
            source,
            line,
            f"not UTF-8 text (byte 0x{byte:02x}; Latin-1 or Windows-1252?)",
            hint="Convert it to UTF-8 (e.g. with iconv -f latin1 -t utf-8)",
        ) from None


def parse_text(text: str, source: str, fmt: Format, kind: str | None = None) -> list[Row]:
    text = text.removeprefix("\ufeff")
    if fmt == "jsonl":
        return list(_read_jsonl(text, source))
    return list(_read_csv(text, source, kind))


def read_rows(stream: IO[str], source: str, fmt: Format, kind: str | None = None) -> list[Row]:
    try:
        text = stream.read()
    except UnicodeDecodeError:
        raise InputError(f"{source} is not UTF-8 text", hint="Save the file as UTF-8") from None
    return parse_text(text, source, fmt, kind)


def read_source(path: str, stdin: IO[Any] | None = None) -> str:
    """The text of FILE or ``-`` (standard input), decoded as ``decode`` says."""
    source = "<stdin>" if path == "-" else path
    if path == "-":
        import sys

        stream = stdin if stdin is not None else sys.stdin
        buffer = getattr(stream, "buffer", None)
        data = buffer.read() if buffer is not None else stream.read()
        return data if isinstance(data, str) else decode(data, source)
    try:
        return decode(Path(path).read_bytes(), source)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file", hint="Check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory", hint="Name a .jsonl or .csv file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


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


#: the years an imported time may fall in, in its own offset and in UTC: every date calsync
#: and the calendars handle, far from datetime's limits (year 1 at +06:00 is year 0 in UTC)
MIN_YEAR, MAX_YEAR = 1900, 2200


def within_years(value: datetime) -> bool:
    """True when ``value`` (aware) falls in ``MIN_YEAR``-``MAX_YEAR`` in its own offset and in
    UTC: the one bound on every instant calsync takes in (imports, ``visits list --from``)."""
    try:
        in_utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        return False
    return all(MIN_YEAR <= v.year <= MAX_YEAR for v in (value, in_utc))


def parse_instant(text: str, source: str, line: int, name: str) -> datetime:
    """The one place that decides which instants import accepts: ISO 8601 with an offset,
    within the years ``MIN_YEAR``-``MAX_YEAR``."""
    shown = repr(text if len(text) <= 40 else text[:40] + "...")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ImportValidationError(
            source,
            line,
            f"{name} {shown} is not an ISO 8601 time",
            hint="Use a time with an offset, e.g. 2026-12-01T09:00:00-06:00",
        ) from None
    if value.tzinfo is None:
        raise ImportValidationError(
            source,
            line,
            f"{name} {shown} has no UTC offset",
            hint="Add the offset, e.g. 2026-12-01T09:00:00-06:00",
        )
    if not within_years(value):
        raise ImportValidationError(
            source,
            line,
            f"{name} {shown} is outside the years {MIN_YEAR}-{MAX_YEAR}",
            hint="Check the date",
        )
    return value


#: names ZoneInfo opens that are not places: the host's own setting, tzdata's placeholder
_NOT_PLACES = frozenset({"localtime", "Factory", "posixrules"})


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_PLACES


def check_timezone(name: str) -> ZoneInfo:
    """An IANA time zone name, as tzdata lists it: not ``localtime`` (whatever the host is set
    to), ``Factory`` or a file path."""
    if name not in _zone_names():
        raise InputError(
            f"unknown time zone {name!r}", hint="Use an IANA name such as America/Chicago"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
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
    return store_records.existing(session, model, columns, ids)


# --------------------------------------------------------------------------- writing


def import_file(
    store: Store,
    kind: Kind,
    path: str,
    *,
    fmt: str | None = None,
    now: datetime,
    progress: Progress | None = None,
    stdin: IO[Any] | None = None,
) -> ImportResult:
    """Validate and import one file. All or nothing; a file with no rows is refused."""
    source = "<stdin>" if path == "-" else path
    text = read_source(path, stdin).removeprefix("\ufeff")
    if not text.strip():
        raise InputError(
            f"{source} is empty: no rows to import",
            hint="Check the export that produced it",
        )
    rows = parse_text(text, source, detect_format(path, text[:64], fmt), kind)
    if not rows:
        raise InputError(
            f"{source} has a header but no rows: nothing to import",
            hint="Check the export that produced it",
        )
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
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with store.write() as session:
                if kind == "visits":
                    _write_visits(session, rows, records, source, now, result, progress)
                else:
                    _write_simple(session, kind, records, now, result)
            return result
        except sa.exc.IntegrityError:
            # PostgreSQL: another import inserted some of the same new ids after this one
            # looked (SQLite serialises writers, so it never gets here). The transaction rolled
            # back; run it again, and it sees them as existing.
            if attempt == WRITE_ATTEMPTS:
                raise StoreError(
                    f"{source}: other imports kept writing the same ids; nothing was written",
                    hint="Run the import again",
                ) from None
    raise AssertionError("unreachable")


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
    store_records.insert(session, model, new)
    store_records.update(session, model, changed)
    if kind == "practices" and changed:
        # Practice name and location are in every event: re-render its upcoming visits.
        ids = [r["id"] for r in changed]
        visits = store_visits.upcoming_facts(session, now, practices=ids)
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
        store_records.insert(session, Visit, chunk)
        written += len(chunk)
        if progress:
            progress("writing", written, total)
    for chunk in jobs._chunks(changed, 5000):
        store_records.update(session, Visit, chunk)
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
