"""A paid endpoint's input schema: checked to be a JSON Schema when the endpoint is saved, and applied to each
buyer's body before anyone pays (docs/paid-endpoints.md), with the `jsonschema` package.

Why refuse references that leave the document: jsonschema resolves `$ref` through a registry, and a schema naming
an `http://` URL would have the gateway fetch it (or fail on it) while a buyer waits; a schema is self-contained.
The draft is the one `$schema` names, else 2020-12.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from agentledger.core.bounds import MAX_JSON_DEPTH, json_depth_exceeds

MAX_SCHEMA_BYTES = 64 * 1024
MAX_MESSAGE = 300  # jsonschema quotes the offending value, which may be the whole body
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


def check_schema(schema: Any) -> None:
    """ValueError naming what is wrong, unless `schema` is a JSON Schema this module can apply."""
    if not isinstance(schema, dict):
        raise ValueError("a JSON Schema here is an object")
    if json_depth_exceeds(schema, MAX_JSON_DEPTH) or len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"it must be at most {MAX_SCHEMA_BYTES} bytes as JSON and {MAX_JSON_DEPTH} levels deep")
    for ref in _references(schema):
        if not ref.startswith("#"):
            raise ValueError(f"reference {ref!r} leaves the schema; only local references ('#/...') are applied")
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(exc.message + (f" (at {where})" if where else "")) from None


def compile_schema(schema: dict[str, Any]) -> Validator:
    """A validator for a schema `check_schema` accepted, built once per endpoint load."""
    cls = validator_for(schema, default=Draft202012Validator)
    validator: Validator = cls(schema)
    return validator


def input_error(validator: Validator, instance: Any) -> tuple[str, str | None] | None:
    """(message, the JSON path of the offending member) of the most relevant error, or None when it validates."""
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return None
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    message = error.message if len(error.message) <= MAX_MESSAGE else error.message[: MAX_MESSAGE - 1] + "…"
    return message, ("$" + path) if path else None


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REF_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)
