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
from agentledger.core.model import Attribution, LedgerEntry, RequestRecord, StepStatus
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
