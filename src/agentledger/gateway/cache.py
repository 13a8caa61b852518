"""Hot-path lookups, cached so a request costs no database round-trip once its key has been seen.

Entries expire after `ttl` seconds so a change made by another replica shows up within that window;
changes made through this process invalidate immediately. Concurrent misses for the same key share
one store query.

Stale-if-error: when a refresh fails because the store is unavailable (`StoreUnavailable`), the last known
value is served for up to `stale_if_error` seconds past its expiry, so the gateway keeps serving known keys
through a database outage. The store is then asked again at most every `error_retry` seconds per entry, so
only one request per entry and interval waits on a database that does not answer. A value this node learned
is gone (a revoked key, cached as None) stays gone the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, NamedTuple, TypeVar

from agentledger.core.errors import StoreUnavailable

K = TypeVar("K")
V = TypeVar("V")


class _Entry(NamedTuple, Generic[V]):
    expires: float  # monotonic time after which the store is asked again
    value: V | None
    stale_until: float  # monotonic time until which the value may stand in for an unavailable store


class TTLCache(Generic[K, V]):
    def __init__(
        self,
        ttl: float,
        *,
        negative_ttl: float = 1.0,
        maxsize: int = 100_000,
        stale_if_error: float = 0.0,
        error_retry: float = 1.0,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.maxsize = maxsize
        self.stale_if_error = stale_if_error
        self.error_retry = error_retry
        self._data: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._pending: dict[K, asyncio.Future[V | None]] = {}

    def fresh(self, key: K) -> tuple[bool, V | None]:
        """(True, value) while `key`'s entry is fresh, else (False, None): a hot path's lookup without a coroutine."""
        hit = self._data.get(key)
        if hit is not None and hit.expires > time.monotonic():
            return True, hit.value
        return False, None

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        hit = self._data.get(key)
        now = time.monotonic()
        if hit is not None and hit.expires > now:
            return hit.value
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            value = await load()
        except BaseException as exc:
            if (
                isinstance(exc, StoreUnavailable)
                and hit is not None
                and hit.stale_until > time.monotonic()
                and self._data.get(key) is hit
            ):
                # Serve the last known value; do not ask the dead store again for a moment. (An entry that was
                # invalidated or replaced meanwhile is not resurrected.)
                self._data[key] = _Entry(time.monotonic() + self.error_retry, hit.value, hit.stale_until)
                fut.set_result(hit.value)
                return hit.value
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._pending.pop(key, None)
        self.put(key, value)
        fut.set_result(value)
        return value

    def put(self, key: K, value: V | None) -> None:
        now = time.monotonic()
        expires = now + (self.ttl if value is not None else self.negative_ttl)
        self._data[key] = _Entry(expires, value, expires + self.stale_if_error)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def invalidate(self, key: K | None = None) -> None:
        if key is None:
            self._data.clear()
        else:
            self._data.pop(key, None)
