"""OpenAI Responses (`POST /v1/responses`), the OpenAI Agents SDK's default. A stream names every event and
ends with `response.completed` (or `.incomplete` / `.failed`), which carries the whole response and its usage;
there is no `[DONE]`."""

from __future__ import annotations

from typing import Any

from agentledger.core.errors import InvalidRequest
from agentledger.core.usage import Usage, parse_responses, reported_cost
from agentledger.formats.base import RESPONSES, Format, Parsed, loads, model_of, sse, stream_of
from agentledger.formats.errors import openai_body, responses_error_frame

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def parse(payload: dict[str, Any], body: bytes) -> Parsed:
    model = model_of(payload)
    given = payload.get("input")
    if given is not None and not isinstance(given, str | list):
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input")
    return Parsed(model, stream_of(payload), False, payload, body)


def usage(data: Any) -> tuple[Usage, bool] | None:
    return parse_responses(data.get("usage")) if isinstance(data, dict) else None


class ResponsesStream:
    __slots__ = ("raw_usage", "complete", "failure", "_end")

    def __init__(self) -> None:
        self.raw_usage: dict[str, Any] | None = None
        self.complete = False
        self.failure: str | None = None
        self._end = b""

    def feed(self, event: str | None, data: bytes) -> list[bytes]:
        if data == b"[DONE]":  # not the Responses API's, but some compatible servers end with it
            return []
        if event is None or event in TERMINAL or event == "error":
            parsed = loads(data)
            if event is None:
                kind = parsed.get("type") if isinstance(parsed, dict) else None
                event = kind if isinstance(kind, str) else None
            if event in TERMINAL:
                response = parsed.get("response") if isinstance(parsed, dict) else None
                if isinstance(response, dict):
                    if isinstance(response.get("usage"), dict):
                        self.raw_usage = response["usage"]
                    err = response.get("error")
                    if event == "response.failed":
                        self.failure = str(err.get("message") if isinstance(err, dict) else "response failed")[:500]
                self.complete = True
                self._end = sse(event, data)
                return []
            if event == "error" and isinstance(parsed, dict):
                self.failure = str(parsed.get("message") or "error")[:500]
        return [sse(event, data)]

    def close(self) -> list[bytes]:
        return [self._end]

    def usage(self) -> tuple[Usage, bool] | None:
        return parse_responses(self.raw_usage)

    def reported_cost(self) -> str | None:
        return reported_cost(self.raw_usage)


RESPONSES_FORMAT = Format(
    name=RESPONSES,
    endpoint="/responses",
    parse=parse,
    usage=usage,
    stream=lambda parsed: ResponsesStream(),
    error_body=openai_body,
    error_frame=responses_error_frame,
)
