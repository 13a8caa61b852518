"""Policies (versioned) and their hits, approvals of escalated calls and run controls in SQL: composed by SQLStore as
`store.governance`.

A policy's every change is a new version: the current one is in `policies`, each one ever written in
`policy_versions` (append-only), in one transaction. Approvals change state only forward (pending → approved /
denied / expired; an approved one is used once), each by one conditional UPDATE, so two replicas or two admins
racing on one approval cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from agentledger.core.errors import Conflict
from agentledger.core.policy_hits import MODES
from agentledger.store import schema as t
from agentledger.store.policy_hits import HitFilter, counts_query, hits_query

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

_POLICY_FIELDS = ("name", "scope", "scope_value", "mode", "body")


class GovernanceStore:
    def __init__(self, store: SQLStore) -> None:
        self.store = store

    # -- policies ----------------------------------------------------------------------------------------------
    async def create_policy(self, row: dict[str, Any], by: str | None) -> dict[str, Any]:
        """`row`: workspace_id, id, name, scope, scope_value, mode, body, created_at. Version 1."""
        full = {**row, "version": 1, "updated_at": row["created_at"]}

        def run(conn: Connection) -> None:
            conn.execute(insert(t.policies).values(**full))
            conn.execute(insert(t.policy_versions).values(**_version_row(full, "create", by)))

        try:
            await self.store._write(run)
        except IntegrityError as exc:  # the id is taken (a 500 before)
            raise Conflict(f"Policy {row['id']!r} already exists.", param="id") from exc
        return full

    async def update_policy(
        self, workspace_id: str, policy_id: str, changes: dict[str, Any], now: datetime, by: str | None
    ) -> dict[str, Any] | None:
        """A new version with `changes` applied (None: no such policy). The version is taken under the row's
        lock (PostgreSQL) or the single writer (SQLite): two concurrent updates get two versions."""
        c = t.policies.c

        def run(conn: Connection) -> dict[str, Any] | None:
            stmt = select(t.policies).where(c.workspace_id == workspace_id, c.id == policy_id, c.deleted_at.is_(None))
            if not self.store.is_sqlite:
                stmt = stmt.with_for_update()
            found = conn.execute(stmt).mappings().first()
            if found is None:
                return None
            row = {**dict(found), **changes, "version": found["version"] + 1, "updated_at": now}
            conn.execute(
                update(t.policies)
                .where(c.workspace_id == workspace_id, c.id == policy_id)
                .values(**{k: row[k] for k in (*_POLICY_FIELDS, "version", "updated_at")})
            )
            conn.execute(insert(t.policy_versions).values(**_version_row(row, "update", by, now)))
            return row

        return await self.store._write(run)

    async def delete_policy(self, workspace_id: str, policy_id: str, now: datetime, by: str | None) -> bool:
        c = t.policies.c

        def run(conn: Connection) -> bool:
            found = (
                conn.execute(
                    select(t.policies).where(c.workspace_id == workspace_id, c.id == policy_id, c.deleted_at.is_(None))
                )
                .mappings()
                .first()
            )
            if found is None:
                return False
            row = {**dict(found), "version": found["version"] + 1}
            conn.execute(
                update(t.policies)
                .where(c.workspace_id == workspace_id, c.id == policy_id)
                .values(deleted_at=now, version=row["version"], updated_at=now)
            )
            conn.execute(insert(t.policy_versions).values(**_version_row(row, "delete", by, now)))
            return True

        return await self.store._write(run)

    async def list_policies(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.policies.c
        stmt = select(t.policies).where(c.workspace_id == workspace_id, c.deleted_at.is_(None)).order_by(c.created_at)
        return await self.store._select(stmt)

    async def get_policy(self, workspace_id: str, policy_id: str) -> dict[str, Any] | None:
        c = t.policies.c
        rows = await self.store._select(
            select(t.policies).where(c.workspace_id == workspace_id, c.id == policy_id, c.deleted_at.is_(None))
        )
        return rows[0] if rows else None

    async def policy_versions(
        self, workspace_id: str, policy_id: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Newest first (the first a deleted policy's deletion); none: it never existed."""
        c = t.policy_versions.c
        stmt = (
            select(t.policy_versions)
            .where(c.workspace_id == workspace_id, c.policy_id == policy_id)
            .order_by(c.version.desc())
            .limit(limit)
        )
        return await self.store._select(stmt)

    # -- policy hits (store/policy_hits.py) -----------------------------------------------------------------------
    async def policy_hits(self, workspace_id: str, policy_id: str, flt: HitFilter) -> list[dict[str, Any]]:
        return await self.store._select(hits_query(workspace_id, policy_id, flt), query=True)

    async def policy_hit_counts(
        self, workspace_id: str, windows: Sequence[datetime], department_id: str | None = None
    ) -> dict[str, dict[tuple[int, str], int]]:
        """By live policy: its hits of each mode since each of `windows`, keyed (window's index, mode)."""
        rows = await self.store._select(counts_query(workspace_id, windows, department_id), query=True)
        keys = [(i, mode) for i in range(len(windows)) for mode in MODES]
        return {r["id"]: {(i, mode): int(r[f"{mode}_{i}"]) for i, mode in keys} for r in rows}

    # -- approvals ---------------------------------------------------------------------------------------------
    async def create_approval(self, row: dict[str, Any]) -> None:
        await self.store._insert_row(t.approvals, row, "Approval")

    async def get_approval(self, workspace_id: str, approval_id: str) -> dict[str, Any] | None:
        c = t.approvals.c
        rows = await self.store._select(select(t.approvals).where(c.workspace_id == workspace_id, c.id == approval_id))
        return rows[0] if rows else None

    async def approval_for(self, workspace_id: str, binding: str) -> dict[str, Any] | None:
        """The newest approval bound to this call (workspace, key, run, body)."""
        c = t.approvals.c
        stmt = (
            select(t.approvals)
            .where(c.workspace_id == workspace_id, c.binding == binding)
            .order_by(c.created_at.desc())
            .limit(1)
        )
        rows = await self.store._select(stmt)
        return rows[0] if rows else None

    async def list_approvals(
        self, workspace_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Pending first (oldest first: the longest waiting), then the rest newest first."""
        c = t.approvals.c
        where = [c.workspace_id == workspace_id]
        if status is not None:
            where.append(c.status == status)
        pending_first = case((c.status == "pending", 0), else_=1)
        # In SQL, not after the LIMIT: a page of pending ones must hold the longest waiting, not the newest.
        oldest_pending = case((c.status == "pending", c.created_at), else_=None).asc()
        stmt = (
            select(t.approvals)
            .where(*where)
            .order_by(pending_first, oldest_pending, c.created_at.desc(), c.id)
            .limit(limit)
        )
        return await self.store._select(stmt, query=True)

    async def decide_approval(
        self, workspace_id: str, approval_id: str, status: str, by: str, comment: str | None, now: datetime
    ) -> bool:
        """pending → approved/denied, only while pending and not expired. False: someone decided first, or
        it expired (the caller reads the row to say which)."""
        c = t.approvals.c
        where = (c.workspace_id == workspace_id, c.id == approval_id, c.status == "pending", c.expires_at > now)
        return bool(await self._transition(where, status=status, decided_by=by, comment=comment, decided_at=now))

    async def use_approval(self, workspace_id: str, approval_id: str, now: datetime) -> bool:
        """Take an approved approval for the one call it allows: True once, False ever after."""
        c = t.approvals.c
        where = (c.workspace_id == workspace_id, c.id == approval_id, c.status == "approved", c.used_at.is_(None))
        return bool(await self._transition(where, used_at=now))

    async def expire_approvals(self, now: datetime) -> int:
        c = t.approvals.c
        return await self._transition((c.status == "pending", c.expires_at <= now), status="expired", decided_at=now)

    async def _transition(self, where: tuple[Any, ...], **values: Any) -> int:
        """One conditional UPDATE of approvals: the rows that still met `where` changed, and how many."""

        def run(conn: Connection) -> int:
            return int(conn.execute(update(t.approvals).where(and_(*where)).values(**values)).rowcount)

        return await self.store._write(run)

    # -- run controls ------------------------------------------------------------------------------------------
    async def set_run_control(
        self, workspace_id: str, run_id: str, state: str, reason: str | None, by: str | None, now: datetime
    ) -> None:
        """Cancel, pause or resume a run. A cancelled run stays cancelled: a later pause or resume is a 409."""
        c = t.run_controls.c
        values = {"state": state, "reason": reason, "by": by, "at": now}

        def run(conn: Connection) -> None:
            found = conn.execute(
                select(c.state).where(c.workspace_id == workspace_id, c.run_id == run_id)
            ).scalar_one_or_none()
            if found == "cancelled" and state != "cancelled":
                raise Conflict(f"Run {run_id!r} is cancelled: it cannot be paused or resumed.")
            if found is None:
                conn.execute(insert(t.run_controls).values(workspace_id=workspace_id, run_id=run_id, **values))
            elif found != "cancelled":
                conn.execute(
                    update(t.run_controls).where(c.workspace_id == workspace_id, c.run_id == run_id).values(**values)
                )

        await self.store._write(run)

    async def run_controls(self, workspace_id: str, run_ids: list[str]) -> list[dict[str, Any]]:
        """The controls of these runs (those that have one), by primary key."""
        if not run_ids:
            return []
        c = t.run_controls.c
        return await self.store._select(
            select(t.run_controls).where(c.workspace_id == workspace_id, c.run_id.in_(run_ids))
        )

    async def run_control(self, workspace_id: str, run_id: str) -> dict[str, Any] | None:
        rows = await self.run_controls(workspace_id, [run_id])
        return rows[0] if rows else None


def _version_row(row: dict[str, Any], change: str, by: str | None, at: datetime | None = None) -> dict[str, Any]:
    return {
        "workspace_id": row["workspace_id"],
        "policy_id": row["id"],
        "version": row["version"],
        "change": change,
        **{k: row[k] for k in _POLICY_FIELDS},
        "created_at": at or row["created_at"],
        "created_by": by,
    }
