"""Query API: runs with their step trees and totals, sessions, requests and cost rollups.

Every read first flushes the trace pipeline, so a client that just made a call reads it back.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, describe, path_id
from agentledger.api.run_controls import controlled
from agentledger.audit.changes import Change, with_diff
from agentledger.core.books import FINANCE_MEASURES, MONEY_CARRIES, MONEY_MEASURES, RUN_MEASURES, hour_window
from agentledger.core.budgets import Decision
from agentledger.core.errors import InvalidRequest, NotFound
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.headers import MAX_PROPERTY_VALUE_LEN, PROPERTY_NAME_HELP, PROPERTY_NAME_RE
from agentledger.core.model import AdminPrincipal, RunStatus
from agentledger.core.rollup import TOKEN_FIELDS, duration_ms, path_tree, step_tree, totals
from agentledger.gateway.bodies import parse_json
from agentledger.gateway.policies import POLICY_STOP
from agentledger.gateway.responses import JSONResponse
from agentledger.pipeline.queue import TracePipeline
from agentledger.store.base import CostQuery, RequestFilter, RunFilter, SessionFilter, Store

_RUN_TOTAL_FIELDS = frozenset({*RUN_MEASURES, *MONEY_CARRIES})


def time_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    return None if raw is None else time_field(raw, name)


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
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


# Filters are checked before the store sees them: PostgreSQL refuses NUL in a query (a 500), and a value no
# stored row can hold (not an id, an unknown status) would only ever match nothing, silently.
def _id_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    return None if raw is None else id_field(raw, name)


_RUN_STATUSES = tuple(s.value for s in RunStatus)


def _status_param(request: Request) -> str | None:
    raw = request.query_params.get("status")
    if raw is not None and raw not in _RUN_STATUSES:
        raise InvalidRequest(f"'status' must be one of {', '.join(_RUN_STATUSES)}.", param="status")
    return raw


def group_by_param(request: Request) -> str:
    """`property.<name>` needs a name the tracking headers could have stored (the other values the store
    checks: they are its columns)."""
    group_by = request.query_params.get("group_by", "workspace")
    prop = group_by.removeprefix("property.")
    if prop != group_by and not PROPERTY_NAME_RE.fullmatch(prop):
        raise InvalidRequest(f"group_by=property.<name>: {PROPERTY_NAME_HELP}.", param="group_by")
    return group_by


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


def encode_cursor(row: dict[str, Any], at: str = "started_at") -> str:
    """The opaque position after `row` in a list paged newest first: its (`at`, id), base64url JSON."""
    raw = orjson.dumps([row[at].isoformat(), row["id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_param(request: Request, at: str = "started_at") -> tuple[datetime, str] | None:
    """A `next_cursor` back: (the `at` time, id) of the last row of the previous page."""
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        at, run_id = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return time_field(at, "cursor"), id_field(run_id, "cursor")
    except (ValueError, TypeError, InvalidRequest):
        raise InvalidRequest("'cursor' must be the next_cursor of a previous page.", param="cursor") from None


def _text_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    return None if raw is None else text_field(raw, name)


def _choice_param(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and raw not in choices:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(choices)}.", param=name)
    return raw


_REQUEST_STATUSES = ("ok", "error")
_DECISIONS = tuple(d.value for d in Decision)
MAX_PROPERTY_FILTERS = 8  # each is a join (SQLite joins at most 64 tables)


def _property_params(request: Request) -> tuple[tuple[str, str], ...]:
    """`property.<name>=<value>`, as often as wanted up to MAX_PROPERTY_FILTERS: runs that carried every one. The
    name and the value as the tracking headers accept them (a value trimmed, never blank)."""
    found = []
    for key, value in request.query_params.multi_items():
        name = key.removeprefix("property.")
        if name == key:
            continue
        if not PROPERTY_NAME_RE.fullmatch(name):
            raise InvalidRequest(f"'{key}': {PROPERTY_NAME_HELP}.", param=key)
        found.append((name, text_field(value, key, limit=MAX_PROPERTY_VALUE_LEN, strip=True)))
    if len(found) > MAX_PROPERTY_FILTERS:
        raise InvalidRequest(f"At most {MAX_PROPERTY_FILTERS} property.<name> filters are allowed.", param="property")
    return tuple(found)


def _grouped(row: dict[str, Any]) -> dict[str, Any]:
    """A rollup row's bucket, and for `group_by=member` its member's id, email and name (None: no owner)."""
    return {k: row[k] for k in ("bucket", "member") if k in row}


def session_view(paths: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A session's kept paths as the API shows them, and its totals: the session's own events (its paths
    partition them), not its runs' — a call may carry the session id without a run id, and a run's steps may
    belong to other sessions."""
    shown = [{**{k: v for k, v in p.items() if k not in FINANCE_MEASURES}, **totals(p)} for p in paths]
    summed = totals(
        {
            **{k: sum(p[k] for p in paths) for k in (*MONEY_MEASURES, *TOKEN_FIELDS, "requests", "errors")},
            "events": sum(p["count"] for p in paths),
        }
    )
    return shown, summed


