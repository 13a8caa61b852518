"""components/schemas: the bodies the API accepts (with their bounds) and the rows it returns.

Bounds come from the modules that enforce them (core.bounds, core.headers, ingest.steps), so the document cannot
drift from the validators; the few without a constant are written here next to where they are enforced.
"""

from __future__ import annotations

from agentledger.api.openapi.shapes import Schema, array, enum, integer, nullable, number, obj, ref, text
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
from agentledger.core.budget_config import MAX_LIMIT_USD, MAX_RATE, MAX_THRESHOLDS
from agentledger.core.budgets import Action, Period, Scope
from agentledger.core.headers import ID_RE, MAX_ID_LEN, MAX_NAME_LEN, MAX_PATH_LEN, PROPERTY_NAME_RE
from agentledger.core.model import PaymentDirection, PaymentProtocol, PaymentStatus, RunStatus, StepKind
from agentledger.core.rollup import TOKEN_FIELDS
from agentledger.core.route_config import MAX_BACKOFF_MS, MAX_FALLBACKS, MAX_RETRY_ATTEMPTS
from agentledger.governance import PROVIDER_KINDS
from agentledger.ingest.step_parse import MAX_ASSET_DIGITS, MAX_NETWORK_LEN, MAX_PAYMENT_LABEL_LEN
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
# A `group_by=member` row's member (the owner of the virtual keys whose spend it sums); null: keys without an owner
# and calls without a key.
MEMBER_LABEL: Schema = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"id": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"}},
            "required": ["id", "email", "name"],
            "additionalProperties": False,
        },
        {"type": "null"},
    ],
    "description": "group_by=member only: the member's id, email and name; null for keys without an owner.",
}
ANY_OBJECT: Schema = {"type": "object"}
STORED: Schema = {**JSON_LIMITS, "description": f"Any JSON value, at most {MAX_JSON_DEPTH} levels deep."}
STORED_OBJECT: Schema = {**JSON_LIMITS, "type": "object"}
USD = {"type": "string", "pattern": "^-?[0-9]+\\.[0-9]{9}$", "description": "Exact dollars, 9 decimals."}
MODEL_PATTERNS = array(text(MAX_PATTERN_LEN, pattern=None))

# core.finance.Pnl.view: known margin and what it is made of (docs/finance.md).
PNL = {
    "revenue_usd": {**USD, "description": "Settled inbound payments."},
    "refunds_usd": {**USD, "description": "Inbound payments paid back."},
    "model_cost_usd": {**USD, "description": "Cost that is neither tool spend, nor a payment, nor a fee."},
    "tool_spend_usd": {**USD, "description": "Cost of tool, API and workflow steps reported outside the gateway."},
    "outbound_payments_usd": {**USD, "description": "Settled outbound payments, less those refunded."},
    "fees_usd": {**USD, "description": "Fees paid on payments."},
    "cost_usd": {**USD, "description": "Model cost + tool spend + outbound payments + fees."},
    "margin_usd": {**USD, "description": "Revenue - refunds - cost."},
    "margin_pct": {
        **nullable({"type": "number"}),
        "description": "Margin as a percentage of revenue, 4 decimals; null without revenue.",
    },
    "estimated_cost_usd": {**USD, "description": "Cost whose provenance is `estimated` or `clamped`."},
    "estimated_share": {
        **nullable({"type": "number"}),
        "description": "estimated cost / cost, 6 decimals: how far the margin is an estimate; null without cost.",
    },
}

TOTALS = obj(
    {
        "cost_nanos": {"type": "integer"},
        "cost_usd": USD,
        **{f: {"type": "integer", "minimum": 0} for f in TOKEN_FIELDS},
        "total_tokens": {"type": "integer", "minimum": 0},
        **{f: {"type": "integer", "minimum": 0} for f in ("steps", "model_calls", "errors", "retries")},
        **{f: {"type": "integer", "minimum": 0} for f in ("requests", "events")},
        "model_latency_ms": {"type": "number"},
        **PNL,
    },
    ["cost_nanos", "cost_usd", *TOKEN_FIELDS, "total_tokens"],
)

USAGE_IN = obj({f: integer(0, MAX_TOKENS) for f in TOKEN_FIELDS})

# The validators read an optional field with `data.get(key)`, so an explicit null means "not given" (N below);
# fields read with a default (`kind`, `status`, `attempt`, ...) refuse null.
N = nullable

