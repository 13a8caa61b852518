"""Template filters: money, tokens, durations and times as the pages show them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from jinja2 import Undefined


def usd(value: Any) -> str:
    """An exact decimal string (the API's money) as dollars: cents from $1, four places from a cent, and the
    significant digits below that (a cheap call costs millionths, which two places would show as $0.00)."""
    if value is None or value == "":
        return "—"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount == 0:
        return "$0.00"
    if amount >= 1:
        return f"{sign}${amount:,.2f}"
    if amount >= Decimal("0.01"):
        return f"{sign}${amount:.4f}"
    text = format(amount.normalize(), "f")
    whole, _, frac = text.partition(".")
    significant = len(frac) - len(frac.lstrip("0")) + 3
    return f"{sign}${whole}.{frac[:significant].rstrip('0') or '0'}"


def number(value: Any) -> str:
    if value is None or isinstance(value, Undefined):
        return "—"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def duration(ms: Any) -> str:
    if ms is None:
        return "—"
    ms = float(ms)
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} m {int(ms % 60_000 // 1000)} s"


def when(value: Any) -> str:
    """A timestamp (datetime or ISO string) in UTC, to the second."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def pct(value: Any) -> str:
    if value is None:
        return "—"
    try:
        return f"{float(value):.1f}%"
    except (TypeError, ValueError):
        return str(value)


FILTERS = {"usd": usd, "number": number, "duration": duration, "when": when, "pct": pct}
