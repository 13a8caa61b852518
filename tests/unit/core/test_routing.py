from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agentledger.core.errors import InvalidHeader, InvalidRequest, UnknownModel
from agentledger.core.headers import FORCED_ROUTING
from agentledger.core.model import Fallback, ProviderRoute, RetryPolicy
from agentledger.core.route_config import (
    MAX_BACKOFF_MS,
    MAX_FALLBACKS,
    MAX_RETRY_ATTEMPTS,
    parse_fallbacks,
    parse_options,
    parse_retry,
)
from agentledger.core.routing import Hop, chain, choose_route, model_allowed, resolve


def route(route_id: str, *models: str, priority: int = 0) -> ProviderRoute:
    return ProviderRoute(
        id=route_id,
        workspace_id="ws",
        name=route_id,
        provider="openai",
        kind="openai",
        base_url=None,
        api_key=None,
        models=models,
        priority=priority,
    )


@pytest.mark.parametrize("model", ["gpt-4o", "anything", ""])
def test_an_empty_allow_list_allows_every_model(model: str) -> None:
    assert model_allowed(model, [])
    assert model_allowed(model, ())


@pytest.mark.parametrize(
    ("model", "patterns", "allowed"),
    [
        ("gpt-4o-mini", ["gpt-4o-mini"], True),
        ("gpt-4o-mini", ["gpt-4o"], False),  # exact names are exact, not prefixes
        ("gpt-4o-mini", ["gpt-*"], True),
        ("gpt-4o-mini", ["claude-*", "gpt-4o*"], True),
        ("o3-mini", ["o?-mini"], True),
        ("o3-mini", ["o[0-9]-mini"], True),
        ("o3-mini", ["o[!3]-mini"], False),
        ("GPT-4o", ["gpt-*"], False),  # case-sensitive: model names are ids
        ("openai/gpt-4o", ["openai/*"], True),
        ("openai/gpt-4o", ["*/gpt-4o"], True),
        ("gpt-4o", ["*"], True),
        ("gpt-4o", ["claude-*"], False),
    ],
)
def test_model_allowed_matches_globs(model: str, patterns: list[str], allowed: bool) -> None:
    assert model_allowed(model, patterns) is allowed


def test_the_first_matching_route_serves() -> None:
    routes = [route("special", "gpt-4o-mini", priority=10), route("openai", "gpt-*", "o3*"), route("fallback", "*")]
    assert choose_route("gpt-4o-mini", routes) == routes[0]
    assert choose_route("gpt-4o", routes) == routes[1]
    assert choose_route("o3-pro", routes) == routes[1]
    assert choose_route("claude-3-5-sonnet", routes) == routes[2]


def test_order_not_priority_decides_because_the_store_sorts() -> None:
    low_first = [route("low", "*", priority=-1), route("high", "*", priority=10)]
    chosen = choose_route("gpt-4o", low_first)
    assert chosen is not None and chosen.id == "low"


def test_no_route() -> None:
    assert choose_route("gpt-4o", []) is None
    assert choose_route("gpt-4o", [route("anthropic", "claude-*"), route("empty")]) is None
    assert choose_route("GPT-4O", [route("openai", "gpt-*")]) is None


# -- resolve: which key serves the model the client named ----------------------------------------------------------


def key(name: str, *models: str, fallbacks: tuple[Fallback, ...] = (), priority: int = 0) -> ProviderRoute:
    return replace(route(f"id-{name}", *models, priority=priority), name=name, fallbacks=fallbacks)


def test_the_route_table_serves_a_plain_model() -> None:
    routes = [key("special", "gpt-4o-mini"), key("openai", "gpt-*")]
    assert resolve("gpt-4o-mini", routes, None) == Hop(routes[0], "gpt-4o-mini")
    assert resolve("gpt-4o", routes, None) == Hop(routes[1], "gpt-4o")
    with pytest.raises(UnknownModel) as caught:
        resolve("claude-x", routes, None)
    assert (caught.value.status, caught.value.param) == (404, "model")


