"""Idempotency: one x-request-id reaches the provider once, on this node and across processes.

`Claims` holds this node's claims on client-supplied ids while their calls are in flight, the recent failed
attempts (to number retries) and the recent completed responses (a duplicate may arrive before the pipeline
has written the original). The store holds the cross-process claim (`Store.claim_request`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from agentledger.core.errors import IdempotencyKeyReused, StoreBusy, StoreUnavailable
from agentledger.core.ids import new_id
from agentledger.store.base import RequestClaim, StoredResponse

log = logging.getLogger(__name__)


class Claimant(Protocol):
    @property
    def workspace_id(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def request_hash(self) -> str: ...
    @property
    def client_request_id(self) -> bool: ...


class ClaimStore(Protocol):
    """Where claims and completed answers are found across processes: `Store` for model calls
    (`Store.claim_request` has the contract), store/fetch_replays.py for paid fetches."""

    async def claim_request(self, workspace_id: str, request_id: str, holder: str, lease: float) -> RequestClaim: ...
    async def release_claim(self, workspace_id: str, request_id: str, holder: str) -> None: ...


@dataclass(slots=True, eq=False)
class _Claim:
    """This node's hold on a client-supplied x-request-id while its call is in flight."""

    call: Claimant
    done: asyncio.Future[None]  # resolved on release: local duplicates waiting on it look again
    in_store: bool = False  # the store's cross-process claim is held too (released on failure)


class Claims:
    def __init__(self, store: ClaimStore, inflight_timeout: float) -> None:
        self.store = store
        self.inflight_timeout = inflight_timeout
        self._inflight: dict[tuple[str, str], _Claim] = {}
        # Names this process in the store's cross-process claims (see `claim`).
        self.node_id = new_id("node")
        self._background: set[asyncio.Task[None]] = set()
        self._attempts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._completed: OrderedDict[tuple[str, str], StoredResponse] = OrderedDict()

    # -- idempotency ---------------------------------------------------------------------------------------
    async def claim(self, call: Claimant) -> StoredResponse | None:
        """Returns the stored response if this x-request-id already completed, else claims it for this call,
        which must then `release` it. One x-request-id reaches the provider once:

        * On this node, the in-memory claim is taken before any await, so no duplicate can slip in between a
          lookup and the claim. (It used to be taken after the store lookup: a duplicate whose lookup was still
          queued while the first call completed and released found nothing, and forwarded again.) Duplicates
          wait for the holder, then replay its response from `_completed`.
        * Across processes sharing PostgreSQL, `Store.claim_request` finds a completed response or claims the id
          atomically, in the one round trip this lookup always cost. A duplicate on another node polls until
          the holder's record lands (replay), its failure releases the claim, or its lease (`inflight_timeout`)
          expires (a crashed holder).
        * While the store is unavailable, only this node's memory answers (docs/architecture.md).

        Only client-supplied ids can repeat, so generated ids skip all of this.
        """
        if not call.client_request_id:
            return None
        key = (call.workspace_id, call.request_id)
        while (held := self._inflight.get(key)) is not None:
            try:
                await asyncio.wait_for(asyncio.shield(held.done), self.inflight_timeout)
            except TimeoutError:
                # The holder never released its claim (its client left before the stream began).
                if self._inflight.get(key) is held:
                    del self._inflight[key]
        stored = self._completed.get(key)
        if stored is None:
            # No await between the check above and this line: the claim is atomic on this node.
            held = self._inflight[key] = _Claim(call, asyncio.get_running_loop().create_future())
            try:
                stored = await self._claim_in_store(held)
            except BaseException:  # cancelled (client gone) or failed: give the claim up
                self._drop_claim(key, held)
                raise
            if stored is None:
                return None  # held: the caller forwards, then releases
            self.remember(key, stored)  # local duplicates waiting on us replay it from memory
            self._drop_claim(key, held)
        if stored.request_hash != call.request_hash:
            raise IdempotencyKeyReused(
                f"x-request-id {call.request_id!r} was already used for a different request body.",
                param="x-request-id",
            )
        return stored

    async def _claim_in_store(self, held: _Claim) -> StoredResponse | None:
        ws, rid = held.call.workspace_id, held.call.request_id
        deadline = time.monotonic() + self.inflight_timeout + 10  # past the other holder's lease: a safety net
        delay = 0.02
        while True:
            try:
                found = await self.store.claim_request(ws, rid, self.node_id, self.inflight_timeout)
            except StoreBusy:
                # Overload, not an outage: every pooled connection was busy past its timeout. Forwarding now would
                # let a copy on another node through too, just when load makes retries likely; ask again, as for
                # an id another node holds.
                found = None
            except StoreUnavailable:
                return None  # an outage: this node's memory is all there is; forward under the local claim
            if found is not None and (found.stored is not None or found.claimed):
                held.in_store = found.claimed
                return found.stored
            if time.monotonic() > deadline:
                return None
            # Another node holds the id (or this node's own completed record has not landed yet): wait for it.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    def release(self, call: Claimant) -> None:
        """Give up `call`'s claim (idempotent). A completed call's record supersedes the store's claim; a failed
        one releases that too, so a retry, on any node, forwards again."""
        key = (call.workspace_id, call.request_id)
        held = self._inflight.get(key)
        if held is None or held.call is not call:
            return
        self._drop_claim(key, held)
        if held.in_store and key not in self._completed:
            self._spawn(self.store.release_claim(key[0], key[1], self.node_id))

    def _drop_claim(self, key: tuple[str, str], held: _Claim) -> None:
        if self._inflight.get(key) is held:
            del self._inflight[key]
        if not held.done.done():
            held.done.set_result(None)

    def remember(self, key: tuple[str, str], stored: StoredResponse) -> None:
        self._completed[key] = stored
        while len(self._completed) > 4096:
            self._completed.popitem(last=False)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Fire and forget (release runs where it cannot await); an unavailable store lets the lease expire."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop: shutting down; the claim's lease runs out by itself
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("releasing an idempotency claim failed (its lease will expire): %s", exc)

    def next_attempt(self, call: Claimant, failed: bool) -> int:
        key = (call.workspace_id, call.request_id)
        attempt = self._attempts.pop(key, 0) + 1
        if failed:
            self._attempts[key] = attempt
            while len(self._attempts) > 50_000:
                self._attempts.popitem(last=False)
        return attempt
