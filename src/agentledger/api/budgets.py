"""Budgets and rate limits: `/api/budgets`, `/api/rate-limits`, `/api/ledger` (admin token; their alerts are listed
by `/api/alerts`, api/webhooks.py), and for a virtual key `GET /v1/budget` and `POST /v1/spend/authorize`.

A department admin sees and changes only those scoped to their department, its agents or its virtual keys (the
ledger: those budgets' entries); any other is a 404, a workspace, workflow or property scope to create under a 403
(api/scoping.py `Reach`, docs/security.md)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api import scoping
from agentledger.api.auth import AdminAuth, describe, json_body, path_id
from agentledger.audit.changes import Change
from agentledger.core.budget_config import amount_nanos, budget_row, rate_limit_row
from agentledger.core.budgets import Decision, Figures, Scope, Subject, counter_key
from agentledger.core.errors import AgentLedgerError, BudgetExceeded, InvalidRequest, NotFound, StoreUnavailable
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.headers import parse_tracking
from agentledger.core.ids import new_id
from agentledger.core.model import AdminPrincipal, Principal
from agentledger.core.money import format_usd
from agentledger.gateway.budgets import Governed
from agentledger.gateway.flow import Gateway
from agentledger.gateway.policies import names_of
from agentledger.gateway.responses import JSONResponse, error_response
from agentledger.gateway.spend import SpendDesk
from agentledger.limits.base import CountersUnavailable
from agentledger.store.base import Store
from agentledger.store.budgets import budget_of

MAX_PAGE = 1000


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= MAX_PAGE:  # isdigit() takes "²"
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit")
    return int(raw)


def _time(request: Request, name: str) -> Any:
    raw = request.query_params.get(name)
    return None if raw is None else time_field(raw, name)


async def _check_scope(store: Store, workspace_id: str, row: dict[str, Any]) -> None:
    scope, value = Scope(row["scope"]), row["scope_value"]
    if not await store.budgets.scope_exists(workspace_id, scope, value):
        raise NotFound(f"The {scope.value} {value!r} does not exist in this workspace.", param="scope_value")


def budget_routes(auth: AdminAuth, store: Store, gateway: Gateway, desk: SpendDesk) -> list[Route]:
    gate = desk.gate
    budgets = store.budgets

    async def sees(admin: AdminPrincipal, row: dict[str, Any]) -> bool:
        reach = await scoping.reach(store, admin)
        return reach is None or reach.sees(row)

    async def status(row: dict[str, Any]) -> dict[str, Any]:
        budget = budget_of(row)
        now = gate.clock()
        out = {k: v for k, v in row.items() if k not in ("deleted_at",)}
        out["limit_usd"] = format_usd(budget.limit_nanos)
        if budget.period.value == "run":  # each run has its own allowance: read it on the run's policy checks
            out["status"] = None
            return out
        key = counter_key(budget, now, None)
        try:
            found = (await gate.counters.standing([key]))[key]
        except CountersUnavailable:  # the budget is still shown; its figures are not known just now
            out["status"] = None
            out["status_error"] = "counters unavailable"
            return out
        out["status"] = Figures(budget, key, found.spent, found.reserved).view(now)
        return out

    async def create_budget(request: Request, admin: AdminPrincipal) -> Response:
        data = await json_body(request)
        now = gate.clock()
        given = data.get("anchor")
        if given is not None and not isinstance(given, str):
            raise InvalidRequest("'anchor' must be an ISO 8601 timestamp string.", param="anchor")
        anchor = time_field(given, "anchor") if given is not None else None
        row = budget_row(data, now, anchor)
        if (reach := await scoping.reach(store, admin)) is not None:
            reach.require(row["scope"], row["scope_value"])
        await _check_scope(store, admin.workspace_id, row)
        ident = id_field(data["id"], "id") if data.get("id") is not None else new_id("bud")
        row = {"workspace_id": admin.workspace_id, "id": ident, **row}
        await budgets.create_budget(row)
        gateway.invalidate_workspace(admin.workspace_id)
        describe(request, Change("budget.create", "budget", ident, after=row))
        return JSONResponse(await status(row), status_code=201)

    async def list_budgets(request: Request, admin: AdminPrincipal) -> Response:
        rows = await budgets.list_budgets(admin.workspace_id)
        if (reach := await scoping.reach(store, admin)) is not None:
            rows = [r for r in rows if reach.sees(r)]
        return JSONResponse({"data": [await status(r) for r in rows]})

    async def get_budget(request: Request, admin: AdminPrincipal) -> Response:
        budget_id = path_id(request, "budget_id", "Budget")
        row = await budgets.get_budget(admin.workspace_id, budget_id)
        if row is None or not await sees(admin, row):
            raise NotFound(f"Budget {budget_id!r} does not exist.", param="budget_id")
        return JSONResponse(await status(row))

    async def delete_budget(request: Request, admin: AdminPrincipal) -> Response:
        budget_id = path_id(request, "budget_id", "Budget")
        before = await budgets.get_budget(admin.workspace_id, budget_id)
        hidden = before is not None and not await sees(admin, before)
        if hidden or not await budgets.delete("budgets", admin.workspace_id, budget_id, gate.clock()):
            raise NotFound(f"Budget {budget_id!r} does not exist.", param="budget_id")
        gateway.invalidate_workspace(admin.workspace_id)
        describe(request, Change("budget.delete", "budget", budget_id, before=before))
        return JSONResponse({"id": budget_id, "deleted": True})

    async def create_rate_limit(request: Request, admin: AdminPrincipal) -> Response:
        data = await json_body(request)
        row = rate_limit_row(data, gate.clock())
        if (reach := await scoping.reach(store, admin)) is not None:
            reach.require(row["scope"], row["scope_value"])
        await _check_scope(store, admin.workspace_id, row)
        ident = id_field(data["id"], "id") if data.get("id") is not None else new_id("rl")
        row = {"workspace_id": admin.workspace_id, "id": ident, **row}
        await budgets.create_rate_limit(row)
        gateway.invalidate_workspace(admin.workspace_id)
        describe(request, Change("rate_limit.create", "rate_limit", ident, after=row))
        return JSONResponse(row, status_code=201)

    async def list_rate_limits(request: Request, admin: AdminPrincipal) -> Response:
        rows = await budgets.list_rate_limits(admin.workspace_id)
        if (reach := await scoping.reach(store, admin)) is not None:
            rows = [r for r in rows if reach.sees(r)]
        return JSONResponse({"data": rows})

    async def delete_rate_limit(request: Request, admin: AdminPrincipal) -> Response:
        limit_id = path_id(request, "rate_limit_id", "Rate limit")
        before = await store.audit.current("rate_limits", admin.workspace_id, limit_id)
        hidden = before is not None and not await sees(admin, before)
        if hidden or not await budgets.delete("rate_limits", admin.workspace_id, limit_id, gate.clock()):
            raise NotFound(f"Rate limit {limit_id!r} does not exist.", param="rate_limit_id")
        gateway.invalidate_workspace(admin.workspace_id)
        describe(request, Change("rate_limit.delete", "rate_limit", limit_id, before=before))
        return JSONResponse({"id": limit_id, "deleted": True})

    async def ledger(request: Request, admin: AdminPrincipal) -> Response:
        q = request.query_params
        await gateway.pipeline.flush()  # read your writes: entries of calls already answered
        mine = None  # a department admin: the entries of the budgets they see (a deleted budget's no longer)
        if (reach := await scoping.reach(store, admin)) is not None:
            mine = [r["id"] for r in await budgets.list_budgets(admin.workspace_id) if reach.sees(r)]
        rows = await budgets.ledger(
            admin.workspace_id,
            budget_id=id_field(q["budget"], "budget") if "budget" in q else None,
            run_id=id_field(q["run"], "run") if "run" in q else None,
            since=_time(request, "from"),
            until=_time(request, "to"),
            limit=_limit(request),
            budget_ids=mine,
        )
        return JSONResponse({"data": rows})

    async def subject_of(request: Request, principal: Principal, run_id: str | None) -> Subject:
        # The gateway's own agent check: a key bound to an agent may not name another (403), nor an unknown one.
        return Subject.of(await gateway.attribute(principal, parse_tracking(request.scope["headers"])), run_id=run_id)

    async def my_budget(request: Request) -> Response:
        try:
            principal = await gateway.authenticate(request.headers)
            figures = await desk.figures(await subject_of(request, principal, None))
        except CountersUnavailable:
            return error_response(StoreUnavailable("The budget counters are unavailable; retry shortly."))
        except AgentLedgerError as exc:
            return error_response(exc)
        now = gate.clock()
        return JSONResponse({"data": [f.view(now) for f in figures]})

    async def record_refusal(principal: Principal, subject: Subject, governed: Governed, kind: str, name: str) -> None:
        """A refused authorization in a run is a policy_check step of that run (blocked, and by what)."""
        extra = {"authorization": {"kind": kind, "name": name}}
        await gateway.record_check(governed, subject, extra, name=f"authorize {kind}", prefix="auth")

    async def authorize(request: Request) -> Response:
        governed = Governed()
        try:
            principal = await gateway.authenticate(request.headers)
            data = await json_body(request)
            run_id = id_field(data["run_id"], "run_id") if data.get("run_id") is not None else None
            amount = amount_nanos(data.get("amount_usd"))
            kind = text_field(data.get("kind", "tool_call"), "kind", limit=64, strip=True)
            name = text_field(data.get("name", kind), "name", limit=256, strip=True)
            subject = await subject_of(request, principal, run_id)
            if gateway.policies is not None:  # the policies first: a blocked or escalated spend reserves nothing
                try:
                    await gateway.policies.check_action(
                        governed,
                        subject,
                        kind=kind,
                        name=name,
                        amount_nanos=amount,
                        client_ip=gateway.policies.client_ip(
                            request.client.host if request.client else None, request.headers
                        ),
                        header_names=names_of(request.scope["headers"]),
                        prompt_id=None,
                        body={"kind": kind, "name": name, "amount_usd": data.get("amount_usd"), "run_id": run_id},
                    )
                except AgentLedgerError:
                    await record_refusal(principal, subject, governed, kind, name)
                    raise
            try:
                entries = await desk.authorize(governed, subject, amount, kind=kind, name=name)
            except CountersUnavailable:
                raise StoreUnavailable("The budget counters are unavailable; retry shortly.") from None
            except BudgetExceeded:
                await record_refusal(principal, subject, governed, kind, name)
                raise
            if entries:
                await gateway.pipeline.submit(entries)  # durable before the agent may spend against it
        except AgentLedgerError as exc:
            decided = governed.decision.value if governed.decision is not Decision.ALLOWED else None
            if exc.status == 402:
                decided = "blocked"
            return error_response(exc, {"alephant-policy-decision": decided} if decided else None)
        now = gate.clock()
        body = {
            "decision": governed.decision.value,
            "reservation_id": governed.reservation_id,
            "amount_usd": format_usd(amount),
            "expires_at": (now + timedelta(seconds=gate.reservation_ttl)).isoformat()
            if governed.reservation_id
            else None,
            "budgets": [f.view(now) for f in governed.figures],
        }
        return JSONResponse(body, status_code=201 if governed.reservation_id else 200)

    g = auth.guard
    return [
        Route("/api/budgets", g(list_budgets), methods=["GET"]),
        Route("/api/budgets", g(create_budget, write=True, audit=["budget.create"]), methods=["POST"]),
        Route("/api/budgets/{budget_id}", g(get_budget), methods=["GET"]),
        Route("/api/budgets/{budget_id}", g(delete_budget, write=True, audit=["budget.delete"]), methods=["DELETE"]),
        Route("/api/rate-limits", g(list_rate_limits), methods=["GET"]),
        Route("/api/rate-limits", g(create_rate_limit, write=True, audit=["rate_limit.create"]), methods=["POST"]),
        Route(
            "/api/rate-limits/{rate_limit_id}",
            g(delete_rate_limit, write=True, audit=["rate_limit.delete"]),
            methods=["DELETE"],
        ),
        Route("/api/ledger", g(ledger), methods=["GET"]),
        Route("/v1/budget", my_budget, methods=["GET"]),
        Route("/v1/spend/authorize", authorize, methods=["POST"]),
    ]
