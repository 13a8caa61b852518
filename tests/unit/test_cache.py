"""TTLCache: expiry, shared misses, and stale-if-error through a store outage."""

from __future__ import annotations

import asyncio

import pytest

from agentledger.core.errors import AgentLedgerError, StoreUnavailable
from agentledger.gateway.cache import TTLCache


class Source:
    """A lookup that answers, or fails as an unreachable store does, and counts its calls."""

    def __init__(self, value: str | None) -> None:
        self.value = value
        self.down = False
        self.calls = 0

    async def load(self) -> str | None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("down")
        return self.value


async def test_an_expired_value_is_served_while_the_store_is_down_then_refreshed() -> None:
    cache: TTLCache[str, str] = TTLCache(0.05, stale_if_error=10, error_retry=0.2)
    src = Source("v1")
    assert await cache.get("k", src.load) == "v1"
    src.down, src.value = True, "v2"
    await asyncio.sleep(0.06)
    assert await cache.get("k", src.load) == "v1"
    assert src.calls == 2
    # Within error_retry the dead store is not asked again.
    assert [await cache.get("k", src.load) for _ in range(5)] == ["v1"] * 5
    assert src.calls == 2
    await asyncio.sleep(0.21)
    src.down = False
    assert await cache.get("k", src.load) == "v2"
    assert src.calls == 3


async def test_stale_values_have_a_bound() -> None:
    cache: TTLCache[str, str] = TTLCache(0.05, stale_if_error=0.05, error_retry=0.01)
    src = Source("v1")
    await cache.get("k", src.load)
    src.down = True
    await asyncio.sleep(0.11)  # past ttl + stale_if_error
    with pytest.raises(StoreUnavailable):
        await cache.get("k", src.load)


async def test_no_stale_value_without_the_setting_or_for_a_key_never_seen() -> None:
    cache: TTLCache[str, str] = TTLCache(0.01)
    src = Source("v1")
    await cache.get("k", src.load)
    src.down = True
    await asyncio.sleep(0.02)
    with pytest.raises(StoreUnavailable):
        await cache.get("k", src.load)
    stale: TTLCache[str, str] = TTLCache(0.01, stale_if_error=10)
    with pytest.raises(StoreUnavailable):
        await stale.get("never-seen", src.load)


async def test_a_value_known_gone_stays_gone_and_an_invalidated_one_is_not_resurrected() -> None:
    cache: TTLCache[str, str] = TTLCache(0.01, negative_ttl=0.01, stale_if_error=10)
    src = Source("principal")
    await cache.get("revoked", src.load)
    await cache.get("changed", src.load)
    cache.put("revoked", None)  # what Gateway.invalidate_key does on a revocation through this node
    cache.invalidate("changed")
    src.down = True
    await asyncio.sleep(0.02)
    assert await cache.get("revoked", src.load) is None
    with pytest.raises(StoreUnavailable):
        await cache.get("changed", src.load)


async def test_other_errors_are_not_masked_and_concurrent_misses_share_one_load() -> None:
    cache: TTLCache[str, str] = TTLCache(0.01, stale_if_error=10)
    src = Source("v1")
    assert await asyncio.gather(*[cache.get("k", src.load) for _ in range(10)]) == ["v1"] * 10
    assert src.calls == 1
    await asyncio.sleep(0.02)

    async def broken() -> str | None:
        raise AgentLedgerError("a bug, not an outage")

    with pytest.raises(AgentLedgerError, match="a bug"):
        await cache.get("k", broken)
