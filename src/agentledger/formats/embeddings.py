"""OpenAI Embeddings (`POST /v1/embeddings`): never streamed; usage counts input tokens only."""

from __future__ import annotations

from typing import Any

from agentledger.core.errors import InvalidRequest
from agentledger.core.usage import Usage, parse_responses
from agentledger.formats.base import EMBEDDINGS, Format, Parsed, model_of
from agentledger.formats.errors import chat_error_frame, openai_body


def parse(payload: dict[str, Any], body: bytes) -> Parsed:
    model = model_of(payload)
    given = payload.get("input")
    if not (isinstance(given, str | list) and given):
        raise InvalidRequest("'input' must be a non-empty string or array.", param="input")
    if payload.get("stream"):
        raise InvalidRequest("Embeddings are not streamed.", param="stream")
    return Parsed(model, False, False, payload, body)


def usage(data: Any) -> tuple[Usage, bool] | None:
    return parse_responses(data.get("usage")) if isinstance(data, dict) else None


EMBEDDINGS_FORMAT = Format(
    name=EMBEDDINGS,
    endpoint="/embeddings",
    parse=parse,
    usage=usage,
    stream=None,
    error_body=openai_body,
    error_frame=chat_error_frame,
)
