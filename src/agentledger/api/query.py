"""Query API: runs with their step trees and totals, sessions, requests and cost rollups.

Every read first flushes the trace pipeline, so a client that just made a call reads it back.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth
from agentledger.core.errors import InvalidRequest, NotFound
from agentledger.core.model import AdminPrincipal
from agentledger.core.rollup import TOKEN_FIELDS, duration_ms, step_tree, totals
from agentledger.core.times import TIMESTAMP_HELP, parse_utc
from agentledger.gateway.responses import JSONResponse
from agentledger.pipeline.queue import TracePipeline
from agentledger.store.base import CostQuery, RunFilter, Store

_RUN_TOTAL_FIELDS = ("cost_nanos", *TOKEN_FIELDS, "steps", "model_calls", "errors", "retries", "model_latency_ms")


def _time_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse_utc(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be {TIMESTAMP_HELP}.", param=name) from None


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise InvalidRequest(f"'{name}' must be an integer from {lo} to {hi}.", param=name)
    return value


class TotalsResponse(JSONResponse):
    """JSON whose totals may pass 2^64: each event is bounded (core.bounds), their sums are not, and orjson
    refuses integers past 64 bits. The rare body that has one is rendered by the stdlib, exactly."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except orjson.JSONEncodeError:
            return json.dumps(content, default=_isoformat, separators=(",", ":")).encode()


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _run(row: dict[str, Any]) -> dict[str, Any]:
    run = {k: v for k, v in row.items() if k not in _RUN_TOTAL_FIELDS}
    run["duration_ms"] = duration_ms(row["started_at"], row["ended_at"])
    run["totals"] = totals(row)
    return run


def query_routes(auth: AdminAuth, store: Store, pipeline: TracePipeline) -> list[Route]:
    async def list_runs(request: Request, admin: AdminPrincipal) -> Response:
        q = request.query_params
        flt = RunFilter(
            agent_id=q.get("agent"),
            session_id=q.get("session"),
            workflow=q.get("workflow"),
            status=q.get("status"),
            since=_time_param(request, "from"),
            until=_time_param(request, "to"),
            limit=_int_param(request, "limit", 50, 1, 1000),
            offset=_int_param(request, "offset", 0, 0, 10_000_000),
        )
        await pipeline.flush()
        return TotalsResponse({"data": [_run(r) for r in await store.list_runs(admin.workspace_id, flt)]})

    async def get_run(request: Request, admin: AdminPrincipal) -> Response:
        run_id = request.path_params["run_id"]
        await pipeline.flush()
        row = await store.get_run(admin.workspace_id, run_id)
        if row is None:
            raise NotFound(f"Run {run_id!r} does not exist.", param="run_id")
        run = _run(row)
        run["steps"] = step_tree(await store.run_steps(admin.workspace_id, run_id))
        return TotalsResponse(run)

    async def get_session(request: Request, admin: AdminPrincipal) -> Response:
        session_id = request.path_params["session_id"]
        await pipeline.flush()
        session = await store.get_session(admin.workspace_id, session_id)
        if session is None:
            raise NotFound(f"Session {session_id!r} does not exist.", param="session_id")
        session["runs"] = [_run(r) for r in session["runs"]]
        session["paths"] = [{**p, **totals(p)} for p in session["paths"]]
        # The session's own events (its paths partition them), not its runs': a call may carry the session id
        # without a run id, and a run's steps may belong to other sessions.
        session["totals"] = totals(
            {
                **{k: sum(p[k] for p in session["paths"]) for k in ("cost_nanos", *TOKEN_FIELDS, "requests")},
                "events": sum(p["count"] for p in session["paths"]),
            }
        )
        return TotalsResponse(session)

    async def get_request(request: Request, admin: AdminPrincipal) -> Response:
        request_id = request.path_params["request_id"]
        await pipeline.flush()
        row = await store.get_request(admin.workspace_id, request_id)
        if row is None:
            raise NotFound(f"Request {request_id!r} does not exist.", param="request_id")
        row.update(totals(row))
        return TotalsResponse(row)

    async def costs(request: Request, admin: AdminPrincipal) -> Response:
        group_by = request.query_params.get("group_by", "workspace")
        query = CostQuery(
            group_by=group_by,
            since=_time_param(request, "from"),
            until=_time_param(request, "to"),
            interval=request.query_params.get("interval"),
        )
        await pipeline.flush()
        rows = await store.costs(admin.workspace_id, query)
        data = [{"key": r["key"], **({"bucket": r["bucket"]} if "bucket" in r else {}), **totals(r)} for r in rows]
        return TotalsResponse({"group_by": group_by, "interval": query.interval, "data": data})

    g = auth.guard
    return [
        Route("/api/runs", g(list_runs), methods=["GET"]),
        Route("/api/runs/{run_id}", g(get_run), methods=["GET"]),
        Route("/api/sessions/{session_id}", g(get_session), methods=["GET"]),
        Route("/api/requests/{request_id}", g(get_request), methods=["GET"]),
        Route("/api/analytics/costs", g(costs), methods=["GET"]),
    ]
