"""components/schemas: the bodies the API accepts (with their bounds) and the rows it returns.

Bounds come from the modules that enforce them (core.bounds, core.headers, ingest.steps), so the document cannot
drift from the validators; the few without a constant are written here next to where they are enforced.
"""

from __future__ import annotations

from agentledger.api.openapi.shapes import Schema, array, enum, integer, nullable, number, obj, ref, text
from agentledger.core.budget_config import MAX_LIMIT_USD, MAX_RATE, MAX_THRESHOLDS
from agentledger.core.budgets import Action, Period, Scope
from agentledger.core.bounds import (
    MAX_ATTEMPT,
    MAX_EVENT_COST_USD,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_LATENCY_MS,
    MAX_PRIORITY,
    MAX_RATE_DECIMALS,
    MAX_RATE_MTOK,
    MAX_TOKENS,
    MIN_PRIORITY,
)
from agentledger.core.headers import ID_RE, MAX_ID_LEN, MAX_NAME_LEN, MAX_PATH_LEN, PROPERTY_NAME_RE
from agentledger.core.model import RunStatus, StepKind
from agentledger.core.rollup import TOKEN_FIELDS
from agentledger.core.route_config import MAX_BACKOFF_MS, MAX_FALLBACKS, MAX_RETRY_ATTEMPTS
from agentledger.governance import PROVIDER_KINDS
from agentledger.ingest.steps import MAX_BATCH

MAX_ERROR_LEN = 10_000  # ingest.steps: step and run `error`
MAX_PROVIDER_LEN = 64  # the `provider` column is VARCHAR(64) (ingest.steps, governance)
MAX_PATTERN_LEN = 256  # governance._patterns: one model name or glob
MAX_URL_LEN = 1024  # governance: provider base_url
# Decimal strings, in dollars, as the API writes them; numbers are accepted too. One schema with two types: `pattern`
# binds the string and `minimum`/`maximum` the number. A step's cost may carry more than 9 decimals (rounded
# half-even to nano-dollars); a rate may not.
COST_USD = {
    "type": ["string", "number"],
    "pattern": f"^0*([0-9]{{1,{len(str(MAX_EVENT_COST_USD)) - 1}}}(\\.[0-9]+)?|{MAX_EVENT_COST_USD}(\\.0+)?)$",
    "minimum": 0,
    "maximum": int(MAX_EVENT_COST_USD),
    "description": "A reported cost in dollars, preferably as a decimal string; it wins over a computed one.",
}
RATE = {
    "type": ["string", "number"],
    "pattern": (
        f"^0*([0-9]{{1,{len(str(MAX_RATE_MTOK)) - 1}}}(\\.[0-9]{{1,{MAX_RATE_DECIMALS}}})?"
        f"|{MAX_RATE_MTOK}(\\.0{{1,{MAX_RATE_DECIMALS}}})?)$"
    ),
    "minimum": 0,
    "maximum": int(MAX_RATE_MTOK),
    "description": f"Dollars per million tokens, at most {MAX_RATE_DECIMALS} decimals; preferably a decimal string.",
}
# Depth and size of a stored JSON value are beyond JSON Schema; they are stated as extensions.
JSON_LIMITS = {"x-max-depth": MAX_JSON_DEPTH, "x-max-bytes": MAX_JSON_BYTES}

