"""Which provider keys serve a call, in the order they are tried, and whether a key may use a model.

Resolution of the model the client named:
* `alephant-forced-routing: <provider key name>` picks that key;
* else `prefix/model` picks the key named `prefix`, and `model` is the provider's model id, but only when such a
  key exists: otherwise the whole string is the model id (OpenRouter's `anthropic/claude-…` keeps working);
* else the route table: keys by priority (highest first), the first whose glob patterns match.
A key picked by name must still serve the model by its patterns: naming a key never widens what it serves.

The chain is that key, then each of its fallbacks in order (another key, another model, or both), leaving out
any the virtual key may not use (`allowed`) and duplicates. Pure: the gateway then drops the hops no upstream
adapter, format or price can serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from agentledger.core.errors import InvalidHeader, UnknownModel
from agentledger.core.frozen import frozen
from agentledger.core.headers import FORCED_ROUTING as FORCED_ROUTING_HEADER
from agentledger.core.model import ProviderRoute


@frozen
class Hop:
    """One provider key and the model asked of it; `fallback` when it is not the route the client asked for."""

    route: ProviderRoute
    model: str
    fallback: bool = False


def model_allowed(model: str, patterns: Sequence[str]) -> bool:
    """An empty allow-list means every model."""
    return not patterns or any(fnmatchcase(model, p) for p in patterns)


def serves(route: ProviderRoute, model: str) -> bool:
    return any(fnmatchcase(model, p) for p in route.models)


def choose_route(model: str, routes: Sequence[ProviderRoute]) -> ProviderRoute | None:
    """Routes arrive ordered by priority (highest first); the first whose patterns match serves."""
    for route in routes:
        if serves(route, model):
            return route
    return None


def _named(routes: Sequence[ProviderRoute], name: str) -> ProviderRoute | None:
    for route in routes:
        if route.name == name:
            return route
    return None


def resolve(model: str, routes: Sequence[ProviderRoute], forced: str | None) -> Hop:
    """The primary hop for `model`, or UnknownModel / InvalidHeader naming what is wrong."""
    if forced is not None:
        route = _named(routes, forced)
        if route is None:
            raise InvalidHeader(f"No provider key is named {forced!r} in this workspace.", param=FORCED_ROUTING_HEADER)
        prefix, sep, rest = model.partition("/")
        if sep and rest and prefix == forced:
            model = rest
    else:
        prefix, sep, rest = model.partition("/")
        named = _named(routes, prefix) if sep and rest else None
        if named is not None:
            route, model = named, rest
        else:
            found = choose_route(model, routes)
            if found is None:
                raise UnknownModel(f"The model {model!r} does not exist or no provider serves it.", param="model")
            return Hop(found, model)
    if not serves(route, model):
        raise UnknownModel(f"Provider key {route.name!r} does not serve the model {model!r}.", param="model")
    return Hop(route, model)


def chain(primary: Hop, routes: Sequence[ProviderRoute], allowed: Sequence[str]) -> list[Hop]:
    """The primary hop, then its key's fallbacks that exist, serve their model and that the virtual key may use.

    A fallback is never to a model the virtual key may not use: its allow-list is checked against the model id
    and against `key/model`, as the client could have named it."""
    hops = [primary]
    seen = {(primary.route.id, primary.model)}
    for fb in primary.route.fallbacks:
        route = primary.route if fb.key is None else _named(routes, fb.key)
        model = fb.model or primary.model
        if route is None or (route.id, model) in seen or not serves(route, model):
            continue
        if allowed and not (model_allowed(model, allowed) or model_allowed(f"{route.name}/{model}", allowed)):
            continue
        seen.add((route.id, model))
        hops.append(Hop(route, model, fallback=True))
    return hops
