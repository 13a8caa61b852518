"""Request bodies → JSON, with the one error every surface gives for a body that is not JSON, and the
bounds on JSON values we store and later render (core.bounds)."""

from __future__ import annotations

from typing import Any

import orjson

from agentledger.core.bounds import MAX_JSON_BYTES, MAX_JSON_DEPTH, json_depth_exceeds
from agentledger.core.errors import InvalidJSON, InvalidRequest


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


def storable_json(value: Any, param: str) -> Any:
    """`value` if it may be stored: at most MAX_JSON_DEPTH levels deep and MAX_JSON_BYTES serialized.

    Why at ingest: the API renders stored values inside deeper documents (a run, its step tree), and
    orjson refuses to render more than 254 levels; a value stored past that would make its run unreadable.
    """
    if isinstance(value, dict | list) and json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise InvalidRequest(f"'{param}' is nested more than {MAX_JSON_DEPTH} levels deep.", param=param)
    if isinstance(value, dict | list | str) and len(orjson.dumps(value)) > MAX_JSON_BYTES:
        raise InvalidRequest(f"'{param}' is larger than {MAX_JSON_BYTES} bytes as JSON.", param=param)
    return value