# ingest.step_parse._payment: what a `payment` step moved. Optional fields read null as absent.
PAYMENT_IN = obj(
    {
        "direction": enum([d.value for d in PaymentDirection]),
        "status": enum([st.value for st in PaymentStatus]),
        "amount_usd": {**COST_USD, "description": "The payment's USD value."},
        "fee_usd": N({**COST_USD, "description": "Fees paid on it (platform, settlement); amount + fee ≤ the bound."}),
        "protocol": N(enum([p.value for p in PaymentProtocol], default="manual")),
        "asset_amount": N(
            {"type": "string", "pattern": f"^[0-9]{{1,{MAX_ASSET_DIGITS}}}$", "description": "Atomic units paid."}
        ),
        "network": N(text(MAX_NETWORK_LEN)),
        "asset": N(text(MAX_PAYMENT_LABEL_LEN)),
        "counterparty": N(text(MAX_PAYMENT_LABEL_LEN)),
        "reference": N(text(MAX_PAYMENT_LABEL_LEN)),
        "endpoint_id": N(ID),
    },
    ["direction", "status", "amount_usd"],
)

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
        "payment": N(PAYMENT_IN),
        # ingest.steps._charges: a string names a spend authorization (POST /v1/spend/authorize) this step settles
        # at its cost; any other value is ignored.
        "reservation_id": {
            "description": "The `reservation_id` of a spend authorization this step settles with its cost "
            "(`cost_usd`, or priced from `usage`); what was not spent is released. A value that is not a string "
            "is ignored."
        },
    },
    ["name"],
)

RUN_END_STATUSES = [s.value for s in RunStatus if s is not RunStatus.RUNNING]

# -- budgets and rate limits (core/budget_config.py) --------------------------------------------------------------
# Python's str.strip() whitespace outside the control ranges (JSON Schema's \s also holds U+FEFF, which strip keeps).
_SPACE = "\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_CONTROLS = "\\u0000-\\u001f\\u007f-\\u009f"
_NOT_BLANK = f"^[^{_CONTROLS}]*[^{_SPACE}{_CONTROLS}][^{_CONTROLS}]*$"
# scope_fields: the department, agent or key id, workflow name or property value; at most 1024 characters, not
# blank, no control characters.
SCOPE_VALUE = text(1024, pattern=_NOT_BLANK)
PROPERTY_NAME = {"type": "string", "pattern": PROPERTY_NAME_RE.pattern.replace("\\-", "-")}
RULE_NAME = text(256, min_length=0)  # a budget's or rate limit's `name`: may be empty, no control characters

_LIMIT_DIGITS = len(str(MAX_LIMIT_USD)) - 1
# Dollars as budget_config._limit_nanos reads them: a decimal string (or an integer, never a float), 0 to
# MAX_LIMIT_USD, at most 9 decimals. (The validator parses with Decimal, which also takes signs, exponents,
# underscores and surrounding spaces; this is the form it documents.)
LIMIT_USD = {
    "type": ["string", "integer"],
    "pattern": (
        f"^0*([0-9]{{1,{_LIMIT_DIGITS}}}\\.?|[0-9]{{0,{_LIMIT_DIGITS}}}\\.[0-9]{{1,9}}|{MAX_LIMIT_USD}(\\.0{{0,9}})?)$"
    ),
    "minimum": 0,
    "maximum": int(MAX_LIMIT_USD),
    "description": f'Dollars, 0 to {MAX_LIMIT_USD}, at most 9 decimals: a decimal string ("25.00") or an integer.',
}
_EVENT_DIGITS = len(str(MAX_EVENT_COST_USD)) - 1
_NONZERO_FRACTION = "|".join(f"0{{{k}}}[1-9][0-9]{{0,{8 - k}}}" for k in range(9))
# api.budgets._amount: more than zero, at most MAX_EVENT_COST_USD, at most 9 decimals; a string or an integer.
AMOUNT_USD = {
    "type": ["string", "integer"],
    "pattern": (
        f"^0*([1-9][0-9]{{0,{_EVENT_DIGITS - 1}}}(\\.[0-9]{{0,9}})?|\\.({_NONZERO_FRACTION})"
        f"|{MAX_EVENT_COST_USD}(\\.0{{0,9}})?)$"
    ),
    "minimum": 1,
    "maximum": int(MAX_EVENT_COST_USD),
    "description": f'Dollars, more than 0 and at most {MAX_EVENT_COST_USD}, at most 9 decimals: "0.25", or an integer.',
}