def test_a_prefix_naming_a_key_picks_it_and_strips_itself() -> None:
    routes = [key("openai", "gpt-*"), key("acme", "gpt-*", "openai/*")]
    assert resolve("acme/gpt-4o", routes, None) == Hop(routes[1], "gpt-4o")
    # Only the first segment names a key: the rest is the provider's model id, slashes and all.
    assert resolve("acme/openai/gpt-4o", routes, None) == Hop(routes[1], "openai/gpt-4o")
    assert resolve("acme/gpt-4o", routes, None).fallback is False


def test_a_prefix_naming_no_key_is_part_of_the_model_id() -> None:
    routes = [key("openai", "gpt-*"), key("router", "anthropic/*", "acme/")]
    assert resolve("anthropic/claude-x", routes, None) == Hop(routes[1], "anthropic/claude-x")
    # An empty prefix or an empty model names no key either.
    assert resolve("acme/", routes, None) == Hop(routes[1], "acme/")
    with pytest.raises(UnknownModel):
        resolve("/gpt-4o", routes, None)


def test_a_prefix_is_a_key_name_exactly() -> None:
    routes = [key("openai", "gpt-*", "acme/*"), key("Acme", "*")]
    assert resolve("acme/gpt-4o", routes, None) == Hop(routes[0], "acme/gpt-4o")
    assert resolve("Acme/gpt-4o", routes, None) == Hop(routes[1], "gpt-4o")


def test_a_key_named_by_prefix_must_serve_the_model() -> None:
    """Naming a key never widens what it serves, and a key that has the name wins over the route table."""
    routes = [key("anthropic", "claude-*"), key("router", "anthropic/*")]
    with pytest.raises(UnknownModel) as caught:
        resolve("anthropic/gpt-4o", routes, None)
    assert "'anthropic'" in caught.value.message and caught.value.param == "model"
    assert resolve("anthropic/claude-x", routes, None) == Hop(routes[0], "claude-x")


def test_forced_routing_picks_the_named_key() -> None:
    routes = [key("high", "*", priority=10), key("low", "gpt-*", "other/*", priority=-10)]
    assert resolve("gpt-4o", routes, "low") == Hop(routes[1], "gpt-4o")
    # Its own prefix is stripped; another key's prefix is part of the model id.
    assert resolve("low/gpt-4o", routes, "low") == Hop(routes[1], "gpt-4o")
    assert resolve("other/gpt-4o", routes, "low") == Hop(routes[1], "other/gpt-4o")
    with pytest.raises(UnknownModel):  # `high/...` is not a model `low` serves: the header decides, not the prefix
        resolve("high/gpt-4o", routes, "low")


def test_forcing_an_unknown_key_is_an_invalid_header() -> None:
    with pytest.raises(InvalidHeader) as caught:
        resolve("gpt-4o", [key("openai", "*")], "ghost")
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_header", FORCED_ROUTING)
    assert "'ghost'" in caught.value.message


def test_a_forced_key_must_serve_the_model() -> None:
    routes = [key("openai", "*"), key("embedder", "text-embedding-*")]
    with pytest.raises(UnknownModel) as caught:
        resolve("gpt-4o", routes, "embedder")
    assert "'embedder'" in caught.value.message and "'gpt-4o'" in caught.value.message


# -- chain: the primary, then its key's fallbacks ---------------------------------------------------------------


def test_a_key_without_fallbacks_is_its_own_chain() -> None:
    a = key("A", "*")
    primary = Hop(a, "gpt-4o")
    assert chain(primary, [a], []) == [primary]


