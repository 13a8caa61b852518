"""Money is integer nano-dollars (1e-9 USD): exact sums in SQL (BIGINT) and Python alike, never float.

Why nano and not micro: a 10-token prompt to a $0.15/MTok model costs 1.5 micro-dollars, so micro-units
would round every cheap request. Every published per-token price with up to three decimals per MTok is an
exact integer number of nano-dollars, and BIGINT still holds 9.2 billion dollars.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from agentledger.core.bounds import MAX_EVENT_COST_USD

NANOS_PER_DOLLAR = 1_000_000_000
MAX_EVENT_COST_NANOS = int(MAX_EVENT_COST_USD) * NANOS_PER_DOLLAR


def to_nanos(dollars: Decimal | int | str) -> int:
    """Dollars → nano-dollars, rounded half-even (banker's rounding keeps large sums unbiased)."""
    return int((Decimal(dollars) * NANOS_PER_DOLLAR).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def event_cost_nanos(dollars: Decimal | int | float | str) -> tuple[int, bool]:
    """One event's cost → (nano-dollars, clamped): at most MAX_EVENT_COST_NANOS, flagged when cut down.

    Decides the bound before any arithmetic: `to_nanos("1e30")` would exceed Decimal's 28-digit precision.
    Raises ValueError for what is not a finite, non-negative number.
    """
    try:
        value = Decimal(str(dollars))
    except InvalidOperation:
        raise ValueError(f"{dollars!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{dollars!r} is not a finite, non-negative number")
    if value > MAX_EVENT_COST_USD:
        return MAX_EVENT_COST_NANOS, True
    return to_nanos(value), False


def to_dollars(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_DOLLAR


def format_usd(nanos: int) -> str:
    """Render nano-dollars as an exact decimal string, e.g. 435000 → '0.000435000'. (The digits cut in two, not
    divided: a third faster, and every answer's cost header and every budget view makes some.)"""
    if nanos < 0:
        return "-" + format_usd(-nanos)
    digits = str(nanos).rjust(10, "0")
    return digits[:-9] + "." + digits[-9:]