def _scope_rules() -> list[Schema]:
    """scope_fields: a workspace takes no scope_value or property; every other scope needs a scope_value; only
    scope `property` takes (and needs) the property's name."""
    no_value = {"properties": {"scope_value": {"type": "null"}, "property": {"type": "null"}}}
    return [
        {
            "if": {"properties": {"scope": {"const": Scope.WORKSPACE.value}}},
            "then": no_value,
            "else": {"required": ["scope_value"], "properties": {"scope_value": {"type": "string"}}},
        },
        {
            "if": {"properties": {"scope": {"const": Scope.PROPERTY.value}}},
            "then": {"required": ["property"], "properties": {"property": {"type": "string"}}},
            "else": {"properties": {"property": {"type": "null"}}},
        },
    ]


def _scoped(properties: dict[str, Schema]) -> dict[str, Schema]:
    return {
        "id": N(ID),
        "name": N(RULE_NAME),
        "scope": enum([s.value for s in Scope]),
        "scope_value": N(SCOPE_VALUE),
        "property": N(PROPERTY_NAME),
        **properties,
    }


def _when_action(action: Action, then: Schema, otherwise: Schema | None = None) -> Schema:
    rule: Schema = {"if": {"properties": {"action": {"const": action.value}}, "required": ["action"]}, "then": then}
    if otherwise is not None:
        rule["else"] = otherwise
    return rule


BUDGET_IN = {
    **obj(
        _scoped(
            {
                "limit_usd": LIMIT_USD,
                "period": enum([p.value for p in Period]),
                "anchor": N(
                    {**TIMESTAMP, "description": "Where the windows start (default: the creation day, 00:00 UTC)."}
                ),
                "action": N(enum([a.value for a in Action], default=Action.BLOCK_REQUESTS.value)),
                "thresholds": N(array(integer(1, 1000), max_items=MAX_THRESHOLDS)),
                "throttle_rpm": N(integer(1, MAX_RATE)),
            }
        ),
        ["scope", "limit_usd", "period"],
    ),
    "allOf": [
        *_scope_rules(),
        _when_action(Action.PAUSE_ALL, {"properties": {"scope": {"const": Scope.DEPARTMENT.value}}}),
        _when_action(Action.DISABLE_KEY, {"properties": {"scope": {"const": Scope.VIRTUAL_KEY.value}}}),
        _when_action(
            Action.SOFT_THROTTLE,
            {"required": ["throttle_rpm"], "properties": {"throttle_rpm": {"type": "integer"}}},
            {"properties": {"throttle_rpm": {"type": "null"}}},
        ),
    ],
}

_RATES = ("requests_per_minute", "tokens_per_minute", "concurrent")
RATE_LIMIT_IN = {
    # requests_per_minute and concurrent are 32-bit columns on PostgreSQL; tokens_per_minute 64-bit.
    **obj(
        _scoped({name: N(integer(1, MAX_RATE * 1000 if name == "tokens_per_minute" else MAX_RATE)) for name in _RATES}),
        ["scope"],
    ),
    "allOf": [
        *_scope_rules(),
        # At least one of the three, not null.
        {"anyOf": [{"required": [name], "properties": {name: {"type": "integer"}}} for name in _RATES]},
    ],
}

SPEND_AUTHORIZE_IN = obj(
    {
        "run_id": N({**ID, "description": "The run the spend is for (else the alephant-run-id header's)."}),
        "amount_usd": AMOUNT_USD,
        # text_field(..., strip=True): not blank once trimmed; the length is that of the value as sent.
        "kind": text(64, pattern=_NOT_BLANK, default="tool_call", description="What is paid for: any label."),
        "name": text(MAX_NAME_LEN, pattern=_NOT_BLANK, description="Its name (default: `kind`)."),
    },
    ["amount_usd"],
)

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
        {
            "id": N(ID),
            "name": LABEL,
            "department_id": ID,
            "kind": enum(["ai", "workflow"], default="ai"),
            "runtime": {**N(ref("RuntimeIn")), "description": "A workflow agent's runtime (docs/paid-endpoints.md)."},
        },
        ["department_id"],
    ),
    # department_id may be left out when agent_id names an agent (the key then gets the agent's department);
    # given with one, it must be that agent's.
    "VirtualKeyIn": {
        **obj(
            {
                "name": LABEL,
                "department_id": N(ID),
                "agent_id": N(ID),
                "allowed_models": N(MODEL_PATTERNS),
                "member_id": N(ID),  # the owning member: their spend, revoked with them
            }
        ),
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
    "BudgetIn": BUDGET_IN,
    "RateLimitIn": RATE_LIMIT_IN,
    "SpendAuthorizeIn": SPEND_AUTHORIZE_IN,
}
