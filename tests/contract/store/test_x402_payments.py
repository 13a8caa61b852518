"""x402 payment proofs claimed once per workspace (store/finance.py), on SQLite and PostgreSQL: a replay is
refused, of concurrent claims exactly one wins (on PostgreSQL also across two stores, as two replicas), and a
claim's state only moves forward."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import pytest

from agentledger.core.assets import USDC_BASE_SEPOLIA
from agentledger.core.model import ProofState
from agentledger.core.proofs import PaymentProof
from agentledger.store.base import WriteResult
from agentledger.store.finance import CLAIMED, FAILED, RELEASED, SETTLED, PaymentProofs, claim_row
from agentledger.store.sql import SQLStore
from tests.contract.store.test_store_contract import T0, new_workspace

LATER = T0 + timedelta(seconds=5)


def proof(payer: str | None = None) -> PaymentProof:
    return PaymentProof(
        network=USDC_BASE_SEPOLIA.network,
        asset=USDC_BASE_SEPOLIA.address,
        payer=payer or "0x" + os.urandom(20).hex(),
        nonce="0x" + os.urandom(32).hex(),
        amount="10000",
        valid_before=int(T0.timestamp()) + 300,
    )


async def test_a_proof_is_claimed_once_and_a_replay_is_refused(store: SQLStore) -> None:
    payments, ws, p = PaymentProofs(store), await new_workspace(store), proof()
    assert await payments.claim(ws, p, T0, amount_nanos=10_000_000, endpoint_id="ep-1", run_id="run-1")
    assert not await payments.claim(ws, p, LATER, run_id="run-2")
    row = await payments.get(ws, p.id)
    assert row is not None
    assert (row["state"], row["run_id"], row["endpoint_id"], row["amount_nanos"]) == (CLAIMED, "run-1", "ep-1", 10**7)
    assert (row["network"], row["payer"], row["nonce"], row["amount"]) == (p.network, p.payer, p.nonce, "10000")
    assert row["valid_before"] == T0.replace(microsecond=0) + timedelta(seconds=300)
    # Written through the driver on SQLite (`SQLStore.lazy_first`): read back as SQLAlchemy writes it.
    assert (row["claimed_at"], row["updated_at"], row["reference"], row["error"]) == (T0, T0, None, None)
    # The same proof in other letter cases is the same proof.
    shouted = PaymentProof(p.network, p.asset.lower(), p.payer.upper(), p.nonce.upper(), "1", p.valid_before)
    assert not await payments.claim(ws, shouted, LATER)
    # Scoped by workspace: another workspace's claim of it is its own.
    assert await payments.claim(await new_workspace(store), p, LATER)


async def test_of_concurrent_claims_of_one_proof_exactly_one_wins(store: SQLStore) -> None:
    payments, ws, p = PaymentProofs(store), await new_workspace(store), proof()
    won = await asyncio.gather(*(payments.claim(ws, p, T0, run_id=f"run-{i}") for i in range(8)))
    assert sorted(won) == [False] * 7 + [True]
    row = await payments.get(ws, p.id)
    assert row is not None and row["run_id"] == f"run-{won.index(True)}"


async def test_two_replicas_claiming_one_proof_at_once_one_wins(store: SQLStore, db_url: str) -> None:
    if store.is_sqlite:
        pytest.skip("one SQLite file has one writer process (workers > 1 refuses SQLite)")
    other = SQLStore(db_url)
    try:
        ws = await new_workspace(store)
        for _ in range(5):
            p = proof()
            here, there = PaymentProofs(store), PaymentProofs(other)
            won = await asyncio.gather(*(claims.claim(ws, p, T0) for claims in (here, there, here, there)))
            assert sorted(won) == [False, False, False, True]
    finally:
        await other.aclose()


async def test_a_claim_settles_or_fails_once_and_stays_consumed(store: SQLStore) -> None:
    payments, ws = PaymentProofs(store), await new_workspace(store)
    settled, failed = proof(), proof()
    for p in (settled, failed):
        assert await payments.claim(ws, p, T0)
    assert await payments.settle(ws, settled.id, "local:0x" + "ab" * 32, LATER, payment_id="step-9")
    assert not await payments.settle(ws, settled.id, "local:0xother", LATER)  # settled once
    assert not await payments.fail(ws, settled.id, "too late", LATER)
    row = await payments.get(ws, settled.id)
    assert row is not None
    assert (row["state"], row["reference"], row["payment_id"]) == (SETTLED, "local:0x" + "ab" * 32, "step-9")
    assert row["updated_at"] == LATER

    assert await payments.fail(ws, failed.id, "workflow timed out", LATER)
    assert not await payments.release(ws, failed.id, LATER)
    row = await payments.get(ws, failed.id)
    assert row is not None and (row["state"], row["error"]) == (FAILED, "workflow timed out")
    # Neither can be claimed again: a proof is single-use from its claim on.
    assert not await payments.claim(ws, settled, LATER)
    assert not await payments.claim(ws, failed, LATER)


async def test_a_released_claim_may_be_claimed_again_once(store: SQLStore) -> None:
    payments, ws, p = PaymentProofs(store), await new_workspace(store), proof()
    assert await payments.claim(ws, p, T0, run_id="run-1")
    assert await payments.release(ws, p.id, LATER, reason="rate limited")
    row = await payments.get(ws, p.id)
    assert row is not None and (row["state"], row["error"]) == (RELEASED, "rate limited")
    won = await asyncio.gather(*(payments.claim(ws, p, LATER, run_id=f"run-{i}") for i in (2, 3, 4)))
    assert sorted(won) == [False, False, True]
    row = await payments.get(ws, p.id)
    assert row is not None and row["state"] == CLAIMED and row["error"] is None and row["run_id"] != "run-1"


async def test_moves_of_an_unknown_proof_change_nothing(store: SQLStore) -> None:
    payments, ws = PaymentProofs(store), await new_workspace(store)
    assert not await payments.settle(ws, "0" * 64, "local:0x", LATER)
    assert not await payments.fail(ws, "0" * 64, "x", LATER)
    assert await payments.get(ws, "0" * 64) is None


async def test_a_claim_commits_lazily_and_leaves_every_other_commit_durable(store: SQLStore) -> None:
    """The claim is committed without a log flush of its own (its docstring says why); on SQLite that is a connection
    of its own with `synchronous=NORMAL`, so every other connection of the writer still commits with FULL."""
    payments, ws, p = PaymentProofs(store), await new_workspace(store), proof()
    assert await payments.claim(ws, p, T0)
    assert not await payments.claim(ws, p, LATER)
    row = await payments.get(ws, p.id)
    assert row is not None and row["state"] == CLAIMED
    if store.is_sqlite:

        def synchronous() -> int:
            with store.engine.connect() as conn:
                return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())

        assert await store._run(store._writer, synchronous) == 2  # FULL


async def test_the_writer_moves_a_claimed_proof_once_with_its_sales_records(store: SQLStore) -> None:
    """A ProofState goes through the trace writer (in the transaction of the sale's last records): claimed → settled
    or failed; a replayed batch, or a proof no longer claimed, changes nothing."""
    payments, ws = PaymentProofs(store), await new_workspace(store)
    settled, failed, released = proof(), proof(), proof()
    for p in (settled, failed, released):
        assert await payments.claim(ws, p, T0)
    assert await payments.release(ws, released.id, T0)
    batch = [
        ProofState(ws, settled.id, SETTLED, LATER, reference="0xtx"),
        ProofState(ws, failed.id, FAILED, LATER, error="workflow failed"),
        ProofState(ws, released.id, SETTLED, LATER, reference="0xother"),
    ]
    assert await store.write_batch(batch) == WriteResult.SUCCESS
    assert await store.write_batch([ProofState(ws, settled.id, FAILED, LATER, error="late")]) == WriteResult.SUCCESS
    rows = [await payments.get(ws, p.id) for p in (settled, failed, released)]
    got = [(r or {}).get(k) for r in rows for k in ("state", "reference", "error")]
    assert got == [SETTLED, "0xtx", None, FAILED, None, "workflow failed", RELEASED, None, None]


async def test_a_journaled_sale_brings_back_a_claim_the_store_lost(store: SQLStore) -> None:
    """With the trace journal, a sale's ProofState carries its claim's row: replayed after a power loss took the
    claim (committed without an fsync), the proof comes back used, not claimable; a claim the store kept, or
    released and claimed again meanwhile, is left as it is."""
    payments, ws = PaymentProofs(store), await new_workspace(store)
    lost, kept, again = proof(), proof(), proof()
    rows = {
        p.id: claim_row(ws, p, T0, 10_000_000, endpoint_id="ep-1", run_id=f"run-{i}")
        for i, p in enumerate((lost, kept, again))
    }
    assert await payments.claim_prepared(rows[kept.id])
    assert await payments.claim_prepared(rows[again.id])
    assert await payments.fail(ws, again.id, "the workflow failed", T0)
    batch = [ProofState(ws, p.id, SETTLED, LATER, reference="0xtx", claim=rows[p.id]) for p in (lost, kept, again)]
    for _ in range(2):  # a replayed batch changes nothing more
        assert await store.write_batch(batch) == WriteResult.SUCCESS
    got = {p.id: await payments.get(ws, p.id) for p in (lost, kept, again)}
    assert [(r or {}).get("state") for r in got.values()] == [SETTLED, SETTLED, FAILED]
    assert (got[lost.id] or {})["run_id"] == "run-0" and (got[lost.id] or {})["amount_nanos"] == 10_000_000
    assert not await payments.claim(ws, lost, LATER)  # single-use holds after the replay
