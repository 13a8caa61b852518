from __future__ import annotations

import pytest

from agentledger.core.model import ProviderRoute
from agentledger.core.routing import choose_route, model_allowed


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
