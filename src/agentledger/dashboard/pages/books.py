"""Paid endpoints and finance (P&L per endpoint and per agent), the audit log with its chain's status, and keys and
agents (create a virtual key, shown once; revoke). Reads and writes are the /api routes' own (web.Ctx.api)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.responses import RedirectResponse, Response

from agentledger.dashboard.web import Ctx, Page, PageError

CREATE_KEY = ("POST", "/api/virtual-keys")
REVOKE_KEY = ("DELETE", "/api/virtual-keys/{key_id}")
WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


async def finance(ctx: Ctx) -> Response:
    window = ctx.params.get("window") or "30d"
    if window not in WINDOWS:
        window = "30d"
    now = datetime.now(UTC)
    span = {"from": (now - WINDOWS[window]).isoformat(), "to": now.isoformat()}
    by_endpoint = await ctx.api("GET", "/api/finance/summary", {**span, "group_by": "endpoint"})
    by_agent = await ctx.api("GET", "/api/finance/summary", {**span, "group_by": "agent"})
    endpoints = (await ctx.api("GET", "/api/paid-endpoints"))["data"]
    names = {e["id"]: e["slug"] for e in endpoints}
    return ctx.render(
        "finance.html",
        window=window,
        windows=list(WINDOWS),
        by_endpoint=by_endpoint,
        by_agent=by_agent,
        endpoints=endpoints,
        names=names,
    )


async def audit(ctx: Ctx) -> Response:
    params = {k: ctx.params.get(k) for k in ("action", "actor_type", "target_type", "cursor")}
    page = await ctx.api("GET", "/api/audit-logs", {**params, "limit": 50})
    verify = await ctx.api("GET", "/api/audit/verify")
    return ctx.render("audit.html", events=page["data"], next_cursor=page["next_cursor"], filters=params, verify=verify)


async def keys(ctx: Ctx, created: dict[str, str] | None = None, error: str | None = None) -> Response:
    virtual_keys = (await ctx.api("GET", "/api/virtual-keys"))["data"]
    agents = (await ctx.api("GET", "/api/agents"))["data"]
    departments = (await ctx.api("GET", "/api/departments"))["data"]
    return ctx.render(
        "keys.html",
        status=201 if created else 400 if error else 200,
        keys=virtual_keys,
        agents=agents,
        departments=departments,
        created=created,
        error=error,
        can_create=ctx.can(*CREATE_KEY),
        can_revoke=ctx.can(*REVOKE_KEY),
    )


async def create_key(ctx: Ctx) -> Response:
    form = await ctx.request.form()
    body = {k: str(form.get(k) or "").strip() for k in ("name", "agent_id", "department_id")}
    body = {k: v for k, v in body.items() if v}
    models = [m.strip() for m in str(form.get("allowed_models") or "").split(",") if m.strip()]
    if models:
        body["allowed_models"] = models  # type: ignore[assignment]
    try:
        made = await ctx.api("POST", "/api/virtual-keys", body=body)
    except PageError as exc:
        if exc.status != 400:
            raise
        return await keys(ctx, error=exc.message)
    # The key is in this answer only (never stored in the clear): rendered here, not behind a redirect.
    return await keys(ctx, created={"id": made["id"], "name": made.get("name", ""), "key": made["key"]})


async def revoke_key(ctx: Ctx) -> Response:
    await ctx.api("DELETE", f"/api/virtual-keys/{ctx.request.path_params['key_id']}")
    return RedirectResponse("/keys", status_code=303)


PAGES = [
    Page("/finance", finance, api=("GET", "/api/finance/summary"), nav="Finance"),
    Page("/audit", audit, api=("GET", "/api/audit-logs"), nav="Audit log"),
    Page("/keys", keys, api=("GET", "/api/virtual-keys"), nav="Keys & agents"),
    Page("/keys/create", create_key, api=CREATE_KEY, methods=("POST",)),
    Page("/keys/{key_id}/revoke", revoke_key, api=REVOKE_KEY, methods=("POST",)),
]
