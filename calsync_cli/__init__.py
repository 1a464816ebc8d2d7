"""calsync: push a practice's visit schedule to each clinician's Google or Outlook calendar."""

__version__ = "0.1.0"
