"""Management API of paid endpoints and workflow runtimes (docs/paid-endpoints.md, "Set-up"; docs/api.md).

GET    /api/agents/{agent_id}                 an agent, with its runtime when it is a workflow agent
PUT    /api/agents/{agent_id}/runtime         set (or replace) a workflow agent's runtime
POST   /api/paid-endpoints                    create (201), with its scoped virtual key
GET    /api/paid-endpoints                    list (disabled ones too)
GET    /api/paid-endpoints/{endpoint_id}      one
PATCH  /api/paid-endpoints/{endpoint_id}      change settings (every rule checked again)
DELETE /api/paid-endpoints/{endpoint_id}      disable: no more sales, the scoped key revoked
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api import scoping
from agentledger.api.auth import AdminAuth, describe, json_body, path_id
from agentledger.audit.changes import Change
from agentledger.core.model import AdminPrincipal
from agentledger.finance.endpoints import PaidEndpointAdmin
from agentledger.gateway.bodies import parse_json
from agentledger.gateway.responses import JSONResponse


def paid_endpoint_routes(auth: AdminAuth, admin: PaidEndpointAdmin) -> list[Route]:
    async def get_agent(request: Request, who: AdminPrincipal) -> Response:
        agent_id = path_id(request, "agent_id", "Agent")
        found = await admin.agent(who.workspace_id, agent_id)
        scoping.require(who, found.get("department_id"), f"Agent {agent_id!r}", "agent_id")
        return JSONResponse(found)

    async def put_runtime(request: Request, who: AdminPrincipal) -> Response:
        agent_id = path_id(request, "agent_id", "Agent")
        data = parse_json(await request.body())
        before = await admin.agent(who.workspace_id, agent_id)
        after = await admin.set_runtime(who.workspace_id, agent_id, data)
        describe(request, Change("agent.set_runtime", "agent", agent_id, before=before, after=after))
        return JSONResponse(after)

    async def create(request: Request, who: AdminPrincipal) -> Response:
        created = await admin.create(who.workspace_id, await json_body(request))
        describe(request, Change("paid_endpoint.create", "paid_endpoint", created["id"], after=created))
        return JSONResponse(created, status_code=201)

    async def listing(request: Request, who: AdminPrincipal) -> Response:
        return JSONResponse({"data": await admin.list(who.workspace_id)})

    async def get_one(request: Request, who: AdminPrincipal) -> Response:
        endpoint_id = path_id(request, "endpoint_id", "Paid endpoint")
        return JSONResponse(await admin.get(who.workspace_id, endpoint_id))

    async def patch(request: Request, who: AdminPrincipal) -> Response:
        endpoint_id = path_id(request, "endpoint_id", "Paid endpoint")
        changes = await json_body(request)
        before = await admin.get(who.workspace_id, endpoint_id)
        after = await admin.patch(who.workspace_id, endpoint_id, changes)
        describe(request, Change("paid_endpoint.update", "paid_endpoint", endpoint_id, before=before, after=after))
        return JSONResponse(after)

    async def disable(request: Request, who: AdminPrincipal) -> Response:
        endpoint_id = path_id(request, "endpoint_id", "Paid endpoint")
        before = await admin.get(who.workspace_id, endpoint_id)
        after = await admin.disable(who.workspace_id, endpoint_id)
        if before["enabled"]:
            describe(request, Change("paid_endpoint.disable", "paid_endpoint", endpoint_id, before=before, after=after))
        else:
            describe(request)  # disabled already
        return JSONResponse(after)

    g = auth.guard
    return [
        Route("/api/agents/{agent_id}", g(get_agent), methods=["GET"]),
        Route(
            "/api/agents/{agent_id}/runtime", g(put_runtime, write=True, audit=["agent.set_runtime"]), methods=["PUT"]
        ),
        Route("/api/paid-endpoints", g(listing), methods=["GET"]),
        Route("/api/paid-endpoints", g(create, write=True, audit=["paid_endpoint.create"]), methods=["POST"]),
        Route("/api/paid-endpoints/{endpoint_id}", g(get_one), methods=["GET"]),
        Route(
            "/api/paid-endpoints/{endpoint_id}", g(patch, write=True, audit=["paid_endpoint.update"]), methods=["PATCH"]
        ),
        Route(
            "/api/paid-endpoints/{endpoint_id}",
            g(disable, write=True, audit=["paid_endpoint.disable"]),
            methods=["DELETE"],
        ),
    ]
