"""x402 payment proofs in SQL, each claimed once per workspace on every replica: composed over an SQLStore.

Why a claim in the store: a proof (an EIP-3009 authorization) is good until its `validBefore`, and the
facilitator only says it is good, not that nobody else is using it right now. Two replicas verifying the same
replayed proof would both run the workflow. So between verification and anything else the route claims the
proof with one statement, INSERT … ON CONFLICT, and whoever inserted the row owns the proof: PostgreSQL
serializes the conflict across connections and processes, SQLite has one writer thread.

States (schema.x402_payments), each change one conditional UPDATE from `claimed`, so a state is left once:

    claimed ──▶ settled    the facilitator settled it: the money moved (locally: recorded as moved)
            ├─▶ failed     it was used and not settled (the workflow failed or timed out, settlement failed)
            └─▶ released   given back before anything ran (the endpoint's policy refused the call)

A failed proof stays consumed: the issue makes a proof single-use from its claim on, the buyer was not charged
(it was never settled) and signs a fresh authorization to retry, as any x402 client does on a 402. A released
one may be claimed again, by the same statement that claims a new one: nothing ran on it and nothing was
charged, so a client retrying after a rate limit may present it again. A claim whose holder dies before it
settles or fails stays `claimed`: the proof is then spent without a charge (safe for the buyer) until its
`validBefore` passes and no facilitator would settle it anyway.

Every call is off the event loop, on the store's threads: claims on PostgreSQL in autocommit on the reader
pool (one statement, not queued behind trace batches), on SQLite on the writer thread (its only writer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import bindparam, literal_column, select, update
from sqlalchemy.engine import Connection

from agentledger.core.model import ProofState
from agentledger.core.proofs import PaymentProof
from agentledger.store import schema as t
from agentledger.store.bulk import BulkStatement

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

T = TypeVar("T")

CLAIMED, SETTLED, FAILED, RELEASED = "claimed", "settled", "failed", "released"
STATES = (CLAIMED, SETTLED, FAILED, RELEASED)
_ERROR_CHARS = 1024
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z: a validBefore past it is "never expires"


_CLAIM_COLUMNS = (
    "workspace_id",
    "id",
    "network",
    "asset",
    "payer",
    "nonce",
    "amount",
    "amount_nanos",
    "state",
    "endpoint_id",
    "run_id",
    "payment_id",
    "reference",
    "error",
    "valid_before",
    "claimed_at",
    "updated_at",
)


class PaymentProofs:
    """The x402 proof claims of an SQLStore (its connections, threads and error mapping).

    Each statement is built once, with bound parameters: building an upsert per call cost more CPU than
    running it (a paid call claims and then settles or fails its proof)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        insert = self.store._insert(t.x402_payments)
        again = {k: insert.excluded[k] for k in _CLAIM_COLUMNS if k not in ("workspace_id", "id")}
        self._claim = (
            insert.values({k: bindparam(f"p_{k}") for k in _CLAIM_COLUMNS})
            .on_conflict_do_update(
                index_elements=["workspace_id", "id"], set_=again, where=t.x402_payments.c.state == RELEASED
            )
            # RETURNING, not rowcount: psycopg reports a row count for an upsert whose update was skipped.
            .returning(t.x402_payments.c.id)
        )
        # SQLite: the same upsert through the driver (`SQLStore.lazy_first`), its values bound by column.
        self._claim_driver: BulkStatement | None = None
        if store.is_sqlite:
            by_column = insert.on_conflict_do_update(
                index_elements=["workspace_id", "id"],
                set_=again,
                where=t.x402_payments.c.state == literal_column(f"'{RELEASED}'"),
            ).returning(t.x402_payments.c.id)
            self._claim_driver = BulkStatement(by_column, t.x402_payments, _CLAIM_COLUMNS, store.engine.dialect)

    async def claim(
        self,
        workspace_id: str,
        proof: PaymentProof,
        now: datetime,
        *,
        amount_nanos: int | None = None,
        endpoint_id: str | None = None,
        run_id: str | None = None,
        payment_id: str | None = None,
    ) -> bool:
        """`claim_row`'s row claimed: see `claim_prepared`."""
        return await self.claim_prepared(
            claim_row(
                workspace_id, proof, now, amount_nanos, endpoint_id=endpoint_id, run_id=run_id, payment_id=payment_id
            )
        )

    async def claim_prepared(self, row: dict[str, Any]) -> bool:
        """Claim a proof for its workspace: True when this call owns it now (a new proof, or one released),
        False when it is claimed, settled or failed already (a replay).

        Committed at once, so every replica sees it, but without a log flush of its own: it becomes durable with
        the next durable commit (the run's records, before the answer; with the trace journal, the sale's
        `ProofState` carries the row, so the records' replay brings it back). Lost in a crash, nothing was settled
        (settlement comes after the workflow, and its records' commit flushes the claim too), so the buyer was
        not charged and may send the same payment again: single-use holds for every payment that was charged."""
        if self._claim_driver is not None:
            return await self.store.lazy_first(self._claim_driver, row) is not None
        params = _claim_params(row)
        stmt = self._claim

        def run(conn: Connection) -> bool:
            return conn.execute(stmt, params).first() is not None

        return await self.store.lazy_write(run)

    async def settle(
        self,
        workspace_id: str,
        proof_id: str,
        reference: str,
        now: datetime,
        *,
        payment_id: str | None = None,
    ) -> bool:
        """claimed → settled, with the settlement's transaction reference. False if it was not `claimed`. (A paid
        call's own proof moves with its last records instead: `ProofState`, `proof_state_update`.)"""
        changes: dict[str, Any] = {"reference": reference[:256]}
        if payment_id is not None:
            changes["payment_id"] = payment_id
        return await self._move(workspace_id, proof_id, SETTLED, now, changes)

    async def fail(self, workspace_id: str, proof_id: str, error: str, now: datetime) -> bool:
        """claimed → failed: used, not settled, consumed for good. False if it was not `claimed`."""
        return await self._move(workspace_id, proof_id, FAILED, now, {"error": error[:_ERROR_CHARS]})

    async def release(self, workspace_id: str, proof_id: str, now: datetime, *, reason: str | None = None) -> bool:
        """claimed → released: nothing ran on it, it may be claimed again. False if it was not `claimed`."""
        return await self._move(workspace_id, proof_id, RELEASED, now, {"error": (reason or "")[:_ERROR_CHARS] or None})

    async def get(self, workspace_id: str, proof_id: str) -> dict[str, Any] | None:
        c = t.x402_payments.c
        rows = await self.store._select(select(t.x402_payments).where(c.workspace_id == workspace_id, c.id == proof_id))
        return rows[0] if rows else None

    async def _move(self, workspace_id: str, proof_id: str, state: str, now: datetime, changes: dict[str, Any]) -> bool:
        stmt = move_statement(tuple(sorted(changes)))
        params = move_params(workspace_id, proof_id, state, now, changes)

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt, params).rowcount)

        return await self._one_statement(run)

    async def _one_statement(self, run: Callable[[Connection], T]) -> T:
        return await (self.store._write(run) if self.store.is_sqlite else self.store._autocommit(run))


