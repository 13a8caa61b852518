"""The trace writer's policy hits (store/policy_hits.py), on SQLite and PostgreSQL: read off the rows a batch inserted,
so a batch written twice, or a call's retry in the same or a later batch, adds none; an agent's own policy_check step
is no decision; a batch with no policy makes no hit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import select

from agentledger.core.budgets import Decision
from agentledger.core.model import StepKind, StepStatus
from agentledger.core.policy import Mode, Verdict
from agentledger.store import schema as t
from agentledger.store.policy_hits import HitFilter
from agentledger.store.sql import SQLStore
from tests.contract.store.test_store_contract import T0, new_workspace, request_record, run_start, step, write

WOULD = Verdict(Decision.BLOCKED, "pol-m", 2, "r1", "would block", Mode.MONITOR)
MONITOR = {"decision": "allowed", "policy": Verdict(reason="allowed", would=WOULD).as_record()}
BLOCK = {
    "decision": "blocked",
    "policy": Verdict(Decision.BLOCKED, "pol-e", 1, "setting:models_deny", "no").as_record(),
}


def check(ws: str, step_id: str, request_id: str | None, report: dict[str, Any], attempt: int = 1) -> Any:
    return step(
        ws, step_id, kind=StepKind.POLICY_CHECK, name="policy check", request_id=request_id, attributes=report,
        attempt=attempt, status=StepStatus.OK,
    )  # fmt: skip


def rows(store: SQLStore, ws: str) -> list[tuple[Any, ...]]:
    h = t.policy_hits.c
    stmt = (
        select(h.policy_id, h.policy_version, h.rule_id, h.mode, h.decision, h.request_id, h.run_id, h.step_id)
        .where(h.workspace_id == ws)
        .order_by(h.request_id, h.policy_id)
    )
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


async def test_hits_come_from_inserted_rows_once(store: SQLStore) -> None:
    ws = await new_workspace(store)
    batch = [
        run_start(ws),
        check(ws, "pc-1", "req-1", MONITOR),
        check(ws, "pc-2", "req-2", BLOCK),
        check(ws, "own", None, BLOCK),  # an agent's own step of kind policy_check: not the gateway's decision
        step(ws, "tool-1"),
        replace(request_record(ws, "lone"), attribution=replace(request_record(ws).attribution, run_id=None),
                governance=MONITOR),
        request_record(ws, "req-1", governance=MONITOR),  # in a run: its policy_check step says it
    ]  # fmt: skip
    await write(store, *batch)
    expected = [
        ("pol-m", 2, "r1", "monitor", "blocked", "lone", None, None),
        ("pol-m", 2, "r1", "monitor", "blocked", "req-1", "run-1", "pc-1"),
        ("pol-e", 1, "setting:models_deny", "enforce", "blocked", "req-2", "run-1", "pc-2"),
    ]
    assert rows(store, ws) == expected
    await write(store, *batch)  # a replay
    # The client's retry of req-1: a new policy_check step, in a later batch and twice in one.
    await write(store, check(ws, "pc-1.2", "req-1", MONITOR, attempt=2))
    await write(store, check(ws, "pc-2.2", "req-2", BLOCK, attempt=2), check(ws, "pc-2.3", "req-2", BLOCK, attempt=3))
    assert rows(store, ws) == expected
    page = await store.governance.policy_hits(ws, "pol-m", HitFilter())
    assert {h["request_id"] for h in page} == {"req-1", "lone"} and {h["at"] for h in page} == {T0}
    assert [h["id"] for h in page] == sorted((h["id"] for h in page), reverse=True)  # one instant: by id


async def test_a_batch_without_policies_makes_no_hit(store: SQLStore) -> None:
    ws = await new_workspace(store)
    await write(store, run_start(ws), step(ws, "tool-1"), request_record(ws, governance={"decision": "allowed"}))
    await write(store, check(ws, "pc-1", "req-1", {"decision": "throttled", "decided_by": {"kind": "budget"}}))
    assert rows(store, ws) == []
