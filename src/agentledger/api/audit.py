"""The audit log's API (docs/audit.md): `GET /api/audit-logs` (newest first, keyset pages, filters),
`GET /api/audit-logs/export` (the whole kept chain with its proof, streamed), `GET /api/audit/verify` and
`GET /api/audit/public-key`. Reads only: no route edits or deletes an event.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentledger.api.auth import AdminAuth
from agentledger.api.query import int_param, time_param
from agentledger.audit.changes import ACTION_FILTER_RE, with_diff
from agentledger.audit_trail import AuditTrail
from agentledger.core.errors import InvalidRequest
from agentledger.core.fields import id_field, text_field
from agentledger.core.model import AdminPrincipal
from agentledger.gateway.responses import JSONResponse
from agentledger.pipeline.queue import TracePipeline
from agentledger.store.audit import AuditFilter, decode_cursor, encode_cursor

MAX_PAGE = 200
EXPORT_FORMATS = ("jsonl", "csv")
ACTOR_TYPES = ("admin_token", "cli", "system", "anonymous")


def _text(request: Request, name: str, limit: int) -> str | None:
    raw = request.query_params.get(name)
    return None if raw is None else text_field(raw, name, limit=limit)


def audit_filter(request: Request) -> AuditFilter:
    q = request.query_params
    action = q.get("action")
    if action is not None and (len(action) > 64 or not ACTION_FILTER_RE.fullmatch(action)):
        raise InvalidRequest(
            "'action' must be an action such as 'budget.create', or a prefix such as 'budget.*'.", param="action"
        )
    actor_type = q.get("actor_type")
    if actor_type is not None and actor_type not in ACTOR_TYPES:
        raise InvalidRequest(f"'actor_type' must be one of {', '.join(ACTOR_TYPES)}.", param="actor_type")
    cursor = q.get("cursor")
    return AuditFilter(
        actor_type=actor_type,
        actor_id=_text(request, "actor", 256),
        action=action,
        target_type=_text(request, "target_type", 64),
        target_id=_text(request, "target_id", 256),
        run_id=None if q.get("run_id") is None else id_field(q["run_id"], "run_id"),
        since=time_param(request, "from"),
        until=time_param(request, "to"),
        before_seq=None if cursor is None else decode_cursor(cursor),
        limit=int_param(request, "limit", 100, 1, MAX_PAGE),
    )


def audit_routes(auth: AdminAuth, trail: AuditTrail, pipeline: TracePipeline) -> list[Route]:
    audit = trail.store.audit

    async def listing(request: Request, admin: AdminPrincipal) -> Response:
        flt = audit_filter(request)
        await pipeline.flush()  # the decisions of calls already answered
        rows = await audit.events(admin.workspace_id, flt)
        more = len(rows) == flt.limit
        return JSONResponse(
            {"data": [with_diff(r) for r in rows], "next_cursor": encode_cursor(rows[-1]["seq"]) if more else None}
        )

    async def export(request: Request, admin: AdminPrincipal) -> Response:
        kind = request.query_params.get("format", "jsonl")
        if kind not in EXPORT_FORMATS:
            raise InvalidRequest(f"'format' must be one of {', '.join(EXPORT_FORMATS)}.", param="format")
        await pipeline.flush()
        out = await trail.export(admin.workspace_id, kind)
        return StreamingResponse(out.body, headers=out.headers, media_type=out.media_type)

    async def verify(request: Request, admin: AdminPrincipal) -> Response:
        await pipeline.flush()
        return JSONResponse((await trail.verify(admin.workspace_id)).as_dict())

    async def public_key(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse(await trail.public_key(admin.workspace_id))

    g = auth.guard
    return [
        Route("/api/audit-logs", g(listing), methods=["GET"]),
        Route("/api/audit-logs/export", g(export), methods=["GET"]),
        Route("/api/audit/verify", g(verify), methods=["GET"]),
        Route("/api/audit/public-key", g(public_key), methods=["GET"]),
    ]
