"""Price lookup: workspace overrides first, then the maintained `genai-prices` catalog.

genai-prices (pydantic/genai-prices) tracks provider price pages with dated history and tiers; we pin
its version so a cost recomputed later gives the same answer, and never call its network updater.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from functools import lru_cache

import genai_prices

from agentledger.core.money import to_nanos
from agentledger.core.pricing import Cost, CostSource, Price, cost, pick_price
from agentledger.core.usage import Usage

# Route providers that genai-prices does not know price by model name alone.
_CATALOG_PROVIDERS = frozenset({"openai", "anthropic", "openrouter", "google", "groq", "mistral", "deepseek", "x-ai"})


def _provider_id(provider: str) -> str | None:
    return provider if provider in _CATALOG_PROVIDERS else None


@lru_cache(maxsize=4096)
def catalog_knows(model: str, provider: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            genai_prices.calc_price(genai_prices.Usage(input_tokens=0), model, provider_id=_provider_id(provider))
    except LookupError:
        return False
    return True


def catalog_cost(usage: Usage, model: str, provider: str, at: datetime) -> Cost:
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
        ),
        model,
        provider_id=_provider_id(provider),
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
