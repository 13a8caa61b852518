"""Price lookup: workspace overrides first, then the maintained `genai-prices` catalog.

genai-prices (pydantic/genai-prices) tracks provider price pages with dated history and tiers; we pin
its version so a cost recomputed later gives the same answer, and never call its network updater.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import genai_prices
from genai_prices import data_snapshot

from agentledger.core.money import to_nanos
from agentledger.core.pricing import Cost, CostSource, Price, cost, pick_price
from agentledger.core.usage import Usage

# Route providers that genai-prices does not know price by model name alone. In this order they are also tried
# for a provider it does not know (mock, azure, a self-hosted OpenAI-compatible server): genai-prices matches a
# bare name only to models whose provider it can infer from the name, which leaves out e.g. embeddings models.
_CATALOG_ORDER = ("openai", "anthropic", "google", "mistral", "deepseek", "x-ai", "groq", "openrouter")
_CATALOG_PROVIDERS = frozenset(_CATALOG_ORDER)


def _provider_id(provider: str) -> str | None:
    return provider if provider in _CATALOG_PROVIDERS else None


@lru_cache(maxsize=4096)
def _catalog_entry(model: str, provider: str) -> tuple[Any, Any] | None:
    """(provider, model) as genai-prices knows them, or None. Matching a name is cached; prices are not,
    because they depend on the request's timestamp."""
    provider_id = _provider_id(provider)
    snapshot = data_snapshot.get_snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for candidate in (provider_id,) if provider_id is not None else (None, *_CATALOG_ORDER):
            try:
                return snapshot.find_provider_model(model, None, candidate, None)
            except LookupError:
                continue
    return None


def catalog_knows(model: str, provider: str) -> bool:
    return _catalog_entry(model, provider) is not None


_FLAT_KEYS = {"input_mtok": "input_mtok", "output_mtok": "output_mtok", "cache_read_mtok": "cached_input_mtok"}
# Prices that cannot apply to a call the fast path takes: they charge usage we never report (searches)
# or cache writes, which always take genai-prices' own calculator. Anything else (per-request fees,
# characters, tiers) is not flat, and genai-prices computes it.
_INERT_KEYS = frozenset({"cache_write_mtok", "cache_write_1h_mtok", "web_searches_kcount", "storage_searches_kcount"})
_flat_prices: dict[int, tuple[Any, Price | None]] = {}


def _flat_price(model_price: Any) -> Price | None:
    """The catalog price as a core Price when it is flat per-token rates, else None.

    genai-prices' own calculator walks its unit registry on every call (~100 µs); for flat token rates
    `core.pricing.cost` gives the identical result (a test checks every catalog model) in a few µs.
    Entries are keyed by the catalog object, which lives as long as the pinned snapshot, and hold it so
    the id cannot be reused.
    """
    hit = _flat_prices.get(id(model_price))
    if hit is not None and hit[0] is model_price:
        return hit[1]
    values = {k: v for k, v in vars(model_price).items() if v is not None and not k.startswith("_")}
    flat = (
        "input_mtok" in values
        and "output_mtok" in values
        and all(isinstance(values[k], Decimal) for k in _FLAT_KEYS if k in values)
        and set(values) <= set(_FLAT_KEYS) | _INERT_KEYS
    )
    rates = {ours: values[theirs] for theirs, ours in _FLAT_KEYS.items() if theirs in values}
    price = Price(**rates, origin="genai-prices") if flat else None
    _flat_prices[id(model_price)] = (model_price, price)
    return price


def catalog_cost(usage: Usage, model: str, provider: str, at: datetime) -> Cost:
    entry = _catalog_entry(model, provider)
    if entry is None:
        raise LookupError(f"no catalog price for {model!r}")
    catalog_provider, catalog_model = entry
    special = usage.cache_write_tokens or usage.web_searches
    flat = None if special else _flat_price(catalog_model.get_prices(at))
    if flat is not None:
        return cost(usage, flat)
    # The breakdown within the input, as core.pricing.cost reads it: genai-prices raises (a 500 was the result)
    # when cache reads and writes together exceed the input they are part of.
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    extra: dict[str, int] = {}
    if usage.cache_write_1h_tokens:
        extra["cache_write_1h_tokens"] = min(usage.cache_write_1h_tokens, written)
    if usage.web_searches:
        extra["web_searches"] = usage.web_searches
    calc = catalog_model.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=cached,
            cache_write_tokens=written,
            output_tokens=usage.output_tokens,
            **extra,
        ),
        catalog_provider,
        genai_request_timestamp=at,
    )
    return Cost(to_nanos(calc.total_price), CostSource.COMPUTED)


def price_known(model: str, provider: str, overrides: dict[str, list[Price]]) -> bool:
    return model in overrides or catalog_knows(model, provider)


def price_usage(
    usage: Usage, model: str, provider: str, at: datetime, overrides: dict[str, list[Price]]
) -> Cost | None:
    """Cost of `usage`, or None when nothing prices this model at `at`."""
    price = pick_price(overrides.get(model, []), at)
    if price is not None:
        return cost(usage, price)
    if catalog_knows(model, provider):
        return catalog_cost(usage, model, provider, at)
    return None


def worst_rates(model: str, provider: str, at: datetime, overrides: dict[str, list[Price]]) -> tuple[int, int] | None:
    """(input, output) nano-dollars per million tokens at their dearest: an input token at the highest of the
    plain, cache-write and 1-hour cache-write rates, and a tier's rate at a million tokens (the upper tier).
    What a budget reservation multiplies its token bounds by (core.budgets.reservation_nanos)."""
    mtok = 1_000_000
    plain = price_usage(Usage(input_tokens=mtok), model, provider, at, overrides)
    written = price_usage(
        Usage(input_tokens=mtok, cache_write_tokens=mtok, cache_write_1h_tokens=mtok), model, provider, at, overrides
    )
    output = price_usage(Usage(output_tokens=mtok), model, provider, at, overrides)
    if plain is None or written is None or output is None:
        return None
    return max(plain.nanos, written.nanos), output.nanos
