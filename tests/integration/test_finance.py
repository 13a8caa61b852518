"""Agent finance through a real gateway (SQLite and PostgreSQL): payment steps through the step API, a run's P&L,
the finance summary, a budget charged by an outbound payment, and `rollups verify` after all of it.

The dataset: two runs started by sales of paid endpoints (their RunStart written as the paid endpoint route
writes it: through the store, with `endpoint_id`; the run API does not take one), one run that buys; gateway
calls priced from the catalog in each (6 prompt + 9 completion tokens of gpt-4o-mini: MINI nano-dollars), tool
steps with reported costs, and payments of every direction and status.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from agentledger.core.finance import Pnl
from agentledger.core.model import Attribution, RunStart
from agentledger.store.sql import SQLStore
from tests.harness import Harness

MINI = 6 * 150 + 9 * 600  # gpt-4o-mini: $0.15 / $0.60 per MTok, 6 prompt and 9 completion tokens
HELLO = [{"role": "user", "content": "hello there world"}]
AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def usd(nanos: int) -> str:
    return f"{'-' if nanos < 0 else ''}{abs(nanos) // 10**9}.{abs(nanos) % 10**9:09d}"


def store_of(gw: Harness) -> SQLStore:
    return SQLStore(gw.settings.database_url)


def start_sold_runs(gw: Harness, runs: dict[str, str]) -> None:
    """RunStarts with their paid endpoint, written as the paid endpoint route writes them (not the run API)."""

    async def write() -> None:
        store = store_of(gw)
        try:
            a = Attribution(workspace_id=gw.workspace, department_id=gw.department, agent_id=gw.agent)
            for run_id, endpoint in runs.items():
                start = RunStart(run_id, dataclasses.replace(a, run_id=run_id), AT, "sell", endpoint_id=endpoint)
                await store.write_batch([start])
        finally:
            await store.aclose()

    asyncio.run(write())


def verify(gw: Harness) -> list[str]:
    async def run() -> list[str]:
        store = store_of(gw)
        try:
            return [m.describe() for m in await store.verify_books(gw.workspace)]
        finally:
            await store.aclose()

    return asyncio.run(run())


def post(gw: Harness, run: str, steps: list[dict[str, Any]]) -> httpx.Response:
    return gw.v1("POST", f"/v1/runs/{run}/steps", json={"steps": steps})


def chat(gw: Harness, run: str) -> None:
    gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers={"Alephant-Run-Id": run})  # type: ignore[arg-type]


def payment(name: str, **p: Any) -> dict[str, Any]:
    return {"kind": "payment", "name": name, "started_at": AT.isoformat(), "payment": p}


def build(gw: Harness) -> dict[str, Pnl]:
    """The dataset; returns each run's P&L as worked out by hand."""
    start_sold_runs(gw, {"sale-1": "ep-weather", "sale-2": "ep-news"})
    for run in ("sale-1", "sale-2", "buy-1"):
        chat(gw, run)
    sale = {"direction": "inbound", "protocol": "x402", "network": "eip155:84532"}
    resp = post(
        gw,
        "sale-1",
        [
            payment("sold", **sale, status="settled", amount_usd="0.25", fee_usd="0.0075", asset_amount="250000"),
            {"kind": "tool_call", "name": "forecast", "cost_usd": "0.01", "started_at": AT.isoformat()},
        ],
    )
    assert resp.status_code == 201, resp.text
    resp = post(
        gw,
        "sale-2",
        [
            payment("sold", **sale, status="settled", amount_usd="1", fee_usd="0.03"),
            payment("refund", **sale, status="refunded", amount_usd="1"),
            payment("retry", **sale, status="failed", amount_usd="1"),
            payment("held", **sale, status="verified", amount_usd="1"),
        ],
    )
    assert resp.status_code == 201, resp.text
    resp = post(
        gw,
        "buy-1",
        [
            payment("bought", direction="outbound", status="settled", amount_usd=0.2, fee_usd="0.001"),
            payment("money back", direction="outbound", status="refunded", amount_usd="0.05"),
            {"kind": "api_call", "name": "geocode", "cost_usd": "0.002", "started_at": AT.isoformat()},
        ],
    )
    assert resp.status_code == 201, resp.text
    return {
        "sale-1": Pnl(cost=MINI + 7_500_000 + 10_000_000, revenue=250_000_000, fees=7_500_000, tool_spend=10_000_000),
        "sale-2": Pnl(cost=MINI + 30_000_000, revenue=1_000_000_000, refunds=1_000_000_000, fees=30_000_000),
        "buy-1": Pnl(
            cost=MINI + 201_000_000 - 50_000_000 + 2_000_000,
            fees=1_000_000,
            payments_out=150_000_000,
            tool_spend=2_000_000,
        ),
    }


