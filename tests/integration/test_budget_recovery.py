"""Reservations a stopped process left open are closed on the next start: charged their estimate, corrected to
the call's recorded cost when its request row says it, and the counters loaded from the ledger (both stores)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from agentledger.app import build_components, create_app
from agentledger.config import Settings
from agentledger.core.budget_config import budget_row
from agentledger.core.model import Attribution, LedgerEntries, LedgerEntry, RequestRecord, StepStatus
from agentledger.gateway.budget_recovery import reconcile_expired
from agentledger.limits.base import Charge, Refused
from agentledger.limits.memory import MemoryCounters
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from tests.harness import HTTP, provision

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def _reserve(ws: str, rid: str, request_id: str, amount: int) -> LedgerEntry:
    return LedgerEntry(
        workspace_id=ws,
        entry_id=f"led-{rid}",
        budget_id="cap",
        counter_key=f"b|{ws}|cap|total",
        kind="reserve",
        reserved_delta=amount,
        spent_delta=0,
        at=NOW,
        reservation_id=rid,
        request_id=request_id,
    )


def test_open_reservations_are_closed_at_their_estimate_then_corrected(db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), db_url=db_url, batch_interval_ms=5.0)
    ids = provision(settings, "http://127.0.0.1:9")
    ws = ids["workspace"]
    recorded = RequestRecord(
        request_id="req-recorded",
        attribution=Attribution(workspace_id=ws),
        endpoint="/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=StepStatus.OK,
        http_status=200,
        started_at=NOW,
        ended_at=NOW,
        latency_ms=1.0,
        request_hash="h",
        cost_nanos=700,
    )

    async def seed() -> None:
        c = build_components(settings)
        budget = {"id": "cap", "scope": "workspace", "limit_usd": "1", "period": "total"}
        await c.store.budgets.create_budget({"workspace_id": ws, "id": "cap", **budget_row(budget, NOW, None)})
        # A crash between the call's record and its settle entry, and one before its record.
        await c.store.write_batch([recorded, _reserve(ws, "rsv-a", "req-recorded", 5000)])
        await c.store.write_batch([_reserve(ws, "rsv-b", "req-lost", 3000)])
        await c.store.aclose()

    asyncio.run(seed())
    with ServerThread(create_app(settings, store=SQLStore(settings.database_url))) as server:
        auth = {"authorization": f"Bearer {ids['admin']}"}
        status = HTTP.get(server.url + "/api/budgets/cap", headers=auth).json()["status"]
        # rsv-a: its call cost 700 (recorded); rsv-b: no record, charged its 3000 estimate.
        assert (status["spent_usd"], status["reserved_usd"]) == ("0.000003700", "0.000000000")
        ledger = HTTP.get(server.url + "/api/ledger", headers=auth, params={"budget": "cap"}).json()["data"]
    kinds = sorted((e["reservation_id"], e["kind"], e["reserved_delta"], e["spent_delta"]) for e in ledger)
    assert kinds == [
        ("rsv-a", "adjust", 0, -4300),
        ("rsv-a", "expire", -5000, 5000),
        ("rsv-a", "reserve", 5000, 0),
        ("rsv-b", "expire", -3000, 3000),
        ("rsv-b", "reserve", 3000, 0),
    ]
    # A second start finds nothing open: recovery is idempotent.
    with ServerThread(create_app(settings, store=SQLStore(settings.database_url))) as server:
        again = HTTP.get(server.url + "/api/ledger", headers=auth, params={"budget": "cap"}).json()["data"]
    assert len(again) == len(ledger)
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        held = text("SELECT sum(reserved_delta) FROM budget_ledger WHERE workspace_id = :ws")
        assert conn.execute(held, {"ws": ws}).scalar() == 0
    engine.dispose()


def test_an_expired_reservation_the_ledger_never_saw_is_charged_without_taking_back_a_reserve(db_url: str) -> None:
    """The counters (Redis, shared) expire a reservation whose process died within `batch_interval_ms` of admitting
    its call, before the reserve was written: the ledger charges the estimate and, having never held it, takes
    nothing back out of `reserved`, so its sums still equal the counters'. One it holds open is charged and taken
    back as before; one it settled corrects the counters to what it charged."""
    ws = "ws-expire"
    key = f"b|{ws}|cap|total"

    async def go() -> None:
        store = SQLStore(db_url)
        await store.migrate()
        counters = MemoryCounters(clock=lambda: 0.0)
        try:
            await store.write_batch([_reserve(ws, "rsv-open", "req-open", 3000)])
            settled = LedgerEntries.of_reservation(
                ws, "settle", 0, 700, NOW, "rsv-done", (("cap", key),), "req-done", None
            )  # netted: its reserve never written, its settle says what it spent
            await store.write_batch([settled])
            # rsv-done's settle reached the ledger, not the counters (Redis was down): they still hold it.
            for rid, amount in (("rsv-lost", 5000), ("rsv-open", 3000), ("rsv-done", 2000)):
                assert not isinstance(await counters.reserve(rid, [Charge(key, None, amount)], 1.0), Refused)
            expired = await counters.expire(10.0)
            entries = await reconcile_expired(expired, store.budgets, counters, NOW)
            rows = sorted((e.reservation_id, e.kind, e.reserved_delta, e.spent_delta) for e in entries)  # type: ignore[union-attr]
            assert rows == [("rsv-lost", "expire", 0, 5000), ("rsv-open", "expire", -3000, 3000)]
            await store.write_batch(entries)
            (standing,) = (await counters.standing([key])).values()
            totals = await store.budgets.totals()
            assert totals[key] == (standing.spent, standing.reserved) == (5000 + 3000 + 700, 0)
        finally:
            await store.aclose()

    asyncio.run(go())
