"""Which provider route serves a model, and whether a key may use it. Glob patterns, first match wins."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from agentledger.core.model import ProviderRoute


def model_allowed(model: str, patterns: Sequence[str]) -> bool:
    """An empty allow-list means every model."""
    return not patterns or any(fnmatchcase(model, p) for p in patterns)


def choose_route(model: str, routes: Sequence[ProviderRoute]) -> ProviderRoute | None:
    """Routes arrive ordered by priority (highest first); the first whose patterns match serves."""
    for route in routes:
        if any(fnmatchcase(model, p) for p in route.models):
            return route
    return None
