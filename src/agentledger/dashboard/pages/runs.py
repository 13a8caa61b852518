"""Runs: the runs list with its filters (live: new runs appear by polling), and a run's controls."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from agentledger.dashboard.web import Ctx, Page

# The page's own query parameters; `property` and `value` make the API's `property.<name>=<value>`.
FILTERS = ("agent", "workflow", "session", "status", "decision", "property", "value", "from", "to")
STATUSES = ("running", "succeeded", "failed", "cancelled")
DECISIONS = ("allowed", "blocked", "throttled", "escalated")


def api_params(filters: dict[str, str | None]) -> dict[str, Any]:
    """The /api/runs query of the page's filters: a property filters only with both its name and its value."""
    params: dict[str, Any] = {k: v for k, v in filters.items() if k not in ("property", "value")}
    name, value = (filters.get("property") or "").strip(), filters.get("value")
    if name and value:
        params[f"property.{name}"] = value
    return params


async def runs(ctx: Ctx) -> Response:
    params = {k: ctx.params.get(k) for k in (*FILTERS, "cursor")}
    page = await ctx.api("GET", "/api/runs", {**api_params(params), "limit": 50})
    values = dict(
        runs=page["data"], next_cursor=page["next_cursor"], filters=params, statuses=STATUSES, decisions=DECISIONS
    )
    if ctx.request.headers.get("hx-request") and ctx.params.get("fragment") == "rows":
        return ctx.render("runs_rows.html", **values)
    return ctx.render("runs.html", **values)


PAGES = [Page("/runs", runs, api=("GET", "/api/runs"), nav="Runs")]
