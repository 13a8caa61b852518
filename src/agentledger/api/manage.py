"""Management API: departments, agents, virtual keys, provider keys, price overrides."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api import scoping
from agentledger.api.auth import AdminAuth, describe, json_body, path_id
from agentledger.audit.changes import Change
from agentledger.core.errors import NotFound
from agentledger.core.model import AdminPrincipal
from agentledger.gateway.flow import Gateway
from agentledger.gateway.responses import JSONResponse
from agentledger.governance import Governance


def manage_routes(auth: AdminAuth, gov: Governance, gateway: Gateway) -> list[Route]:
    store = gov.store

    async def workspaces(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_workspaces(admin.workspace_id)})

    async def list_departments(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_departments(admin.workspace_id)})

    async def create_department(request: Request, admin: AdminPrincipal) -> Response:
        row = await gov.create_department(admin.workspace_id, await json_body(request))
        describe(request, Change("department.create", "department", row["id"], after=row))
        return JSONResponse(row, status_code=201)

    async def list_agents(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": scoping.visible(admin, await store.list_agents(admin.workspace_id))})

    async def create_agent(request: Request, admin: AdminPrincipal) -> Response:
        data = await json_body(request)
        scoping.require(admin, data.get("department_id"), "Department", "department_id")
        row = await gov.create_agent(admin.workspace_id, data)
        describe(request, Change("agent.create", "agent", row["id"], after=row))
        return JSONResponse(row, status_code=201)

    async def list_keys(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": scoping.visible(admin, await store.list_virtual_keys(admin.workspace_id))})

    async def create_key(request: Request, admin: AdminPrincipal) -> Response:
        data = await json_body(request)
        if admin.department_id is not None:  # a key of their department: named, or through its agent
            agent = data.get("agent_id")
            found = await store.get_agent(admin.workspace_id, agent) if isinstance(agent, str) else None
            dep = found["department_id"] if found is not None else data.get("department_id")
            scoping.require(admin, dep, "Department", "department_id")
        row = await gov.create_virtual_key(admin.workspace_id, data)
        describe(request, Change("virtual_key.create", "virtual_key", row["id"], after=row))
        return JSONResponse(row, status_code=201)

    async def revoke_key(request: Request, admin: AdminPrincipal) -> Response:
        key_id = path_id(request, "key_id", "Virtual key")
        before = await store.audit.current("virtual_keys", admin.workspace_id, key_id)
        scoping.require(admin, (before or {}).get("department_id"), f"Virtual key {key_id!r}", "key_id")
        now = gov.clock()
        key_hash = await store.revoke_virtual_key(admin.workspace_id, key_id, now)
        if key_hash is None:
            raise NotFound(f"Virtual key {key_id!r} does not exist.", param="key_id")
        gateway.invalidate_key(key_hash)
        if before is not None and before["revoked_at"] is None:
            after = {**before, "revoked_at": now}
            describe(request, Change("virtual_key.revoke", "virtual_key", key_id, before=before, after=after))
        else:
            describe(request)  # revoked already: nothing changed
        return JSONResponse({"id": key_id, "revoked": True})

    async def list_provider_keys(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_provider_keys(admin.workspace_id)})

    async def create_provider_key(request: Request, admin: AdminPrincipal) -> Response:
        row = await gov.create_provider_key(admin.workspace_id, await json_body(request))
        gateway.invalidate_workspace(admin.workspace_id)
        describe(request, Change("provider_key.create", "provider_key", row["id"], after=row))
        return JSONResponse(row, status_code=201)

    async def revoke_provider_key(request: Request, admin: AdminPrincipal) -> Response:
        key_id = path_id(request, "key_id", "Provider key")
        before = await store.audit.current("provider_keys", admin.workspace_id, key_id)
        now = gov.clock()
        if not await store.revoke_provider_key(admin.workspace_id, key_id, now):
            raise NotFound(f"Provider key {key_id!r} does not exist.", param="key_id")
        gateway.invalidate_workspace(admin.workspace_id)
        after = None if before is None else {**before, "revoked_at": now}
        describe(request, Change("provider_key.revoke", "provider_key", key_id, before=before, after=after))
        return JSONResponse({"id": key_id, "revoked": True})

    async def list_prices(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_price_overrides(admin.workspace_id)})

    async def add_price(request: Request, admin: AdminPrincipal) -> Response:
        row = await gov.add_price_override(admin.workspace_id, await json_body(request))
        gateway.invalidate_workspace(admin.workspace_id)
        describe(request, Change("price_override.create", "price_override", row["id"], after=row))
        return JSONResponse(row, status_code=201)

    g = auth.guard
    return [
        Route("/api/workspaces", g(workspaces), methods=["GET"]),
        Route("/api/departments", g(list_departments), methods=["GET"]),
        Route("/api/departments", g(create_department, write=True, audit=["department.create"]), methods=["POST"]),
        Route("/api/agents", g(list_agents), methods=["GET"]),
        Route("/api/agents", g(create_agent, write=True, audit=["agent.create"]), methods=["POST"]),
        Route("/api/virtual-keys", g(list_keys), methods=["GET"]),
        Route("/api/virtual-keys", g(create_key, write=True, audit=["virtual_key.create"]), methods=["POST"]),
        Route(
            "/api/virtual-keys/{key_id}", g(revoke_key, write=True, audit=["virtual_key.revoke"]), methods=["DELETE"]
        ),
        Route("/api/provider-keys", g(list_provider_keys), methods=["GET"]),
        Route(
            "/api/provider-keys", g(create_provider_key, write=True, audit=["provider_key.create"]), methods=["POST"]
        ),
        Route(
            "/api/provider-keys/{key_id}",
            g(revoke_provider_key, write=True, audit=["provider_key.revoke"]),
            methods=["DELETE"],
        ),
        Route("/api/prices", g(list_prices), methods=["GET"]),
        Route("/api/prices", g(add_price, write=True, audit=["price_override.create"]), methods=["POST"]),
    ]
