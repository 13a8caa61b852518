"""Members and their personal access tokens in SQL: composed by SQLStore as `store.members`.

Revoking a member revokes, in the same transaction, every virtual key they own and every PAT they hold: the
caller gets the keys' hashes back to drop them from the caches of every replica (gateway.invalidate_key).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from agentledger.core.errors import Conflict
from agentledger.core.model import AdminPrincipal, Role
from agentledger.store import schema as t

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

_PAT_PUBLIC = [c for c in t.personal_access_tokens.c if c.name != "token_hash"]


class MemberStore:
    def __init__(self, store: SQLStore) -> None:
        self.store = store

    # -- members -------------------------------------------------------------------------------------------
    async def create(self, row: dict[str, Any]) -> None:
        try:
            await self.store._write(lambda conn: conn.execute(insert(t.members).values(**row)))
        except IntegrityError as exc:
            raise Conflict(f"A member with email {row['email']!r} already exists.", param="email") from exc

    async def list_members(self, workspace_id: str, department_id: str | None = None) -> list[dict[str, Any]]:
        c = t.members.c
        stmt = select(t.members).where(c.workspace_id == workspace_id)
        if department_id is not None:
            stmt = stmt.where(c.department_id == department_id)
        return await self.store._select(stmt.order_by(c.created_at, c.id))

    async def get(self, workspace_id: str, member_id: str) -> dict[str, Any] | None:
        c = t.members.c
        rows = await self.store._select(select(t.members).where(c.workspace_id == workspace_id, c.id == member_id))
        return rows[0] if rows else None

    async def update(self, workspace_id: str, member_id: str, changes: dict[str, Any]) -> None:
        c = t.members.c
        stmt = update(t.members).where(c.workspace_id == workspace_id, c.id == member_id).values(**changes)
        await self.store._write(lambda conn: conn.execute(stmt))

    async def revoke(self, workspace_id: str, member_id: str, now: datetime) -> tuple[list[str], list[str]] | None:
        """The member revoked with their keys and PATs, in one transaction: (the keys' hashes, the PATs' hashes)
        that were live, for the caches; None: no such member."""
        m, k, p = t.members.c, t.virtual_keys.c, t.personal_access_tokens.c

        def run(conn: Connection) -> tuple[list[str], list[str]] | None:
            found = conn.execute(select(m.id).where(m.workspace_id == workspace_id, m.id == member_id)).first()
            if found is None:
                return None
            conn.execute(
                update(t.members)
                .where(m.workspace_id == workspace_id, m.id == member_id, m.revoked_at.is_(None))
                .values(status="revoked", revoked_at=now, updated_at=now)
            )
            live_keys = (k.workspace_id == workspace_id, k.owner_member_id == member_id, k.revoked_at.is_(None))
            keys = [r[0] for r in conn.execute(select(k.key_hash).where(*live_keys))]
            conn.execute(update(t.virtual_keys).where(*live_keys).values(revoked_at=now))
            live_pats = (p.workspace_id == workspace_id, p.member_id == member_id, p.revoked_at.is_(None))
            pats = [r[0] for r in conn.execute(select(p.token_hash).where(*live_pats))]
            conn.execute(update(t.personal_access_tokens).where(*live_pats).values(revoked_at=now))
            return keys, pats

        return await self.store._write(run)

    # -- personal access tokens ----------------------------------------------------------------------------
    async def create_token(self, row: dict[str, Any]) -> None:
        await self.store._insert_row(t.personal_access_tokens, row, "Personal access token")

    async def list_tokens(self, workspace_id: str, member_id: str | None) -> list[dict[str, Any]]:
        c = t.personal_access_tokens.c
        stmt = select(*_PAT_PUBLIC).where(c.workspace_id == workspace_id)
        if member_id is not None:
            stmt = stmt.where(c.member_id == member_id)
        return await self.store._select(stmt.order_by(c.created_at, c.id))

    async def get_token(self, workspace_id: str, token_id: str) -> dict[str, Any] | None:
        c = t.personal_access_tokens.c
        rows = await self.store._select(
            select(t.personal_access_tokens).where(c.workspace_id == workspace_id, c.id == token_id)
        )
        return rows[0] if rows else None

    async def revoke_token(self, workspace_id: str, token_id: str, now: datetime) -> None:
        c = t.personal_access_tokens.c
        stmt = (
            update(t.personal_access_tokens)
            .where(c.workspace_id == workspace_id, c.id == token_id, c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await self.store._write(lambda conn: conn.execute(stmt))

    async def token_hashes(self, workspace_id: str, member_id: str) -> list[str]:
        c = t.personal_access_tokens.c
        stmt = select(c.token_hash).where(c.workspace_id == workspace_id, c.member_id == member_id)
        return [r["token_hash"] for r in await self.store._select(stmt)]

    async def principal_for_token(self, token_hash: str) -> AdminPrincipal | None:
        """A live PAT of an active member, as the principal its requests speak for (expiry is the caller's: the
        principal is cached)."""
        p, m = t.personal_access_tokens.c, t.members.c
        stmt = (
            select(p.workspace_id, p.id, p.member_id, p.scopes, p.expires_at, m.role, m.department_id)
            .join(t.members, (m.workspace_id == p.workspace_id) & (m.id == p.member_id))
            .where(p.token_hash == token_hash, p.revoked_at.is_(None), m.status == "active")
        )
        rows = await self.store._select(stmt)
        if not rows:
            return None
        r = rows[0]
        return AdminPrincipal(
            workspace_id=r["workspace_id"],
            token_id=r["id"],
            role=Role(r["role"]),
            member_id=r["member_id"],
            scopes=frozenset(r["scopes"]),
            department_id=r["department_id"],
            expires_at=r["expires_at"],
        )
