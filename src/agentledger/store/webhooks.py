"""Alerts, webhooks and their delivery outbox in SQL: the store's alerting domain, composed over an SQLStore.

The trace writer records alerts with the batch that carries them (`SQLStore._apply` → `record_alerts`): an alert
newly inserted enqueues one delivery per subscribed webhook in the same transaction, so an acknowledged alert is
never lost and a replayed one enqueues nothing. Everything else here is management, the delivery worker's claims
and outcomes, and the detectors' reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, or_, select, tuple_, update
from sqlalchemy.engine import Connection

from agentledger.core import alerts as core_alerts
from agentledger.core.books import COST_UNIT
from agentledger.core.model import Alert
from agentledger.store import schema as t

if TYPE_CHECKING:
    from agentledger.store.sql import SQLStore

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def alert_values(a: Alert) -> dict[str, Any]:
    return {
        "workspace_id": a.workspace_id,
        "kind": a.kind,
        "dedupe_key": a.dedupe_key,
        "id": core_alerts.alert_id(a.workspace_id, a.kind, a.dedupe_key),
        "severity": a.severity,
        "budget_id": a.budget_id,
        "run_id": a.run_id,
        "request_id": a.request_id,
        "agent_id": a.agent_id,
        "department_id": a.department_id,
        "policy_id": a.policy_id,
        "approval_id": a.approval_id,
        "message": a.message,
        "data": a.data,
        "at": a.at,
    }


def fold(into: dict[tuple[str, str], dict[str, Any]], a: Alert) -> None:
    """The first of repeats of one alert within a batch (PostgreSQL: one upsert may not touch a row twice)."""
    values = alert_values(a)
    into.setdefault((a.workspace_id, values["id"]), values)


def payload(alert: dict[str, Any], delivery: str, webhook_id: str) -> dict[str, Any]:
    """The JSON body a webhook receives (docs/alerts.md, "Payload")."""
    body = core_alerts.public_fields(alert)
    body["at"] = body["at"].isoformat()
    return {
        "id": delivery,
        "event": alert["kind"],
        "webhook_id": webhook_id,
        "workspace_id": alert["workspace_id"],
        "alert": body,
    }


def record_alerts(conn: Connection, new: list[dict[str, Any]], insert: Callable[[Any], Any], now: datetime) -> int:
    """Enqueue the deliveries of alerts just inserted (`new`) in the writer's transaction; returns how many."""
    if not new:
        return 0
    c = t.webhooks.c
    hooks = conn.execute(
        select(c.workspace_id, c.id, c.kinds).where(
            c.workspace_id.in_({a["workspace_id"] for a in new}), c.deleted_at.is_(None)
        )
    ).all()
    rows = []
    for a in new:
        for ws, hook_id, kinds in hooks:
            if ws == a["workspace_id"] and (kinds is None or a["kind"] in kinds):
                ident = core_alerts.delivery_id(a["id"], hook_id)
                rows.append(_delivery(ws, ident, hook_id, a["id"], a["kind"], payload(a, ident, hook_id), now))
    if rows:
        conn.execute(insert(t.webhook_deliveries).on_conflict_do_nothing(), rows)
    return len(rows)


def _delivery(
    ws: str, ident: str, hook: str, alert: str | None, event: str, body: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "workspace_id": ws,
        "id": ident,
        "webhook_id": hook,
        "alert_id": alert,
        "event": event,
        "payload": body,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": None,
        "last_status_code": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
    }


def _cost(carry: Any, nanos: Any) -> int:
    return int(carry or 0) * COST_UNIT + int(nanos or 0)


