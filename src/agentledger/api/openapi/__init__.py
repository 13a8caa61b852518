"""The OpenAPI 3.1 document, served at GET /openapi.json without auth.

It is data, built once from the same constants the validators use (see `schemas`), and a test checks
that its paths and methods are exactly the routes the app mounts.
"""

from __future__ import annotations

import copy
from functools import cache

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger import __version__
from agentledger.api.openapi.alerts import ALERT_PATHS, ALERT_ROWS
from agentledger.api.openapi.approvals import APPROVAL_PATHS, APPROVAL_ROWS
from agentledger.api.openapi.audit import AUDIT_PATHS, AUDIT_ROWS
from agentledger.api.openapi.finance import FINANCE_PATHS, FINANCE_ROWS
from agentledger.api.openapi.members import MEMBER_PATHS, MEMBER_ROWS
from agentledger.api.openapi.outbound import OUTBOUND_PATHS, OUTBOUND_ROWS
from agentledger.api.openapi.paid import PAID_PATHS, PAID_ROWS
from agentledger.api.openapi.paths import PATHS
from agentledger.api.openapi.policies import POLICY_PATHS, POLICY_ROWS
from agentledger.api.openapi.retention import RETENTION_PATHS, RETENTION_ROWS
from agentledger.api.openapi.rows import DECISIONS, ROWS
from agentledger.api.openapi.schemas import REQUESTS
from agentledger.api.openapi.shapes import Schema, enum, json_content, ref

_ERRORS = {
    400: "Invalid request, header, JSON body or unknown agent (`invalid_request_error`); `param` names the field.",
    401: "Missing, invalid or revoked credential (`authentication_error` / `invalid_api_key`).",
    402: "A budget that blocks (`block_requests`, `pause_all`, `disable_key`) has too little left for this call "
    "(`budget_exceeded`; `billing_error` in Anthropic's shape); the message names the budget, its scope (and on "
    "model routes its period and action), its limit, spent and reserved amounts and what the call may cost. "
    "Waiting does not refill a budget before its next window.",
    403: "Not allowed: read-only token, model not allowed, agent mismatch (`permission_error`). On model routes, a "
    "call a policy escalated: `approval_required` (no human decided while it was held; `approval_id` names the "
    "approval, and a resend of the same call after `Retry-After` is held again and proceeds once approved) or "
    "`approval_denied` (the message carries the approver's reason). On model routes, `run_cancelled`: the call's run "
    "was cancelled (POST /api/runs/{run_id}/cancel).",
    404: "Unknown object (`not_found_error`) or model (`model_not_found`).",
    409: "Already exists (`conflict`), or x-request-id reused with another body (`idempotency_key_reused`).",
    410: "On model routes, a repeat of an x-request-id whose call completed (and was charged once) but whose response "
    "was not kept: `alephant-omit-response`, or pruned by the workspace's retention (`replay_unavailable`). Nothing is "
    "forwarded or charged; send a new x-request-id to call again.",
    413: "The body is larger than `max_body_bytes` (`request_too_large`).",
    423: "The call's run is paused and was not resumed while the call waited `run_pause_wait_s` (`run_paused`, "
    "with Retry-After).",
    429: "A rate, token or concurrency limit of the gateway, or a `soft_throttle` budget past its limit "
    "(`rate_limited`, always with Retry-After); or the provider is rate limiting (`upstream_rate_limited`, "
    "Retry-After when it sent one).",
    502: "The provider failed or answered garbage (`upstream_bad_response`, `upstream_unavailable`).",
    503: "The store is unreachable and the call cannot go on (`store_unavailable`), or, on a model route, the "
    "budget counters are unreachable and a budget that blocks applies; retry after Retry-After.",
    504: "The provider did not answer in time (`upstream_timeout`).",
}
_REQUEST_ID = {"description": "The request's id: the client's, or generated.", "schema": {"type": "string"}}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
# On the model routes a refusal by budgets or rate limits says so (gateway.budgets.headline).
_POLICY_HEADERS = {
    "alephant-policy-decision": {
        "description": "`blocked` (402; 503 when a budget that blocks cannot be checked), `throttled` (429 from the "
        "gateway's own limits), `allowed` (the call was admitted: the provider refused it).",
        "schema": enum(DECISIONS),
    },
    "alephant-budget-remaining-usd": {
        "description": "Model routes: the refusing (or tightest) budget's remaining amount, floored at 0.",
        "schema": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{9}$"},
    },
    "alephant-budget-scope": {"description": "Model routes: that budget's scope.", "schema": {"type": "string"}},
}

DESCRIPTION = """\
agentledger: an OpenAI-compatible AI gateway that records runs, steps and costs.

Errors follow the wire format of the route: `{"error": {"message", "type", "code", "param"}}` everywhere
but /v1/messages, whose errors are Anthropic's `{"type": "error", "error": {"type", "message"}}`.
499 (`client_closed_request`) is only ever recorded, never sent. A provider's own 4xx refusal
(`upstream_rejected`) on a model route passes its status through. Tracking headers
`alephant-property-<name>` (name: 1-64 of `a-z 0-9 _ . -`, value at most 1024 characters, at most 32 of
them) are accepted besides the listed ones.
"""


def _error_response(status: int, shape: str = "Error") -> Schema:
    headers = {"x-request-id": _REQUEST_ID}
    if status in (403, 423, 429, 503):  # 403: approval_required
        headers["Retry-After"] = _RETRY_AFTER
    if status in (402, 423, 429, 503):
        headers.update(copy.deepcopy(_POLICY_HEADERS))
    return {"description": _ERRORS[status], "headers": headers, "content": json_content(ref(shape))}


@cache
def document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {"title": "agentledger", "version": __version__, "description": DESCRIPTION},
        "paths": {
            **PATHS,
            **APPROVAL_PATHS,
            **ALERT_PATHS,
            **POLICY_PATHS,
            **FINANCE_PATHS,
            **PAID_PATHS,
            **OUTBOUND_PATHS,
            **AUDIT_PATHS,
            **RETENTION_PATHS,
            **MEMBER_PATHS,
        },
        "components": {
            "schemas": {
                **REQUESTS,
                **ROWS,
                **APPROVAL_ROWS,
                **ALERT_ROWS,
                **POLICY_ROWS,
                **FINANCE_ROWS,
                **PAID_ROWS,
                **OUTBOUND_ROWS,
                **AUDIT_ROWS,
                **RETENTION_ROWS,
                **MEMBER_ROWS,
            },
            "responses": {
                **{f"Error{status}": _error_response(status) for status in _ERRORS},
                **{f"AnthropicError{status}": _error_response(status, "AnthropicError") for status in _ERRORS},
            },
            "securitySchemes": {
                "virtualKey": {"type": "http", "scheme": "bearer", "description": "A virtual key, `vk-…`."},
                "virtualKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "An admin token, `adm-…`."},
            },
        },
    }


@cache
def _rendered() -> bytes:
    return orjson.dumps(document())


def openapi_routes() -> list[Route]:
    async def openapi(request: Request) -> Response:
        return Response(_rendered(), media_type="application/json")

    return [Route("/openapi.json", openapi, methods=["GET"])]
