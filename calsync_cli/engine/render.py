"""Render a visit into the event one integration's filters allow.

Title ``[Practice Name] - Patient Name - Visit Type``, each part only with its filter on
(``Visit`` when none is). A filter that is off removes its part everywhere: title, description
and location. The notes filter (off by default) adds the visit reason to the description.
The private filter (on by default) marks the event private; the reminders filter (None: the app's
default) decides its reminders. Both are in the content hash, so changing them re-renders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from calsync_cli.providers.base import EventData
from calsync_cli.store.models import Integration, Practice, Visit


@dataclass(frozen=True)
class Rendered:
    event: EventData
    #: hash of everything the provider receives, plus the calendar: unchanged means no API call
    content_hash: str
    #: the visit fields the event discloses (for the audit trail; names, never values)
    fields: tuple[str, ...]


def format_name(name: str, style: str) -> str:
    """``full``: Jane Doe; ``short``: Jane D.; ``initials``: J.D."""
    parts = name.split()
    if style == "short" and len(parts) > 1:
        return f"{parts[0]} {parts[-1][0]}."
    if style == "initials":
        return "".join(f"{p[0]}." for p in parts)
    return " ".join(parts)


def event_key(integration_id: int, visit_id: str, generation: int) -> str:
    """Deterministic per (integration, visit, generation); PHI-free (ids only)."""
    return f"calsync:{integration_id}:{visit_id}:{generation}"


def event_tag(integration_id: int, visit_id: str) -> str:
    """Marks an event as calsync's own without any patient data."""
    digest = hashlib.sha256(f"{integration_id}:{visit_id}".encode()).hexdigest()[:24]
    return f"calsync-{integration_id}-{digest}"


def render(
    visit: Visit,
    practice: Practice,
    integ: Integration,
    *,
    generation: int = 0,
    visit_link: str | None = None,
) -> Rendered:
    assert integ.id is not None
    fields = ["start", "end"]
    title: list[str] = []
    lines: list[str] = []
    if integ.f_practice_name:
        title.append(f"[{practice.name}]")
        lines.append(f"Practice: {practice.name}")
        fields.append("practice_name")
    if integ.f_patient_name:
        name = format_name(visit.patient_name, integ.f_patient_name_format)
        title.append(name)
        lines.append(f"Patient: {name}")
        fields.append("patient_name")
    if integ.f_visit_type and visit.visit_type:
        title.append(visit.visit_type)
        lines.append(f"Visit type: {visit.visit_type}")
        fields.append("visit_type")
    location: str | None = None
    if integ.f_location:
        location = ", ".join(p for p in (practice.location, visit.room) if p) or None
        if location:
            lines.append(f"Location: {location}")
            fields.append("location")
    if visit_link:
        lines.append(f"Visit: {visit_link}")
        fields.append("visit_link")
    if integ.f_notes and visit.reason:
        lines.append(f"Reason: {visit.reason}")
        fields.append("reason")
    zone = ZoneInfo(practice.timezone)
    event = EventData(
        key=event_key(integ.id, visit.id, generation),
        title=" - ".join(title) or "Visit",
        description="\n".join(lines),
        location=location,
        start=visit.start.astimezone(zone),
        end=visit.end.astimezone(zone),
        timezone=practice.timezone,
        tag=event_tag(integ.id, visit.id),
        private=integ.f_private,
        reminders=integ.f_reminders,
    )
    blob = json.dumps(
        [
            event.title,
            event.description,
            event.location,
            event.start.isoformat(),
            event.end.isoformat(),
            event.timezone,
            integ.calendar_id,
            event.private,
            event.reminders,
        ]
    )
    return Rendered(
        event, hashlib.blake2b(blob.encode(), digest_size=16).hexdigest(), tuple(fields)
    )
