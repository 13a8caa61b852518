"""`Store.claim_request` / `release_claim`: the cross-process x-request-id claim (PostgreSQL), and its
single-writer form on SQLite (every claim granted: the gateway's in-memory claim serializes one process).

Also: a store that cannot be reached raises StoreUnavailable (a 503), not the driver's exception (a 500).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from agentledger.core.errors import StoreUnavailable
from agentledger.core.model import Attribution, RequestRecord, StepStatus
from agentledger.store.base import RequestClaim, StoredResponse, WriteResult
from agentledger.store.sql import SQLStore
from tests.contract.store.test_store_contract import T0, new_workspace


def _completed(ws: str, request_id: str, status: StepStatus = StepStatus.OK) -> RequestRecord:
    ok = status is StepStatus.OK
    return RequestRecord(
        request_id=request_id,
        attribution=Attribution(workspace_id=ws),
        endpoint="/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=status,
        http_status=200 if ok else 502,
        started_at=T0,
        ended_at=T0 + timedelta(milliseconds=5),
        latency_ms=5.0,
        request_hash="h" * 64,
        response_body=b'{"ok":true}' if ok else None,
        response_content_type="application/json" if ok else None,
    )


STORED = StoredResponse("h" * 64, 200, b'{"ok":true}', "application/json", None, 0)


async def test_a_claim_is_held_against_other_holders_until_released(store: SQLStore) -> None:
    ws, rid = await new_workspace(store), f"req-{uuid.uuid4().hex[:8]}"
    assert await store.claim_request(ws, rid, "node-a", 60) == RequestClaim(None, claimed=True)
    if store.is_sqlite:
        # One writer process: the store grants every claim; the gateway's memory is the lock.
        assert await store.claim_request(ws, rid, "node-b", 60) == RequestClaim(None, claimed=True)
        return
    assert await store.claim_request(ws, rid, "node-b", 60) == RequestClaim(None, claimed=False)
    assert await store.claim_request(ws, rid, "node-a", 60) == RequestClaim(None, claimed=False)  # not re-entrant
    await store.release_claim(ws, rid, "node-b")  # not the holder: nothing happens
    assert await store.claim_request(ws, rid, "node-b", 60) == RequestClaim(None, claimed=False)
    await store.release_claim(ws, rid, "node-a")
    assert await store.claim_request(ws, rid, "node-b", 60) == RequestClaim(None, claimed=True)
    # Scoped by workspace: the same id elsewhere is free.
    other = await new_workspace(store)
    assert await store.claim_request(other, rid, "node-a", 60) == RequestClaim(None, claimed=True)


async def test_a_crashed_holders_claim_expires_with_its_lease(store: SQLStore) -> None:
    if store.is_sqlite:
        pytest.skip("SQLite grants every claim (one writer process)")
    ws, rid = await new_workspace(store), f"req-{uuid.uuid4().hex[:8]}"
    assert (await store.claim_request(ws, rid, "node-a", 0.3)).claimed
    assert not (await store.claim_request(ws, rid, "node-b", 60)).claimed
    await asyncio.sleep(0.4)
    assert (await store.claim_request(ws, rid, "node-b", 60)).claimed
    assert not (await store.claim_request(ws, rid, "node-a", 60)).claimed


async def test_a_completed_record_supersedes_any_claim(store: SQLStore) -> None:
    ws, rid = await new_workspace(store), f"req-{uuid.uuid4().hex[:8]}"
    assert (await store.claim_request(ws, rid, "node-a", 60)).claimed
    assert await store.write_batch([_completed(ws, rid, StepStatus.ERROR)]) is WriteResult.SUCCESS
    if not store.is_sqlite:
        assert not (await store.claim_request(ws, rid, "node-b", 60)).claimed  # a failed record does not
    assert await store.write_batch([_completed(ws, rid)]) is WriteResult.SUCCESS
    for holder in ("node-a", "node-b"):
        assert await store.claim_request(ws, rid, holder, 60) == RequestClaim(STORED, claimed=False)


async def test_an_unreachable_store_raises_store_unavailable_fast(db_url: str) -> None:
    # A port nothing listens on: refused at once. (The outage test covers a store that goes away mid-run.)
    url = (
        "postgresql+psycopg://postgres@127.0.0.1:9/nothing"
        if "postgresql" in db_url
        else "sqlite:////nonexistent/dir/x.db"
    )
    s = SQLStore(url)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await s.list_workspaces("ws")
        assert (info.value.status, info.value.code, info.value.retry_after) == (503, "store_unavailable", 2)
        with pytest.raises(StoreUnavailable):
            await s.claim_request("ws", "req", "node-a", 60)
    finally:
        await s.aclose()


async def test_claims_skip_the_write_ahead_log_on_postgresql(store: SQLStore) -> None:
    # A claim is a short lease: an fsync per claim would cost the hot path ~3 ms (see the migration).
    if store.is_sqlite:
        pytest.skip("PostgreSQL storage option")
    with store.engine.connect() as conn:
        persistence = conn.exec_driver_sql(
            "SELECT relpersistence FROM pg_class WHERE relname = 'idempotency_claims'"
        ).scalar()
    assert persistence == "u"


@pytest.mark.pg
async def test_a_claim_waits_out_a_busy_pool_instead_of_forwarding_unclaimed(pg_url: str) -> None:
    """Every pooled connection in use past the pool's timeout is overload, not an outage (StoreBusy): the
    gateway's claim keeps asking instead of forwarding under its local claim alone (which would let a copy on
    another gateway reach the provider too)."""
    from agentledger.core.errors import StoreBusy
    from agentledger.gateway.claims import Claims

    store = SQLStore(pg_url, readers=1, queries=1)
    await store.migrate()
    ws = await new_workspace(store)
    taken = [store.engine.connect() for _ in range(store.engine.pool.size() + store.engine.pool._max_overflow)]  # type: ignore[attr-defined]
    try:
        with pytest.raises(StoreBusy):
            await store.claim_request(ws, "busy-1", "node-x", 30)

        class Call:
            workspace_id, request_id, request_hash, client_request_id = ws, "busy-2", "h" * 64, True

        claims = Claims(store, inflight_timeout=30)
        claiming = asyncio.ensure_future(claims.claim(Call()))
        await asyncio.sleep(2.5)  # one pool timeout (2 s) has passed: the claim is still waiting, not granted
        assert not claiming.done()
        for conn in taken:
            conn.close()
        taken = []
        assert await asyncio.wait_for(claiming, 10) is None  # granted: the caller forwards
        assert claims._inflight[(ws, "busy-2")].in_store  # held in the store, so another node's copy waits
    finally:
        for conn in taken:
            conn.close()
        await store.aclose()
