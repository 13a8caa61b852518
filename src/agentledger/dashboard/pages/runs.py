"""Runs: the runs list with its filters (live: new runs appear by polling), and a run's controls."""

from __future__ import annotations

from starlette.responses import Response

from agentledger.dashboard.web import Ctx, Page

FILTERS = ("agent", "workflow", "session", "status", "from", "to")
STATUSES = ("running", "succeeded", "failed", "cancelled")


async def runs(ctx: Ctx) -> Response:
    params = {k: ctx.params.get(k) for k in (*FILTERS, "cursor")}
    page = await ctx.api("GET", "/api/runs", {**params, "limit": 50})
    values = dict(runs=page["data"], next_cursor=page["next_cursor"], filters=params, statuses=STATUSES)
    if ctx.request.headers.get("hx-request") and ctx.params.get("fragment") == "rows":
        return ctx.render("runs_rows.html", **values)
    return ctx.render("runs.html", **values)


PAGES = [Page("/runs", runs, api=("GET", "/api/runs"), nav="Runs")]