class WebhookStore:
    """The alerting domain of an SQLStore (its connections, threads and error mapping)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store

    # -- alerts ---------------------------------------------------------------------------------------------------
    async def alerts(
        self,
        workspace_id: str,
        *,
        kind: str | None = None,
        severity: str | None = None,
        since: datetime | None = None,
        cursor: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first by (at, id); `cursor` is the (at, id) of the last row of the previous page."""
        c = t.alerts.c
        where = [c.workspace_id == workspace_id]
        if kind is not None:
            where.append(c.kind == kind)
        if severity is not None:
            where.append(c.severity == severity)
        if since is not None:
            where.append(c.at >= since)
        if cursor is not None:
            where.append(or_(c.at < cursor[0], and_(c.at == cursor[0], c.id < cursor[1])))
        stmt = select(t.alerts).where(*where).order_by(c.at.desc(), c.id.desc()).limit(limit)
        return await self.store._select(stmt, query=True)

    # -- webhooks -------------------------------------------------------------------------------------------------
    async def create(self, row: dict[str, Any]) -> None:
        await self.store._insert_row(t.webhooks, row, "Webhook")

    async def list_hooks(self, workspace_id: str) -> list[dict[str, Any]]:
        c = t.webhooks.c
        stmt = select(t.webhooks).where(c.workspace_id == workspace_id, c.deleted_at.is_(None)).order_by(c.created_at)
        return await self.store._select(stmt)

    async def get(self, workspace_id: str, webhook_id: str) -> dict[str, Any] | None:
        c = t.webhooks.c
        stmt = select(t.webhooks).where(c.workspace_id == workspace_id, c.id == webhook_id, c.deleted_at.is_(None))
        rows = await self.store._select(stmt)
        return rows[0] if rows else None

    async def delete(self, workspace_id: str, webhook_id: str, now: datetime) -> bool:
        """Deleted, with its pending deliveries failed: nothing is sent to it afterwards."""
        c, d = t.webhooks.c, t.webhook_deliveries.c

        def run(conn: Connection) -> bool:
            res = conn.execute(
                update(t.webhooks)
                .where(c.workspace_id == workspace_id, c.id == webhook_id, c.deleted_at.is_(None))
                .values(deleted_at=now)
            )
            if not res.rowcount:
                return False
            conn.execute(
                update(t.webhook_deliveries)
                .where(d.workspace_id == workspace_id, d.webhook_id == webhook_id, d.status == PENDING)
                .values(status=FAILED, last_error="webhook deleted", next_attempt_at=None, updated_at=now)
            )
            return True

        return await self.store._write(run)

    async def enqueue_test(self, workspace_id: str, webhook_id: str, ident: str, now: datetime) -> None:
        body = {
            "id": ident,
            "event": core_alerts.TEST_EVENT,
            "webhook_id": webhook_id,
            "workspace_id": workspace_id,
            "alert": None,
            "at": now.isoformat(),
        }
        row = _delivery(workspace_id, ident, webhook_id, None, core_alerts.TEST_EVENT, body, now)
        await self.store._insert_row(t.webhook_deliveries, row, "Delivery")

    async def deliveries(
        self, workspace_id: str, webhook_id: str, *, limit: int = 100, cursor: tuple[datetime, str] | None = None
    ) -> list[dict[str, Any]]:
        """The delivery log, newest first by (created_at, id)."""
        d = t.webhook_deliveries.c
        where = [d.workspace_id == workspace_id, d.webhook_id == webhook_id]
        if cursor is not None:
            where.append(or_(d.created_at < cursor[0], and_(d.created_at == cursor[0], d.id < cursor[1])))
        cols = [col for col in t.webhook_deliveries.c if col.name not in ("payload", "lease_until")]
        stmt = select(*cols).where(*where).order_by(d.created_at.desc(), d.id.desc()).limit(limit)
        return await self.store._select(stmt, query=True)

    # -- the delivery worker ----------------------------------------------------------------------------------------
    async def claim(self, now: datetime, lease: float, limit: int) -> list[dict[str, Any]]:
        """Due deliveries (pending, next attempt passed, no live lease), each leased until now + `lease` and its
        attempt counted, with its webhook's url and encrypted secret. PostgreSQL: FOR UPDATE SKIP LOCKED, so
        replicas claiming at once take different rows; a lease outlives an attempt, so a row leased to a worker
        that died is claimed again once it runs out."""
        d, w = t.webhook_deliveries.c, t.webhooks.c
        until = now + timedelta(seconds=lease)
        due = (
            select(d.workspace_id, d.id)
            .where(d.status == PENDING, d.next_attempt_at <= now, or_(d.lease_until.is_(None), d.lease_until < now))
            .order_by(d.next_attempt_at)
            .limit(limit)
        )
        if not self.store.is_sqlite:
            due = due.with_for_update(skip_locked=True)

        def run(conn: Connection) -> list[dict[str, Any]]:
            keys = [tuple(r) for r in conn.execute(due)]
            if not keys:
                return []
            pk = tuple_(d.workspace_id, d.id)
            conn.execute(
                update(t.webhook_deliveries)
                .where(pk.in_(keys))
                .values(lease_until=until, attempts=d.attempts + 1, updated_at=now)
            )
            stmt = (
                select(t.webhook_deliveries, w.url, w.secret_encrypted)
                .join(t.webhooks, and_(w.workspace_id == d.workspace_id, w.id == d.webhook_id))
                .where(pk.in_(keys))
            )
            return [dict(r._mapping) for r in conn.execute(stmt)]

        return await self.store._write(run)

    async def finish(
        self,
        row: dict[str, Any],
        *,
        status: str,
        now: datetime,
        code: int | None,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        """One attempt's outcome: delivered, failed, or pending again at `retry_at`. Only while this worker still
        holds its lease (an attempt that outlived it leaves the row to whoever claimed it since)."""
        d = t.webhook_deliveries.c

        def run(conn: Connection) -> None:
            conn.execute(
                update(t.webhook_deliveries)
                .where(d.workspace_id == row["workspace_id"], d.id == row["id"], d.lease_until == row["lease_until"])
                .values(
                    status=status,
                    last_status_code=code,
                    last_error=error,
                    next_attempt_at=retry_at,
                    lease_until=None,
                    updated_at=now,
                )
            )

        await self.store._write(run)

    # -- the detectors' reads ---------------------------------------------------------------------------------------
    async def workspace_ids(self) -> list[str]:
        return [r["id"] for r in await self.store._select(select(t.workspaces.c.id))]

    async def agent_spend(
        self, workspace_id: str, start: datetime, end: datetime, agents: Iterable[str] | None = None
    ) -> dict[str, tuple[int, str | None]]:
        """Σ cost per agent over the hourly rollup's hours in [start, end), with the agent's department: a range
        of the rollup's primary key (workspace_id, hour, ...)."""
        h = t.rollup_hourly.c
        where = [h.workspace_id == workspace_id, h.hour >= start, h.hour < end, h.agent_id.is_not(None)]
        if agents is not None:
            where.append(h.agent_id.in_(list(agents)))
        stmt = (
            select(h.agent_id, func.sum(h.cost_carry), func.sum(h.cost_nanos), func.max(h.department_id))
            .where(*where)
            .group_by(h.agent_id)
        )

        def run(conn: Connection) -> dict[str, tuple[int, str | None]]:
            return {agent: (_cost(carry, nanos), dep) for agent, carry, nanos, dep in conn.execute(stmt)}

        return await self.store._read(run, query=True)

    async def margins(
        self, workspace_id: str, start: datetime, end: datetime, by: str
    ) -> dict[str, tuple[int, int, str | None, str | None]]:
        """(revenue, margin, agent, department) per paid endpoint (`by` "endpoint_id") or per agent ("agent_id")
        that had revenue in the hourly rollup's hours [start, end): a range of the rollup's primary key. Margin is
        core.finance.Pnl's: revenue − refunds − cost. Agent and department are the group's own (an endpoint's
        runs are its workflow agent's)."""
        h = t.rollup_hourly.c
        column = h.endpoint_id if by == "endpoint_id" else h.agent_id
        sums = [
            func.sum(getattr(h, f"{m}_carry")) if part else func.sum(getattr(h, f"{m}_nanos"))
            for m in ("revenue", "refund", "cost")
            for part in (1, 0)
        ]
        stmt = (
            select(column, *sums, func.max(h.agent_id), func.max(h.department_id))
            .where(h.workspace_id == workspace_id, h.hour >= start, h.hour < end, column.is_not(None))
            .group_by(column)
        )

        def run(conn: Connection) -> dict[str, tuple[int, int, str | None, str | None]]:
            out = {}
            for row in conn.execute(stmt):
                key, rc, rn, fc, fn, cc, cn, agent, dep = tuple(row)
                revenue, refunds, cost = _cost(rc, rn), _cost(fc, fn), _cost(cc, cn)
                if revenue > 0:
                    out[key] = (revenue, revenue - refunds - cost, agent, dep)
            return out

        return await self.store._read(run, query=True)

    async def error_counts(self, since: datetime) -> dict[str, tuple[int, int]]:
        """(calls, errors) per workspace for requests started at or after `since`: a range of the requests'
        time index (ix_requests_started_ws), the only kept figure with errors by time."""
        r = t.requests.c
        errors = func.sum(case((r.status == "error", 1), else_=0))
        stmt = select(r.workspace_id, func.count(), errors).where(r.started_at >= since).group_by(r.workspace_id)

        def run(conn: Connection) -> dict[str, tuple[int, int]]:
            return {ws: (int(calls), int(errs or 0)) for ws, calls, errs in conn.execute(stmt)}

        return await self.store._read(run, query=True)
