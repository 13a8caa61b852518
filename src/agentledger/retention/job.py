"""The retention job: every `retention_interval` seconds, each workspace's expired rows deleted and expired bodies
nulled, in batches (store/retention.py), never a long transaction.

Between two batches the job sleeps at least as long as the last batch took (and at least `min_pause`): it never has
more than about half of the writer's time, and on SQLite trace batches queued meanwhile on the writer thread go
first. Another replica sweeping (PostgreSQL) ends this sweep; the next interval tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from agentledger.core.errors import StoreUnavailable
from agentledger.core.retention import plan
from agentledger.store.retention import DELETED, NULLED, Batch, Cursor, Due, RetentionStore

log = logging.getLogger(__name__)
# The audit log's pruner: (workspace, before) → events pruned. The audit log (issue 11) owns its events and their
# chain; the job only says when, with the workspace's audit_days.
AuditPruner = Callable[[str, datetime], Awaitable[int]]


class _Busy(Exception):
    """Another replica holds the sweep."""


@dataclass
class Sweep:
    """What one sweep did: rows deleted and bodies nulled per table, audit events pruned."""

    deleted: dict[str, int] = field(default_factory=dict)
    nulled: dict[str, int] = field(default_factory=dict)
    audit: int = 0
    busy: bool = False


class RetentionJob:
    def __init__(
        self,
        store: RetentionStore,
        clock: Callable[[], datetime],
        *,
        batch: int = 1000,
        min_pause: float = 0.01,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        prune_audit: AuditPruner | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.batch = batch
        self.min_pause = min_pause
        self.sleep = sleep
        self.prune_audit = prune_audit

    async def run(self, every: float) -> None:
        """Sweep now, then every `every` seconds (a restart does not postpone pruning by a whole interval)."""
        while True:
            try:
                await self.sweep()
            except StoreUnavailable:
                pass
            except Exception:  # a sweep must never stop sweeping
                log.exception("retention sweep failed; retrying at the next interval")
            await asyncio.sleep(every)

    async def sweep(self) -> Sweep:
        done = Sweep()
        try:
            for due in await self.store.due():
                await self._workspace(due, done)
        except _Busy:
            done.busy = True
        return done

    async def _workspace(self, due: Due, done: Sweep) -> None:
        ws, now = due.workspace_id, self.clock()
        work = plan(due.settings, due.bodies_horizon, now)
        if work.traces_before is not None:
            before = work.traces_before
            # Before any row goes: from now on `rollups verify` compares only what no deletion can touch.
            await self.store.advance(ws, "traces_horizon", before)
            for kind in DELETED:

                def deleting(cur: Cursor, kind: str = kind) -> Awaitable[Batch]:
                    return self.store.delete_batch(kind, ws, before, cur, self.batch)

                done.deleted[kind] = done.deleted.get(kind, 0) + await self._drain(deleting)
        if work.bodies_before is not None:
            start, end = work.bodies_from, work.bodies_before
            for kind in NULLED:

                def nulling(cur: Cursor, kind: str = kind) -> Awaitable[Batch]:
                    return self.store.null_batch(kind, ws, start, end, cur, self.batch)

                done.nulled[kind] = done.nulled.get(kind, 0) + await self._drain(nulling)
            # After: the next sweep starts where this one ended, and a sweep cut short starts over.
            await self.store.advance(ws, "bodies_horizon", end)
        if work.audit_before is not None and self.prune_audit is not None:
            done.audit += await self.prune_audit(ws, work.audit_before)
        await self.store.swept(ws, now)

    async def _drain(self, next_batch: Callable[[Cursor], Awaitable[Batch]]) -> int:
        cursor: Cursor = None
        total = 0
        while True:
            t0 = time.monotonic()
            batch = await next_batch(cursor)
            if batch.busy:
                raise _Busy
            total += batch.done
            if batch.cursor is None:
                return total
            cursor = batch.cursor
            await self.sleep(max(self.min_pause, time.monotonic() - t0))
