"""components/schemas: the bodies the API accepts (with their bounds) and the rows it returns.

Bounds come from the modules that enforce them wherever those export a constant, so the document cannot
drift from the validators; the rest are written here next to a note of where they are enforced.
"""

from __future__ import annotations

from agentledger.api.openapi.shapes import Schema, array, enum, integer, number, obj, ref, text
from agentledger.core.headers import ID_RE, MAX_ID_LEN, MAX_NAME_LEN, MAX_PATH_LEN
from agentledger.core.model import RunStatus, StepKind
from agentledger.core.rollup import TOKEN_FIELDS
from agentledger.governance import PROVIDER_KINDS
from agentledger.ingest.steps import MAX_BATCH

MAX_ERROR_LEN = 10_000  # ingest.steps: step and run `error`
MAX_PROVIDER_LEN = 64  # the `provider` column is VARCHAR(64) (ingest.steps, governance)
MAX_PATTERN_LEN = 256  # governance._patterns: one model name or glob
MAX_URL_LEN = 1024  # governance: provider base_url
# Not bounded by the validators yet (issue 5 rows 5, 6 and 8): until they are, these are what the document
# promises, chosen so that no rollup sum can overflow a BIGINT on either store.
MAX_TOKENS = 10**12
MAX_ATTEMPT = 1000
MAX_LATENCY_MS = 86_400_000 * 365
MAX_PRIORITY = 2**31 - 1
# A decimal string: what `Decimal(str(x))` accepts and the API stores exactly.
DECIMAL = "^[0-9]+(\\.[0-9]+)?$"

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
    "description": "ISO 8601; a timestamp without an offset is taken as UTC.",
}
ANY: Schema = {"description": "Any JSON value."}
ANY_OBJECT: Schema = {"type": "object"}
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

STEP_IN = obj(
    {
        "id": ID,
        "parent_id": ID,
        "kind": enum([k.value for k in StepKind], default="tool_call"),
        "name": NAME,
        "status": enum(["ok", "error"], default="ok"),
        "error": text(MAX_ERROR_LEN),
        "started_at": TIMESTAMP,
        "ended_at": TIMESTAMP,
        "latency_ms": number(0, MAX_LATENCY_MS),
        "branch": NAME,
        "attempt": integer(1, MAX_ATTEMPT, default=1),
        "model": NAME,
        "provider": text(MAX_PROVIDER_LEN),
        "usage": USAGE_IN,
        "cost_usd": {"type": "string", "pattern": DECIMAL, "maxLength": 32, "description": "Reported cost."},
        "session_path": PATH,
        "input": ANY,
        "output": ANY,
        "attributes": ANY_OBJECT,
    },
    ["name"],
)

RUN_END_STATUSES = [s.value for s in RunStatus if s is not RunStatus.RUNNING]

REQUESTS = {
    "RunStart": obj(
        {
            "run_id": ID,
            "agent_id": ID,
            "session_id": ID,
            "session_path": PATH,
            "session_name": NAME,
            "workflow": NAME,
            "name": NAME,
            "started_at": TIMESTAMP,
            "metadata": ANY_OBJECT,
        }
    ),
    "Step": STEP_IN,
    "StepBatch": {
        "oneOf": [
            ref("Step"),
            array(ref("Step"), min_items=1, max_items=MAX_BATCH),
            obj({"steps": array(ref("Step"), min_items=1, max_items=MAX_BATCH)}, ["steps"]),
        ]
    },
    "RunEnd": obj(
        {
            "status": enum(RUN_END_STATUSES, default="succeeded"),
            "error": text(MAX_ERROR_LEN),
            "output": ANY,
            "ended_at": TIMESTAMP,
        }
    ),
    "ChatCompletionRequest": obj(
        {
            "model": text(MAX_NAME_LEN, pattern=None),
            "messages": array(ANY_OBJECT, min_items=1),
            "stream": {"type": "boolean", "default": False},
            "stream_options": obj({"include_usage": {"type": "boolean"}}),
        },
        ["model", "messages"],
    ),
    "DepartmentIn": obj({"id": ID, "name": LABEL}, ["name"]),
    "AgentIn": obj(
        {"id": ID, "name": LABEL, "department_id": LABEL, "kind": enum(["ai", "workflow"], default="ai")},
        ["department_id"],
    ),
    "VirtualKeyIn": obj({"name": LABEL, "department_id": LABEL, "agent_id": LABEL, "allowed_models": MODEL_PATTERNS}),
    "ProviderKeyIn": obj(
        {
            "name": LABEL,
            "kind": enum(PROVIDER_KINDS, default="openai"),
            "provider": text(MAX_PROVIDER_LEN, pattern=LABEL["pattern"]),
            "base_url": text(MAX_URL_LEN, pattern="^https?://", min_length=8),
            "api_key": text(4096, pattern=None),
            "models": MODEL_PATTERNS,
            "priority": integer(-MAX_PRIORITY, MAX_PRIORITY, default=0),
        }
    ),
    "PriceIn": obj(
        {
            "model": LABEL,
            "input_mtok": {"type": "string", "pattern": DECIMAL, "maxLength": 32},
            "output_mtok": {"type": "string", "pattern": DECIMAL, "maxLength": 32},
            "cached_input_mtok": {"type": "string", "pattern": DECIMAL, "maxLength": 32},
            "cache_write_mtok": {"type": "string", "pattern": DECIMAL, "maxLength": 32},
            "effective_from": TIMESTAMP,
        },
        ["model", "input_mtok", "output_mtok"],
    ),
}
