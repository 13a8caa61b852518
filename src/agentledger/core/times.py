"""Timestamps as the API accepts them: ISO 8601, stored and compared as aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_utc(text: str) -> datetime:
    """ISO 8601 → aware UTC; a timestamp without an offset is taken as UTC. Raises ValueError."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
