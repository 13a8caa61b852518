"""components/schemas for what the API returns. Rows stay open (a new column is not a breaking change);
the fields listed are the ones clients may rely on."""

from __future__ import annotations

from agentledger.api.openapi.schemas import ANY, ID, TIMESTAMP, TOTALS, USD
from agentledger.api.openapi.shapes import Schema, array, enum, nullable, obj, ref
from agentledger.core.model import RunStatus, StepKind
from agentledger.core.pricing import CostSource
from agentledger.core.rollup import MAX_TREE_DEPTH, TOKEN_FIELDS

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
OPT_STR = nullable(STR)
OPT_TS = nullable(TIMESTAMP)
COST_SOURCE = nullable(enum([s.value for s in CostSource]))


def _listing(item: str) -> Schema:
    return obj({"data": array(ref(item))}, ["data"], closed=True)


_ATTRIBUTION = {
    "workspace_id": STR,
    "department_id": OPT_STR,
    "virtual_key_id": OPT_STR,
    "agent_id": OPT_STR,
    "run_id": OPT_STR,
    "session_id": OPT_STR,
    "session_path": OPT_STR,
    "prompt_id": OPT_STR,
    "prompt_version": OPT_STR,
    "properties": {"type": "object", "additionalProperties": STR},
}
_USAGE = {**{f: INT for f in TOKEN_FIELDS}, "cost_nanos": INT, "cost_source": COST_SOURCE}

RUN = obj(
    {
        "workspace_id": STR,
        "id": STR,
        "department_id": OPT_STR,
        "virtual_key_id": OPT_STR,
        "agent_id": OPT_STR,
        "session_id": OPT_STR,
        "workflow": OPT_STR,
        "name": OPT_STR,
        "status": enum([s.value for s in RunStatus]),
        "started_at": TIMESTAMP,
        "ended_at": OPT_TS,
        "error": OPT_STR,
        "output": ANY,
        "metadata": OBJECT,
        "duration_ms": nullable(NUM),
        "totals": TOTALS,
    },
    ["id", "status", "started_at", "ended_at", "duration_ms", "totals"],
)

STEP = obj(
    {
        **_ATTRIBUTION,
        **_USAGE,
        "id": STR,
        "parent_id": OPT_STR,
        "request_id": OPT_STR,
        "kind": enum([k.value for k in StepKind]),
        "name": STR,
        "status": enum(["ok", "error"]),
        "model": OPT_STR,
        "provider": OPT_STR,
        "branch": OPT_STR,
        "attempt": INT,
        "error": OPT_STR,
        "input": ANY,
        "output": ANY,
        "attributes": OBJECT,
        "latency_ms": nullable(NUM),
        "started_at": TIMESTAMP,
        "ended_at": OPT_TS,
        "cost_usd": USD,
        "children": array(ref("StepNode")),
    },
    ["id", "kind", "name", "status", "attempt", "started_at", "cost_nanos", "cost_usd", "children"],
)

_STEP_TREE = {
    **array(ref("StepNode")),
    "x-max-depth": MAX_TREE_DEPTH,
    "description": (
        f"The step tree, at most {MAX_TREE_DEPTH} levels deep: a deeper step is listed among the children of its "
        f"ancestor at level {MAX_TREE_DEPTH - 1}; its `parent_id` still names its real parent."
    ),
}

