"""`GET /api/retention` and `PUT /api/retention` (admin or owner): how long the workspace's bodies, trace rows and
audit events are kept (core/retention.py), and what the retention job has done so far (docs/retention.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, describe, json_body
from agentledger.audit.changes import Change
from agentledger.core.model import AdminPrincipal
from agentledger.core.retention import parse_retention
from agentledger.gateway.responses import JSONResponse
from agentledger.store.retention import RetentionStore


def view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "bodies_days": row["bodies_days"],
        "traces_days": row["traces_days"],
        "audit_days": row["audit_days"],
        "updated_at": row["updated_at"],
        "updated_by": row["updated_by"],
        "state": {
            "traces_horizon": row["traces_horizon"],
            "bodies_horizon": row["bodies_horizon"],
            "swept_at": row["swept_at"],
        },
    }


def retention_routes(auth: AdminAuth, store: RetentionStore, clock: Callable[[], datetime]) -> list[Route]:
    async def get(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse(view(await store.get(admin.workspace_id)))

    async def put(request: Request, admin: AdminPrincipal) -> Response:
        settings = parse_retention(await json_body(request))
        before = view(await store.get(admin.workspace_id))
        await store.put(admin.workspace_id, settings, admin.token_id, clock())
        after = view(await store.get(admin.workspace_id))
        describe(request, Change("retention.update", "retention", admin.workspace_id, before=before, after=after))
        return JSONResponse(after)

    return [
        Route("/api/retention", auth.guard(get), methods=["GET"]),
        Route("/api/retention", auth.guard(put, write=True, audit=["retention.update"]), methods=["PUT"]),
    ]
