"""Costs: /api/analytics/costs grouped by any of its dimensions, a time series stacked by the group (uPlot), the
table, and the table as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.responses import Response

from agentledger.dashboard.web import Ctx, Page

GROUPS = (
    "agent",
    "model",
    "provider",
    "department",
    "virtual_key",
    "workflow",
    "session",
    "run",
    "prompt",
    "workspace",
)
COLUMNS = ("key", "cost_usd", "requests", "events", "input_tokens", "output_tokens", "total_tokens", "errors")
MAX_SERIES = 8  # the largest groups get a band of their own; the rest share one


def _query(ctx: Ctx) -> dict[str, str]:
    group_by = ctx.params.get("group_by") or "agent"
    prop = (ctx.params.get("property") or "").strip()
    if group_by == "property" and prop:
        group_by = f"property.{prop}"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return {
        "group_by": group_by,
        "from": ctx.params.get("from") or (now - timedelta(days=7)).isoformat(),
        "to": ctx.params.get("to") or (now + timedelta(hours=1)).isoformat(),
        "interval": ctx.params.get("interval") or "day",
    }


def _series(rows: list[dict[str, Any]], keys: list[Any]) -> dict[str, Any]:
    """Buckets × groups, each band the running sum of the groups below it (stacked), in dollars."""
    buckets = sorted({r["bucket"] for r in rows})
    index = {b: i for i, b in enumerate(buckets)}
    top = keys[:MAX_SERIES]
    names = [str(k) if k is not None else "(none)" for k in top] + (["other"] if len(keys) > MAX_SERIES else [])
    values = [[0.0] * len(buckets) for _ in names]
    for r in rows:
        col = top.index(r["key"]) if r["key"] in top else len(names) - 1
        values[col][index[r["bucket"]]] += float(Decimal(r["cost_usd"]))
    stacked, running = [], [0.0] * len(buckets)
    for band in values:
        running = [a + b for a, b in zip(running, band, strict=True)]
        stacked.append([round(v, 9) for v in running])
    times = [datetime.fromisoformat(b).timestamp() for b in buckets]
    return {"x": times, "names": names, "stacked": stacked}


async def costs(ctx: Ctx) -> Response:
    query = _query(ctx)
    totals = await ctx.api("GET", "/api/analytics/costs", {k: v for k, v in query.items() if k != "interval"})
    rows = sorted(totals["data"], key=lambda r: Decimal(r["cost_usd"]), reverse=True)
    if ctx.request.url.path.endswith(".csv"):
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in COLUMNS])
        name = query["group_by"].replace(".", "-")
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="costs-by-{name}.csv"'},
        )
    series = await ctx.api("GET", "/api/analytics/costs", query)
    chart = _series(series["data"], [r["key"] for r in rows])
    total = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    return ctx.render("costs.html", rows=rows, chart=chart, query=query, groups=GROUPS, window=totals, total=str(total))


PAGES = [
    Page("/costs", costs, api=("GET", "/api/analytics/costs"), nav="Costs"),
    Page("/costs.csv", costs, api=("GET", "/api/analytics/costs")),
]