@functools.cache
def move_statement(names: tuple[str, ...]) -> Any:
    """`claimed` → a state, setting the columns `names` too: a proof moved already (or a replayed batch's
    `ProofState`) changes nothing. Built once per set of columns: building it cost more CPU than running it."""
    c = t.x402_payments.c
    return (
        update(t.x402_payments)
        .where(c.workspace_id == bindparam("m_ws"), c.id == bindparam("m_id"), c.state == CLAIMED)
        .values(state=bindparam("m_state"), updated_at=bindparam("m_now"), **{k: bindparam(f"m_{k}") for k in names})
    )


def move_params(workspace_id: str, proof_id: str, state: str, now: datetime, changes: dict[str, Any]) -> dict[str, Any]:
    return {"m_ws": workspace_id, "m_id": proof_id, "m_state": state, "m_now": now} | {
        f"m_{k}": v for k, v in changes.items()
    }


_PROOF_STATE_COLUMNS = ("error", "reference")


def claim_row(
    workspace_id: str,
    proof: PaymentProof,
    now: datetime,
    amount_nanos: int | None,
    *,
    endpoint_id: str | None = None,
    run_id: str | None = None,
    payment_id: str | None = None,
) -> dict[str, Any]:
    """A proof's row as its claim writes it (`_CLAIM_COLUMNS`)."""
    return {
        "workspace_id": workspace_id,
        "id": proof.id,
        "network": proof.network,
        "asset": proof.asset,
        "payer": proof.payer,
        "nonce": proof.nonce,
        "amount": proof.amount,
        "amount_nanos": amount_nanos,
        "state": CLAIMED,
        "endpoint_id": endpoint_id,
        "run_id": run_id,
        "payment_id": payment_id,
        "reference": None,
        "error": None,
        "valid_before": datetime.fromtimestamp(max(0, min(proof.valid_before, _LAST_SECOND)), UTC),
        "claimed_at": now,
        "updated_at": now,
    }


def claim_restore_statement(insert: Any) -> Any:
    """Insert a journaled claim's row if the store lost it; a row there already (any state) is left alone."""
    return insert.values({k: bindparam(f"p_{k}") for k in _CLAIM_COLUMNS}).on_conflict_do_nothing(
        index_elements=["workspace_id", "id"]
    )


def claim_restore_params(ev: ProofState) -> dict[str, Any] | None:
    """A journaled sale's claim, for the writer's insert-if-missing ahead of the move (`ProofState.claim`)."""
    return None if ev.claim is None else _claim_params(ev.claim)


def _claim_params(row: dict[str, Any]) -> dict[str, Any]:
    """A claim row as the bound parameters of the claim and restore statements (`p_<column>`)."""
    return {f"p_{k}": v for k, v in row.items()}


def proof_state_update() -> Any:
    """The writer's statement for a `ProofState` (core.model), the same conditional move as `PaymentProofs`'."""
    return move_statement(_PROOF_STATE_COLUMNS)


def proof_state_params(ev: ProofState) -> dict[str, Any]:
    reference = None if ev.reference is None else ev.reference[:256]
    error = None if ev.error is None else ev.error[:_ERROR_CHARS]
    return move_params(ev.workspace_id, ev.proof_id, ev.state, ev.at, {"error": error, "reference": reference})
