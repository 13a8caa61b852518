"""Budgets (with their ledger and projected exhaustion), policies (with their hits) and approvals (approve / deny,
live).

Every figure is the /api route's own answer (web.Ctx.api); the only thing computed beside it is the projection, a
straight line through the current window's spend (dashboard/budgets.py, shared with the Overview)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import RedirectResponse, Response

from agentledger.core.headers import ID_RE
from agentledger.core.policy_hits import MODES
from agentledger.dashboard.budgets import with_exhaustion
from agentledger.dashboard.web import Ctx, Page, PageError

APPROVE = ("POST", "/api/approvals/{approval_id}/approve")
DENY = ("POST", "/api/approvals/{approval_id}/deny")


async def budgets(ctx: Ctx) -> Response:
    now = datetime.now(UTC)
    rows = with_exhaustion((await ctx.api("GET", "/api/budgets"))["data"], now)
    limits = (await ctx.api("GET", "/api/rate-limits"))["data"]
    selected = ctx.params.get("budget") or (rows[0]["id"] if rows else None)
    ledger = (await ctx.api("GET", "/api/ledger", {"budget": selected, "limit": 50}))["data"] if selected else []
    return ctx.render("budgets.html", budgets=rows, limits=limits, selected=selected, ledger=ledger)


async def policies(ctx: Ctx) -> Response:
    """Each policy with its hit counts, and the selected one's recent hits: by default the policy with the most
    monitor-mode hits over 7 days (the one being tried out before it is enforced), else the most hit."""
    rows = (await ctx.api("GET", "/api/policies"))["data"]
    most = max(rows, key=lambda r: (r["hits_7d"]["monitor"], r["hits_7d"]["enforce"]), default=None)
    selected = ctx.params.get("policy") or (most["id"] if most else None)
    mode = ctx.params.get("mode") if ctx.params.get("mode") in MODES else None
    hits: list[dict[str, Any]] = []
    if selected:
        if not ID_RE.fullmatch(selected):  # a path segment of the API call below: an id or nothing
            raise PageError(404, f"Policy {selected!r} does not exist.")
        hits = (await ctx.api("GET", f"/api/policies/{selected}/hits", {"mode": mode, "limit": 50}))["data"]
    return ctx.render("policies.html", policies=rows, selected=selected, mode=mode, modes=MODES, hits=hits)


async def approvals(ctx: Ctx) -> Response:
    status = ctx.params.get("status") or None
    rows = (await ctx.api("GET", "/api/approvals", {"status": status, "limit": 100}))["data"]
    values = dict(approvals=rows, wanted=status, can_decide=ctx.can(*APPROVE))
    if ctx.request.headers.get("hx-request") and ctx.params.get("fragment") == "rows":
        return ctx.render("approvals_rows.html", **values)
    return ctx.render("approvals.html", **values)


def _decide(verb: str) -> Any:
    async def decide(ctx: Ctx) -> Response:
        approval_id = ctx.request.path_params["approval_id"]
        form = await ctx.request.form()
        comment = str(form.get("comment") or "").strip()
        body = {"comment": comment} if comment else {}
        try:
            await ctx.api("POST", f"/api/approvals/{approval_id}/{verb}", body=body)
        except PageError as exc:
            if exc.status != 409:  # decided meanwhile (by someone else): the list says by whom
                raise
        return RedirectResponse("/approvals", status_code=303)

    return decide


PAGES = [
    Page("/budgets", budgets, api=("GET", "/api/budgets"), nav="Budgets"),
    Page("/policies", policies, api=("GET", "/api/policies"), nav="Policies"),
    Page("/approvals", approvals, api=("GET", "/api/approvals"), nav="Approvals"),
    Page("/approvals/{approval_id}/approve", _decide("approve"), api=APPROVE, methods=("POST",)),
    Page("/approvals/{approval_id}/deny", _decide("deny"), api=DENY, methods=("POST",)),
]