ID = text(MAX_ID_LEN, pattern=ID_RE.pattern.replace("\\-", "-"))
NAME = text(MAX_NAME_LEN)
# governance._name strips the value and refuses a blank one.
LABEL = text(
    MAX_NAME_LEN,
    pattern="^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
)
PATH = text(MAX_PATH_LEN, pattern="^/*[^/\\u0000-\\u001f\\u007f-\\u009f]+(/+[^/\\u0000-\\u001f\\u007f-\\u009f]*)*$")
TIMESTAMP: Schema = {
    "type": "string",
    "format": "date-time",
    "pattern": "^(19[7-9][0-9]|[2-9][0-9]{3})-",
    "description": "ISO 8601 from 1970 to 9999; a timestamp without an offset is taken as UTC.",
}
ANY: Schema = {"description": "Any JSON value."}
ANY_OBJECT: Schema = {"type": "object"}
STORED: Schema = {**JSON_LIMITS, "description": f"Any JSON value, at most {MAX_JSON_DEPTH} levels deep."}
STORED_OBJECT: Schema = {**JSON_LIMITS, "type": "object"}
USD = {"type": "string", "pattern": "^-?[0-9]+\\.[0-9]{9}$", "description": "Exact dollars, 9 decimals."}
MODEL_PATTERNS = array(text(MAX_PATTERN_LEN, pattern=None))

TOTALS = obj(
    {
        "cost_nanos": {"type": "integer"},
        "cost_usd": USD,
        **{f: {"type": "integer", "minimum": 0} for f in TOKEN_FIELDS},
        "total_tokens": {"type": "integer", "minimum": 0},
        **{f: {"type": "integer", "minimum": 0} for f in ("steps", "model_calls", "errors", "retries")},
        **{f: {"type": "integer", "minimum": 0} for f in ("requests", "events")},
        "model_latency_ms": {"type": "number"},
    },
    ["cost_nanos", "cost_usd", *TOKEN_FIELDS, "total_tokens"],
)

USAGE_IN = obj({f: integer(0, MAX_TOKENS) for f in TOKEN_FIELDS})

# The validators read an optional field with `data.get(key)`, so an explicit null means "not given" (N below);
# fields read with a default (`kind`, `status`, `attempt`, ...) refuse null.
N = nullable

STEP_IN = obj(
    {
        "id": N(ID),
        "parent_id": N(ID),
        "kind": enum([k.value for k in StepKind], default="tool_call"),
        "name": NAME,
        "status": enum(["ok", "error"], default="ok"),
        "error": N(text(MAX_ERROR_LEN)),
        "started_at": N(TIMESTAMP),
        "ended_at": N(TIMESTAMP),
        "latency_ms": N(number(0, MAX_LATENCY_MS)),
        "branch": N(NAME),
        "attempt": integer(1, MAX_ATTEMPT, default=1),
        "model": N(NAME),
        "provider": N(text(MAX_PROVIDER_LEN)),
        "usage": N(USAGE_IN),
        "cost_usd": N(COST_USD),
        "session_path": N(PATH),
        "input": STORED,
        "output": STORED,
        "attributes": N(STORED_OBJECT),
    },
    ["name"],
)

RUN_END_STATUSES = [s.value for s in RunStatus if s is not RunStatus.RUNNING]

