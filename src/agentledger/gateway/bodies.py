"""Request bodies → JSON, with the one error every surface gives for a body that is not JSON."""

from __future__ import annotations

from typing import Any

import orjson

from agentledger.core.errors import InvalidJSON


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    return data