def _run(row: dict[str, Any]) -> dict[str, Any]:
    run = {k: v for k, v in row.items() if k not in _RUN_TOTAL_FIELDS}
    run["duration_ms"] = duration_ms(row["started_at"], row["ended_at"])
    run["totals"] = totals(row)
    return run


def query_routes(auth: AdminAuth, store: Store, pipeline: TracePipeline) -> list[Route]:
    async def list_runs(request: Request, admin: AdminPrincipal) -> Response:
        q = request.query_params
        flt = RunFilter(
            agent_id=_id_param(request, "agent"),
            session_id=_id_param(request, "session"),
            workflow=None if q.get("workflow") is None else text_field(q["workflow"], "workflow"),
            status=_status_param(request),
            since=time_param(request, "from"),
            until=time_param(request, "to"),
            limit=int_param(request, "limit", 50, 1, 1000),
            offset=int_param(request, "offset", 0, 0, 10_000_000),
            cursor=_cursor_param(request),
            endpoint_id=_id_param(request, "endpoint"),
            decision=_choice_param(request, "decision", _DECISIONS),
            properties=_property_params(request),
        )
        await pipeline.flush()
        rows = await store.list_runs(admin.workspace_id, flt)
        more = len(rows) == flt.limit
        runs, _ = await with_controls(admin.workspace_id, [_run(r) for r in rows])
        return TotalsResponse({"data": runs, "next_cursor": encode_cursor(rows[-1]) if more else None})

    async def with_controls(workspace_id: str, runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        """The runs with their controls (one query for the page), and whether a policy stopped any of them."""
        found = {c["run_id"]: c for c in await store.governance.run_controls(workspace_id, [r["id"] for r in runs])}
        stopped = any((c["by"] or "").startswith(POLICY_STOP) for c in found.values())
        return [controlled(r, found.get(r["id"])) for r in runs], stopped

    async def list_properties(request: Request, admin: AdminPrincipal) -> Response:
        return JSONResponse({"data": [{"name": n} for n in await store.indexed_properties(admin.workspace_id)]})

    async def declare_property(request: Request, admin: AdminPrincipal) -> Response:
        data = parse_json(await request.body())
        if not isinstance(data, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        name = data.get("name")
        if not isinstance(name, str) or not PROPERTY_NAME_RE.fullmatch(name):
            raise InvalidRequest(f"'name': {PROPERTY_NAME_HELP}.", param="name")
        await pipeline.flush()
        created = await store.declare_property(admin.workspace_id, name, datetime.now(UTC))
        if created:
            describe(request, Change("indexed_property.create", "indexed_property", name, after={"name": name}))
        else:
            describe(request)  # declared already
        return JSONResponse({"name": name, "created": created}, status_code=201 if created else 200)

    async def get_run(request: Request, admin: AdminPrincipal) -> Response:
        run_id = path_id(request, "run_id", "Run")
        await pipeline.flush()
        row = await store.get_run(admin.workspace_id, run_id)
        if row is None:
            raise NotFound(f"Run {run_id!r} does not exist.", param="run_id")
        run = controlled(_run(row), await store.governance.run_control(admin.workspace_id, run_id))
        run["steps"] = step_tree(await store.run_steps(admin.workspace_id, run_id))
        events = await store.audit.for_run(admin.workspace_id, run_id)  # its refused decisions (docs/audit.md)
        run["audit_events"] = [with_diff(e) for e in events]
        return TotalsResponse(run)

    async def get_session(request: Request, admin: AdminPrincipal) -> Response:
        session_id = path_id(request, "session_id", "Session")
        await pipeline.flush()
        session = await store.get_session(admin.workspace_id, session_id)
        if session is None:
            raise NotFound(f"Session {session_id!r} does not exist.", param="session_id")
        # A session one of whose runs a policy stopped shows as intercepted (docs/policies.md).
        session["runs"], stopped = await with_controls(admin.workspace_id, [_run(r) for r in session["runs"]])
        session["status"] = "intercepted" if stopped else "ok"
        session["paths"], session["totals"] = session_view(session["paths"])
        session["tree"] = path_tree(session["paths"])
        return TotalsResponse(session)

    async def list_sessions(request: Request, admin: AdminPrincipal) -> Response:
        flt = SessionFilter(
            limit=int_param(request, "limit", 50, 1, 1000), cursor=_cursor_param(request, "last_seen_at")
        )
        await pipeline.flush()
        rows = await store.list_sessions(admin.workspace_id, flt)
        data = []
        for row in rows:
            _, summed = session_view(row.pop("paths"))
            data.append({**row, "totals": summed})
        more = len(rows) == flt.limit
        return TotalsResponse({"data": data, "next_cursor": encode_cursor(rows[-1], "last_seen_at") if more else None})

    async def list_requests(request: Request, admin: AdminPrincipal) -> Response:
        flt = RequestFilter(
            model=_text_param(request, "model"),
            provider=_text_param(request, "provider"),
            status=_choice_param(request, "status", _REQUEST_STATUSES),
            decision=_choice_param(request, "decision", _DECISIONS),
            since=time_param(request, "from"),
            until=time_param(request, "to"),
            limit=int_param(request, "limit", 50, 1, 1000),
            cursor=_cursor_param(request, "started_at"),
        )
        await pipeline.flush()
        rows = await store.list_requests(admin.workspace_id, flt)
        for row in rows:
            row.update(totals(row))
        more = len(rows) == flt.limit
        return TotalsResponse({"data": rows, "next_cursor": encode_cursor(rows[-1]) if more else None})

    async def get_request(request: Request, admin: AdminPrincipal) -> Response:
        request_id = path_id(request, "request_id", "Request")
        await pipeline.flush()
        row = await store.get_request(admin.workspace_id, request_id)
        if row is None:
            raise NotFound(f"Request {request_id!r} does not exist.", param="request_id")
        row.update(totals(row))
        return TotalsResponse(row)

    async def costs(request: Request, admin: AdminPrincipal) -> Response:
        group_by = group_by_param(request)
        query = CostQuery(
            group_by=group_by,
            since=time_param(request, "from"),
            until=time_param(request, "to"),
            interval=request.query_params.get("interval"),
        )
        await pipeline.flush()
        rows = await store.costs(admin.workspace_id, query)
        data = [{"key": r["key"], **_grouped(r), **totals(r)} for r in rows]
        since, until = hour_window(query.since, query.until)
        window = {"from": since.isoformat() if since else None, "to": until.isoformat() if until else None}
        return TotalsResponse({"group_by": group_by, "interval": query.interval, **window, "data": data})

    g = auth.guard
    return [
        Route("/api/runs", g(list_runs), methods=["GET"]),
        Route("/api/runs/{run_id}", g(get_run), methods=["GET"]),
        Route("/api/sessions", g(list_sessions), methods=["GET"]),
        Route("/api/sessions/{session_id}", g(get_session), methods=["GET"]),
        Route("/api/requests", g(list_requests), methods=["GET"]),
        Route("/api/requests/{request_id}", g(get_request), methods=["GET"]),
        Route("/api/analytics/costs", g(costs), methods=["GET"]),
        Route("/api/analytics/properties", g(list_properties), methods=["GET"]),
        Route(
            "/api/analytics/properties",
            g(declare_property, write=True, audit=["indexed_property.create"]),
            methods=["POST"],
        ),
    ]
