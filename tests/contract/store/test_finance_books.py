"""Finance in the books, on SQLite and PostgreSQL: a seeded mix of sales, refunds, failed and verified payments,
outbound payments and their refunds, gateway calls (one estimated, one clamped, one failed) and tool steps, in
runs started by two paid endpoints and in one bought by no endpoint. Every figure is checked exactly: the
summary's rows by every grouping sum to the same totals, which are the sums of the runs' P&Ls; the kept books
verify; money past 2^63 in one bucket stays exact; migration 0008 rebuilds the books of rows written before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, insert

from agentledger.core.books import COST_UNIT
from agentledger.core.finance import PNL_MEASURES, Pnl
from agentledger.core.model import (
    Attribution,
    Payment,
    PaymentDirection,
    PaymentStatus,
    RequestRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage
from agentledger.store.base import FinanceQuery, RunFilter, WriteResult
from agentledger.store.migrate import upgrade
from agentledger.store.sql import SQLStore
from tests.harness import fresh_pg_database

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
DAY2 = T0 + timedelta(days=1)
IN, OUT = PaymentDirection.INBOUND, PaymentDirection.OUTBOUND
SETTLED, REFUNDED = PaymentStatus.SETTLED, PaymentStatus.REFUNDED
GROUPS = ("workspace", "department", "agent", "workflow", "endpoint", "session", "run", "property.customer")


def attribution(ws: str, run: str, agent: str = "seller", customer: str = "acme") -> Attribution:
    return Attribution(
        workspace_id=ws,
        department_id="sales",
        virtual_key_id="vk",
        agent_id=agent,
        run_id=run,
        session_id=f"sess-{run}",
        properties={"customer": customer},
    )


def payment(ws: str, run: str, n: str, p: Payment, at: datetime, **kw: Any) -> StepRecord:
    from agentledger.core.finance import payment_cost

    a = kw.pop("attribution", None) or attribution(ws, run)
    return StepRecord(
        f"{run}-{n}", run, a, StepKind.PAYMENT, "pay", StepStatus.OK, at, cost_nanos=payment_cost(p), payment=p
    )


def call(ws: str, run: str, n: str, cost: int, at: datetime, source: CostSource, ok: bool = True) -> list[TraceEvent]:
    """A gateway call in a run: its request row and its model_call step (the step is not a ledger event)."""
    a = attribution(ws, run)
    status = StepStatus.OK if ok else StepStatus.ERROR
    usage = Usage(input_tokens=100, output_tokens=20)
    request = RequestRecord(
        request_id=f"{run}-{n}",
        attribution=a,
        endpoint="/v1/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        stream=False,
        status=status,
        http_status=200 if ok else 502,
        started_at=at,
        ended_at=at,
        latency_ms=5.0,
        request_hash="h",
        usage=usage,
        cost_nanos=cost,
        cost_source=source,
    )
    step = StepRecord(
        f"{run}-{n}-step",
        run,
        a,
        StepKind.MODEL_CALL,
        "chat",
        status,
        at,
        request_id=request.request_id,
        model="gpt-4o-mini",
        provider="openai",
        usage=usage,
        cost_nanos=cost,
        cost_source=source,
    )
    return [request, step]


def tool(ws: str, run: str, n: str, cost: int, at: datetime, ok: bool = True) -> StepRecord:
    status = StepStatus.OK if ok else StepStatus.ERROR
    a = attribution(ws, run)
    return StepRecord(f"{run}-{n}", run, a, StepKind.TOOL_CALL, "search", status, at, cost_nanos=cost)


def start(ws: str, run: str, endpoint: str | None, workflow: str, at: datetime, agent: str = "seller") -> RunStart:
    return RunStart(
        run_id=run, attribution=attribution(ws, run, agent), started_at=at, workflow=workflow, endpoint_id=endpoint
    )


def sale(amount: int, fee: int = 0, status: PaymentStatus = SETTLED) -> Payment:
    return Payment(IN, status, amount, fee_nanos=fee, endpoint_id="ep-weather")


def mix(ws: str) -> list[list[TraceEvent]]:
    """The seeded batches (see the module docstring); the expected figures are worked out in EXPECTED."""
    t = T0 + timedelta(minutes=5)
    buy = attribution(ws, "r-buy", "buyer", "globex")
    return [
        [
            start(ws, "r-sale1", "ep-weather", "wf-sell", T0),
            payment(ws, "r-sale1", "p1", sale(2_000_000_000, 60_000_000), t),
            *call(ws, "r-sale1", "q1", 360_000, t, CostSource.COMPUTED),
            tool(ws, "r-sale1", "t1", 25_000_000, t),
        ],
        [
            start(ws, "r-sale2", "ep-weather", "wf-sell", T0),
            payment(ws, "r-sale2", "p1", sale(2_000_000_000, 60_000_000), t),
            payment(ws, "r-sale2", "p2", sale(2_000_000_000, status=REFUNDED), t + timedelta(minutes=1)),
            *call(ws, "r-sale2", "q2", 1_000_000, t, CostSource.ESTIMATED),  # a stream cut before its usage
        ],
        [
            start(ws, "r-sale3", "ep-news", "wf-sell", T0),
            payment(ws, "r-sale3", "p1", sale(5_000_000_000, 100, PaymentStatus.VERIFIED), t),
            payment(ws, "r-sale3", "p2", sale(5_000_000_000, 100, PaymentStatus.FAILED), t),
            *call(ws, "r-sale3", "q3", 0, t, CostSource.COMPUTED, ok=False),
            tool(ws, "r-sale3", "t1", 0, t, ok=False),
        ],
        [
            start(ws, "r-buy", None, "wf-buy", DAY2, agent="buyer"),
            payment(ws, "r-buy", "p1", Payment(OUT, SETTLED, 500_000_000, fee_nanos=10_000_000), DAY2, attribution=buy),
            payment(ws, "r-buy", "p2", Payment(OUT, REFUNDED, 200_000_000), DAY2, attribution=buy),
            *call(ws, "r-buy", "q4", 2_000_000, DAY2, CostSource.CLAMPED),  # a provider's figure past the bounds
        ],
        # A sale whose step arrives before its run: booked under no endpoint, moved when the run comes.
        [payment(ws, "r-late", "p1", sale(1_000_000_000), t)],
        [start(ws, "r-late", "ep-news", "wf-sell", T0)],
    ]


# Per run: calls (ledger events; here also its steps), errors, and its P&L.
EXPECTED: dict[str, dict[str, int]] = {
    "r-sale1": dict(calls=3, errors=0, cost=85_360_000, revenue=2_000_000_000, fees=60_000_000, tool_spend=25_000_000),
    "r-sale2": dict(
        calls=3,
        errors=0,
        cost=61_000_000,
        revenue=2_000_000_000,
        refunds=2_000_000_000,
        fees=60_000_000,
        estimated=1_000_000,
    ),
    "r-sale3": dict(calls=4, errors=2),
    "r-buy": dict(calls=3, errors=0, cost=312_000_000, fees=10_000_000, payments_out=300_000_000, estimated=2_000_000),
    "r-late": dict(calls=1, errors=0, revenue=1_000_000_000),
}
ENDPOINT = {"r-sale1": "ep-weather", "r-sale2": "ep-weather", "r-sale3": "ep-news", "r-buy": None, "r-late": "ep-news"}


def pnl(figures: dict[str, int]) -> Pnl:
    return Pnl(**{k: v for k, v in figures.items() if k not in ("calls", "errors")})


def summed(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(r[k] for r in rows) for k in ("calls", "errors", *PNL_MEASURES)}


def figures(calls: int, errors: int, p: Pnl) -> dict[str, int]:
    return dict(zip(("calls", "errors", *PNL_MEASURES), (calls, errors, *astuple(p)), strict=True))


async def seeded(store: SQLStore) -> str:
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    await store.create_workspace(ws, ws, T0)
    await store.declare_property(ws, "customer", T0)
    for batch in mix(ws):
        assert await store.write_batch(batch) is WriteResult.SUCCESS
    return ws


async def test_the_summary_of_every_grouping_sums_to_the_runs_pnls(store: SQLStore) -> None:
    ws = await seeded(store)
    assert [m.describe() for m in await store.verify_books(ws)] == []
    total = Pnl()
    for p in (pnl(f) for f in EXPECTED.values()):
        total = total + p
    assert (total.revenue, total.refunds, total.cost, total.model_cost, total.margin) == (
        5_000_000_000,
        2_000_000_000,
        458_360_000,
        3_360_000,
        2_541_640_000,
    )
    expected_totals = figures(14, 2, total)

    # Each run's P&L, as its run totals show it, is the one worked out by hand; group_by=run reads the same.
    for run_id, f in EXPECTED.items():
        run = await store.get_run(ws, run_id)
        assert run is not None and run["endpoint_id"] == ENDPOINT[run_id]
        assert Pnl.of(run) == pnl(f), run_id
        assert (run["steps"], run["errors"]) == (f["calls"], f["errors"])
    by_run = await store.finance_summary(ws, FinanceQuery(group_by="run"))
    assert {r["key"]: figures(r["calls"], r["errors"], Pnl.of(r)) for r in by_run.rows} == {
        k: figures(f["calls"], f["errors"], pnl(f)) for k, f in EXPECTED.items()
    }
    # Revenue first, then cost: the earners, then the spenders.
    assert [r["key"] for r in by_run.rows] == ["r-sale1", "r-sale2", "r-late", "r-buy", "r-sale3"]

    for group_by in GROUPS:
        for bucket in (None, "day", "hour"):
            found = await store.finance_summary(ws, FinanceQuery(group_by=group_by, bucket=bucket))
            assert not found.more
            assert summed(found.rows) == found.totals == expected_totals, (group_by, bucket)

    endpoints = await store.finance_summary(ws, FinanceQuery(group_by="endpoint"))
    assert [(r["key"], r["calls"], Pnl.of(r).margin) for r in endpoints.rows] == [
        ("ep-weather", 6, 2_000_000_000 - 85_360_000 - 61_000_000),
        ("ep-news", 5, 1_000_000_000),
        (None, 3, -312_000_000),
    ]
    by_day = await store.finance_summary(ws, FinanceQuery(group_by="endpoint", bucket="day"))
    assert [(r["bucket"], r["key"]) for r in by_day.rows] == [
        ("2026-03-01", "ep-weather"),
        ("2026-03-01", "ep-news"),
        ("2026-03-02", None),
    ]


async def test_limit_and_window(store: SQLStore) -> None:
    ws = await seeded(store)
    first = await store.finance_summary(ws, FinanceQuery(group_by="run", limit=2))
    everything = await store.finance_summary(ws, FinanceQuery(group_by="run"))
    assert first.more and [r["key"] for r in first.rows] == ["r-sale1", "r-sale2"]
    assert first.totals == everything.totals  # the totals count the rows past the limit too
    # The first day only (whole hours: 10:30 counts from 10:00): r-buy's day is out, for events and runs alike.
    window = FinanceQuery(group_by="endpoint", since=T0 + timedelta(minutes=30), until=T0 + timedelta(hours=2))
    day1 = await store.finance_summary(ws, window)
    assert [r["key"] for r in day1.rows] == ["ep-weather", "ep-news"]
    runs = await store.finance_summary(ws, FinanceQuery(group_by="run", since=DAY2))
    assert [r["key"] for r in runs.rows] == ["r-buy"]
    listed = await store.list_runs(ws, RunFilter(endpoint_id="ep-news"))
    assert sorted(r["id"] for r in listed) == ["r-late", "r-sale3"]


async def test_an_undeclared_property_is_refused(store: SQLStore) -> None:
    from agentledger.core.errors import InvalidRequest

    ws = await seeded(store)
    with pytest.raises(InvalidRequest) as caught:
        await store.finance_summary(ws, FinanceQuery(group_by="property.team"))
    assert caught.value.param == "group_by" and "not indexed" in caught.value.message
    with pytest.raises(InvalidRequest):
        await store.finance_summary(ws, FinanceQuery(group_by="model"))


async def test_money_past_two_to_the_63_in_one_bucket_stays_exact(store: SQLStore) -> None:
    """9,300 sales at the bound in one hour (revenue past 2^63), as many outbound payments at the bound, then all
    of them refunded (cost up past 2^63 and back down through it): every sum exact, kept and recomputed."""
    ws = f"ws-{uuid.uuid4().hex[:10]}"
    await store.create_workspace(ws, ws, T0)
    n = 9_300
    amount, fee = COST_UNIT - 1_000_000, 1_000_000
    assert n * amount > 2**63
    batches: list[list[TraceEvent]] = [[start(ws, "r", "ep-big", "wf", T0)]]
    chunks = (n + 999) // 1000
    for what, p in (
        ("in", Payment(IN, SETTLED, amount, fee_nanos=fee)),
        ("out", Payment(OUT, SETTLED, COST_UNIT)),
        ("back", Payment(OUT, REFUNDED, COST_UNIT)),
    ):
        for b in range(0, n, 1000):
            batches.append(
                [
                    payment(ws, "r", f"{what}{i}", p, T0 + timedelta(seconds=i % 3000))
                    for i in range(b, min(b + 1000, n))
                ]
            )
    for i, batch in enumerate(batches):
        assert await store.write_batch(batch) is WriteResult.SUCCESS
        if i == 2 * chunks:  # after the outbound payments, before their refunds
            peak = await store.finance_summary(ws, FinanceQuery(group_by="endpoint"))
            assert peak.totals["cost_nanos"] == n * fee + n * COST_UNIT > 2**63
            assert peak.totals["payment_out_nanos"] == n * COST_UNIT
    assert [m.describe() for m in await store.verify_books(ws)] == []
    expected = Pnl(cost=n * fee, revenue=n * amount, fees=n * fee)
    run = await store.get_run(ws, "r")
    assert run is not None and Pnl.of(run) == expected
    for group_by in ("endpoint", "run", "workspace", "session"):
        found = await store.finance_summary(ws, FinanceQuery(group_by=group_by, bucket="hour"))
        assert [Pnl.of(r) for r in found.rows] == [expected] and found.totals["calls"] == 3 * n, group_by
    assert expected.view()["revenue_usd"] == f"{n * amount // 10**9}.{n * amount % 10**9:09d}"


# -- migration 0008 over rows written before it ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.pg)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


def test_migration_0008_rebuilds_the_books_of_rows_written_before_it(empty_db: str) -> None:
    """Rows as 0007 held them (no payment columns, no endpoint, books without finance): the upgrade to head adds
    the columns and rebuilds every kept row, so the books verify and count the old rows' errors and estimates."""
    engine = create_engine(empty_db)
    upgrade(engine, "0007_governance")
    old = MetaData()
    old.reflect(engine)
    ws, at = "ws-old", T0
    common = dict(workspace_id=ws, department_id="d", agent_id="a", run_id="r0", properties={}, started_at=at)
    usage = dict(input_tokens=10, cached_input_tokens=0, cache_write_tokens=0, output_tokens=5, reasoning_tokens=0)
    with engine.begin() as conn:
        conn.execute(insert(old.tables["workspaces"]).values(id=ws, name=ws, created_at=at))
        conn.execute(
            insert(old.tables["runs"]).values(
                workspace_id=ws, id="r0", workflow="wf", status="running", started_at=at, metadata={}
            )
        )
        request = dict(common, **usage, endpoint="/v1/chat/completions", provider="openai", model="m", stream=False)
        request.update(http_status=200, attempts=1, latency_ms=1.0, request_hash="h", ended_at=at)
        conn.execute(
            insert(old.tables["requests"]).values(
                id="q0", status="ok", cost_nanos=700, cost_source="estimated", **request
            )
        )
        conn.execute(
            insert(old.tables["requests"]).values(id="q1", status="error", cost_nanos=0, cost_source=None, **request)
        )
        step = dict(common, **usage, name="s", attempt=1, attributes={})
        conn.execute(insert(old.tables["steps"]).values(id="s0", kind="tool_call", status="ok", cost_nanos=40, **step))
        conn.execute(
            insert(old.tables["steps"]).values(
                id="s1",
                kind="model_call",
                request_id="q0",
                status="ok",
                cost_nanos=700,
                cost_source="estimated",
                **step,
            )
        )
    upgrade(engine)
    engine.dispose()

    import asyncio

    async def check() -> None:
        store = SQLStore(empty_db)
        try:
            assert [m.describe() for m in await store.verify_books(ws)] == []
            found = await store.finance_summary(ws, FinanceQuery(group_by="workflow"))
            assert [
                (r["key"], r["calls"], r["errors"], r["tool_spend_nanos"], r["estimated_cost_nanos"])
                for r in found.rows
            ] == [("wf", 3, 1, 40, 700)]
            run = await store.get_run(ws, "r0")
            assert run is not None and Pnl.of(run) == Pnl(cost=740, tool_spend=40, estimated=700)
        finally:
            await store.aclose()

    asyncio.run(check())
