"""Sessions: the list (most recently active first, with runs, cost, first and last seen) and a session's page (its
path tree from `alephant-session-path` with the cost of each node, its runs, its totals)."""

from __future__ import annotations

from starlette.responses import Response

from agentledger.dashboard.web import Ctx, Page


async def sessions(ctx: Ctx) -> Response:
    cursor = ctx.params.get("cursor")
    page = await ctx.api("GET", "/api/sessions", {"cursor": cursor, "limit": 50})
    return ctx.render("sessions.html", sessions=page["data"], cursor=cursor, next_cursor=page["next_cursor"])


async def session(ctx: Ctx) -> Response:
    session_id = ctx.request.path_params["session_id"]
    found = await ctx.api("GET", f"/api/sessions/{session_id}")
    unrouted = next((p for p in found["paths"] if p["path"] is None), None)
    return ctx.render("session.html", session=found, unrouted=unrouted)


PAGES = [
    Page("/sessions", sessions, api=("GET", "/api/sessions"), nav="Sessions"),
    Page("/sessions/{session_id}", session, api=("GET", "/api/sessions/{session_id}")),
]
