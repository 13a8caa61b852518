"""prices.catalog: workspace overrides first, then the genai-prices catalog; reported costs from usage."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from agentledger.core.money import to_nanos
from agentledger.core.pricing import Cost, CostSource, Price
from agentledger.core.usage import Usage, from_openai, reported_cost
from agentledger.prices.catalog import catalog_knows, price_known, price_usage

NOW = datetime(2025, 6, 1, tzinfo=UTC)
USAGE = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=500, reasoning_tokens=100)
HAIKU = Price(
    input_mtok=Decimal("0.8"),
    output_mtok=Decimal("4"),
    cached_input_mtok=Decimal("0.08"),
    cache_write_mtok=Decimal("1"),
)


def test_catalog_prices_gpt_4o_mini_with_cached_tokens() -> None:
    # genai-prices: $0.15 input, $0.075 cached input, $0.60 output per MTok.
    # 800 × 0.15 + 200 × 0.075 + 500 × 0.60 = 435 micro-dollars.
    assert price_usage(USAGE, "gpt-4o-mini", "openai", NOW, {}) == Cost(435_000, CostSource.COMPUTED)


def test_catalog_matches_by_model_name_for_providers_it_does_not_know() -> None:
    # A "mock" or self-hosted provider id is not passed to the catalog; the model name alone prices it.
    assert price_usage(USAGE, "gpt-4o-mini", "mock", NOW, {}) == Cost(435_000, CostSource.COMPUTED)


def test_catalog_charges_cache_writes() -> None:
    # claude-3-5-haiku: $0.80 input, $1 cache write, $4 output per MTok.
    usage = Usage(input_tokens=1000, cache_write_tokens=200, output_tokens=500)
    cost = price_usage(usage, "claude-3-5-haiku-latest", "anthropic", NOW, {})
    assert cost == Cost(800 * 800 + 200 * 1000 + 500 * 4000, CostSource.COMPUTED)


def test_cache_reads_and_writes_past_the_input_are_cut_to_it_as_our_own_prices_do() -> None:
    # A client's step may claim more cached and written tokens than its input (genai-prices raised: a 500).
    # Reads take the input first (1000 at $0.08 for claude-3-5-haiku), writes what is left: nothing here.
    usage = Usage(input_tokens=1000, cached_input_tokens=5000, cache_write_tokens=200, output_tokens=500)
    cost = price_usage(usage, "claude-3-5-haiku-latest", "anthropic", NOW, {})
    assert cost == Cost(1000 * 80 + 500 * 4000, CostSource.COMPUTED)
    flat = price_usage(usage, "claude-3-5-haiku-latest", "anthropic", NOW, {"claude-3-5-haiku-latest": [HAIKU]})
    assert flat == cost


def test_workspace_override_wins_over_the_catalog() -> None:
    overrides = {"gpt-4o-mini": [Price(Decimal("1"), Decimal("2"), cached_input_mtok=Decimal("0.5"))]}
    # 800 × 1 + 200 × 0.5 + 500 × 2 = 1900 micro-dollars.
    assert price_usage(USAGE, "gpt-4o-mini", "openai", NOW, overrides) == Cost(1_900_000, CostSource.COMPUTED)


def test_override_not_yet_in_force_falls_back_to_the_catalog() -> None:
    later = Price(Decimal("1"), Decimal("2"), effective_from=datetime(2030, 1, 1, tzinfo=UTC))
    assert price_usage(USAGE, "gpt-4o-mini", "openai", NOW, {"gpt-4o-mini": [later]}) == Cost(
        435_000, CostSource.COMPUTED
    )
    # No cached rate in the override: cached tokens are charged at its input rate, 1000 × 1 + 500 × 2.
    after = datetime(2030, 1, 2, tzinfo=UTC)
    assert price_usage(USAGE, "gpt-4o-mini", "openai", after, {"gpt-4o-mini": [later]}) == Cost(
        2_000_000, CostSource.COMPUTED
    )


def test_dated_overrides_pick_the_one_in_force() -> None:
    prices = [
        Price(Decimal("1"), Decimal("1"), effective_from=datetime(2025, 1, 1, tzinfo=UTC)),
        Price(Decimal("10"), Decimal("10"), effective_from=datetime(2025, 5, 1, tzinfo=UTC)),
    ]
    usage = Usage(input_tokens=100, output_tokens=100)
    assert price_usage(
        usage, "house-model", "openai", datetime(2025, 4, 30, tzinfo=UTC), {"house-model": prices}
    ) == Cost(200_000, CostSource.COMPUTED)
    assert price_usage(usage, "house-model", "openai", NOW, {"house-model": prices}) == Cost(
        2_000_000, CostSource.COMPUTED
    )


def test_unknown_model_has_no_price() -> None:
    assert price_usage(USAGE, "no-such-model-xyz", "openai", NOW, {}) is None
    assert price_usage(USAGE, "no-such-model-xyz", "mock", NOW, {}) is None
    assert not catalog_knows("no-such-model-xyz", "openai")
    assert not price_known("no-such-model-xyz", "openai", {})
    assert price_known("no-such-model-xyz", "openai", {"no-such-model-xyz": [Price(Decimal(1), Decimal(1))]})
    assert price_known("gpt-4o-mini", "openai", {})


def test_reported_cost_from_openrouter_style_usage() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cost": 0.0001234}
    assert reported_cost(usage) == "0.0001234"
    assert to_nanos(reported_cost(usage) or "0") == 123_400
    assert reported_cost({"cost": "0.5"}) == "0.5"
    assert to_nanos(reported_cost({"cost": 2}) or "0") == 2_000_000_000


def test_reported_cost_absent_or_malformed() -> None:
    assert reported_cost(None) is None
    assert reported_cost({"prompt_tokens": 10}) is None
    assert reported_cost({"cost": None}) is None
    assert reported_cost({"cost": True}) is None
    assert reported_cost({"cost": {"total": 1}}) is None


def test_from_openai_normalizes_cached_and_reasoning_tokens() -> None:
    usage = from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 200},
            "completion_tokens_details": {"reasoning_tokens": 100},
        }
    )
    assert usage == USAGE
    assert price_usage(usage, "gpt-4o-mini", "openai", NOW, {}) == Cost(435_000, CostSource.COMPUTED)


def test_flat_fast_path_matches_genai_prices_for_every_catalog_model() -> None:
    """The fast path must give genai-prices' own answer, to the nano-dollar, for every model it covers."""
    import genai_prices
    from genai_prices import data_snapshot

    from agentledger.prices import catalog

    at = datetime(2026, 1, 1, tzinfo=UTC)
    usage = Usage(input_tokens=123_457, cached_input_tokens=23_451, output_tokens=7_891, reasoning_tokens=1_000)
    checked = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            flat = catalog._flat_price(model.get_prices(at))
            if flat is None:
                continue
            expected = model.calc_price(
                genai_prices.Usage(input_tokens=123_457, cache_read_tokens=23_451, output_tokens=7_891),
                provider,
                genai_request_timestamp=at,
            ).total_price
            assert catalog.cost(usage, flat).nanos == to_nanos(expected), (provider.id, model.id)
            checked += 1
    assert checked > 1500
