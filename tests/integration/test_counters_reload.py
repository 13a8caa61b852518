"""Redis counters are loaded from the ledger once, by the first gateway to find Redis empty, never again while
Redis keeps them: a reload under traffic closes calls in flight as if their process had died (charged twice)."""

from __future__ import annotations

from pathlib import Path

import redis

from agentledger.app import _load_counters, build_components
from agentledger.config import Settings
from agentledger.limits.base import Charge, Standing

REDIS_URL = "redis://127.0.0.1:6379/11"


async def test_a_loaded_redis_is_never_reloaded(tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings(data_dir=str(tmp_path), db_url=f"sqlite:///{tmp_path / 'r.db'}", redis_url=REDIS_URL)
    c = build_components(settings)
    await c.store.migrate()
    try:
        await _load_counters(c, at_start=True)  # empty Redis: loaded (from an empty ledger)
        await c.counters.add([Charge("b|ws|cap|total", None, 700)])  # live traffic, not in this ledger
        for _ in range(3):  # the sweep's checks, and another replica starting
            await _load_counters(c)
            await _load_counters(build_components(settings))
        assert await c.counters.standing(["b|ws|cap|total"]) == {"b|ws|cap|total": Standing(700, 0)}
    finally:
        await c.counters.aclose()
        await c.store.aclose()
        redis.Redis.from_url(REDIS_URL).flushdb()
