"""Approvals of escalated calls: `GET /api/approvals` (pending first), `GET /api/approvals/{id}`, and
`POST /api/approvals/{id}/approve|deny` with an optional `{"comment": "..."}` (owner and admin tokens)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, describe, path_id
from agentledger.api.permissions import permits
from agentledger.audit.changes import Change
from agentledger.core.errors import InvalidRequest, NotFound, PermissionDenied
from agentledger.core.fields import text_field
from agentledger.core.model import AdminPrincipal
from agentledger.gateway.approvals import STATUSES, Approvals
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.responses import JSONResponse

MAX_PAGE = 1000
MAX_COMMENT = 2048  # the column's width
ACTIONS = {"approved": "approval.approve", "denied": "approval.deny"}


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,7}", raw) or not 1 <= int(raw) <= MAX_PAGE:  # isdigit() takes "²"
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit")
    return int(raw)


def _status(request: Request) -> str | None:
    raw = request.query_params.get("status")
    if raw is not None and raw not in STATUSES:
        raise InvalidRequest(f"'status' must be one of {', '.join(STATUSES)}.", param="status")
    return raw


async def _comment(request: Request) -> str | None:
    raw = await request.body()
    if not raw.strip():  # the body is optional
        return None
    value = parse_json_object(raw).get("comment")
    return None if value is None else text_field(value, "comment", limit=MAX_COMMENT)


def approval_routes(auth: AdminAuth, approvals: Approvals) -> list[Route]:
    async def list_approvals(request: Request, admin: AdminPrincipal) -> Response:
        rows = await approvals.list_approvals(admin.workspace_id, status=_status(request), limit=_limit(request))
        return JSONResponse({"data": [approvals.view(r) for r in rows]})

    async def get_approval(request: Request, admin: AdminPrincipal) -> Response:
        approval_id = path_id(request, "approval_id", "Approval")
        row = await approvals.get(admin.workspace_id, approval_id)
        if row is None:
            raise NotFound(f"Approval {approval_id!r} does not exist.", param="approval_id")
        return JSONResponse(approvals.view(row))

    def decide(status: str) -> Callable[[Request, AdminPrincipal], Awaitable[Response]]:
        async def handler(request: Request, admin: AdminPrincipal) -> Response:
            if not permits(admin, "approvals.decide"):  # the guard checked it; kept as the handler's own safety
                raise PermissionDenied("Deciding approvals needs approvals.decide.")
            approval_id = path_id(request, "approval_id", "Approval")
            comment = await _comment(request)
            found = await approvals.get(admin.workspace_id, approval_id)
            row = await approvals.decide(admin.workspace_id, approval_id, status, admin.token_id, comment)
            view = approvals.view(row)
            before = None if found is None else approvals.view(found)
            describe(request, Change(ACTIONS[status], "approval", approval_id, before=before, after=view))
            return JSONResponse(view)

        return handler

    g = auth.guard
    return [
        Route("/api/approvals", g(list_approvals), methods=["GET"]),
        Route("/api/approvals/{approval_id}", g(get_approval), methods=["GET"]),
        Route(
            "/api/approvals/{approval_id}/approve",
            g(decide("approved"), write=True, audit=["approval.approve"]),
            methods=["POST"],
        ),
        Route(
            "/api/approvals/{approval_id}/deny",
            g(decide("denied"), write=True, audit=["approval.deny"]),
            methods=["POST"],
        ),
    ]
