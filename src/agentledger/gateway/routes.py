"""The agent-facing /v1 surface for model calls."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.core.errors import AgentLedgerError
from agentledger.core.money import format_usd
from agentledger.gateway.flow import Call, Gateway, Outcome
from agentledger.gateway.responses import (
    COST_HEADER,
    COST_SOURCE_HEADER,
    DECISION_HEADER,
    REPLAYED_HEADER,
    RUN_ID_HEADER,
    JSONResponse,
    error_response,
)
from agentledger.gateway.streaming import SSEResponse
from agentledger.store.base import StoredResponse

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _headers(call: Call, outcome: Outcome | None = None) -> dict[str, str]:
    headers = {DECISION_HEADER: "allowed"}
    if call.attribution.run_id:
        headers[RUN_ID_HEADER] = call.attribution.run_id
    if outcome is not None and outcome.cost is not None:
        headers[COST_HEADER] = format_usd(outcome.cost.nanos)
        headers[COST_SOURCE_HEADER] = outcome.cost.source.value
    return headers


def _replay(stored: StoredResponse) -> Response:
    headers = {REPLAYED_HEADER: "true", COST_HEADER: format_usd(0)}
    if stored.run_id:
        headers[RUN_ID_HEADER] = stored.run_id
    if stored.content_type.startswith("text/event-stream"):
        headers.update(SSE_HEADERS)
    return Response(stored.body, status_code=stored.http_status, media_type=stored.content_type, headers=headers)


def chat_routes(gateway: Gateway) -> list[Route]:
    async def chat_completions(request: Request) -> Response:
        request_id: str = request.scope["state"]["request_id"]
        body = await request.body()
        try:
            call = await gateway.prepare(request_id, request.scope["headers"], body)
        except AgentLedgerError as exc:
            return error_response(exc)
        try:
            stored = await gateway.claim(call)
        except AgentLedgerError as exc:
            return error_response(exc, _headers(call))
        if stored is not None:
            return _replay(stored)
        if call.stream:
            # `gateway.stream` records and releases the claim itself, however the stream ends. Its first
            # frame is awaited here, so a provider failing before the stream starts gets its own status.
            events = gateway.stream(call)
            try:
                first = await anext(events, None)
            except AgentLedgerError as exc:
                return error_response(exc, _headers(call))
            return SSEResponse(first, events, {**SSE_HEADERS, **_headers(call)})
        try:
            outcome = await gateway.complete(call)
            await gateway.finish(call, outcome)
        finally:
            gateway.release(call)
        if outcome.error is not None:
            return error_response(outcome.error, _headers(call, outcome))
        return Response(
            outcome.body,
            status_code=outcome.http_status,
            media_type=outcome.content_type,
            headers=_headers(call, outcome),
        )

    async def models(request: Request) -> Response:
        try:
            principal = await gateway.authenticate(request.headers)
        except AgentLedgerError as exc:
            return error_response(exc)
        routes = await gateway.routes_for(principal.workspace_id)
        seen: dict[str, str] = {}
        for route in routes:
            for pattern in route.models:
                if not any(ch in pattern for ch in "*?[") and pattern not in seen:
                    seen[pattern] = route.provider
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": p} for m, p in seen.items()]
        return JSONResponse({"object": "list", "data": data})

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
