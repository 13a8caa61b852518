"""Paid fetches' answers kept for replay, and their idempotency claims, composed over an SQLStore.

A fetch under a client's x-request-id is claimed in the model calls' own `idempotency_claims`, under a key of its own
(`x402fetch:<id>`), so a fetch and a chat call may share an id without meeting. Its answer is kept here rather than
in `requests`: a request row is a model call and feeds the books as one, where a fetch is already in them as its
steps. A kept answer holds the gateway's JSON answer, whose seller body `x402_fetch_max_response_bytes` bounds;
retention nulls it with the other bodies and deletes the row with the other traces (store/retention.py).
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from agentledger.store import schema as t
from agentledger.store.base import RequestClaim, StoredResponse
from agentledger.store.sql import pg_claim_statement

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

CLAIM_PREFIX = "x402fetch:"

# The kept answer, or else the claim, in one statement (as for a model call's x-request-id).
_PG_CLAIM = pg_claim_statement(
    "SELECT request_hash, http_status, body, run_id FROM fetch_replays WHERE workspace_id = :ws AND id = :rid",
    key=":key",
)


def claim_key(request_id: str) -> str:
    """The fetch's key in `idempotency_claims` (a long id is hashed to fit the column)."""
    key = CLAIM_PREFIX + request_id
    return key if len(key) <= 128 else CLAIM_PREFIX + hashlib.sha256(request_id.encode()).hexdigest()


def _stored(r: Any) -> StoredResponse | None:
    if r["request_hash"] is None:
        return None
    body = r["body"]
    return StoredResponse(
        r["request_hash"], r["http_status"], None if body is None else bytes(body), "application/json", r["run_id"], 0
    )


class FetchReplayStore:
    """The claims and kept answers of fetches (gateway/claims.py's `ClaimStore`, for `api/x402_fetch.py`)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self._last_purge = time.monotonic()

    async def stored(self, workspace_id: str, request_id: str) -> StoredResponse | None:
        c = t.fetch_replays.c
        rows = await self.store._select(
            select(c.request_hash, c.http_status, c.body, c.run_id).where(
                c.workspace_id == workspace_id, c.id == request_id
            )
        )
        return _stored(rows[0]) if rows else None

    async def claim_request(self, workspace_id: str, request_id: str, holder: str, lease: float) -> RequestClaim:
        """`Store.claim_request`'s contract, over the kept answers of fetches."""
        if self.store.is_sqlite:
            # One process writes SQLite: the in-memory claim serializes duplicates.
            stored = await self.stored(workspace_id, request_id)
            return RequestClaim(stored, claimed=stored is None)
        purge = time.monotonic() - self._last_purge > 60.0
        if purge:
            self._last_purge = time.monotonic()

        def run(conn: Connection) -> RequestClaim:
            if purge:
                c = t.idempotency_claims.c
                conn.execute(delete(t.idempotency_claims).where(c.expires_at < func.now()))
            params = {"ws": workspace_id, "rid": request_id, "key": claim_key(request_id), "holder": holder}
            r = conn.execute(_PG_CLAIM, {**params, "lease": lease}).one()
            stored = _stored(r._mapping)
            return RequestClaim(stored, claimed=stored is None and bool(r.claimed))

        return await self.store._autocommit(run)

    async def release_claim(self, workspace_id: str, request_id: str, holder: str) -> None:
        if self.store.is_sqlite:
            return
        c = t.idempotency_claims.c
        key = claim_key(request_id)

        def run(conn: Connection) -> None:
            conn.execute(
                delete(t.idempotency_claims).where(
                    c.workspace_id == workspace_id, c.request_id == key, c.holder == holder
                )
            )

        await self.store._autocommit(run)

    async def keep(self, workspace_id: str, request_id: str, stored: StoredResponse, started_at: datetime) -> None:
        """Keep a final fetch's answer (durable on return); the first kept for an id stays."""
        row = {
            "workspace_id": workspace_id,
            "id": request_id,
            "request_hash": stored.request_hash,
            "http_status": stored.http_status,
            "body": stored.body,
            "run_id": stored.run_id,
            "started_at": started_at,
        }

        def run(conn: Connection) -> None:
            c = t.fetch_replays.c
            found = conn.execute(select(c.id).where(c.workspace_id == workspace_id, c.id == request_id)).first()
            if found is None:
                conn.execute(insert(t.fetch_replays).values(row))

        try:
            await self.store._write(run)
        except IntegrityError:  # another holder, past an expired lease, kept its answer first: that one stays
            pass
