"""The one place that renders errors, in the wire format of the route they answer (formats/errors.py)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from agentledger.core.errors import AgentLedgerError
from agentledger.formats.errors import body_for_path

REQUEST_ID_HEADER = "x-request-id"
RUN_ID_HEADER = "alephant-run-id"
COST_HEADER = "alephant-cost-usd"
COST_SOURCE_HEADER = "alephant-cost-source"
DECISION_HEADER = "alephant-policy-decision"
REPLAYED_HEADER = "alephant-replayed"
PROVIDER_HEADER = "alephant-provider"
MODEL_HEADER = "alephant-model"
ATTEMPTS_HEADER = "alephant-attempts"


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error_response(
    exc: AgentLedgerError, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None
) -> Response:
    """`body` is the error in the route's format; OpenAI's when not given (the API, and OpenAI routes)."""
    if exc.retry_after is not None:
        headers = {**(headers or {}), "retry-after": str(exc.retry_after)}
    return JSONResponse(exc.body() if body is None else body, status_code=exc.status, headers=headers)


def error_for_path(exc: AgentLedgerError, path: str, headers: dict[str, str] | None = None) -> Response:
    """Errors met before a route's handler (body limit, no route, wrong method) in the format of the path."""
    return error_response(exc, headers, body_for_path(exc, path))
