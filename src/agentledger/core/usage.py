"""One normalized usage model for every provider.

`input_tokens` includes cached reads and cache writes; `output_tokens` includes reasoning. The breakdown
fields say how much of each total was special, so a price can charge each part at its own rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def from_openai(usage: Mapping[str, Any] | None) -> Usage | None:
    """OpenAI chat/completions `usage` → Usage. Cached and reasoning counts are already inside the totals."""
    if not isinstance(usage, Mapping):
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        cached_input_tokens=_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, Mapping) else 0,
        cache_write_tokens=_int(prompt_details.get("cache_write_tokens")) if isinstance(prompt_details, Mapping) else 0,
        output_tokens=_int(usage.get("completion_tokens")),
        reasoning_tokens=(
            _int(completion_details.get("reasoning_tokens")) if isinstance(completion_details, Mapping) else 0
        ),
    )


def reported_cost(usage: Mapping[str, Any] | None) -> str | None:
    """A provider-reported cost in dollars (OpenRouter puts `cost` in `usage`), as an exact decimal string."""
    if not isinstance(usage, Mapping):
        return None
    cost = usage.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int | float | str):
        return None
    try:
        value = Decimal(str(cost))
    except InvalidOperation:
        return None
    # Garbage ("n/a", NaN, a negative charge) is no reported cost: the caller prices the usage instead.
    return str(cost) if value.is_finite() and value >= 0 else None
