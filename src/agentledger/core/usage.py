"""One normalized usage model for every provider.

`input_tokens` includes cached reads and cache writes; `output_tokens` includes reasoning. The breakdown
fields say how much of each total was special, so a price can charge each part at its own rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from agentledger.core.bounds import MAX_TOKENS
from agentledger.core.frozen import frozen


@frozen
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    # Priced, not kept as columns (they show on the call's step attributes): the part of `cache_write_tokens`
    # written to Anthropic's 1-hour cache (dearer than the 5-minute one), and server-side web searches.
    cache_write_1h_tokens: int = 0
    web_searches: int = 0

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
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            self.web_searches + other.web_searches,
        )


def _count(value: Any) -> tuple[int, bool]:
    """A provider's token count → (count, clamped). Garbage and negatives are 0; past MAX_TOKENS (2^63,
    infinity) is MAX_TOKENS and flagged, so the call is still recorded and the bound shows."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN != NaN
        return 0, False
    if value > MAX_TOKENS:
        return MAX_TOKENS, True
    return (int(value), False) if value > 0 else (0, False)  # (-infinity has no int)


def parse_openai(usage: Mapping[str, Any] | None) -> tuple[Usage, bool] | None:
    """OpenAI chat/completions `usage` → (Usage within core.bounds, whether any field had to be clamped).

    Cached and reasoning counts are already inside the totals.
    """
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    prompt = prompt if isinstance(prompt, Mapping) else {}
    completion = completion if isinstance(completion, Mapping) else {}
    counts = [
        _count(usage.get("prompt_tokens")),
        _count(prompt.get("cached_tokens")),
        _count(prompt.get("cache_write_tokens")),
        _count(usage.get("completion_tokens")),
        _count(completion.get("reasoning_tokens")),
    ]
    return Usage(*(n for n, _ in counts)), any(clamped for _, clamped in counts)


def parse_anthropic(usage: Mapping[str, Any] | None) -> tuple[Usage, bool] | None:
    """Anthropic Messages `usage` → (Usage, clamped).

    Anthropic counts `input_tokens` apart from the cache: the input the model read is input + cache reads +
    cache writes, so they are added into our `input_tokens` (which includes both, priced each at its rate).
    """
    if not isinstance(usage, Mapping):
        return None
    plain, c1 = _count(usage.get("input_tokens"))
    read, c2 = _count(usage.get("cache_read_input_tokens"))
    written, c3 = _count(usage.get("cache_creation_input_tokens"))
    output, c4 = _count(usage.get("output_tokens"))
    total_in = min(plain + read + written, MAX_TOKENS)
    creation = usage.get("cache_creation")
    hour, _ = _count(creation.get("ephemeral_1h_input_tokens")) if isinstance(creation, Mapping) else (0, False)
    tools = usage.get("server_tool_use")
    searches, _ = _count(tools.get("web_search_requests")) if isinstance(tools, Mapping) else (0, False)
    clamped = c1 or c2 or c3 or c4 or total_in < plain + read + written
    return Usage(total_in, read, written, output, 0, min(hour, written), searches), clamped


def parse_responses(usage: Mapping[str, Any] | None) -> tuple[Usage, bool] | None:
    """OpenAI Responses `usage` (also Embeddings', which has input tokens only) → (Usage, clamped)."""
    if not isinstance(usage, Mapping):
        return None
    inp = usage.get("input_tokens_details")
    out = usage.get("output_tokens_details")
    inp = inp if isinstance(inp, Mapping) else {}
    out = out if isinstance(out, Mapping) else {}
    counts = [
        _count(usage.get("input_tokens", usage.get("prompt_tokens"))),
        _count(inp.get("cached_tokens")),
        _count(inp.get("cache_write_tokens")),
        _count(usage.get("output_tokens")),
        _count(out.get("reasoning_tokens")),
    ]
    return Usage(*(n for n, _ in counts)), any(clamped for _, clamped in counts)


def merge_anthropic(held: dict[str, Any] | None, update: Mapping[str, Any]) -> dict[str, Any]:
    """A stream's usage so far: `message_start` carries the input counts, each `message_delta` the
    cumulative output (and, from newer API versions, cumulative input counts too): later counts win."""
    merged = dict(held or {})
    merged.update({k: v for k, v in update.items() if v is not None})
    return merged


def from_openai(usage: Mapping[str, Any] | None) -> Usage | None:
    parsed = parse_openai(usage)
    return parsed[0] if parsed is not None else None


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
