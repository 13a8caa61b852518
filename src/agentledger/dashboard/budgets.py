"""What the dashboard computes of a budget beyond the API's figures: its projected exhaustion (the Budgets view
and the Overview's budget bars both show it, from this one place)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any


def projected_exhaustion(status: dict[str, Any] | None, now: datetime) -> datetime | None:
    """When the window's budget runs out at the pace spent so far in it; None when it will not within the window
    (or nothing was spent yet, or the budget has no window)."""
    if not status or not status.get("window_start") or not status.get("window_end"):
        return None
    start = datetime.fromisoformat(status["window_start"])
    end = datetime.fromisoformat(status["window_end"])
    spent = Decimal(status["spent_usd"]) + Decimal(status["reserved_usd"])
    remaining = Decimal(status["remaining_usd"])
    elapsed = (now - start).total_seconds()
    if spent <= 0 or elapsed <= 0:
        return None
    if remaining <= 0:
        return now
    at = now.timestamp() + float(remaining / spent) * elapsed
    return datetime.fromtimestamp(at, UTC) if at < end.timestamp() else None


def with_exhaustion(budgets: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """/api/budgets rows, each with its `exhaustion` (projected_exhaustion of its status)."""
    for b in budgets:
        b["exhaustion"] = projected_exhaustion(b.get("status"), now)
    return budgets