def pnl_of(figures: dict[str, Any]) -> Pnl:
    """A P&L back from the API's strings (model cost is derived, so it is checked against the parts)."""
    n = {k: int(Decimal(v) * 10**9) for k, v in figures.items() if k.endswith("_usd")}
    p = Pnl(
        cost=n["cost_usd"],
        revenue=n["revenue_usd"],
        refunds=n["refunds_usd"],
        fees=n["fees_usd"],
        payments_out=n["outbound_payments_usd"],
        tool_spend=n["tool_spend_usd"],
        estimated=n["estimated_cost_usd"],
    )
    assert n["model_cost_usd"] == p.model_cost and n["margin_usd"] == p.margin
    return p


def test_payments_reach_the_run_and_the_summary_equals_the_runs_pnls(gw: Harness) -> None:
    runs = build(gw)
    # Each run's P&L, on the run and in the runs list.
    listed = {r["id"]: r for r in gw.get("/api/runs")["data"]}
    for run_id, expected in runs.items():
        run = gw.get(f"/api/runs/{run_id}")
        assert pnl_of(run["totals"]) == expected, run_id
        assert listed[run_id]["totals"] == run["totals"]
        assert run["totals"]["margin_usd"] == usd(expected.margin)
    assert gw.get("/api/runs/sale-1")["endpoint_id"] == "ep-weather"
    assert [r["id"] for r in gw.get("/api/runs", endpoint="ep-weather")["data"]] == ["sale-1"]
    assert gw.get("/api/runs/sale-1")["totals"]["margin_pct"] == round(
        (250_000_000 - MINI - 17_500_000) * 100 / 250_000_000, 4
    )
    assert gw.get("/api/runs/sale-2")["totals"]["margin_usd"] == usd(-MINI - 30_000_000)

    # A payment step shows its payment in exact dollars.
    steps = {s["name"]: s for s in gw.get("/api/runs/sale-1")["steps"]}
    assert steps["sold"]["payment"] == {
        "direction": "inbound",
        "status": "settled",
        "amount_usd": "0.250000000",
        "fee_usd": "0.007500000",
        "protocol": "x402",
        "asset_amount": "250000",
        "network": "eip155:84532",
        "asset": None,
        "counterparty": None,
        "reference": None,
        "endpoint_id": None,
    }
    assert steps["sold"]["cost_usd"] == "0.007500000" and "revenue_nanos" not in steps["sold"]
    assert steps["forecast"]["payment"] is None

    # The summary's totals are the sum of the runs' P&Ls, whatever the grouping.
    total = Pnl()
    for p in runs.values():
        total = total + p
    for group_by in ("workspace", "department", "agent", "workflow", "endpoint", "session", "run"):
        for bucket in (None, "hour", "day"):
            body = gw.get("/api/finance/summary", group_by=group_by, **({"bucket": bucket} if bucket else {}))
            assert pnl_of(body["totals"]) == total, (group_by, bucket)
            assert sum((pnl_of(r) for r in body["data"]), Pnl()) == total
            assert body["totals"]["calls"] == sum(r["calls"] for r in body["data"])
    # calls: 3 gateway calls, 7 steps outside the gateway (a run counts its steps, the same here).
    body = gw.get("/api/finance/summary", group_by="endpoint")
    assert body["totals"]["calls"] == 3 + 9 and body["totals"]["errors"] == 0
    assert body["totals"]["success_rate"] == 1.0 and body["totals"]["estimated_share"] == 0.0
    assert [(r["key"], r["revenue_usd"], r["margin_usd"]) for r in body["data"]] == [
        ("ep-news", "1.000000000", usd(runs["sale-2"].margin)),
        ("ep-weather", "0.250000000", usd(runs["sale-1"].margin)),
        (None, "0.000000000", usd(runs["buy-1"].margin)),
    ]
    assert (body["group_by"], body["bucket"], body["limit"], body["has_more"]) == ("endpoint", None, 100, False)
    assert verify(gw) == []


