"""The retention job's order of work over a fake store: the trace horizon moves before any row is deleted, tables are
drained batch by batch with a pause after each, the bodies horizon moves only once every body is nulled, the audit
log is pruned with its own cutoff, and another replica's sweep ends this one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from agentledger.core.retention import Retention
from agentledger.retention.job import RetentionJob
from agentledger.store.retention import Batch, Cursor, Due

NOW = datetime(2025, 3, 10, 15, 0, tzinfo=UTC)
MIDNIGHT = datetime(2025, 3, 10, tzinfo=UTC)


class FakeStore:
    def __init__(self, due: list[Due], pages: int = 2, busy: bool = False) -> None:
        self._due = due
        self.pages = pages
        self.busy = busy
        self.log: list[tuple[Any, ...]] = []

    async def due(self) -> list[Due]:
        return self._due

    async def advance(self, ws: str, column: str, at: datetime) -> None:
        self.log.append(("advance", ws, column, at))

    async def swept(self, ws: str, at: datetime) -> None:
        self.log.append(("swept", ws))

    def _page(self, cursor: Cursor) -> Batch:
        if self.busy:
            return Batch(0, 0, None, busy=True)
        n = 0 if cursor is None else cursor[0]
        return Batch(10, 7, (n + 1,) if n + 1 < self.pages else None)

    async def delete_batch(self, kind: str, ws: str, before: datetime, cursor: Cursor, limit: int) -> Batch:
        self.log.append(("delete", ws, kind, before, cursor, limit))
        return self._page(cursor)

    async def null_batch(
        self, kind: str, ws: str, start: datetime | None, before: datetime, cursor: Cursor, limit: int
    ) -> Batch:
        self.log.append(("null", ws, kind, start, before, cursor))
        return self._page(cursor)


def run(store: FakeStore, **kw: Any) -> tuple[Any, list[float], list[tuple[str, datetime]]]:
    pauses: list[float] = []
    audited: list[tuple[str, datetime]] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def prune_audit(ws: str, before: datetime) -> int:
        audited.append((ws, before))
        return 3

    job = RetentionJob(store, lambda: NOW, batch=50, sleep=sleep, prune_audit=prune_audit, **kw)  # type: ignore[arg-type]
    return asyncio.run(job.sweep()), pauses, audited


def test_a_sweep_deletes_then_nulls_in_batches_and_moves_its_horizons_in_order() -> None:
    store = FakeStore([Due("ws", Retention(7, 30, 90), None)])
    done, pauses, audited = run(store)
    traces, bodies = MIDNIGHT - timedelta(days=30), MIDNIGHT - timedelta(days=7)
    kinds = [(e[0], e[2]) for e in store.log if e[0] in ("delete", "null")]
    deleted = ("steps", "requests", "policy_hits", "fetch_replays", "runs", "sessions")
    assert kinds == [
        *[("delete", k) for k in deleted for _ in (1, 2)],
        *[("null", k) for k in ("requests", "steps", "runs", "fetch_replays") for _ in (1, 2)],
    ]
    assert store.log[0] == ("advance", "ws", "traces_horizon", traces)  # before any deletion
    assert store.log[-2:] == [("advance", "ws", "bodies_horizon", bodies), ("swept", "ws")]
    assert [e[4] for e in store.log if e[0] == "delete"][:2] == [None, (1,)]  # the cursor walks on
    assert all(e[3] == traces and e[5] == 50 for e in store.log if e[0] == "delete")
    assert all(e[3:5] == (None, bodies) for e in store.log if e[0] == "null")
    assert len(pauses) == 10 and all(p >= 0.01 for p in pauses)  # after every batch but each table's last
    assert done.deleted == dict.fromkeys(deleted, 14)
    assert done.nulled == dict.fromkeys(("requests", "steps", "runs", "fetch_replays"), 14)
    assert audited == [("ws", MIDNIGHT - timedelta(days=90))] and done.audit == 3


def test_only_what_is_set_is_done() -> None:
    store = FakeStore([Due("a", Retention(bodies_days=7), MIDNIGHT - timedelta(days=8)), Due("b", Retention(), None)])
    done, _, audited = run(store)
    assert {e[0] for e in store.log} == {"null", "advance", "swept"}
    assert {e[3] for e in store.log if e[0] == "null"} == {MIDNIGHT - timedelta(days=8)}  # from the last horizon
    assert audited == [] and done.deleted == {}


def test_another_replica_sweeping_ends_the_sweep() -> None:
    store = FakeStore([Due("a", Retention(traces_days=1), None), Due("b", Retention(traces_days=1), None)], busy=True)
    done, _, _ = run(store)
    assert done.busy and [e[:3] for e in store.log] == [
        ("advance", "a", "traces_horizon"),
        ("delete", "a", "steps"),
    ]
