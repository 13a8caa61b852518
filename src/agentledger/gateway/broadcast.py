"""Cache invalidation across replicas over Redis pub/sub: a key revoked or a budget changed on one replica is
dropped from every replica's caches at once, not after `cache_ttl`.

Each replica publishes what it invalidated locally and applies what the others publish (its own messages are
recognised by its node id and skipped). A message lost while Redis is down leaves the TTL as the bound, as
without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
CHANNEL = "agentledger:invalidate"


class Broadcast:
    def __init__(self, url: str, node_id: str, apply: Callable[[str, str], None]) -> None:
        self.client = redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.node_id = node_id
        self.apply = apply  # (kind, value): drop it from this replica's caches, without publishing again
        self._task: asyncio.Task[None] | None = None
        self._sent: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()

    def publish(self, kind: str, value: str) -> None:
        message = orjson.dumps({"node": self.node_id, "kind": kind, "value": value})
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._sent.add(task)
        task.add_done_callback(self._sent.discard)

    async def _send(self, message: bytes) -> None:
        try:
            await self.client.publish(CHANNEL, message)
        except RedisError as exc:
            log.warning("could not broadcast a cache invalidation (other replicas wait for cache_ttl): %s", exc)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub()
                await pubsub.subscribe(CHANNEL)
                self.ready.set()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = orjson.loads(message["data"])
                    if data.get("node") != self.node_id:
                        self.apply(str(data["kind"]), str(data["value"]))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, orjson.JSONDecodeError, KeyError) as exc:
                self.ready.clear()
                log.warning("cache invalidation channel lost (%s); reconnecting", exc)
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._task
        await self.client.aclose()