def test_an_outbound_payment_is_charged_to_the_budget(gw: Harness) -> None:
    resp = gw.api("POST", "/api/budgets", json={"id": "pay", "scope": "workspace", "limit_usd": "1", "period": "24h"})
    assert resp.status_code == 201, resp.text
    resp = post(
        gw, "buy", [payment("bought", direction="outbound", status="settled", amount_usd="0.3", fee_usd="0.02")]
    )
    assert resp.status_code == 201, resp.text
    st = gw.get("/api/budgets/pay")["status"]
    assert (st["spent_usd"], st["remaining_usd"]) == ("0.320000000", "0.680000000")
    # Refunded: the money comes back to the budget; verified or failed: nothing moved, nothing charged.
    resp = post(
        gw,
        "buy",
        [
            payment("back", direction="outbound", status="refunded", amount_usd="0.1"),
            payment("tried", direction="outbound", status="failed", amount_usd="0.5"),
            payment("held", direction="outbound", status="verified", amount_usd="0.5"),
        ],
    )
    assert resp.status_code == 201, resp.text
    assert gw.get("/api/budgets/pay")["status"]["spent_usd"] == "0.220000000"
    # A sale charges its fees only.
    post(gw, "buy", [payment("sold", direction="inbound", status="settled", amount_usd="5", fee_usd="0.01")])
    assert gw.get("/api/budgets/pay")["status"]["spent_usd"] == "0.230000000"
    assert verify(gw) == []


def error_of(resp: httpx.Response, param: str) -> str:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_request", param), err
    return str(err["message"])


def test_bad_payment_steps_and_summary_queries_are_400s_naming_the_field(gw: Harness) -> None:
    ok = payment("p", direction="inbound", status="settled", amount_usd="1")
    bad = {**ok, "payment": {**ok["payment"], "amount_usd": "-1"}}
    assert error_of(post(gw, "r", [ok, ok, bad]), "steps[2].payment.amount_usd").startswith("'payment.amount_usd' must")
    assert error_of(post(gw, "r", [{**ok, "cost_usd": "1"}]), "steps[0].cost_usd")
    assert error_of(post(gw, "r", [{"name": "t", "kind": "tool_call", "payment": ok["payment"]}]), "steps[0].payment")
    assert error_of(post(gw, "r", [{"name": "p", "kind": "payment"}]), "steps[0].payment")
    assert gw.api("GET", "/api/runs/r").status_code == 404  # nothing of a refused batch is written

    summary = "/api/finance/summary"
    for params, param in (
        ({"group_by": "model"}, "group_by"),
        ({"group_by": "property.team"}, "group_by"),  # not indexed
        ({"group_by": "property.Bad Name"}, "group_by"),
        ({"bucket": "week"}, "bucket"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"from": "yesterday"}, "from"),
    ):
        error_of(gw.api("GET", summary, params=params), param)
    assert gw.api("GET", summary).status_code == 200
    assert httpx.get(gw.url + summary).status_code == 401


def test_a_summary_by_an_indexed_property_and_by_hour(gw: Harness) -> None:
    assert gw.api("POST", "/api/analytics/properties", json={"name": "customer"}).status_code == 201
    headers = {"alephant-property-customer": "acme", "alephant-session-id": "sess-p"}
    resp = gw.v1(
        "POST",
        "/v1/runs/run-p/steps",
        headers=headers,
        json=[payment("sold", direction="inbound", status="settled", amount_usd="2", fee_usd="0.5")],
    )
    assert resp.status_code == 201, resp.text
    body = gw.get("/api/finance/summary", group_by="property.customer", bucket="hour")
    (row,) = body["data"]
    assert (row["key"], row["bucket"], row["revenue_usd"], row["margin_usd"], row["margin_pct"]) == (
        "acme",
        "2025-06-01T12:00:00Z",
        "2.000000000",
        "1.500000000",
        75.0,
    )
    # A session's totals carry its P&L too (its paths add up to them).
    totals = gw.get("/api/sessions/sess-p")["totals"]
    assert (totals["revenue_usd"], totals["fees_usd"], totals["margin_usd"], totals["events"]) == (
        "2.000000000",
        "0.500000000",
        "1.500000000",
        1,
    )
