"""core.pricing: exact cost arithmetic in nano-dollars, and which dated price is in force."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from agentledger.core.pricing import Cost, CostSource, Price, cost, pick_price
from agentledger.core.usage import Usage

MINI = Price(input_mtok=Decimal("0.15"), output_mtok=Decimal("0.60"), cached_input_mtok=Decimal("0.075"))


def test_plain_input_and_output() -> None:
    # 1000 × $0.15/MTok = $0.00015; 500 × $0.60/MTok = $0.0003 → 450 000 nano-dollars.
    assert cost(Usage(input_tokens=1000, output_tokens=500), MINI) == Cost(450_000, CostSource.COMPUTED)


def test_cached_tokens_are_part_of_input_and_charged_at_the_cached_rate() -> None:
    usage = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=500, reasoning_tokens=100)
    # 800 × 0.15 + 200 × 0.075 + 500 × 0.60 = 120 + 15 + 300 micro-dollars; reasoning is inside output.
    assert cost(usage, MINI).nanos == 435_000


def test_cache_write_rate() -> None:
    price = Price(
        input_mtok=Decimal("3"),
        output_mtok=Decimal("15"),
        cached_input_mtok=Decimal("0.30"),
        cache_write_mtok=Decimal("3.75"),
    )
    usage = Usage(input_tokens=1000, cached_input_tokens=200, cache_write_tokens=300, output_tokens=10)
    # 500 plain × 3 + 200 × 0.30 + 300 × 3.75 + 10 × 15 = 1500 + 60 + 1125 + 150 micro-dollars.
    assert cost(usage, price).nanos == 2_835_000


def test_missing_cache_rates_fall_back_to_the_input_rate() -> None:
    price = Price(input_mtok=Decimal("2"), output_mtok=Decimal("8"))
    usage = Usage(input_tokens=100, cached_input_tokens=40, cache_write_tokens=30, output_tokens=10)
    assert cost(usage, price).nanos == cost(Usage(input_tokens=100, output_tokens=10), price).nanos == 280_000


def test_breakdowns_larger_than_the_input_are_clamped() -> None:
    # A provider reporting more cached than total input tokens must not produce a negative plain count.
    usage = Usage(input_tokens=100, cached_input_tokens=150, cache_write_tokens=50, output_tokens=0)
    assert cost(usage, MINI).nanos == 100 * 75  # all 100 at the cached rate, none written


def test_sub_nano_amounts_round_half_even() -> None:
    price = Price(input_mtok=Decimal("0.0005"), output_mtok=Decimal("0"))  # half a nano-dollar a token
    assert cost(Usage(input_tokens=1), price).nanos == 0  # 0.5 → 0 (to even)
    assert cost(Usage(input_tokens=3), price).nanos == 2  # 1.5 → 2 (to even)
    assert cost(Usage(input_tokens=5), price).nanos == 2  # 2.5 → 2 (to even)
    assert cost(Usage(input_tokens=1000), price).nanos == 500


def test_zero_usage_costs_nothing() -> None:
    assert cost(Usage(), MINI) == Cost(0, CostSource.COMPUTED)


def _at(day: int) -> datetime:
    return datetime(2025, 3, day, tzinfo=UTC)


def test_pick_price_takes_the_latest_effective_not_after_the_call() -> None:
    always = Price(Decimal("1"), Decimal("1"))
    march5 = Price(Decimal("2"), Decimal("2"), effective_from=_at(5))
    march10 = Price(Decimal("3"), Decimal("3"), effective_from=_at(10))
    prices = [march10, always, march5]
    assert pick_price(prices, _at(1)) is always
    assert pick_price(prices, _at(5)) is march5  # effective_from is inclusive
    assert pick_price(prices, _at(9)) is march5
    assert pick_price(prices, _at(10)) is march10
    assert pick_price(prices, _at(31)) is march10


def test_pick_price_none_when_nothing_is_in_force() -> None:
    assert pick_price([], _at(1)) is None
    assert pick_price([Price(Decimal("1"), Decimal("1"), effective_from=_at(10))], _at(9)) is None


@pytest.mark.parametrize("source", list(CostSource))
def test_cost_sources_are_the_public_strings(source: CostSource) -> None:
    assert source.value in ("reported", "computed", "estimated", "clamped")
