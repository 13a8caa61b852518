"""The books kept at write time equal their recomputation from the raw rows, whatever arrives in what order.

Hypothesis writes random interleavings of step batches (with and without their run, nested, late by days, policy
checks of every decision), gateway requests (failed ones retried under the same id, completed ones sent again),
exact replays of earlier batches (a spool replay), run ends and a property declared midway, at costs up to the
per-event bound, and then `verify_books` must find nothing: every run total, session path and hourly rollup row is
the sum of its rows, every run mark is one a row gives; and the runs list filtered by marks lists exactly the runs
the rows mark. On PostgreSQL two stores (two replicas) also write the same batches at once, in opposite orders.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agentledger.core.books import COST_UNIT
from agentledger.core.finance import payment_cost
from agentledger.core.marks import Label, decision_label, mark_of, property_label
from agentledger.core.model import (
    Attribution,
    Payment,
    PaymentDirection,
    PaymentStatus,
    RequestRecord,
    RunEnd,
    RunStart,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage
from agentledger.store import marks as marks_sql
from agentledger.store.base import CostQuery, FinanceQuery, RunFilter, WriteResult
from agentledger.store.sql import SQLStore

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
COSTS = st.one_of(st.integers(0, 5_000_000), st.sampled_from([COST_UNIT, COST_UNIT - 1, 999_999_999_999]))
RUNS = ["r0", "r1", "r2"]
WORKFLOWS = {"r0": "wf-a", "r1": "wf-b", "r2": None}
ENDPOINTS = {"r0": "ep-a", "r1": None, "r2": "ep-b"}  # a run's paid endpoint, fixed like its workflow
# A policy check's report (gateway/budgets.py): each decision, an approved escalation, or nothing to say.
REPORTS = st.sampled_from(
    [
        {"decision": "allowed"},
        {"decision": "blocked"},
        {"decision": "throttled"},
        {"decision": "escalated"},
        {"decision": "allowed", "policy": {"approval": {"status": "approved"}}},
        {},
    ]
)
FILTERS = [
    *(RunFilter(decision=d) for d in ("allowed", "blocked", "throttled", "escalated")),
    *(RunFilter(properties=((name, value),)) for name, value in (("team", "x"), ("team", "y"), ("env", "prod"))),
    RunFilter(decision="blocked", properties=(("team", "y"),)),
]
PAYMENTS = st.builds(
    Payment,
    direction=st.sampled_from(list(PaymentDirection)),
    status=st.sampled_from(list(PaymentStatus)),
    amount_nanos=st.one_of(st.integers(0, 5_000_000), st.just(COST_UNIT - 7)),
    fee_nanos=st.sampled_from([0, 7]),
)


@st.composite
def attribution(draw: st.DrawFn, ws: str, run: str | None) -> Attribution:
    return Attribution(
        workspace_id=ws,
        department_id=draw(st.sampled_from(["d0", "d1", None])),
        virtual_key_id="vk",
        agent_id=draw(st.sampled_from(["a0", "a1", None])),
        run_id=run,
        session_id=draw(st.sampled_from(["s0", "s1", None])),
        session_path=draw(st.sampled_from([None, "/p", "/p/q"])),
        prompt_id=draw(st.sampled_from([None, "pr"])),
        properties=draw(st.sampled_from([{}, {"team": "x"}, {"team": "y", "env": "prod"}])),
    )


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@st.composite
def step_batch(draw: st.DrawFn, ws: str) -> list[TraceEvent]:
    run = draw(st.sampled_from(RUNS))
    a = draw(attribution(ws, run))
    events: list[TraceEvent] = []
    if draw(st.booleans()):
        events.append(
            RunStart(run_id=run, attribution=a, started_at=at(0), workflow=WORKFLOWS[run], endpoint_id=ENDPOINTS[run])
        )
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                [
                    StepKind.TOOL_CALL,
                    StepKind.MODEL_CALL,
                    StepKind.API_CALL,
                    StepKind.PAYMENT,
                    StepKind.MODEL_ATTEMPT,
                    StepKind.POLICY_CHECK,
                ]
            )
        )
        payment = draw(PAYMENTS) if kind is StepKind.PAYMENT else None
        late = draw(st.sampled_from([0, 0, -3 * 24 * 60]))  # a step that arrives days after it happened
        events.append(
            StepRecord(
                step_id=f"st-{draw(st.integers(0, 12))}",  # a small pool: repeats are resent steps
                run_id=run,
                attribution=a,
                kind=kind,
                name="s",
                status=draw(st.sampled_from([StepStatus.OK, StepStatus.ERROR])),
                started_at=at(draw(st.integers(0, 180)) + late),
                latency_ms=draw(st.sampled_from([None, 1.5, 250.0])),
                request_id=draw(st.sampled_from([None, "rq-0"])) if kind is StepKind.MODEL_CALL else None,
                model=draw(st.sampled_from(["m0", "m1", None])),
                provider="openai",
                usage=Usage(input_tokens=draw(st.integers(0, 10**9)), output_tokens=draw(st.integers(0, 50))),
                cost_nanos=payment_cost(payment) if payment else draw(COSTS),
                cost_source=draw(st.sampled_from([CostSource.REPORTED, CostSource.ESTIMATED, CostSource.CLAMPED])),
                attempt=draw(st.integers(1, 3)),
                payment=payment,
                attributes=draw(REPORTS) if kind is StepKind.POLICY_CHECK else {},
            )
        )
    return events


@st.composite
def request_batch(draw: st.DrawFn, ws: str) -> list[TraceEvent]:
    run = draw(st.sampled_from([*RUNS, None]))
    a = draw(attribution(ws, run))
    ok = draw(st.booleans())
    events: list[TraceEvent] = []
    if run is not None:
        events.append(
            RunStart(run_id=run, attribution=a, started_at=at(0), workflow=WORKFLOWS[run], endpoint_id=ENDPOINTS[run])
        )
    events.append(
        RequestRecord(
            request_id=f"rq-{draw(st.integers(0, 4))}",  # a small pool: failures retried, completions resent
            attribution=a,
            endpoint="/v1/chat/completions",
            provider="openai",
            model=draw(st.sampled_from(["m0", "m1"])),
            stream=False,
            status=StepStatus.OK if ok else StepStatus.ERROR,
            http_status=200 if ok else 502,
            started_at=at(draw(st.integers(0, 180))),
            ended_at=at(181),
            latency_ms=3.0,
            request_hash="h",
            attempt=draw(st.integers(1, 3)),
            usage=Usage(input_tokens=draw(st.integers(0, 100)), output_tokens=7),
            cost_nanos=draw(COSTS),
            cost_source=draw(st.sampled_from([CostSource.COMPUTED, CostSource.ESTIMATED])),
        )
    )
    return events


def operations(ws: str) -> st.SearchStrategy[list[tuple[str, Any]]]:
    op = st.one_of(
        st.tuples(st.just("write"), step_batch(ws)),
        st.tuples(st.just("write"), request_batch(ws)),
        st.tuples(st.just("replay"), st.integers(0, 30)),
        st.tuples(st.just("declare"), st.sampled_from(["team", "env"])),
        st.tuples(st.just("end"), st.sampled_from(RUNS)),
    )
    return st.lists(op, min_size=1, max_size=25)


async def apply(store: SQLStore, ws: str, ops: list[tuple[str, Any]]) -> list[list[TraceEvent]]:
    written: list[list[TraceEvent]] = []
    for name, arg in ops:
        if name == "write":
            batch = arg
        elif name == "replay" and written:
            batch = written[arg % len(written)]
        elif name == "declare":
            await store.declare_property(ws, arg, T0)
            continue
        elif name == "end":
            batch = [RunEnd(ws, arg, RunStatus.SUCCEEDED, at(200))]
        else:
            continue
        assert await store.write_batch(batch) is WriteResult.SUCCESS
        written.append(batch)
    return written


async def new_workspace(store: SQLStore) -> str:
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    await store.create_workspace(ws, ws, T0)
    return ws


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_kept_books_equal_their_recomputation(store: SQLStore, data: st.DataObject) -> None:
    ws = await new_workspace(store)
    await apply(store, ws, data.draw(operations(ws)))
    assert [m.describe() for m in await store.verify_books(ws)] == []
    # The runs list's decision and property filters list exactly the stored runs the raw rows mark.
    with store.engine.connect() as conn:
        marked = marks_sql.recompute(conn, ws)
    runs = [r["id"] for r in await store.list_runs(ws, RunFilter())]
    for flt in FILTERS:
        wanted = [mark_of(label) for label in _labels(flt)]
        expected = [run for run in runs if all((ws, run, mark) in marked for mark in wanted)]
        assert [r["id"] for r in await store.list_runs(ws, flt)] == expected, flt
    # A window of whole days and loose hours (daily rows plus hourly ones) sums what its hours do.
    for since, until in ((at(-4 * 24 * 60 + 300), at(120)), (None, at(60)), (at(-3 * 24 * 60), None), (None, None)):
        for group_by in ("model", "workflow"):
            whole = await store.costs(ws, CostQuery(group_by=group_by, since=since, until=until))
            hours = await store.costs(ws, CostQuery(group_by=group_by, since=since, until=until, interval="hour"))
            summed: dict[Any, list[int]] = {}
            for r in hours:
                held = summed.setdefault(r["key"], [0, 0])
                held[0] += r["events"]
                held[1] += r["cost_nanos"]
            assert {r["key"]: [r["events"], r["cost_nanos"]] for r in whole} == summed
        # The finance summary of the same window, by endpoint, sums what the workspace's does.
        by_endpoint = await store.finance_summary(ws, FinanceQuery(group_by="endpoint", since=since, until=until))
        workspace = await store.finance_summary(ws, FinanceQuery(group_by="workspace", since=since, until=until))
        assert by_endpoint.totals == workspace.totals


def _labels(flt: RunFilter) -> list[Label]:
    found = [decision_label(flt.decision)] if flt.decision else []
    return found + [property_label(n, v) for n, v in flt.properties]


async def test_a_run_total_counts_each_step_once_however_often_it_is_sent(store: SQLStore) -> None:
    ws = await new_workspace(store)
    a = Attribution(workspace_id=ws, run_id="r0", session_id="s0", session_path="/p")
    start = RunStart(run_id="r0", attribution=a, started_at=T0)
    step = StepRecord("st", "r0", a, StepKind.TOOL_CALL, "t", StepStatus.OK, T0, cost_nanos=COST_UNIT)
    for _ in range(3):
        assert await store.write_batch([start, step, step]) is WriteResult.SUCCESS
    other = StepRecord("st2", "r0", a, StepKind.TOOL_CALL, "t", StepStatus.ERROR, T0, cost_nanos=COST_UNIT, attempt=2)
    assert await store.write_batch([other]) is WriteResult.SUCCESS
    run = await store.get_run(ws, "r0")
    assert run is not None
    assert (run["steps"], run["errors"], run["retries"], run["cost_nanos"]) == (2, 1, 1, 2 * COST_UNIT)
    session = await store.get_session(ws, "s0")
    assert session is not None
    assert [(p["path"], p["count"], p["cost_nanos"]) for p in session["paths"]] == [("/p", 2, 2 * COST_UNIT)]
    assert await store.verify_books(ws) == []


async def test_rebuild_restores_books_that_were_tampered_with(store: SQLStore) -> None:
    ws = await new_workspace(store)
    a = Attribution(workspace_id=ws, run_id="r0", agent_id="a0")
    steps = [
        StepRecord(f"s{i}", "r0", a, StepKind.API_CALL, "t", StepStatus.OK, at(i * 61), cost_nanos=7) for i in range(3)
    ]
    assert await store.write_batch([RunStart(run_id="r0", attribution=a, started_at=T0), *steps]) is WriteResult.SUCCESS

    def tamper(conn: Any) -> None:
        from agentledger.store import schema as t

        conn.execute(t.run_totals.update().values(cost_nanos=1))
        conn.execute(t.rollup_hourly.delete().where(t.rollup_hourly.c.workspace_id == ws))

    await store._write(tamper)
    broken = await store.verify_books(ws)
    assert {m.table for m in broken} == {"runs", "hourly"} and len(broken) == 4
    assert await store.rebuild_books(ws) > 0
    assert await store.verify_books(ws) == []
    rows = await store.costs(ws, CostQuery(group_by="agent"))
    assert [(r["key"], r["events"], r["cost_nanos"]) for r in rows] == [("a0", 3, 21)]


@pytest.mark.pg
async def test_two_replicas_writing_the_same_batches_at_once_keep_exact_books(pg_url: str) -> None:
    """Replicas share the database: each spools and replays, so the same batches may arrive from both at once.
    RETURNING (steps) and row locks (retried requests) make each row count once, from whichever wrote it."""
    first, second = SQLStore(pg_url), SQLStore(pg_url)
    await first.migrate()
    try:
        ws = await new_workspace(first)
        batches: list[list[TraceEvent]] = []
        for i in range(40):
            a = Attribution(
                workspace_id=ws, run_id=f"r{i % 3}", session_id="s", agent_id="a0", properties={"team": "x"}
            )
            batch: list[TraceEvent] = [RunStart(run_id=f"r{i % 3}", attribution=a, started_at=T0)]
            batch += [
                StepRecord(
                    f"st-{i}-{j}", f"r{i % 3}", a, StepKind.TOOL_CALL, "t", StepStatus.OK, at(i), cost_nanos=i + j
                )
                for j in range(25)
            ]
            status = StepStatus.OK if i % 4 == 3 else StepStatus.ERROR  # rq-k fails three times, then completes
            batch.append(
                RequestRecord(
                    request_id=f"rq-{i // 4}",
                    attribution=a,
                    endpoint="/v1/chat/completions",
                    provider="openai",
                    model="m0",
                    stream=False,
                    status=status,
                    http_status=200 if status is StepStatus.OK else 502,
                    started_at=at(i),
                    ended_at=at(i),
                    latency_ms=1.0,
                    request_hash="h",
                    cost_nanos=1000 + i,
                )
            )
            batches.append(batch)
        await first.declare_property(ws, "team", T0)

        async def write_all(store: SQLStore, order: list[list[TraceEvent]]) -> None:
            for batch in order:
                assert await store.write_batch(batch) is WriteResult.SUCCESS

        await asyncio.gather(write_all(first, batches), write_all(second, batches[::-1]))
        assert [m.describe() for m in await first.verify_books(ws)] == []
        steps = sum(i + j for i in range(40) for j in range(25))
        runs = await first.list_runs(ws, RunFilter(limit=10))
        assert sum(r["steps"] for r in runs) == 1000 and sum(r["cost_nanos"] for r in runs) == steps
        rows = await first.costs(ws, CostQuery(group_by="property.team"))
        assert [(r["key"], r["events"], r["requests"]) for r in rows] == [("x", 1010, 10)]
    finally:
        await first.aclose()
        await second.aclose()
