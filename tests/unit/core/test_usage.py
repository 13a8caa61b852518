from __future__ import annotations

from typing import Any

import pytest

from agentledger.core.usage import Usage, from_openai, reported_cost


def test_plain_chat_completion_usage() -> None:
    assert from_openai({"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}) == Usage(
        input_tokens=12, output_tokens=34
    )


def test_cached_and_reasoning_details_stay_inside_the_totals() -> None:
    payload = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 256,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    usage = from_openai(payload)
    assert usage == Usage(input_tokens=2006, cached_input_tokens=1920, output_tokens=300, reasoning_tokens=256)
    assert usage is not None and usage.total_tokens == 2306


def test_cache_write_tokens_reported_by_openai_compatible_providers() -> None:
    payload = {"prompt_tokens": 500, "completion_tokens": 1, "prompt_tokens_details": {"cache_write_tokens": 400}}
    assert from_openai(payload) == Usage(input_tokens=500, cache_write_tokens=400, output_tokens=1)


@pytest.mark.parametrize("payload", [None, [], "usage", 3])
def test_no_usage(payload: Any) -> None:
    assert from_openai(payload) is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"prompt_tokens": None, "completion_tokens": None},
        {"prompt_tokens": "12", "completion_tokens": [1]},
        {"prompt_tokens": True, "completion_tokens": False},
        {"prompt_tokens": -5, "completion_tokens": -1},
        {"prompt_tokens": float("-inf"), "completion_tokens": -0.5},  # (an OverflowError before: found by a fuzz)
        {"prompt_tokens_details": None, "completion_tokens_details": None},
        {"prompt_tokens_details": "x", "completion_tokens_details": [1, 2]},
        {"prompt_tokens_details": {"cached_tokens": "7"}, "completion_tokens_details": {"reasoning_tokens": None}},
    ],
)
def test_malformed_counts_become_zero(payload: dict[str, Any]) -> None:
    assert from_openai(payload) == Usage()


def test_float_counts_are_truncated_to_integers() -> None:
    assert from_openai({"prompt_tokens": 10.0, "completion_tokens": 2.9}) == Usage(input_tokens=10, output_tokens=2)


def test_usage_adds_up_field_by_field() -> None:
    a = Usage(1, 2, 3, 4, 5)
    b = Usage(10, 20, 30, 40, 50)
    assert a + b == Usage(11, 22, 33, 44, 55)
    assert (a + b).total_tokens == 11 + 44
    assert Usage() + Usage() == Usage()


@pytest.mark.parametrize(
    ("cost", "expected"),
    [(0.000123, "0.000123"), ("0.0125", "0.0125"), (0, "0"), (2, "2"), ("1E-7", "1E-7"), (1e-05, "1e-05")],
)
def test_reported_cost_is_an_exact_decimal_string(cost: Any, expected: str) -> None:
    assert reported_cost({"prompt_tokens": 1, "cost": cost}) == expected


@pytest.mark.parametrize("cost", [None, True, False, [], {}, "n/a", "", "NaN", "Infinity", "-0.5", -1, float("nan")])
def test_a_missing_or_unusable_reported_cost_is_none(cost: Any) -> None:
    assert reported_cost({"cost": cost}) is None


@pytest.mark.parametrize("usage", [None, [], "cost"])
def test_reported_cost_without_usage(usage: Any) -> None:
    assert reported_cost(usage) is None
