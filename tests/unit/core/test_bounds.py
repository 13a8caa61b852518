"""The pure side of the input bounds: timestamps, money, provider usage, prices, JSON depth."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from agentledger.core.bounds import MAX_JSON_DEPTH, MAX_TOKENS, json_depth_exceeds
from agentledger.core.money import MAX_EVENT_COST_NANOS, event_cost_nanos
from agentledger.core.pricing import Cost, CostSource, Price, bounded, cost
from agentledger.core.times import parse_utc
from agentledger.core.usage import Usage, parse_openai


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+01:00",  # OverflowError converting to UTC before the fix
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "1970-01-01T00:59:59+01:00",
        "not a time",
    ],
)
def test_timestamps_outside_the_range_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_utc(text)


def test_timestamps_at_the_edges_of_the_range_parse() -> None:
    assert parse_utc("1970-01-01T01:00:00+01:00") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_utc("9999-12-31T23:59:59.999999") == datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("dollars", "expected"),
    [
        ("1000000", (10**15, False)),
        ("0.0000000015", (2, False)),
        ("1000000.000000001", (10**15, True)),
        ("1e10", (10**15, True)),
        ("9e999999999", (10**15, True)),  # past Decimal's precision: decided before any arithmetic
        (1e30, (10**15, True)),
        ("1e-999999999", (0, False)),
    ],
)
def test_event_costs_are_bounded_and_say_when_clamped(dollars: Any, expected: tuple[int, bool]) -> None:
    assert event_cost_nanos(dollars) == expected


@pytest.mark.parametrize("dollars", ["-0.01", "NaN", "Infinity", "-Infinity", "abc", ""])
def test_event_costs_that_are_not_numbers_are_value_errors(dollars: str) -> None:
    with pytest.raises(ValueError):
        event_cost_nanos(dollars)


@pytest.mark.parametrize(
    ("raw", "usage", "clamped"),
    [
        ({"prompt_tokens": 6, "completion_tokens": 9}, Usage(6, 0, 0, 9, 0), False),
        ({"prompt_tokens": 2**63, "completion_tokens": 9}, Usage(MAX_TOKENS, 0, 0, 9, 0), True),
        ({"prompt_tokens": float("inf"), "completion_tokens": 1.8e19}, Usage(MAX_TOKENS, 0, 0, MAX_TOKENS, 0), True),
        ({"prompt_tokens": float("nan"), "completion_tokens": -5}, Usage(0, 0, 0, 0, 0), False),
        (
            {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 2**70}, "completion_tokens": 1},
            Usage(10, MAX_TOKENS, 0, 1, 0),
            True,
        ),
        ({"prompt_tokens": MAX_TOKENS, "completion_tokens": MAX_TOKENS}, Usage(MAX_TOKENS, 0, 0, MAX_TOKENS, 0), False),
    ],
)
def test_provider_usage_is_clamped_to_the_bound(raw: dict[str, Any], usage: Usage, clamped: bool) -> None:
    assert parse_openai(raw) == (usage, clamped)


def test_a_cost_past_the_bound_is_clamped_not_an_error() -> None:
    dear = Price(Decimal("1e400"), Decimal("1e400"))  # an override stored before rates were bounded
    assert cost(Usage(input_tokens=1), dear) == Cost(MAX_EVENT_COST_NANOS, CostSource.CLAMPED)
    at_max = Price(Decimal(10_000), Decimal(10_000))
    assert cost(Usage(100, 0, 0, 0, 0), at_max) == Cost(1_000_000_000, CostSource.COMPUTED)


def test_bounded_flags_what_it_cuts_or_what_came_from_clamped_usage() -> None:
    assert bounded(Cost(5, CostSource.REPORTED)) == Cost(5, CostSource.REPORTED)
    assert bounded(Cost(5, CostSource.COMPUTED), clamped=True) == Cost(5, CostSource.CLAMPED)
    assert bounded(Cost(10**18, CostSource.REPORTED)) == Cost(MAX_EVENT_COST_NANOS, CostSource.CLAMPED)


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize(
    ("value", "limit", "exceeds"),
    [
        (1, 0, False),
        ([], 0, True),
        ([], 1, False),
        ([[]], 1, True),
        ({"a": [1, {"b": 2}]}, 3, False),
        ({"a": [1, {"b": 2}]}, 2, True),
        ([1, 2, [3, [4]], 5], 3, False),
        (nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH, False),
        (nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH, True),
        (nested(1000), MAX_JSON_DEPTH, True),
    ],
)
def test_json_depth(value: Any, limit: int, exceeds: bool) -> None:
    assert json_depth_exceeds(value, limit) is exceeds
