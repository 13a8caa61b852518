"""Timestamps as the API accepts them: ISO 8601, stored and compared as aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime

# Both stores hold this range (PostgreSQL far more, SQLite whatever Python's datetime can write); before 1970
# no agent ran, and a year-1 value is a client bug, not history.
MIN_UTC = datetime(1970, 1, 1, tzinfo=UTC)
MAX_UTC = datetime.max.replace(tzinfo=UTC)
TIMESTAMP_HELP = "an ISO 8601 timestamp from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"


def parse_utc(text: str) -> datetime:
    """ISO 8601 → aware UTC; a timestamp without an offset is taken as UTC. Raises ValueError.

    `0001-01-01T00:00:00+01:00` parses but has no UTC equivalent (Python raises OverflowError converting
    it): that, and anything outside MIN_UTC..MAX_UTC, is a ValueError like any other bad timestamp.
    """
    value = datetime.fromisoformat(text)
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range in UTC") from None
    if not MIN_UTC <= value <= MAX_UTC:
        raise ValueError(f"{text!r} is out of range")
    return value
