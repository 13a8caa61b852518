"""Requests: gateway requests newest first with filters (model, provider, status, decision, time), a search by
`x-request-id` (exact) and a request's page (tokens, cost and its source, latency and time to first token, attempts
and fallbacks, the policy decision and governance, its run)."""

from __future__ import annotations

from urllib.parse import quote

from starlette.responses import RedirectResponse, Response

from agentledger.dashboard.web import Ctx, Page

FILTERS = ("model", "provider", "status", "decision", "from", "to")
STATUSES = ("ok", "error")
DECISIONS = ("allowed", "blocked", "throttled", "escalated")


async def requests(ctx: Ctx) -> Response:
    wanted = (ctx.params.get("id") or "").strip()
    missing = None
    if wanted:
        status = (await ctx.api("GET", f"/api/requests/{quote(wanted, safe='')}", ok=(200, 404))).get("id")
        if status == wanted:
            return RedirectResponse(f"/requests/{quote(wanted, safe='')}", status_code=303)
        missing = wanted
    params = {k: ctx.params.get(k) or None for k in (*FILTERS, "cursor")}
    page = await ctx.api("GET", "/api/requests", {**params, "limit": 50})
    return ctx.render(
        "requests.html",
        requests=page["data"],
        next_cursor=page["next_cursor"],
        filters=params,
        missing=missing,
        statuses=STATUSES,
        decisions=DECISIONS,
    )


async def request_detail(ctx: Ctx) -> Response:
    request_id = ctx.request.path_params["request_id"]
    found = await ctx.api("GET", f"/api/requests/{quote(request_id, safe='')}")
    return ctx.render("request.html", req=found, can_runs=ctx.can("GET", "/api/runs/{run_id}"))


PAGES = [
    Page("/requests", requests, api=("GET", "/api/requests"), nav="Requests"),
    Page("/requests/{request_id}", request_detail, api=("GET", "/api/requests/{request_id}")),
]
