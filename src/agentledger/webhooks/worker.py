"""The delivery worker: claims due deliveries from the outbox, POSTs each, signed, and records the outcome.

Never on a request's path: it runs beside the server (app lifespan). A 2xx is delivered; a connection error, a
timeout, 408, 429 or 5xx is tried again after an exponential backoff with jitter (or the receiver's Retry-After,
when longer), until `max_attempts`, then failed; any other answer fails at once (redirects are not followed).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from agentledger.core.errors import StoreUnavailable
from agentledger.store.webhooks import DELIVERED, FAILED, PENDING, WebhookStore
from agentledger.webhooks.guard import AddressRefused, AllowList, Lookup, PinnedResolver, check, system_lookup
from agentledger.webhooks.signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)
MAX_ERROR_LEN = 500


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    max_attempts: int = 8
    backoff: float = 10.0  # seconds before the second attempt, doubled for each one after
    max_backoff: float = 3600.0
    timeout: float = 10.0  # seconds for one attempt, connect to last byte
    batch: int = 50  # deliveries claimed (and sent concurrently) at a time
    interval: float = 1.0  # seconds between polls of an idle outbox

    @property
    def lease(self) -> float:
        """How long a claim holds a row: past one attempt's timeout, so a live worker keeps it to the end."""
        return 2 * self.timeout + 30.0


def retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (at - now).total_seconds()) if at.tzinfo else None


def backoff_delay(attempts: int, policy: DeliveryPolicy, asked: float | None, jitter: float) -> float:
    """Seconds before the next attempt after `attempts` tries: backoff·2^(attempts-1), capped at max_backoff, times
    a jitter in [0.5, 1) so receivers recovering from an outage are not hit by every sender at once; a longer
    Retry-After wins (capped too)."""
    base = min(policy.max_backoff, policy.backoff * 2.0 ** (attempts - 1))
    delay = base * (0.5 + jitter / 2)
    return delay if asked is None else max(delay, min(asked, policy.max_backoff))


class DeliveryWorker:
    def __init__(
        self,
        store: WebhookStore,
        decrypt: Callable[[str], str],
        allow: AllowList,
        policy: DeliveryPolicy,
        *,
        lookup: Lookup = system_lookup,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.decrypt = decrypt
        self.allow = allow
        self.policy = policy
        self.lookup = lookup
        self.clock = clock
        self.wake = asyncio.Event()  # set to poll now (a test event enqueued by this process)

    async def run(self) -> None:
        while True:
            try:
                if await self.tick() == self.policy.batch:
                    continue  # more may be due: no pause
            except StoreUnavailable:
                pass
            except Exception:  # the worker must never stop delivering
                log.exception("webhook delivery round failed; retrying")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), self.policy.interval)
            except TimeoutError:
                pass

    async def tick(self) -> int:
        rows = await self.store.claim(self.clock(), self.policy.lease, self.policy.batch)
        if rows:
            await asyncio.gather(*(self.deliver(r) for r in rows))
        return len(rows)

    async def deliver(self, row: dict[str, Any]) -> None:
        code, error, retry = await self._attempt(row)
        now = self.clock()
        if code is not None and 200 <= code < 300:
            status, at = DELIVERED, None
        elif retry is not None and row["attempts"] < self.policy.max_attempts:
            delay = backoff_delay(row["attempts"], self.policy, retry, random.random())
            status, at = PENDING, now + timedelta(seconds=delay)
        else:
            status, at = FAILED, None
        try:
            await self.store.finish(row, status=status, now=now, code=code, error=error, retry_at=at)
        except StoreUnavailable:
            pass  # the lease runs out and the row is claimed again: delivered twice at worst (at-least-once)

    async def _attempt(self, row: dict[str, Any]) -> tuple[int | None, str | None, float | None]:
        """(status code, error, retry hint): the hint is None when the outcome is final, else the receiver's
        Retry-After in seconds (0 when it named none)."""
        try:
            target = await check(row["url"], self.allow, self.lookup)  # again: DNS may answer otherwise now
        except AddressRefused as exc:
            return None, f"address refused: {exc}", None
        body = orjson.dumps(row["payload"])
        headers = {
            "content-type": "application/json",
            "user-agent": "agentledger-webhooks",
            SIGNATURE_HEADER: sign(self.decrypt(row["secret_encrypted"]), body, int(time.time())),
            "Alephant-Webhook-Id": row["webhook_id"],
            "Alephant-Delivery-Id": row["id"],
            "Alephant-Event": row["event"],
        }
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(target), force_close=True, use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.post(target.url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                await resp.content.read(4096)  # an answer is not kept; a little is read so the exchange completes
                code = resp.status
                if 200 <= code < 300:
                    return code, None, None
                error = f"HTTP {code}"
                if retryable(code):
                    return code, error, retry_after(resp.headers.get("retry-after"), self.clock()) or 0.0
                return code, error, None
        except TimeoutError:
            return None, f"timed out after {self.policy.timeout:g} s", 0.0
        except (aiohttp.ClientError, OSError) as exc:
            return None, (f"{type(exc).__name__}: {exc}")[:MAX_ERROR_LEN], 0.0
