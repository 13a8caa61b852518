"""Small builders for the JSON Schema and OpenAPI fragments the document repeats.

Each returns a fresh dict, so no two places in the document share (and could mutate) one object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Schema = dict[str, Any]

# The printable-text rule of the step API and the tracking headers: no C0 controls, DEL or C1 controls.
NO_CONTROLS = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def text(max_length: int, *, min_length: int = 1, pattern: str | None = NO_CONTROLS, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", "minLength": min_length, "maxLength": max_length}
    if pattern is not None:
        schema["pattern"] = pattern
    return {**schema, **extra}


def integer(minimum: int, maximum: int, **extra: Any) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, **extra}


def number(minimum: float, maximum: float, **extra: Any) -> Schema:
    return {"type": "number", "minimum": minimum, "maximum": maximum, **extra}


def enum(values: Iterable[str], **extra: Any) -> Schema:
    return {"type": "string", "enum": list(values), **extra}


def nullable(schema: Schema) -> Schema:
    """OpenAPI 3.1 has no `nullable`: null joins the schema's types (keywords such as `pattern` apply only to
    their own type, so they stay valid), or, for a schema without a plain type, is one more alternative."""
    kind = schema.get("type")
    if isinstance(kind, str | list) and "anyOf" not in schema:
        kinds = [kind] if isinstance(kind, str) else kind
        widened = {**schema, "type": [*kinds, "null"]}
        if "enum" in schema:  # an enum constrains every type, so null must be one of its values
            widened["enum"] = [*schema["enum"], None]
        return widened
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema, *, min_items: int = 0, max_items: int | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items, "minItems": min_items}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def obj(properties: Mapping[str, Schema], required: Sequence[str] = (), *, closed: bool = False) -> Schema:
    """A JSON object. Request bodies stay open (unknown fields are ignored, as OpenAI clients expect);
    `closed` is for shapes we promise exactly, such as the error body."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": json_content(schema)}


def param(name: str, where: str, schema: Schema, description: str, *, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


def responses(ok: Mapping[int, Schema], errors: Iterable[int]) -> Schema:
    """`ok` maps a success status to its response object; each error status refers to a shared response."""
    out: Schema = {str(status): response for status, response in ok.items()}
    for status in sorted(set(errors)):
        out[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    return out


def ok_json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": json_content(schema)}
