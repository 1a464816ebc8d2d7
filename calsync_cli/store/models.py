"""Tables. Times are stored as UTC and come back as aware UTC datetimes (``UTCDateTime``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 3

VISIT_STATUSES = ("scheduled", "confirmed", "checked_in", "completed", "no_show", "cancelled")
DIRECTIONS = ("push", "pull", "two-way")
#: an integration's state (``Integration.status``); changed only through ``store.states``
ACTIVE, PENDING, ERROR, DISCONNECTED = "Active", "Pending", "Error", "Disconnected"
NAME_FORMATS = ("full", "short", "initials")

#: job states; the first three are "live": at most one live job per (integration, visit)
JOB_QUEUED, JOB_RUNNING, JOB_HELD = "queued", "running", "held"
JOB_DONE, JOB_FAILED, JOB_DROPPED = "done", "failed", "dropped"
LIVE_JOB_STATES = (JOB_QUEUED, JOB_RUNNING, JOB_HELD)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as naive UTC, so SQLite and PostgreSQL compare alike."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def _utc_col(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Meta(SQLModel, table=True):
    """Key-value facts about the database itself, starting with the schema version."""

    __tablename__ = "calsync_meta"
    key: str = Field(primary_key=True)
    value: str


class Practice(SQLModel, table=True):
    __tablename__ = "practice"
    id: str = Field(primary_key=True)
    name: str
    location: str | None = None
    timezone: str
    content_hash: str
    updated_at: datetime = _utc_col(nullable=False)


class Provider(SQLModel, table=True):
    __tablename__ = "provider"
    id: str = Field(primary_key=True)
    name: str
    email: str | None = None
    content_hash: str
    updated_at: datetime = _utc_col(nullable=False)


class Visit(SQLModel, table=True):
    __tablename__ = "visit"
    __table_args__ = (
        sa.Index("ix_visit_provider_start", "provider_id", "start"),
        sa.Index("ix_visit_practice_start", "practice_id", "start"),
    )
    id: str = Field(primary_key=True)
    practice_id: str = Field(foreign_key="practice.id")
    provider_id: str = Field(foreign_key="provider.id")
    patient_name: str
    visit_type: str | None = None
    room: str | None = None
    start: datetime = _utc_col(nullable=False)
    end: datetime = _utc_col(nullable=False)
    status: str = "scheduled"
    reason: str | None = None
    content_hash: str
    created_at: datetime = _utc_col(nullable=False)
    #: when the visit's content last changed in the store (the sweep's look-back reads it)
    changed_at: datetime = _utc_col(nullable=False, index=True)


class Integration(SQLModel, table=True):
    __tablename__ = "integration"
    id: int | None = Field(default=None, primary_key=True)
    provider_id: str = Field(foreign_key="provider.id", index=True)
    app: str  # google | outlook
    account: str | None = None
    calendar_id: str | None = None
    calendar_name: str | None = None
    direction: str = "push"
    paused: bool = False
    status: str = "Pending"
    #: what the status means, for people only: never read to decide anything
    status_detail: str | None = None
    #: the grant is gone: jobs are held until someone signs in again (v3)
    needs_reauth: bool = False
    #: the calendar is gone or no longer writable: jobs are held until a calendar is chosen (v3)
    needs_calendar: bool = False
    #: which half failed while Error: "push" or "pull" (each clears only its own) (v3)
    error_source: str | None = None
    last_synced_at: datetime | None = _utc_col()
    created_at: datetime = _utc_col(nullable=False)
    #: changes from this instant on are the integration's to sync (connect, resume, reconnect)
    active_since: datetime = _utc_col(nullable=False)
    # privacy filters
    f_patient_name: bool = True
    f_patient_name_format: str = "full"
    f_visit_type: bool = True
    f_location: bool = True
    f_notes: bool = False
    f_practice_name: bool = True
    #: mark events private (Google visibility, Outlook sensitivity) (v3)
    f_private: bool = True
    #: reminders on synced events: None = the app's default (Outlook off, Google the calendar's
    #: default reminders), True = on, False = off (v3)
    f_reminders: bool | None = None
    #: bumped on every change that alters rendering (filters, calendar): links rendered under an
    #: older version are stale (v3)
    filter_version: int = 0
    # practice and provider filters: empty means all
    practice_filter: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    provider_filter: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    #: last pull (conflict read) and the provider's incremental sync cursor, if any
    pulled_at: datetime | None = _utc_col()


class EventLink(SQLModel, table=True):
    """Which external event shows a visit on an integration's calendar."""

    __tablename__ = "event_link"
    integration_id: int = Field(foreign_key="integration.id", primary_key=True)
    visit_id: str = Field(foreign_key="visit.id", primary_key=True)
    #: None once the event was deleted (the row stays to keep ``generation``)
    external_id: str | None = None
    calendar_id: str | None = None
    content_hash: str | None = None
    #: bumped after each delete so the next create gets a fresh idempotency key
    generation: int = 0
    synced_at: datetime | None = _utc_col()
    #: the inputs of the last render sent: the visit's content hash and the integration's
    #: filter version, so staleness is a question the database answers (v3)
    visit_hash: str | None = None
    filter_version: int | None = None


class Job(SQLModel, table=True):
    """Outbox: sync work for one visit on one integration."""

    __tablename__ = "job"
    __table_args__ = (
        sa.Index(
            "uq_job_live",
            "integration_id",
            "visit_id",
            unique=True,
            sqlite_where=sa.text("state IN ('queued', 'running', 'held')"),
            postgresql_where=sa.text("state IN ('queued', 'running', 'held')"),
        ),
        sa.Index("ix_job_due", "state", "next_attempt_at"),
        # status counts jobs per integration and state: a covering index scan (v2)
        sa.Index("ix_job_integration_state", "integration_id", "state"),
    )
    id: int | None = Field(default=None, primary_key=True)
    integration_id: int = Field(foreign_key="integration.id", index=True)
    visit_id: str = Field(foreign_key="visit.id")
    action: str  # upsert | delete (what the change asked for; the worker decides again)
    state: str = JOB_QUEUED
    attempts: int = 0
    next_attempt_at: datetime = _utc_col(nullable=False)
    lease_owner: str | None = None
    lease_until: datetime | None = _utc_col()
    #: set when the visit changed again while the job was running: run it once more
    dirty: bool = False
    last_error: str | None = None
    created_at: datetime = _utc_col(nullable=False)
    updated_at: datetime = _utc_col(nullable=False)


class AuditEntry(SQLModel, table=True):
    """What was disclosed where, and who changed what. Field names only, never values."""

    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _utc_col(nullable=False, index=True)
    actor: str
    action: str
    integration_id: int | None = Field(default=None, index=True)
    visit_id: str | None = None
    fields: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    detail: str | None = None


class SealedToken(SQLModel, table=True):
    """An integration's tokens sealed with authenticated encryption (``CALSYNC_TOKEN_STORE=
    database``); the key never enters the database, only its fingerprint (v3)."""

    __tablename__ = "sealed_token"
    integration_id: int = Field(primary_key=True)
    ciphertext: str
    key_fingerprint: str
    updated_at: datetime = _utc_col(nullable=False)