REQUESTS = {
    "RunStart": obj(
        {
            "run_id": N(ID),
            "agent_id": N(ID),
            "session_id": N(ID),
            "session_path": N(PATH),
            "session_name": N(NAME),
            "workflow": N(NAME),
            "name": N(NAME),
            "started_at": N(TIMESTAMP),
            "metadata": N(STORED_OBJECT),
        }
    ),
    "Step": STEP_IN,
    # Any object with a `steps` member is read as the wrapper, so `steps` must then be an array; a single step
    # is an object without one.
    # What a batch may say about its run (ingest.runs.RUN_MEMBERS); it creates the run when it is new.
    "BatchRun": obj(
        {
            "agent_id": N(ID),
            "session_id": N(ID),
            "session_name": N(NAME),
            "workflow": N(NAME),
            "name": N(NAME),
            "started_at": N(TIMESTAMP),
            "metadata": N(STORED_OBJECT),
        },
        closed=True,
    ),
    "StepBatch": {
        "anyOf": [
            obj({"steps": array(ref("Step"), min_items=1, max_items=MAX_BATCH), "run": N(ref("BatchRun"))}, ["steps"]),
            array(ref("Step"), min_items=1, max_items=MAX_BATCH),
            {"allOf": [ref("Step"), {"not": {"required": ["steps"]}}]},
        ]
    },
    "RunEnd": obj(
        {
            "status": enum(RUN_END_STATUSES, default="succeeded"),
            "error": N(text(MAX_ERROR_LEN)),
            "output": STORED,
            "ended_at": N(TIMESTAMP),
        }
    ),
    "ChatCompletionRequest": obj(
        {
            "model": text(MAX_NAME_LEN, pattern=None),
            "messages": array(ANY_OBJECT, min_items=1),
            "stream": {"type": "boolean", "default": False},
            "stream_options": N(obj({"include_usage": {"type": "boolean"}})),
        },
        ["model", "messages"],
    ),
    "MessagesRequest": obj(
        {
            "model": text(MAX_NAME_LEN, pattern=None),
            "messages": array(ANY_OBJECT, min_items=1),
            "max_tokens": integer(1, 1 << 31),
            "stream": {"type": "boolean", "default": False},
        },
        ["model", "messages", "max_tokens"],
    ),
    "CountTokensRequest": obj(
        {"model": text(MAX_NAME_LEN, pattern=None), "messages": array(ANY_OBJECT, min_items=1)}, ["model", "messages"]
    ),
    "ResponsesRequest": obj(
        {
            "model": text(MAX_NAME_LEN, pattern=None),
            "input": {"anyOf": [{"type": "string"}, array(ANY_OBJECT)]},
            "stream": {"type": "boolean", "default": False},
        },
        ["model"],
    ),
    "EmbeddingsRequest": obj(
        {
            "model": text(MAX_NAME_LEN, pattern=None),
            "input": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1}]},
        },
        ["model", "input"],
    ),
    "DepartmentIn": obj({"id": N(ID), "name": LABEL}, ["name"]),
    "AgentIn": obj(
        {"id": N(ID), "name": LABEL, "department_id": ID, "kind": enum(["ai", "workflow"], default="ai")},
        ["department_id"],
    ),
    # department_id may be left out when agent_id names an agent (the key then gets the agent's department);
    # given with one, it must be that agent's.
    "VirtualKeyIn": {
        **obj({"name": LABEL, "department_id": N(ID), "agent_id": N(ID), "allowed_models": N(MODEL_PATTERNS)}),
        "anyOf": [{"required": ["department_id"]}, {"required": ["agent_id"]}],
    },
    "ProviderKeyIn": obj(
        {
            "name": LABEL,
            "kind": enum(PROVIDER_KINDS, default="openai"),
            "provider": text(MAX_PROVIDER_LEN, pattern=LABEL["pattern"]),
            "base_url": N(text(MAX_URL_LEN, pattern="^https?://[^\\u0000-\\u001f\\u007f-\\u009f]*$")),
            "api_key": N({"type": "string", "minLength": 1}),  # bounded only by max_body_bytes
            "models": N(MODEL_PATTERNS),
            "priority": integer(MIN_PRIORITY, MAX_PRIORITY, default=0),
            "fallbacks": N(
                array(
                    obj({"key": N(LABEL), "model": N(LABEL)}, closed=True),
                    max_items=MAX_FALLBACKS,
                )
            ),
            "retry": N(
                obj(
                    {
                        "attempts": integer(1, MAX_RETRY_ATTEMPTS, default=1),
                        "backoff_ms": integer(0, MAX_BACKOFF_MS, default=200),
                        "max_backoff_ms": integer(0, MAX_BACKOFF_MS, default=10_000),
                    },
                    closed=True,
                )
            ),
            # Per kind: azure `api_version`, `deployments` (model → deployment); anthropic `anthropic_version`.
            "options": N({"type": "object"}),
        }
    ),
    "PriceIn": obj(
        {
            "model": LABEL,
            "input_mtok": RATE,
            "output_mtok": RATE,
            "cached_input_mtok": N(RATE),
            "cache_write_mtok": N(RATE),
            "effective_from": N(TIMESTAMP),
        },
        ["model", "input_mtok", "output_mtok"],
    ),
}
