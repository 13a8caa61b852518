"""The audit log in SQL (docs/audit.md): appending to each workspace's chain, reading and exporting it, its signed
checkpoints and signing keys, verification and pruning. Composed by SQLStore as `store.audit`.

Appending happens only inside the trace writer's transaction (`SQLStore._apply` → `append`): control-plane events
arrive as `AuditRecord`s through the pipeline, and the batch's data-plane decisions are read off the rows it
inserted. Per workspace, one upsert of the chain's head row takes its lock (PostgreSQL: the row lock, held to the
commit; SQLite: the one writer), the batch's events get the next seqs in order, and the head moves once: a batch
costs one head write per workspace, however many decisions it holds, and writers on several replicas append one
after the other, never from the same head. The primary key (workspace, seq) would refuse a fork regardless.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from agentledger.audit import chain
from agentledger.audit.checkpoints import load_public
from agentledger.audit.decisions import decision_change, decision_event_id
from agentledger.audit.verify import ChainVerifier, Report
from agentledger.core.errors import InvalidRequest
from agentledger.core.ids import new_id
from agentledger.core.model import Actor, AuditRecord
from agentledger.store import schema as t

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from agentledger.store.sql import SQLStore

# The chain of failed authentications that name no workspace (an unknown token): not a workspace id (those start
# with a letter or digit), so no workspace's chain can be it. The CLI reads and verifies it like any other.
INSTALLATION = "_installation"
PAGE = 1000  # events a page of an export or a verification reads


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor_type: str | None = None
    actor_id: str | None = None
    action: str | None = None  # exact, or `prefix.*`
    target_type: str | None = None
    target_id: str | None = None
    run_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_seq: int | None = None  # the cursor: events older than this seq
    limit: int = 100


def view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored row as the event's view (audit/chain.py): what is hashed, the hash, and nothing else."""
    return {
        "workspace_id": row["workspace_id"],
        "seq": int(row["seq"]),
        "id": row["id"],
        "time": chain.time_text(row["time"]),
        "actor": {"type": row["actor_type"], "id": row["actor_id"], "role": row["actor_role"]},
        "action": row["action"],
        "target": {"type": row["target_type"], "id": row["target_id"]},
        "before": row["before"],
        "after": row["after"],
        "client_ip": row["client_ip"],
        "request_id": row["request_id"],
        "run_id": row["run_id"],
        "step_id": row["step_id"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }


def _row(v: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    return {
        "workspace_id": v["workspace_id"],
        "seq": v["seq"],
        "id": v["id"],
        "time": at,
        "actor_type": v["actor"]["type"],
        "actor_id": v["actor"]["id"],
        "actor_role": v["actor"]["role"],
        "action": v["action"],
        "target_type": v["target"]["type"],
        "target_id": v["target"]["id"],
        "before": v["before"],
        "after": v["after"],
        "client_ip": v["client_ip"],
        "request_id": v["request_id"],
        "run_id": v["run_id"],
        "step_id": v["step_id"],
        "prev_hash": v["prev_hash"],
        "hash": v["hash"],
    }


def _checkpoint(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        k: (int(row[k]) if k == "seq" else row[k])
        for k in ("workspace_id", "seq", "hash", "key_id", "signed_at", "signature")
    }


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([seq])).decode().rstrip("=")


def decode_cursor(raw: str) -> int:
    try:
        (seq,) = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < 2**63:
            return seq
    except (ValueError, TypeError):
        pass
    raise InvalidRequest("'cursor' must be the next_cursor of a previous page.", param="cursor")


def decisions(
    steps: Iterable[Mapping[str, Any]], requests: Iterable[tuple[Mapping[str, Any] | None, Mapping[str, Any]]]
) -> list[AuditRecord]:
    """The audit events of the decisions among rows a batch inserted: its policy_check steps, and the requests
    outside a run (a request in a run has its policy_check step, which already says the same)."""
    out: list[AuditRecord] = []
    for step in steps:
        # Only the gateway's own checks (they carry the id of the call or check they decided): an agent may post a
        # step of kind policy_check through the step API, which must not forge a decision in the audit log.
        if step["kind"] != "policy_check" or step["request_id"] is None:
            continue
        found = decision_change(step["attributes"])
        if found is not None:
            ws = step["workspace_id"]
            source = f"step\0{step['id']}"
            at = step["ended_at"] or step["started_at"]
            out.append(_decision(ws, source, at, found, step, step["request_id"] or step["id"], step["id"]))
    for _, req in requests:
        if req["run_id"] is not None:
            continue
        found = decision_change(req["governance"])
        if found is not None:
            ws = req["workspace_id"]
            source = f"request\0{req['id']}\0{req['attempts']}"
            out.append(_decision(ws, source, req["ended_at"] or req["started_at"], found, req, req["id"], None))
    return out


def _decision(
    ws: str,
    source: str,
    at: datetime,
    found: tuple[str, dict[str, Any]],
    row: Mapping[str, Any],
    request_id: str,
    step_id: str | None,
) -> AuditRecord:
    action, after = found
    by = after.get("decided_by")
    decider = str(by.get("kind")) if isinstance(by, Mapping) and by.get("kind") else "policy"
    after["caller"] = {k: row.get(k) for k in ("virtual_key_id", "agent_id", "department_id")}
    return AuditRecord(
        workspace_id=ws,
        event_id=decision_event_id(ws, source),
        at=at,
        actor=Actor("system", decider),
        action=action,
        target_type="request",
        target_id=request_id,
        after=after,
        request_id=request_id,
        run_id=row.get("run_id"),
        step_id=step_id,
    )


class AuditStore:
    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.appended = 0  # events this process has appended (the checkpointer's count; the writer thread's)
        self._statements: dict[str, Any] = {}

    # -- appending (inside the trace writer's transaction) ----------------------------------------------------------
    def _statement(self, name: str) -> Any:
        """The append's statements, built once: building them cost more CPU than running them, on every batch."""
        stmt = self._statements.get(name)
        if stmt is not None:
            return stmt
        h, c = t.audit_heads.c, t.audit_events.c
        if name == "head":
            # An upsert that changes nothing, RETURNING the head: one statement creates the head if need be, takes its
            # row lock until the commit, and reads it (on SQLite the transaction's first write: the writer's lock).
            upsert = self.store._insert(t.audit_heads)
            stmt = upsert.on_conflict_do_update(index_elements=["workspace_id"], set_={"seq": h.seq}).returning(
                h.seq, h.hash
            )
        elif name == "known":
            stmt = select(c.id).where(c.workspace_id == bindparam("ws"), c.id.in_(bindparam("ids", expanding=True)))
        else:
            stmt = (
                update(t.audit_heads)
                .where(h.workspace_id == bindparam("ws"))
                .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"), updated_at=bindparam("at"))
            )
        self._statements[name] = stmt
        return stmt

    def _event_insert(self) -> Any:
        return insert(t.audit_events)

    def append(
        self, conn: Connection, records: Sequence[AuditRecord], now: datetime, *, fresh: Sequence[AuditRecord] = ()
    ) -> int:
        """Chain `records`, then `fresh`, in order, per workspace (workspaces in sorted order, so concurrent writers
        lock heads in one order). A record whose event id the chain holds already (a replayed batch) is skipped;
        `fresh` ones cannot be there yet (the decisions of rows this very transaction inserted) and are not looked
        up. Returns how many events were appended."""
        by_ws: dict[str, list[tuple[AuditRecord, bool]]] = {}
        for r in records:
            by_ws.setdefault(r.workspace_id, []).append((r, True))
        for r in fresh:
            by_ws.setdefault(r.workspace_id, []).append((r, False))
        appended = 0
        for ws in sorted(by_ws):
            todo = by_ws[ws]
            seq, prev = conn.execute(
                self._statement("head"), {"workspace_id": ws, "seq": 0, "hash": chain.GENESIS, "updated_at": now}
            ).one()
            ids = list({r.event_id for r, check in todo if check})
            known = {
                row[0]
                for i in range(0, len(ids), 500)
                for row in conn.execute(self._statement("known"), {"ws": ws, "ids": ids[i : i + 500]})
            }
            rows = []
            for r, _ in todo:
                if r.event_id in known:
                    continue
                known.add(r.event_id)
                seq += 1
                linked = chain.link(r, seq, prev)
                prev = linked["hash"]
                rows.append(_row(linked, r.at))
            if rows:
                self.store._bulk(conn, t.audit_events, self._event_insert, rows)
                conn.execute(self._statement("move"), {"ws": ws, "new_seq": seq, "new_hash": prev, "at": now})
                appended += len(rows)
        self.appended += appended
        return appended

    # -- reading ---------------------------------------------------------------------------------------------------
    async def head(self, workspace_id: str) -> tuple[int, str] | None:
        h = t.audit_heads.c
        rows = await self.store._select(select(h.seq, h.hash).where(h.workspace_id == workspace_id))
        return (int(rows[0]["seq"]), rows[0]["hash"]) if rows else None

    async def events(self, workspace_id: str, flt: AuditFilter) -> list[dict[str, Any]]:
        """Newest first (seq descending), `flt.limit` at most, older than the cursor's seq."""
        c = t.audit_events.c
        where = [c.workspace_id == workspace_id]
        if flt.actor_type is not None:
            where.append(c.actor_type == flt.actor_type)
        if flt.actor_id is not None:
            where.append(c.actor_id == flt.actor_id)
        if flt.action is not None:
            if flt.action.endswith(".*"):  # dotted lower-case words only (checked): nothing to escape for LIKE
                where.append(c.action.like(flt.action[:-1] + "%"))
            else:
                where.append(c.action == flt.action)
        if flt.target_type is not None:
            where.append(c.target_type == flt.target_type)
        if flt.target_id is not None:
            where.append(c.target_id == flt.target_id)
        if flt.run_id is not None:
            where.append(c.run_id == flt.run_id)
        if flt.since is not None:
            where.append(c.time >= flt.since)
        if flt.until is not None:
            where.append(c.time < flt.until)
        if flt.before_seq is not None:
            where.append(c.seq < flt.before_seq)
        stmt = select(t.audit_events).where(and_(*where)).order_by(c.seq.desc()).limit(flt.limit)
        return [view(r) for r in await self.store._select(stmt, query=True)]

    async def pages(self, workspace_id: str, through: int, size: int = PAGE) -> AsyncIterator[list[dict[str, Any]]]:
        """Every kept event up to seq `through`, oldest first, `size` at a time (keyset on seq): an export of any
        length holds one page in memory."""
        c = t.audit_events.c
        after = 0
        while True:
            stmt = (
                select(t.audit_events)
                .where(c.workspace_id == workspace_id, c.seq > after, c.seq <= through)
                .order_by(c.seq)
                .limit(size)
            )
            rows = await self.store._read(_views(stmt), query=True)
            if not rows:
                return
            yield rows
            after = rows[-1]["seq"]
            if len(rows) < size:
                return

    async def checkpoints(self, workspace_id: str, through: int | None = None) -> list[dict[str, Any]]:
        k = t.audit_checkpoints.c
        stmt = select(t.audit_checkpoints).where(k.workspace_id == workspace_id)
        if through is not None:
            stmt = stmt.where(k.seq <= through)
        return [_checkpoint(r) for r in await self.store._select(stmt.order_by(k.seq), query=True)]

    async def public_keys(self, workspace_id: str) -> list[dict[str, Any]]:
        k = t.audit_keys.c
        stmt = select(k.key_id, k.algorithm, k.public_key, k.created_at).where(k.workspace_id == workspace_id)
        return await self.store._select(stmt.order_by(k.created_at, k.key_id))

    async def signing_key(self, workspace_id: str) -> dict[str, Any] | None:
        """The newest key of the workspace, its private part still encrypted."""
        k = t.audit_keys.c
        stmt = select(t.audit_keys).where(k.workspace_id == workspace_id).order_by(k.created_at.desc(), k.key_id)
        rows = await self.store._select(stmt.limit(1))
        return rows[0] if rows else None

    async def add_key(self, row: dict[str, Any]) -> None:
        """Keep a new signing key, unless another process made one for the workspace first (then it is the one)."""

        def run(conn: Connection) -> None:
            if (
                conn.execute(
                    select(t.audit_keys.c.key_id).where(t.audit_keys.c.workspace_id == row["workspace_id"])
                ).first()
                is None
            ):
                conn.execute(self.store._insert(t.audit_keys).values(**row).on_conflict_do_nothing())

        await self.store._write(run)

    async def add_checkpoint(self, cp: Mapping[str, Any]) -> None:
        values = {k: cp[k] for k in ("workspace_id", "seq", "hash", "key_id", "signed_at", "signature")}
        await self.store._write(
            lambda conn: conn.execute(self.store._insert(t.audit_checkpoints).values(**values).on_conflict_do_nothing())
        )

    async def unsigned_heads(self) -> list[dict[str, Any]]:
        """Every chain whose head is past its last checkpoint: workspace_id, seq, hash, signed (the last signed seq)."""
        h, k = t.audit_heads.c, t.audit_checkpoints.c
        last = select(k.workspace_id, func.max(k.seq).label("signed")).group_by(k.workspace_id).subquery("last_signed")
        stmt = (
            select(h.workspace_id, h.seq, h.hash, func.coalesce(last.c.signed, 0).label("signed"))
            .select_from(t.audit_heads.outerjoin(last, last.c.workspace_id == h.workspace_id))
            .where(h.seq > func.coalesce(last.c.signed, 0))
        )
        return await self.store._select(stmt)

    async def for_run(self, workspace_id: str, run_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        c = t.audit_events.c
        stmt = (
            select(t.audit_events)
            .where(c.workspace_id == workspace_id, c.run_id == run_id)
            .order_by(c.seq)
            .limit(limit)
        )
        return [view(r) for r in await self.store._select(stmt, query=True)]

    async def current(self, table: str, workspace_id: str, ident: str) -> dict[str, Any] | None:
        """A governed object's row as it is now (what a change's `before` records), without its secret columns."""
        tbl = t.metadata.tables[table]
        cols = [c for c in tbl.c if not c.name.endswith(("_hash", "_encrypted"))]
        rows = await self.store._select(select(*cols).where(tbl.c.workspace_id == workspace_id, tbl.c.id == ident))
        return rows[0] if rows else None

    async def chains(self) -> list[str]:
        """Every workspace with a chain (the CLI's `audit verify` without --workspace), the installation's too."""
        rows = await self.store._select(select(t.audit_heads.c.workspace_id).order_by(t.audit_heads.c.workspace_id))
        return [r["workspace_id"] for r in rows]

    async def token_owner(self, token_hash: str) -> dict[str, Any] | None:
        """The admin token with this hash, revoked or not (a failed authentication by a revoked token belongs to
        its workspace's trail)."""
        a = t.admin_tokens.c
        rows = await self.store._select(
            select(a.workspace_id, a.id, a.role, a.revoked_at).where(a.token_hash == token_hash)
        )
        return rows[0] if rows else None

    # -- verification ----------------------------------------------------------------------------------------------
    async def verify(self, workspace_id: str, pinned: Mapping[str, Ed25519PublicKey] | None = None) -> Report:
        """The chain as stored, in one snapshot: head, checkpoints and keys read first, then the events a page at a
        time up to the head (appends meanwhile are not seen; a prune meanwhile is not either)."""
        store = self.store

        def run() -> Report:
            with store.engine.connect() as conn:
                if store.is_sqlite:
                    conn.exec_driver_sql("BEGIN")  # pysqlite opens no transaction for a SELECT: one snapshot
                else:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                try:
                    return _verify(conn, workspace_id, pinned)
                finally:
                    conn.rollback()

        return await store._run(store._queries, run)

    # -- pruning (retention) -----------------------------------------------------------------------------------------
    async def prune(self, workspace_id: str, before: datetime) -> dict[str, Any]:
        """Delete the workspace's events up to its newest signed checkpoint whose event is older than `before`,
        and the checkpoints before that one; the checkpoint itself stays, so verification starts from it. The prune
        is itself an event of the chain (`audit.prune`). Nothing is deleted without such a checkpoint."""
        store = self.store

        def run(conn: Connection) -> dict[str, Any]:
            now = datetime.now(UTC)
            conn.execute(
                self._statement("head"),
                {"workspace_id": workspace_id, "seq": 0, "hash": chain.GENESIS, "updated_at": now},
            )
            c, k = t.audit_events.c, t.audit_checkpoints.c
            through = conn.execute(
                select(func.max(k.seq))
                .select_from(
                    t.audit_checkpoints.join(t.audit_events, and_(c.workspace_id == k.workspace_id, c.seq == k.seq))
                )
                .where(k.workspace_id == workspace_id, c.time < before)
            ).scalar()
            if through is None:
                return {"workspace_id": workspace_id, "through_seq": None, "deleted": 0}
            deleted = conn.execute(
                delete(t.audit_events).where(c.workspace_id == workspace_id, c.seq <= through)
            ).rowcount
            conn.execute(delete(t.audit_checkpoints).where(k.workspace_id == workspace_id, k.seq < through))
            done = {"through_seq": int(through), "deleted": int(deleted), "before": chain.time_text(before)}
            record = AuditRecord(
                workspace_id=workspace_id,
                event_id=new_id("prune"),
                at=now,
                actor=Actor("system", "retention"),
                action="audit.prune",
                target_type="audit_log",
                target_id=workspace_id,
                after=done,
            )
            self.append(conn, [record], now)
            return {"workspace_id": workspace_id, **done}

        return await store._write(run)


def _views(stmt: Any) -> Callable[[Connection], list[dict[str, Any]]]:
    return lambda conn: [view(r._mapping) for r in conn.execute(stmt)]


def _verify(conn: Connection, workspace_id: str, pinned: Mapping[str, Ed25519PublicKey] | None) -> Report:
    h, k, e = t.audit_heads.c, t.audit_checkpoints.c, t.audit_events.c
    found = conn.execute(select(h.seq, h.hash).where(h.workspace_id == workspace_id)).first()
    head = (int(found[0]), str(found[1])) if found else None
    through = head[0] if head else 0
    # Every checkpoint, not only those up to the head: in one snapshot none can be past a true head, so one that
    # is says the head was moved back over deleted events.
    cps = [
        _checkpoint(r._mapping) for r in conn.execute(select(t.audit_checkpoints).where(k.workspace_id == workspace_id))
    ]
    keys = pinned
    if keys is None:
        a = t.audit_keys.c
        keys = {
            r.key_id: load_public(r.public_key)
            for r in conn.execute(select(a.key_id, a.public_key).where(a.workspace_id == workspace_id))
        }
    verifier = ChainVerifier(workspace_id, cps, keys, key_source="pinned" if pinned is not None else "stored")
    after = 0
    while verifier.report.broken is None:
        stmt = select(t.audit_events).where(e.workspace_id == workspace_id, e.seq > after, e.seq <= through)
        rows = [view(r._mapping) for r in conn.execute(stmt.order_by(e.seq).limit(PAGE))]
        for v in rows:
            verifier.feed(v)
        if len(rows) < PAGE:
            break
        after = rows[-1]["seq"]
    return verifier.finish(head)
