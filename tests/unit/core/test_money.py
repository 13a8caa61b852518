from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from agentledger.core.money import NANOS_PER_DOLLAR, format_usd, to_dollars, to_nanos


@pytest.mark.parametrize(
    ("dollars", "nanos"),
    [
        ("1", 1_000_000_000),
        ("0.000435", 435_000),
        ("0.000000001", 1),
        (Decimal("123456789.123456789"), 123_456_789_123_456_789),
        (7, 7_000_000_000),
        ("-0.25", -250_000_000),
    ],
)
def test_to_nanos_is_exact(dollars: Decimal | int | str, nanos: int) -> None:
    assert to_nanos(dollars) == nanos
    assert isinstance(to_nanos(dollars), int)


@pytest.mark.parametrize(
    ("dollars", "nanos"),
    [
        ("0.0000000005", 0),  # half to even: 0.5 → 0
        ("0.0000000015", 2),  # 1.5 → 2
        ("0.0000000025", 2),  # 2.5 → 2
        ("0.0000000035", 4),  # 3.5 → 4
        ("0.00000000051", 1),  # above half rounds up
        ("0.00000000049", 0),
        ("-0.0000000015", -2),
        ("-0.0000000025", -2),
    ],
)
def test_to_nanos_rounds_half_to_even(dollars: str, nanos: int) -> None:
    assert to_nanos(dollars) == nanos


def test_half_even_keeps_large_sums_unbiased() -> None:
    # A thousand charges of n + 0.5 nano-dollars: half-up would add 500 nanos in all, half-even adds nothing.
    halves = [to_nanos((Decimal(n) + Decimal("0.5")) / NANOS_PER_DOLLAR) for n in range(1000)]
    assert sum(halves) == sum(Decimal(n) + Decimal("0.5") for n in range(1000))


def test_to_dollars_round_trips() -> None:
    for nanos in (0, 1, 435_000, 2**62 + 1, -17):
        assert to_nanos(to_dollars(nanos)) == nanos
    assert to_dollars(1) == Decimal("1E-9")
    assert to_dollars(NANOS_PER_DOLLAR) == 1


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0.000000000"),
        (1, "0.000000001"),
        (435_000, "0.000435000"),
        (1_000_000_000, "1.000000000"),
        (12_345_678_901, "12.345678901"),
        (-1, "-0.000000001"),
        (-2_500_000_000, "-2.500000000"),
        (2**63 - 1, "9223372036.854775807"),
    ],
)
def test_format_usd_is_exact(nanos: int, text: str) -> None:
    assert format_usd(nanos) == text
    assert to_nanos(text) == nanos


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_format_usd_is_the_exact_decimal_of_any_amount(nanos: int) -> None:
    text = format_usd(nanos)
    whole, frac = text.lstrip("-").split(".")
    assert int(whole) * NANOS_PER_DOLLAR + int(frac) == abs(nanos) and len(frac) == 9
    assert whole == str(int(whole)) and text.startswith("-") == (nanos < 0)
