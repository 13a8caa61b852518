"""Errors in each route's wire format: OpenAI's `{"error": {...}}` on OpenAI routes and the API, Anthropic's
`{"type": "error", "error": {"type", "message"}}` on /v1/messages. Status codes are the same on both
(DESIGN.md §3); only the body differs, so each SDK raises its own typed error for it."""

from __future__ import annotations

from typing import Any

import orjson

from agentledger.core.errors import AgentLedgerError

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_body(exc: AgentLedgerError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_type(exc.status), "message": exc.message, **exc.details()}}


def openai_body(exc: AgentLedgerError) -> dict[str, Any]:
    return exc.body()


def is_anthropic_path(path: str) -> bool:
    """Errors rendered before a route is known (body limit, 404, 405) still follow the path's wire format."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def body_for_path(exc: AgentLedgerError, path: str) -> dict[str, Any]:
    return anthropic_body(exc) if is_anthropic_path(path) else openai_body(exc)


def chat_error_frame(exc: AgentLedgerError) -> bytes:
    """An error after a chat stream started can only travel in-band, as one more `data:` event."""
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"


def anthropic_error_frame(exc: AgentLedgerError) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(anthropic_body(exc)) + b"\n\n"


def responses_error_frame(exc: AgentLedgerError) -> bytes:
    body = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