def test_fallbacks_in_order_by_key_model_or_both() -> None:
    a = key("A", "gpt-*", fallbacks=(Fallback(key="B"), Fallback(model="gpt-4o"), Fallback("C", "claude-x")))
    b, c = key("B", "gpt-*"), key("C", "claude-*")
    hops = chain(Hop(a, "gpt-4o-mini"), [a, b, c], [])
    assert hops == [
        Hop(a, "gpt-4o-mini"),
        Hop(b, "gpt-4o-mini", fallback=True),
        Hop(a, "gpt-4o", fallback=True),
        Hop(c, "claude-x", fallback=True),
    ]


def test_fallbacks_that_name_no_key_or_that_the_key_does_not_serve_are_skipped() -> None:
    a = key(
        "A",
        "gpt-*",
        fallbacks=(Fallback(key="ghost"), Fallback(key="C"), Fallback(model="o3-mini"), Fallback(key="B")),
    )
    b, c = key("B", "gpt-*"), key("C", "claude-*")
    assert chain(Hop(a, "gpt-4o"), [a, b, c], []) == [Hop(a, "gpt-4o"), Hop(b, "gpt-4o", fallback=True)]


def test_duplicate_hops_are_tried_once() -> None:
    a = key("A", "gpt-*", fallbacks=(Fallback(key="A"), Fallback(model="gpt-4o"), Fallback(key="B"), Fallback("B")))
    b = key("B", "gpt-*")
    hops = chain(Hop(a, "gpt-4o"), [a, b], [])
    assert hops == [Hop(a, "gpt-4o"), Hop(b, "gpt-4o", fallback=True)]


def test_fallbacks_the_virtual_key_may_not_use_are_skipped() -> None:
    a = key("A", "gpt-*", fallbacks=(Fallback(model="gpt-4o"), Fallback(key="B"), Fallback("B", "gpt-4.1")))
    b = key("B", "gpt-*")
    primary = Hop(a, "gpt-4o-mini")
    assert chain(primary, [a, b], ["gpt-4o-mini"]) == [primary, Hop(b, "gpt-4o-mini", fallback=True)]
    # The allow-list may name a model as `key/model`, as the client could have.
    assert chain(primary, [a, b], ["gpt-4o-mini", "B/*"]) == [
        primary,
        Hop(b, "gpt-4o-mini", fallback=True),
        Hop(b, "gpt-4.1", fallback=True),
    ]
    assert chain(primary, [a, b], ["A/gpt-4o"]) == [primary, Hop(a, "gpt-4o", fallback=True)]
    assert chain(primary, [a, b], ["claude-*"]) == [primary]  # the primary itself is the caller's to check


def test_only_the_primary_keys_fallbacks_count() -> None:
    """A fallback's own fallbacks are not followed: the chain is one key's list, never a graph walk."""
    a = key("A", "gpt-*", fallbacks=(Fallback(key="B"),))
    b = key("B", "gpt-*", fallbacks=(Fallback(key="C"),))
    c = key("C", "gpt-*")
    assert chain(Hop(a, "gpt-4o"), [a, b, c], []) == [Hop(a, "gpt-4o"), Hop(b, "gpt-4o", fallback=True)]


# -- route_config: the provider-key settings the management API takes --------------------------------------------


