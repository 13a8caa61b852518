"""Payment signers in SQL: a workspace's keys for outbound x402 payments, composed over an SQLStore.

The key is stored encrypted by the caller (api/payment_signers.py, with the SecretBox) and only ever decrypted in
memory for one payment. Signers are read from the store for every payment, not cached: a revoked signer must stop
paying at once, on every replica, and a paid fetch is no hot path.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from agentledger.store import schema as t

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore


class PaymentSignerStore:
    """The payment signers of an SQLStore (its connections, threads and error mapping)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store

    async def create(self, row: dict[str, Any]) -> None:
        """409 (Conflict) when the workspace already has a signer of that name, revoked or not."""
        await self.store._insert_row(t.payment_signers, row, "A payment signer of that name")

    async def list_signers(self, workspace_id: str) -> list[dict[str, Any]]:
        """Every signer, revoked ones too, oldest first."""
        c = t.payment_signers.c
        stmt = select(t.payment_signers).where(c.workspace_id == workspace_id).order_by(c.created_at, c.id)
        return await self.store._select(stmt)

    async def get(self, workspace_id: str, signer_id: str) -> dict[str, Any] | None:
        c = t.payment_signers.c
        rows = await self.store._select(
            select(t.payment_signers).where(c.workspace_id == workspace_id, c.id == signer_id)
        )
        return rows[0] if rows else None

    async def active(self, workspace_id: str) -> list[dict[str, Any]]:
        """The signers that may pay, oldest first: the order a fetch that names none tries them in."""
        c = t.payment_signers.c
        stmt = (
            select(t.payment_signers)
            .where(c.workspace_id == workspace_id, c.revoked_at.is_(None))
            .order_by(c.created_at, c.id)
        )
        return await self.store._select(stmt)

    async def revoke(self, workspace_id: str, signer_id: str, now: datetime) -> bool:
        """False when there is no such signer, or it was revoked already."""
        c = t.payment_signers.c
        stmt = (
            update(t.payment_signers)
            .where(c.workspace_id == workspace_id, c.id == signer_id, c.revoked_at.is_(None))
            .values(revoked_at=now)
        )

        def run(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return await self.store._write(run)
