"""Paid endpoints and workflow agents' runtimes in SQL: composed over an SQLStore (docs/paid-endpoints.md).

Each change that touches two tables is one transaction: an agent and its runtime, an endpoint and its scoped
virtual key, disabling an endpoint and revoking its key. So no agent exists with half a runtime, and no key
outlives the endpoint it was made for.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from agentledger.store import schema as t

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

# What the hot path needs of an endpoint, in one query: the endpoint, its workflow agent's department and kind,
# and the agent's runtime.
_E, _A, _R = t.paid_endpoints, t.agents, t.workflow_runtimes
_LOADED = select(
    _E,
    _A.c.department_id.label("agent_department_id"),
    _A.c.kind.label("agent_kind"),
    _R.c.type.label("runtime_type"),
    _R.c.url.label("runtime_url"),
    _R.c.method.label("runtime_method"),
    _R.c.auth_name.label("runtime_auth_name"),
    _R.c.auth_value_encrypted.label("runtime_auth_value_encrypted"),
).select_from(
    _E.join(_A, (_A.c.workspace_id == _E.c.workspace_id) & (_A.c.id == _E.c.agent_id)).outerjoin(
        _R, (_R.c.workspace_id == _E.c.workspace_id) & (_R.c.agent_id == _E.c.agent_id)
    )
)


class PaidEndpointStore:
    def __init__(self, store: SQLStore) -> None:
        self.store = store

    # -- runtimes --------------------------------------------------------------------------------------------
    async def create_agent_with_runtime(self, agent: dict[str, Any], runtime: dict[str, Any]) -> None:
        def run(conn: Connection) -> None:
            conn.execute(insert(t.agents).values(**agent))
            conn.execute(insert(t.workflow_runtimes).values(**runtime))

        await self.store._write_or_conflict(run, "Agent")

    async def set_runtime(self, row: dict[str, Any]) -> None:
        """Create or replace an agent's runtime (its `created_at` kept when it had one)."""
        c = t.workflow_runtimes.c
        where = (c.workspace_id == row["workspace_id"], c.agent_id == row["agent_id"])

        def run(conn: Connection) -> None:
            found = conn.execute(select(c.created_at).where(*where)).first()
            if found is None:
                conn.execute(insert(t.workflow_runtimes).values(**row))
            else:
                changes = {k: v for k, v in row.items() if k not in ("workspace_id", "agent_id", "created_at")}
                conn.execute(update(t.workflow_runtimes).where(*where).values(**changes))

        await self.store._write_or_conflict(run, "Runtime")

    async def get_runtime(self, workspace_id: str, agent_id: str) -> dict[str, Any] | None:
        c = t.workflow_runtimes.c
        rows = await self.store._select(
            select(t.workflow_runtimes).where(c.workspace_id == workspace_id, c.agent_id == agent_id)
        )
        return rows[0] if rows else None

    # -- endpoints -------------------------------------------------------------------------------------------
    async def create_endpoint(self, key: dict[str, Any], endpoint: dict[str, Any]) -> None:
        """The endpoint and its scoped virtual key together; Conflict when the slug is taken."""

        def run(conn: Connection) -> None:
            conn.execute(insert(t.virtual_keys).values(**key))
            conn.execute(insert(t.paid_endpoints).values(**endpoint))

        await self.store._write_or_conflict(run, f"A paid endpoint with slug {endpoint['slug']!r}")

    async def list_endpoints(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.paid_endpoints.c
        stmt = select(t.paid_endpoints).where(c.workspace_id == workspace_id).order_by(c.created_at, c.id)
        return await self.store._select(stmt)

    async def get_endpoint(self, workspace_id: str, endpoint_id: str) -> dict[str, Any] | None:
        c = t.paid_endpoints.c
        rows = await self.store._select(
            select(t.paid_endpoints).where(c.workspace_id == workspace_id, c.id == endpoint_id)
        )
        return rows[0] if rows else None

    async def load(self, workspace_id: str, slug: str) -> dict[str, Any] | None:
        """An enabled endpoint by its public address, with its agent's department and kind and its runtime (the
        runtime columns are None when the agent has none)."""
        c = t.paid_endpoints.c
        rows = await self.store._select(
            _LOADED.where(c.workspace_id == workspace_id, c.slug == slug, c.disabled_at.is_(None))
        )
        return rows[0] if rows else None

    async def slugs_of_agent(self, workspace_id: str, agent_id: str) -> list[str]:
        c = t.paid_endpoints.c
        rows = await self.store._select(select(c.slug).where(c.workspace_id == workspace_id, c.agent_id == agent_id))
        return [r["slug"] for r in rows]

    async def update_endpoint(
        self,
        workspace_id: str,
        endpoint_id: str,
        values: dict[str, Any],
        *,
        new_key: dict[str, Any] | None = None,
        now: datetime,
    ) -> tuple[dict[str, Any], str | None] | None:
        """Apply `values` to an enabled endpoint; with `new_key` (its agent changed), the new scoped key is created
        and the old one revoked in the same transaction. Returns the row after and the revoked key's hash, or None
        when there is no such enabled endpoint."""
        c = t.paid_endpoints.c
        where = (c.workspace_id == workspace_id, c.id == endpoint_id, c.disabled_at.is_(None))

        def run(conn: Connection) -> tuple[dict[str, Any], str | None] | None:
            found = conn.execute(select(t.paid_endpoints).where(*where)).mappings().first()
            if found is None:
                return None
            revoked = None
            changes = {**values, "updated_at": now}
            if new_key is not None:
                conn.execute(insert(t.virtual_keys).values(**new_key))
                revoked = _revoke(conn, workspace_id, found["virtual_key_id"], now)
                changes["virtual_key_id"] = new_key["id"]
            conn.execute(update(t.paid_endpoints).where(*where).values(**changes))
            row = conn.execute(select(t.paid_endpoints).where(c.workspace_id == workspace_id, c.id == endpoint_id))
            return dict(row.mappings().one()), revoked

        return await self.store._write_or_conflict(run, "Virtual key")

    async def disable_endpoint(self, workspace_id: str, endpoint_id: str, now: datetime) -> tuple[bool, str | None]:
        """(found, revoked key hash): the endpoint disabled and its scoped key revoked. Disabling a disabled
        endpoint changes nothing (found, no hash)."""
        c = t.paid_endpoints.c

        def run(conn: Connection) -> tuple[bool, str | None]:
            where = (c.workspace_id == workspace_id, c.id == endpoint_id)
            found = conn.execute(select(c.virtual_key_id, c.disabled_at).where(*where)).first()
            if found is None:
                return False, None
            if found.disabled_at is not None:
                return True, None
            conn.execute(update(t.paid_endpoints).where(*where).values(disabled_at=now, updated_at=now))
            return True, _revoke(conn, workspace_id, found.virtual_key_id, now)

        return await self.store._write_or_conflict(run, "Paid endpoint")


def _revoke(conn: Connection, workspace_id: str, key_id: str, now: datetime) -> str | None:
    k = t.virtual_keys.c
    where = (k.workspace_id == workspace_id, k.id == key_id)
    key_hash: str | None = conn.execute(select(k.key_hash).where(*where)).scalar()
    conn.execute(update(t.virtual_keys).where(*where, k.revoked_at.is_(None)).values(revoked_at=now))
    return key_hash
