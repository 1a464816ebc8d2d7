"""Plumbing shared by the sandbox's fake services: requests, responses, time helpers."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from html import escape
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tzlocal.windows_tz import win_tz

JSON = dict[str, Any]

REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class DropConnection(Exception):
    """Raised by a handler to close the connection without writing any response."""


@dataclass
class Request:
    """One HTTP request, as parsed off the wire or out of a batch."""

    method: str
    raw_path: str  # the path without the query string, still percent-encoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    @classmethod
    def from_target(cls, method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
        path, _, qs = target.partition("?")
        return cls(
            method=method.upper(),
            raw_path=path,
            query=parse_qs(qs, keep_blank_values=True),
            headers={k.lower(): v for k, v in headers.items()},
            body=body,
        )

    def segments(self) -> list[str]:
        """Path segments, each percent-decoded (so an encoded ``/`` stays inside its segment)."""
        return [unquote(s) for s in self.raw_path.split("/") if s != ""]

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def form(self) -> dict[str, str]:
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def json(self) -> Any:
        if not self.body.strip():
            return None
        return json.loads(self.body.decode("utf-8"))

    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(payload).encode("utf-8")
    hdrs = [("Content-Type", "application/json; charset=UTF-8")]
    hdrs.extend(headers or [])
    return Response(status, body, hdrs)


def empty_response(status: int, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, b"", list(headers or []))


def html_response(status: int, title: str, body_html: str) -> Response:
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title></head><body>{body_html}</body></html>"
    )
    return Response(status, page.encode("utf-8"), [("Content-Type", "text/html; charset=utf-8")])


def error_page(status: int, title: str, detail: str) -> Response:
    return html_response(status, title, f"<h1>{escape(title)}</h1><p>{escape(detail)}</p>")


def redirect(location: str) -> Response:
    return Response(302, b"", [("Location", location)])


def prefers(req: Request) -> dict[str, str]:
    """The request's ``Prefer`` preferences (RFC 7240): name (lower case) -> value, unquoted.
    Several may come in one header, comma-separated."""
    out: dict[str, str] = {}
    for piece in req.headers.get("prefer", "").split(","):
        name, _, value = piece.strip().partition("=")
        if name.strip():
            out[name.strip().lower()] = value.strip().strip('"')
    return out


def with_query(base: str, params: dict[str, str]) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}{urlencode(params)}"


def s256(verifier: str) -> str:
    import hashlib

    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339_ms(value: datetime) -> str:
    """Google's style: ``2026-01-02T03:04:05.678Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def graph_stamp(value: datetime) -> str:
    """Graph's style: ``2026-01-02T03:04:05.6789012Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}0Z"


# Windows zone names -> IANA, CLDR's windowsZones "001" (territory-neutral) mapping as tzlocal
# ships it (unicode-org/cldr common/supplemental/windowsZones.xml).
WINDOWS_ZONES: dict[str, str] = dict(win_tz)

# The IANA names Graph's ``dateTimeTimeZone.timeZone`` takes beside Windows names: the list under
# "Additional time zones" of the dateTimeTimeZone resource type (Microsoft Graph v1.0 reference,
# learn.microsoft.com/graph/api/resources/datetimetimezone). Anything else answers 400
# ``TimeZoneNotSupportedException``. The reference names "Europe/Kyiv (Kiev)", "Asia/Toshkent
# (Tashkent)", "Asia/Astana (Almaty)" and "Asia/Yangon (Rangoon)"; both spellings are kept.
GRAPH_IANA_ZONES: frozenset[str] = frozenset(
    [
        "Etc/GMT+12",
        "Etc/GMT+11",
        "Pacific/Honolulu",
        "America/Anchorage",
        "America/Santa_Isabel",
        "America/Los_Angeles",
        "America/Phoenix",
        "America/Chihuahua",
        "America/Denver",
        "America/Guatemala",
        "America/Chicago",
        "America/Mexico_City",
        "America/Regina",
        "America/Bogota",
        "America/New_York",
        "America/Indiana/Indianapolis",
        "America/Caracas",
        "America/Asuncion",
        "America/Halifax",
        "America/Cuiaba",
        "America/La_Paz",
        "America/Santiago",
        "America/St_Johns",
        "America/Sao_Paulo",
        "America/Argentina/Buenos_Aires",
        "America/Cayenne",
        "America/Godthab",
        "America/Montevideo",
        "America/Bahia",
        "Etc/GMT+2",
        "Atlantic/Azores",
        "Atlantic/Cape_Verde",
        "Africa/Casablanca",
        "Etc/GMT",
        "Europe/London",
        "Atlantic/Reykjavik",
        "Europe/Berlin",
        "Europe/Budapest",
        "Europe/Paris",
        "Europe/Warsaw",
        "Africa/Lagos",
        "Africa/Windhoek",
        "Europe/Bucharest",
        "Asia/Beirut",
        "Africa/Cairo",
        "Asia/Damascus",
        "Africa/Johannesburg",
        "Europe/Kyiv",
        "Europe/Kiev",
        "Europe/Istanbul",
        "Asia/Jerusalem",
        "Asia/Amman",
        "Asia/Baghdad",
        "Europe/Kaliningrad",
        "Asia/Riyadh",
        "Africa/Nairobi",
        "Asia/Tehran",
        "Asia/Dubai",
        "Asia/Baku",
        "Europe/Moscow",
        "Indian/Mauritius",
        "Asia/Tbilisi",
        "Asia/Yerevan",
        "Asia/Kabul",
        "Asia/Karachi",
        "Asia/Toshkent",
        "Asia/Tashkent",
        "Asia/Kolkata",
        "Asia/Colombo",
        "Asia/Kathmandu",
        "Asia/Astana",
        "Asia/Almaty",
        "Asia/Dhaka",
        "Asia/Yekaterinburg",
        "Asia/Yangon",
        "Asia/Rangoon",
        "Asia/Bangkok",
        "Asia/Novosibirsk",
        "Asia/Shanghai",
        "Asia/Krasnoyarsk",
        "Asia/Singapore",
        "Australia/Perth",
        "Asia/Taipei",
        "Asia/Ulaanbaatar",
        "Asia/Irkutsk",
        "Asia/Tokyo",
        "Asia/Seoul",
        "Australia/Adelaide",
        "Australia/Darwin",
        "Australia/Brisbane",
        "Australia/Sydney",
        "Pacific/Port_Moresby",
        "Australia/Hobart",
        "Asia/Yakutsk",
        "Pacific/Guadalcanal",
        "Asia/Vladivostok",
        "Pacific/Auckland",
        "Etc/GMT-12",
        "Pacific/Fiji",
        "Asia/Magadan",
        "Pacific/Tongatapu",
        "Pacific/Apia",
        "Pacific/Kiritimati",
    ]
)


def graph_zone(name: str) -> tzinfo | None:
    """A ``timeZone`` Graph accepts on create/update (a Windows name, or one of its few IANA
    names), as a tzinfo; None for anything Graph refuses."""
    if name in WINDOWS_ZONES or name in GRAPH_IANA_ZONES:
        return zone(name)
    return None


def zone(name: str) -> tzinfo | None:
    """An IANA or (Graph) Windows zone name, or None when unknown."""
    if not name:
        return None
    if name in WINDOWS_ZONES:
        name = WINDOWS_ZONES[name]
    if name.upper() == "UTC" or name == "Z":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def parse_instant(text: str, tz_name: str | None = None) -> datetime | None:
    """Parse an ISO 8601 date-time. A naive one is read in ``tz_name`` (None when that fails)."""
    text = text.strip()
    if not text:
        return None
    # Graph writes seven fractional digits; Python reads at most six.
    date_part, dot, rest = text.partition(".")
    if dot:
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        text = f"{date_part}.{(digits + '000000')[:6]}{rest[i:]}"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        if tz_name is None:
            return None
        tz = zone(tz_name)
        if tz is None:
            return None
        value = value.replace(tzinfo=tz)
    return value


def day_start(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip() + "T00:00:00+00:00")
    except ValueError:
        return None


def overlaps(start: datetime, end: datetime, lo: datetime | None, hi: datetime | None) -> bool:
    if lo is not None and end <= lo:
        return False
    return not (hi is not None and start >= hi)


def merge_busy(
    blocks: list[tuple[datetime, datetime]], lo: datetime, hi: datetime
) -> list[tuple[datetime, datetime]]:
    clipped = sorted((max(s, lo), min(e, hi)) for s, e in blocks if e > lo and s < hi)
    merged: list[tuple[datetime, datetime]] = []
    for s, e in clipped:
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged
