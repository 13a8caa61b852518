"""The one place that renders errors: OpenAI-shaped `{"error": {"message", "type", "code", "param"}}`."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from agentledger.core.errors import AgentLedgerError

REQUEST_ID_HEADER = "x-request-id"
RUN_ID_HEADER = "alephant-run-id"
COST_HEADER = "alephant-cost-usd"
COST_SOURCE_HEADER = "alephant-cost-source"
DECISION_HEADER = "alephant-policy-decision"
REPLAYED_HEADER = "alephant-replayed"


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error_response(exc: AgentLedgerError, headers: dict[str, str] | None = None) -> Response:
    if exc.retry_after is not None:
        headers = {**(headers or {}), "retry-after": str(exc.retry_after)}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def error_event(exc: AgentLedgerError) -> bytes:
    """An error after a stream started can only travel in-band, as one more SSE event."""
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"
