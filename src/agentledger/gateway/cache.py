"""Hot-path lookups, cached so a request costs no database round-trip once its key has been seen.

Entries expire after `ttl` seconds so a change made by another replica shows up within that window;
changes made through this process invalidate immediately. Concurrent misses for the same key share
one store query.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, *, negative_ttl: float = 1.0, maxsize: int = 100_000) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.maxsize = maxsize
        self._data: OrderedDict[K, tuple[float, V | None]] = OrderedDict()
        self._pending: dict[K, asyncio.Future[V | None]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        hit = self._data.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            value = await load()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._pending.pop(key, None)
        self.put(key, value)
        fut.set_result(value)
        return value

    def put(self, key: K, value: V | None) -> None:
        expires = time.monotonic() + (self.ttl if value is not None else self.negative_ttl)
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def invalidate(self, key: K | None = None) -> None:
        if key is None:
            self._data.clear()
        else:
            self._data.pop(key, None)
