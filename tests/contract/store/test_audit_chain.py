"""The audit chain in the store, on SQLite and PostgreSQL: appending through the trace writer, replays appending
nothing, concurrent writers (tasks, and two stores as two replicas) leaving one unforked chain, tampering done
directly in the database caught by `verify` at the right seq, and pruning up to a signed checkpoint."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import delete, select, update

from agentledger.audit.chain import GENESIS
from agentledger.audit.checkpoints import key_id, load_public
from agentledger.audit_trail import AuditTrail
from agentledger.core.model import (
    Actor,
    Attribution,
    AuditRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.secrets_box import SecretBox
from agentledger.store import schema as t
from agentledger.store.base import WriteResult
from agentledger.store.sql import SQLStore

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
ADMIN = Actor("admin_token", "tok_1", "admin")


async def new_workspace(store: SQLStore) -> str:
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    await store.create_workspace(ws, "Audit", T0)
    return ws


def record(ws: str, n: int, **kw: Any) -> AuditRecord:
    values: dict[str, Any] = dict(
        workspace_id=ws,
        event_id=f"aud-{n}-{uuid.uuid4().hex[:8]}",
        at=T0 + timedelta(seconds=n),
        actor=ADMIN,
        action="budget.create",
        target_type="budget",
        target_id=f"bud-{n}",
        before=None,
        after={"limit_usd": "25.000000000", "n": n, "ratio": 0.1 * n, "nested": {"b": [1, "ünï"], "a": None}},
        client_ip="127.0.0.1",
        request_id=f"req-{n}",
    )
    return AuditRecord(**{**values, **kw})


def trail(store: SQLStore) -> AuditTrail:
    async def commit(events: Sequence[TraceEvent]) -> None:
        assert await store.write_batch(events) is WriteResult.SUCCESS

    return AuditTrail(store, SecretBox(Fernet.generate_key()), commit)


async def seqs(store: SQLStore, ws: str) -> list[int]:
    c = t.audit_events.c
    rows = await store._select(select(c.seq).where(c.workspace_id == ws).order_by(c.seq))
    return [r["seq"] for r in rows]


async def chain_of(store: SQLStore, ws: str, n: int) -> list[AuditRecord]:
    records = [record(ws, i) for i in range(1, n + 1)]
    for i in range(0, n, 4):  # several batches, as the pipeline writes them
        assert await store.write_batch(records[i : i + 4]) is WriteResult.SUCCESS
    return records


async def test_a_batch_is_chained_in_order_and_verifies(store: SQLStore) -> None:
    ws = await new_workspace(store)
    records = await chain_of(store, ws, 10)
    assert await seqs(store, ws) == list(range(1, 11))
    events = list(reversed(await store.audit.events(ws, _all())))
    assert [e["id"] for e in events] == [r.event_id for r in records]
    assert events[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(events, events[1:], strict=False))
    assert events[3]["after"] == {
        "limit_usd": "25.000000000",
        "n": 4,
        "ratio": 0.1 * 4,
        "nested": {"b": [1, "ünï"], "a": None},
    }
    assert await store.audit.head(ws) == (10, events[-1]["hash"])
    report = await store.audit.verify(ws)
    assert report.ok and report.events == 10 and report.unsigned == 10
    assert "no signed checkpoint yet" in report.notes[0]


async def test_a_replayed_batch_appends_nothing(store: SQLStore) -> None:
    ws = await new_workspace(store)
    batch = [record(ws, i) for i in range(3)]
    for _ in range(2):
        assert await store.write_batch(batch) is WriteResult.SUCCESS
    assert await seqs(store, ws) == [1, 2, 3]


async def test_checkpoints_are_signed_with_the_workspaces_key(store: SQLStore) -> None:
    ws = await new_workspace(store)
    audit = trail(store)
    await chain_of(store, ws, 6)
    assert await audit.checkpoint(workspace_id=ws) == 1
    assert await audit.checkpoint(workspace_id=ws) == 0  # nothing new to sign
    await chain_of(store, ws, 3)
    assert await audit.checkpoint(min_events=4, workspace_id=ws) == 0  # 3 unsigned: under the threshold
    assert await audit.checkpoint(min_events=3, workspace_id=ws) == 1
    public = await audit.public_key(ws)
    pem = load_public(public["public_key"])
    assert public["key_id"] == key_id(pem)
    report = await store.audit.verify(ws, {public["key_id"]: pem})
    assert report.ok and report.keys == "pinned" and report.checkpoints == 2
    assert report.last_checkpoint is not None and report.last_checkpoint["seq"] == 9 and report.unsigned == 0
    other = load_public((await trail(store).public_key(await new_workspace(store)))["public_key"])
    report = await store.audit.verify(ws, {key_id(other): other})
    assert report.broken is not None and (report.broken.seq, report.broken.problem) == (6, "checkpoint_key")


async def _tamper(store: SQLStore, ws: str, how: str) -> None:
    c, k = t.audit_events.c, t.audit_checkpoints.c
    mine = c.workspace_id == ws
    with store.engine.begin() as conn:
        if how == "update":
            conn.execute(update(t.audit_events).where(mine, c.seq == 5).values(target_id="bud-other"))
        elif how == "update_json":
            conn.execute(update(t.audit_events).where(mine, c.seq == 5).values(after={"limit_usd": "1000000"}))
        elif how == "rehash":  # content and its hash rewritten: the next event's link gives it away
            row = conn.execute(select(t.audit_events).where(mine, c.seq == 5)).mappings().one()
            conn.execute(update(t.audit_events).where(mine, c.seq == 5).values(hash="f" * 64, action=row["action"]))
        elif how == "delete":
            conn.execute(delete(t.audit_events).where(mine, c.seq == 5))
        elif how == "reorder":
            conn.execute(update(t.audit_events).where(mine, c.seq == 5).values(seq=-1))
            conn.execute(update(t.audit_events).where(mine, c.seq == 6).values(seq=5))
            conn.execute(update(t.audit_events).where(mine, c.seq == -1).values(seq=6))
        elif how == "truncate":  # the newest events deleted, the head row left as it was
            conn.execute(delete(t.audit_events).where(mine, c.seq > 10))
        elif how == "truncate_and_head":  # ... and the head moved back to match: the checkpoint still says more
            last = conn.execute(select(c.hash).where(mine, c.seq == 10)).scalar()
            conn.execute(delete(t.audit_events).where(mine, c.seq > 10))
            conn.execute(update(t.audit_heads).where(t.audit_heads.c.workspace_id == ws).values(seq=10, hash=last))
        elif how == "signature":
            sig = conn.execute(select(k.signature).where(k.workspace_id == ws, k.seq == 8)).scalar()
            assert isinstance(sig, str)
            conn.execute(
                update(t.audit_checkpoints)
                .where(k.workspace_id == ws, k.seq == 8)
                .values(signature=("0" if sig[0] != "0" else "1") + sig[1:])
            )
        elif how == "checkpoint_hash":
            conn.execute(update(t.audit_checkpoints).where(k.workspace_id == ws, k.seq == 8).values(hash="e" * 64))
        else:
            raise AssertionError(how)


@pytest.mark.parametrize(
    "how, seq, problem",
    [
        ("update", 5, "altered"),
        ("update_json", 5, "altered"),
        ("rehash", 5, "altered"),
        ("delete", 5, "missing"),
        ("reorder", 5, "altered"),
        ("truncate", 11, "missing"),
        ("truncate_and_head", 11, "missing"),
        ("signature", 8, "checkpoint_signature"),
        ("checkpoint_hash", 8, "checkpoint_signature"),
    ],
)
async def test_tampering_in_the_database_is_caught_at_its_seq(
    store: SQLStore, how: str, seq: int, problem: str
) -> None:
    ws = await new_workspace(store)
    audit = trail(store)
    await chain_of(store, ws, 8)
    await audit.checkpoint(workspace_id=ws)  # signs seq 8
    await chain_of(store, ws, 4)
    await audit.checkpoint(workspace_id=ws)  # signs seq 12
    assert (await store.audit.verify(ws)).ok
    await _tamper(store, ws, how)
    report = await store.audit.verify(ws)
    assert report.broken is not None, how
    assert (report.broken.seq, report.broken.problem) == (seq, problem), report.broken


async def test_rewrites_with_hashes_recomputed_are_named(store: SQLStore) -> None:
    """An event edited and re-hashed fits itself, but the next event's link names it; the whole chain re-hashed
    from there on fits together, but not the checkpoint that signed it."""
    from agentledger.audit.chain import event_hash
    from agentledger.store.audit import view

    ws = await new_workspace(store)
    audit = trail(store)
    await chain_of(store, ws, 8)
    await audit.checkpoint(workspace_id=ws)
    await chain_of(store, ws, 4)
    c = t.audit_events.c
    mine = c.workspace_id == ws

    def forge(conn: Any, seq: int, prev: str | None) -> str:
        row = dict(conn.execute(select(t.audit_events).where(mine, c.seq == seq)).mappings().one())
        row["target_id"] = "bud-forged"
        if prev is not None:
            row["prev_hash"] = prev
        forged = event_hash(view(row))
        values = {"target_id": "bud-forged", "hash": forged, "prev_hash": row["prev_hash"]}
        conn.execute(update(t.audit_events).where(mine, c.seq == seq).values(**values))
        return forged

    with store.engine.begin() as conn:
        forge(conn, 4, None)
    report = await store.audit.verify(ws)
    assert report.broken is not None and (report.broken.seq, report.broken.problem) == (4, "rewritten")
    with store.engine.begin() as conn:
        prev = forge(conn, 4, None)
        for seq in range(5, 13):
            prev = forge(conn, seq, prev)
        conn.execute(update(t.audit_heads).where(t.audit_heads.c.workspace_id == ws).values(hash=prev))
    report = await store.audit.verify(ws)
    assert report.broken is not None and (report.broken.seq, report.broken.problem) == (8, "checkpoint_mismatch")


async def test_concurrent_writers_leave_one_unforked_chain(store: SQLStore, db_url: str) -> None:
    ws = await new_workspace(store)
    stores = [store]
    if not store.is_sqlite:  # a second store is a second replica: its own writer thread and connections
        stores.append(SQLStore(db_url))
    try:

        async def writer(s: SQLStore, w: int) -> None:
            for b in range(10):
                batch = [record(ws, w * 1000 + b * 10 + i) for i in range(3)]
                assert await s.write_batch(batch) is WriteResult.SUCCESS

        await asyncio.gather(*(writer(stores[w % len(stores)], w) for w in range(6)))
    finally:
        for extra in stores[1:]:
            await extra.aclose()
    assert await seqs(store, ws) == list(range(1, 181))
    report = await store.audit.verify(ws)
    assert report.ok and report.events == 180


async def test_pruning_keeps_the_checkpoint_and_verification_starts_there(store: SQLStore) -> None:
    ws = await new_workspace(store)
    audit = trail(store)
    await chain_of(store, ws, 10)
    await audit.checkpoint(workspace_id=ws)  # seq 10
    await chain_of(store, ws, 10)
    await audit.checkpoint(workspace_id=ws)  # seq 20
    await chain_of(store, ws, 5)
    nothing = await store.audit.prune(ws, T0)  # no checkpointed event is that old
    assert nothing["deleted"] == 0 and await seqs(store, ws) == list(range(1, 26))
    done = await store.audit.prune(ws, T0 + timedelta(days=1))
    assert (done["through_seq"], done["deleted"]) == (20, 20)
    assert await seqs(store, ws) == list(range(21, 27))  # 26: the prune's own event
    pruned = (await store.audit.events(ws, _all()))[0]
    assert pruned["action"] == "audit.prune" and pruned["after"]["through_seq"] == 20
    assert [cp["seq"] for cp in await store.audit.checkpoints(ws)] == [20]
    report = await store.audit.verify(ws)
    assert report.ok, report.broken
    assert report.anchor == {"kind": "checkpoint", "seq": 20, "hash": report.anchor["hash"]} if report.anchor else False
    assert "pruned" in report.notes[0] and report.events == 6
    with store.engine.begin() as conn:  # then an event right after the checkpoint goes
        conn.execute(delete(t.audit_events).where(t.audit_events.c.workspace_id == ws, t.audit_events.c.seq == 21))
    broken = (await store.audit.verify(ws)).broken
    assert broken is not None and (broken.seq, broken.problem) == (21, "missing")


def _step(ws: str, run: str, step_id: str, decision: str, redacted: bool = False) -> StepRecord:
    report: dict[str, Any] = {
        "decision": decision,
        "decided_by": None if decision == "allowed" else {"kind": "policy", "id": "pol-1", "version": 2, "rule": "r1"},
        "policy": {"decision": decision, "policy_id": "pol-1", "changes": {"redacted": ["email"]} if redacted else {}},
        "budgets": [{"budget_id": "bud-1", "scope_label": "workspace", "spent_usd": "1.0"}],
    }
    return StepRecord(
        step_id=step_id,
        run_id=run,
        attribution=Attribution(workspace_id=ws, department_id="dep", virtual_key_id="vk-id", run_id=run),
        kind=StepKind.POLICY_CHECK,
        name="policy check",
        status=StepStatus.OK if decision == "allowed" else StepStatus.ERROR,
        started_at=T0,
        ended_at=T0,
        request_id=f"req-{step_id}",
        attributes=report,
    )


async def test_a_batchs_refused_decisions_become_events_of_their_run(store: SQLStore) -> None:
    ws = await new_workspace(store)
    await store.create_department(ws, "dep", "Dep", T0)
    run = "run-audited"
    start = RunStart(
        run_id=run, attribution=Attribution(workspace_id=ws, department_id="dep", run_id=run), started_at=T0
    )
    batch: list[TraceEvent] = [
        start,
        _step(ws, run, "pc-blocked", "blocked"),
        _step(ws, run, "pc-allowed", "allowed"),
        _step(ws, run, "pc-redacted", "allowed", redacted=True),
        _step(ws, run, "pc-escalated", "escalated"),
        record(ws, 1),
    ]
    for _ in range(2):  # the replay adds no decision twice
        assert await store.write_batch(batch) is WriteResult.SUCCESS
    events = await store.audit.for_run(ws, run)
    assert [(e["action"], e["step_id"]) for e in events] == [
        ("decision.blocked", "pc-blocked"),
        ("decision.redacted", "pc-redacted"),
        ("decision.escalated", "pc-escalated"),
    ]
    blocked = events[0]
    assert blocked["actor"] == {"type": "system", "id": "policy", "role": None}
    assert (
        blocked["target"] == {"type": "request", "id": "req-pc-blocked"} and blocked["request_id"] == "req-pc-blocked"
    )
    assert blocked["after"]["decided_by"]["id"] == "pol-1"
    assert blocked["after"]["budgets"] == [{"budget_id": "bud-1", "scope": "workspace"}]
    assert blocked["after"]["caller"]["virtual_key_id"] == "vk-id"
    assert await seqs(store, ws) == [1, 2, 3, 4]  # the control event first, then the batch's decisions
    assert (await store.audit.verify(ws)).ok


def _all() -> Any:
    from agentledger.store.audit import AuditFilter

    return AuditFilter(limit=200)