ROWS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {"message": STR, "type": STR, "code": OPT_STR, "param": OPT_STR},
                ["message", "type", "code", "param"],
                closed=True,
            )
        },
        ["error"],
        closed=True,
    ),
    "AnthropicError": obj(
        {
            "type": {"const": "error"},
            "error": obj({"type": STR, "message": STR}, ["type", "message"], closed=True),
        },
        ["type", "error"],
        closed=True,
    ),
    "Workspace": obj({"id": STR, "name": STR, "created_at": TIMESTAMP}, ["id", "name", "created_at"]),
    "Department": obj({"workspace_id": STR, "id": STR, "name": STR, "created_at": TIMESTAMP}, ["id", "name"]),
    "Agent": obj(
        {"id": STR, "department_id": STR, "name": STR, "kind": enum(["ai", "workflow"]), "created_at": TIMESTAMP},
        ["id", "department_id", "name", "kind"],
    ),
    "VirtualKey": obj(
        {
            "workspace_id": STR,
            "id": STR,
            "department_id": STR,
            "agent_id": OPT_STR,
            "name": STR,
            "key_prefix": STR,
            "allowed_models": array(STR),
            "created_at": TIMESTAMP,
            "revoked_at": OPT_TS,
            "key": {"type": "string", "pattern": "^vk-", "description": "Only in the create response."},
        },
        ["id", "department_id", "agent_id", "name", "key_prefix", "allowed_models", "created_at"],
    ),
    "ProviderKey": obj(
        {
            "workspace_id": STR,
            "id": STR,
            "name": STR,
            "provider": STR,
            "kind": STR,
            "base_url": OPT_STR,
            "models": array(STR),
            "priority": INT,
            "created_at": TIMESTAMP,
            "revoked_at": OPT_TS,
            "fallbacks": nullable(array(obj({"key": OPT_STR, "model": OPT_STR}))),
            "retry": nullable(obj({"attempts": INT, "backoff_ms": INT, "max_backoff_ms": INT})),
            "options": nullable({"type": "object"}),
        },
        ["id", "name", "provider", "kind", "base_url", "models", "priority", "created_at"],
    ),
    "Price": obj(
        {
            "workspace_id": STR,
            "id": STR,
            "model": STR,
            "input_mtok": STR,
            "output_mtok": STR,
            "cached_input_mtok": OPT_STR,
            "cache_write_mtok": OPT_STR,
            "effective_from": OPT_TS,
            "created_at": TIMESTAMP,
        },
        ["id", "model", "input_mtok", "output_mtok", "cached_input_mtok", "cache_write_mtok", "effective_from"],
    ),
    "Revoked": obj({"id": STR, "revoked": {"const": True}}, ["id", "revoked"], closed=True),
    "Run": RUN,
    "RunDetail": {"allOf": [ref("Run"), obj({"steps": _STEP_TREE}, ["steps"])]},
    "StepNode": STEP,
    "Session": obj(
        {
            "workspace_id": STR,
            "id": STR,
            "name": OPT_STR,
            "first_seen_at": TIMESTAMP,
            "last_seen_at": TIMESTAMP,
            "runs": array(ref("Run")),
            "paths": array(obj({"path": OPT_STR, "count": INT, **TOTALS["properties"]}, ["path", "count"])),
            "totals": TOTALS,
        },
        ["id", "name", "runs", "paths", "totals"],
    ),
    "Request": obj(
        {
            **_ATTRIBUTION,
            **_USAGE,
            **{k: v for k, v in TOTALS["properties"].items() if k in ("cost_usd", "total_tokens")},
            "id": STR,
            "session_name": OPT_STR,
            "endpoint": STR,
            "provider": STR,
            "model": STR,
            "stream": BOOL,
            "status": enum(["ok", "error"]),
            "http_status": INT,
            "attempts": INT,
            "latency_ms": NUM,
            "ttft_ms": nullable(NUM),
            "error_code": OPT_STR,
            "error_message": OPT_STR,
            "started_at": TIMESTAMP,
            "ended_at": TIMESTAMP,
            "requested_model": OPT_STR,
            "provider_key": OPT_STR,
            "route_attempts": INT,
        },
        ["id", "model", "provider", "status", "http_status", "cost_nanos", "cost_usd", "started_at"],
    ),
    "Costs": obj(
        {
            "group_by": STR,
            "interval": nullable(enum(["hour", "day"])),
            "from": OPT_TS,
            "to": OPT_TS,
            "data": array({"allOf": [obj({"key": ANY, "bucket": STR}, ["key"]), TOTALS]}),
        },
        ["group_by", "interval", "from", "to", "data"],
        closed=True,
    ),
    "RunPage": obj(
        {"data": array(ref("Run")), "next_cursor": nullable(STR)},
        ["data", "next_cursor"],
        closed=True,
    ),
    "IndexedProperty": obj({"name": STR}, ["name"], closed=True),
    "IndexedProperties": obj({"data": array(ref("IndexedProperty"))}, ["data"], closed=True),
    "PropertyDeclared": obj({"name": STR, "created": BOOL}, ["name", "created"], closed=True),
    "RunStarted": obj({"run_id": ID, "created": BOOL}, ["run_id", "created"], closed=True),
    "StepsAdded": obj({"run_id": ID, "step_ids": array(ID, min_items=1)}, ["run_id", "step_ids"], closed=True),
    "RunEnded": obj(
        {"run_id": STR, "status": enum(["succeeded", "failed", "cancelled"]), "ended_at": TIMESTAMP},
        ["run_id", "status", "ended_at"],
        closed=True,
    ),
    "Models": obj(
        {
            "object": {"const": "list"},
            "data": array(
                obj(
                    {"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR},
                    ["id", "object", "created", "owned_by"],
                )
            ),
        },
        ["object", "data"],
    ),
    "ChatCompletion": obj({"id": STR, "object": STR, "choices": array(OBJECT), "usage": OBJECT}),
    "Message": obj({"id": STR, "type": STR, "role": STR, "content": array(OBJECT), "usage": OBJECT}),
    "Response": obj({"id": STR, "object": STR, "output": array(OBJECT), "usage": OBJECT}),
    "Embeddings": obj({"object": STR, "data": array(OBJECT), "model": STR, "usage": OBJECT}),
    "TokenCount": obj({"input_tokens": INT}, ["input_tokens"]),
}