def test_parse_fallbacks() -> None:
    assert parse_fallbacks(None) is None
    assert parse_fallbacks([]) == []
    assert parse_fallbacks(
        [
            {"key": " B "},
            {"model": "gpt-4o"},
            {
                "key": "C",
                "model": "x",
            },
        ]
    ) == [
        {"key": "B", "model": None},
        {"key": None, "model": "gpt-4o"},
        {"key": "C", "model": "x"},
    ]
    assert parse_fallbacks([{"key": "B", "model": None}]) == [{"key": "B", "model": None}]
    assert len(parse_fallbacks([{"key": f"k{i}"} for i in range(MAX_FALLBACKS)]) or []) == MAX_FALLBACKS


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("B", "fallbacks"),
        ({"key": "B"}, "fallbacks"),
        ([{"key": f"k{i}"} for i in range(MAX_FALLBACKS + 1)], "fallbacks"),
        (["B"], "fallbacks[0]"),
        ([{}], "fallbacks[0]"),
        ([{"key": "B"}, {"key": "C", "weight": 1}], "fallbacks[1]"),
        ([{"key": None, "model": None}], "fallbacks[0]"),
        ([{"key": ""}], "fallbacks[0].key"),
        ([{"key": " \t"}], "fallbacks[0].key"),
        ([{"key": 1}], "fallbacks[0].key"),
        ([{"key": "a\nb"}], "fallbacks[0].key"),
        ([{"model": "m" * 257}], "fallbacks[0].model"),
        ([{"key": "B", "model": False}], "fallbacks[0].model"),
    ],
)
def test_parse_fallbacks_refusals_name_the_field(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_fallbacks(value)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_parse_retry() -> None:
    assert parse_retry(None) is None
    assert parse_retry({}) == {"attempts": 1, "backoff_ms": 200, "max_backoff_ms": 10_000}
    assert parse_retry({"attempts": MAX_RETRY_ATTEMPTS, "backoff_ms": 0, "max_backoff_ms": MAX_BACKOFF_MS}) == {
        "attempts": MAX_RETRY_ATTEMPTS,
        "backoff_ms": 0,
        "max_backoff_ms": MAX_BACKOFF_MS,
    }
    # What the store keeps is what RetryPolicy takes.
    assert RetryPolicy(**(parse_retry({"attempts": 2}) or {})) == RetryPolicy(attempts=2)


@pytest.mark.parametrize(
    ("value", "param"),
    [
        (3, "retry"),
        ([], "retry"),
        ({"attempts": 2, "jitter": 1}, "retry"),
        ({"attempts": 0}, "retry.attempts"),
        ({"attempts": MAX_RETRY_ATTEMPTS + 1}, "retry.attempts"),
        ({"attempts": True}, "retry.attempts"),
        ({"attempts": 2.0}, "retry.attempts"),
        ({"attempts": None}, "retry.attempts"),
        ({"backoff_ms": -1}, "retry.backoff_ms"),
        ({"backoff_ms": MAX_BACKOFF_MS + 1}, "retry.backoff_ms"),
        ({"max_backoff_ms": "5"}, "retry.max_backoff_ms"),
    ],
)
def test_parse_retry_refusals_name_the_field(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_retry(value)
    assert caught.value.param == param


def test_parse_options() -> None:
    assert parse_options("openai", None) is None
    assert parse_options("openai", {}) == {}
    assert parse_options("anthropic", {"anthropic_version": " 2023-06-01 "}) == {"anthropic_version": "2023-06-01"}
    assert parse_options("azure", {"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-4o"}}) == {
        "api_version": "2024-10-21",
        "deployments": {"gpt-4o": "prod-4o"},
    }


@pytest.mark.parametrize(
    ("kind", "value", "param"),
    [
        ("openai", {"api_version": "x"}, "options"),
        ("mock", {"anthropic_version": "x"}, "options"),
        ("openai", "x", "options"),
        ("anthropic", {"api_version": "x"}, "options"),
        ("anthropic", {"anthropic_version": ""}, "options.anthropic_version"),
        ("anthropic", {"anthropic_version": "v" * 65}, "options.anthropic_version"),
        ("azure", {"api_version": 2024}, "options.api_version"),
        ("azure", {"deployments": ["gpt-4o"]}, "options"),
        ("azure", {"deployments": {f"m{i}": "d" for i in range(257)}}, "options"),
        ("azure", {"deployments": {"gpt-4o": ""}}, "options.deployments.gpt-4o"),
        ("azure", {"deployments": {"": "d"}}, "options.deployments"),
    ],
)
def test_parse_options_refusals_name_the_field(kind: str, value: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_options(kind, value)
    assert caught.value.param == param
    if param == "options" and isinstance(value, dict) and kind != "azure":
        assert kind in caught.value.message
