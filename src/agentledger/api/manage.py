"""Management API: departments, agents, virtual keys, provider keys, price overrides."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, json_body, path_id
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
        return JSONResponse(await gov.create_department(admin.workspace_id, await json_body(request)), status_code=201)

    async def list_agents(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_agents(admin.workspace_id)})

    async def create_agent(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse(await gov.create_agent(admin.workspace_id, await json_body(request)), status_code=201)

    async def list_keys(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_virtual_keys(admin.workspace_id)})

    async def create_key(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse(await gov.create_virtual_key(admin.workspace_id, await json_body(request)), status_code=201)

    async def revoke_key(request: Request, admin: AdminPrincipal) -> Response:
        key_id = path_id(request, "key_id", "Virtual key")
        key_hash = await store.revoke_virtual_key(admin.workspace_id, key_id, gov.clock())
        if key_hash is None:
            raise NotFound(f"Virtual key {key_id!r} does not exist.", param="key_id")
        gateway.invalidate_key(key_hash)
        return JSONResponse({"id": key_id, "revoked": True})

    async def list_provider_keys(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_provider_keys(admin.workspace_id)})

    async def create_provider_key(request: Request, admin: AdminPrincipal) -> Response:
        row = await gov.create_provider_key(admin.workspace_id, await json_body(request))
        gateway.invalidate_workspace(admin.workspace_id)
        return JSONResponse(row, status_code=201)

    async def revoke_provider_key(request: Request, admin: AdminPrincipal) -> Response:
        key_id = path_id(request, "key_id", "Provider key")
        if not await store.revoke_provider_key(admin.workspace_id, key_id, gov.clock()):
            raise NotFound(f"Provider key {key_id!r} does not exist.", param="key_id")
        gateway.invalidate_workspace(admin.workspace_id)
        return JSONResponse({"id": key_id, "revoked": True})

    async def list_prices(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": await store.list_price_overrides(admin.workspace_id)})

    async def add_price(request: Request, admin: AdminPrincipal) -> Response:
        row = await gov.add_price_override(admin.workspace_id, await json_body(request))
        gateway.invalidate_workspace(admin.workspace_id)
        return JSONResponse(row, status_code=201)

    g = auth.guard
    return [
        Route("/api/workspaces", g(workspaces), methods=["GET"]),
        Route("/api/departments", g(list_departments), methods=["GET"]),
        Route("/api/departments", g(create_department, write=True), methods=["POST"]),
        Route("/api/agents", g(list_agents), methods=["GET"]),
        Route("/api/agents", g(create_agent, write=True), methods=["POST"]),
        Route("/api/virtual-keys", g(list_keys), methods=["GET"]),
        Route("/api/virtual-keys", g(create_key, write=True), methods=["POST"]),
        Route("/api/virtual-keys/{key_id}", g(revoke_key, write=True), methods=["DELETE"]),
        Route("/api/provider-keys", g(list_provider_keys), methods=["GET"]),
        Route("/api/provider-keys", g(create_provider_key, write=True), methods=["POST"]),
        Route("/api/provider-keys/{key_id}", g(revoke_provider_key, write=True), methods=["DELETE"]),
        Route("/api/prices", g(list_prices), methods=["GET"]),
        Route("/api/prices", g(add_price, write=True), methods=["POST"]),
    ]
