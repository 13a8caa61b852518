"""The agent-facing /v1 surface for model calls: one handler for every format, errors in the route's format."""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.core.errors import AgentLedgerError, NotFound, ReplayUnavailable
from agentledger.core.headers import parse_tracking
from agentledger.core.money import format_usd
from agentledger.core.routing import resolve
from agentledger.formats.base import Format, model_of
from agentledger.formats.errors import anthropic_body
from agentledger.formats.registry import FORMATS, NATIVE
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.budgets import headline
from agentledger.gateway.flow import Gateway
from agentledger.gateway.records import Call, Outcome
from agentledger.gateway.responses import (
    ATTEMPTS_HEADER,
    COST_HEADER,
    COST_SOURCE_HEADER,
    DECISION_HEADER,
    MODEL_HEADER,
    PROVIDER_HEADER,
    REPLAYED_HEADER,
    RUN_ID_HEADER,
    JSONResponse,
    error_response,
)
from agentledger.gateway.streaming import SSEResponse
from agentledger.providers.base import Target
from agentledger.store.base import StoredResponse

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# The client-facing route of each format.
ROUTES = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
}


def _headers(call: Call, outcome: Outcome | None = None) -> dict[str, str]:
    headers = headline(call.governed) if call.governed.governed else {DECISION_HEADER: "allowed"}
    if call.attribution.run_id:
        headers[RUN_ID_HEADER] = call.attribution.run_id
    if outcome is not None:
        cost = outcome.cost
        if cost is not None:
            headers[COST_HEADER] = format_usd(cost.nanos)
            headers[COST_SOURCE_HEADER] = cost.source.value
        if outcome.attempts:
            final = outcome.attempts[-1].hop
            headers[PROVIDER_HEADER] = final.route.name
            headers[MODEL_HEADER] = final.model
            headers[ATTEMPTS_HEADER] = str(len(outcome.attempts))
    return headers


def _replay(stored: StoredResponse) -> Response:
    headers = {REPLAYED_HEADER: "true", COST_HEADER: format_usd(0)}
    if stored.body is None:
        raise ReplayUnavailable(
            "This x-request-id already completed (and was charged once), but its response was not kept "
            "(alephant-omit-response, or the workspace's retention pruned it): it is not replayed and not forwarded "
            "again. Send a new x-request-id to make the call again.",
            param="x-request-id",
        )
    if stored.run_id:
        headers[RUN_ID_HEADER] = stored.run_id
    if stored.content_type.startswith("text/event-stream"):
        headers.update(SSE_HEADERS)
    return Response(stored.body, status_code=stored.http_status, media_type=stored.content_type, headers=headers)


def model_call(gateway: Gateway, fmt: Format) -> Route:
    def fail(exc: AgentLedgerError, headers: dict[str, str] | None = None) -> Response:
        return error_response(exc, headers, fmt.error_body(exc))

    async def handle(request: Request) -> Response:
        request_id: str = request.scope["state"]["request_id"]
        body = await request.body()
        try:
            peer = request.client.host if request.client else None
            call = await gateway.prepare(fmt, request_id, request.scope["headers"], body, peer)
        except AgentLedgerError as exc:
            return fail(exc)
        try:
            stored = await gateway.claim(call)
        except AgentLedgerError as exc:
            return fail(exc, _headers(call))
        if stored is not None:
            try:
                return _replay(stored)
            except AgentLedgerError as exc:
                return fail(exc, {COST_HEADER: format_usd(0)})
        try:
            await gateway.admit(call)
        except AgentLedgerError as exc:
            return fail(exc, _headers(call))
        if call.stream:
            # `gateway.stream` records and releases the claim itself, however the stream ends. Its first
            # frame is awaited here, so a provider failing before the stream starts gets its own status.
            events = gateway.stream(call)
            try:
                first = await anext(events, None)
            except AgentLedgerError as exc:
                return fail(exc, _headers(call))
            return SSEResponse(first, events, {**SSE_HEADERS, **_headers(call)})
        try:
            outcome = await gateway.complete(call)
            await gateway.finish(call, outcome)
        finally:
            gateway.release(call)
        if outcome.error is not None:
            return fail(outcome.error, _headers(call, outcome))
        return Response(
            outcome.body,
            status_code=outcome.http_status,
            media_type=outcome.content_type,
            headers=_headers(call, outcome),
        )

    return Route(ROUTES[fmt.name], handle, methods=["POST"])


def chat_routes(gateway: Gateway) -> list[Route]:
    async def count_tokens(request: Request) -> Response:
        """Anthropic's free token count, passed to the provider that serves the model; not a billed call, so
        not on the books. Only Anthropic providers (and the mock) offer it."""
        try:
            principal = await gateway.authenticate(request.headers)
            tracking = parse_tracking(request.scope["headers"])
            body = await request.body()
            model = model_of(parse_json_object(body))
            hop = resolve(model, await gateway.routes_for(principal.workspace_id), tracking.forced_route)
            if "messages" not in NATIVE.get(hop.route.kind, ()) or hop.route.kind not in gateway.upstreams:
                raise NotFound(f"Provider key {hop.route.name!r} ({hop.route.kind}) does not offer token counting.")
            if hop.model != model:  # `key/model` named the key: the provider knows the model by its own id
                body = orjson.dumps({**parse_json_object(body), "model": hop.model})
            target = Target(hop.route, "/messages/count_tokens", hop.model, tracking.provider_headers)
            resp = await gateway.upstreams[hop.route.kind].send(target, body)
        except AgentLedgerError as exc:
            return error_response(exc, None, anthropic_body(exc))
        return Response(resp.body, status_code=resp.status, media_type=resp.content_type)

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
        *(model_call(gateway, fmt) for fmt in FORMATS.values()),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
