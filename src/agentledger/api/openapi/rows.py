"""components/schemas for what the API returns. Rows stay open (a new column is not a breaking change);
the fields listed are the ones clients may rely on."""

from __future__ import annotations

from agentledger.api.openapi.schemas import ANY, ID, MEMBER_LABEL, TIMESTAMP, TOTALS, USD
from agentledger.api.openapi.shapes import Schema, array, enum, nullable, obj, ref
from agentledger.core.budgets import Action, Decision, Period, Scope
from agentledger.core.model import RunStatus, StepKind
from agentledger.core.pricing import CostSource
from agentledger.core.rollup import MAX_TREE_DEPTH, TOKEN_FIELDS
from agentledger.gateway.run_controls import STATES as CONTROL_STATES

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
OPT_STR = nullable(STR)
OPT_TS = nullable(TIMESTAMP)
COST_SOURCE = nullable(enum([s.value for s in CostSource]))
# On 403 approval_required / approval_denied only: the approval to decide (GET /api/approvals/{approval_id}).
_APPROVAL_ID: Schema = {**STR, "description": "403 approval_required / approval_denied: the approval's id."}


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


def _control() -> dict[str, Schema]:
    """A run's control (POST /api/runs/{run_id}/cancel|pause|resume): `running` once resumed."""
    return {"state": enum(CONTROL_STATES), "reason": nullable(STR), "by": nullable(STR), "at": {**TIMESTAMP}}


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
        # `paused` only in GET /api/runs/{run_id}, while a pause holds the run (api/run_controls.py `controlled`).
        "status": enum([*(s.value for s in RunStatus), "paused"]),
        "started_at": TIMESTAMP,
        "ended_at": OPT_TS,
        "error": OPT_STR,
        "output": ANY,
        "metadata": OBJECT,
        "endpoint_id": {**OPT_STR, "description": "The paid endpoint whose sale started the run (x402)."},
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
        "payment": nullable(ref("Payment")),
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

# -- budgets and rate limits (api/budgets.py, core/budgets.py) --------------------------------------------------
# What a policy check can decide. `escalated` exists in core.budgets.Decision but nothing sets it yet.
DECISIONS = [d.value for d in Decision]
LEDGER_KINDS = ["reserve", "settle", "release", "expire", "spend", "adjust"]
_SCOPE = enum([s.value for s in Scope])
_PERIOD = enum([p.value for p in Period])
_ACTION = enum([a.value for a in Action])

# core.budgets.Figures.view: one budget in one window, as the status API, GET /v1/budget, spend authorizations,
# the request row's `governance` and the policy_check step show it.
BUDGET_STATUS = obj(
    {
        "budget_id": STR,
        "scope_label": {**STR, "description": "`workspace`, `department:research`, `property.customer:acme`, ..."},
        "scope": _SCOPE,
        "scope_value": OPT_STR,
        "property": OPT_STR,
        "period": _PERIOD,
        "action": _ACTION,
        "limit_usd": USD,
        "spent_usd": USD,
        "reserved_usd": {**USD, "description": "Held by calls and spend authorizations in flight."},
        "remaining_usd": {**USD, "description": "limit - spent - reserved, floored at 0."},
        "remaining_nanos": {**INT, "description": "limit - spent - reserved in nano-dollars; negative when over."},
        "percent_used": {**NUM, "description": "(spent + reserved) / limit, in percent, 2 decimals; 100 at a 0 limit."},
        "window_start": {**OPT_TS, "description": "The current window's start; for `total` the anchor."},
        "window_end": {**OPT_TS, "description": "The current window's end; null for `total`."},
    },
    [
        "budget_id",
        "scope_label",
        "scope",
        "scope_value",
        "property",
        "period",
        "action",
        "limit_usd",
        "spent_usd",
        "reserved_usd",
        "remaining_usd",
        "remaining_nanos",
        "percent_used",
        "window_start",
        "window_end",
    ],
)
_RULE = {
    "workspace_id": STR,
    "id": STR,
    "name": OPT_STR,
    "scope": _SCOPE,
    "scope_value": OPT_STR,
    "property": OPT_STR,
    "created_at": TIMESTAMP,
}
BUDGET = obj(
    {
        **_RULE,
        "limit_nanos": INT,
        "limit_usd": USD,
        "period": _PERIOD,
        "anchor": TIMESTAMP,
        "action": _ACTION,
        "thresholds": array(INT),
        "throttle_rpm": nullable(INT),
        "status": {
            "anyOf": [ref("BudgetStatus"), {"type": "null"}],
            "description": "The current window's figures; null for a `run` budget (each run has its own: read them "
            "on the run's policy_check steps), or when the counters cannot be read (then `status_error` says so).",
        },
        "status_error": {**STR, "description": "Only when `status` is null for want of the counters."},
    },
    ["id", "scope", "scope_value", "property", "limit_nanos", "limit_usd", "period", "anchor", "action"]
    + ["thresholds", "throttle_rpm", "created_at", "status"],
)
RATE_LIMIT = obj(
    {
        **_RULE,
        "requests_per_minute": nullable(INT),
        "tokens_per_minute": nullable(INT),
        "concurrent": nullable(INT),
    },
    ["id", "scope", "scope_value", "property", "requests_per_minute", "tokens_per_minute", "concurrent", "created_at"],
)
LEDGER_ENTRY = obj(
    {
        "workspace_id": STR,
        "id": STR,
        "budget_id": STR,
        "counter_key": {**STR, "description": "`b|<workspace>|<budget>|<window>`: the budget's counter it moved."},
        "kind": enum(LEDGER_KINDS),
        "reserved_delta": INT,
        "spent_delta": INT,
        "reservation_id": OPT_STR,
        "request_id": OPT_STR,
        "step_id": OPT_STR,
        "run_id": OPT_STR,
        "note": OPT_STR,
        "at": TIMESTAMP,
    },
    ["id", "budget_id", "counter_key", "kind", "reserved_delta", "spent_delta", "reservation_id", "request_id"]
    + ["step_id", "run_id", "note", "at"],
)
BUDGET_ALERT = obj(
    {
        "workspace_id": STR,
        "budget_id": STR,
        "window_key": {**STR, "description": "The window: its start in epoch seconds, `total`, or `run:<run id>`."},
        "threshold": {**INT, "description": "The percentage of the limit crossed."},
        "spent_nanos": INT,
        "limit_nanos": INT,
        "request_id": OPT_STR,
        "run_id": OPT_STR,
        "at": TIMESTAMP,
    },
    ["budget_id", "window_key", "threshold", "spent_nanos", "limit_nanos", "request_id", "run_id", "at"],
)
# gateway.budgets.BudgetGate.report: the policy check, on the request row and the policy_check step.
GOVERNANCE = obj(
    {
        "decision": enum(DECISIONS),
        "decided_by": nullable(
            obj(
                {
                    "kind": enum(["budget", "rate_limit", "policy", "run_control"]),
                    "id": OPT_STR,
                    "scope": STR,
                    "version": nullable(INT),
                    "rule": OPT_STR,
                },
                ["kind"],
            )
        ),
        "budgets": {**array(ref("BudgetStatus")), "description": "Each applicable budget, as the call left it."},
        "rate_limits": array(
            obj(
                {
                    "rate_limit_id": STR,
                    "scope": STR,
                    "requests_per_minute": nullable(INT),
                    "tokens_per_minute": nullable(INT),
                    "concurrent": nullable(INT),
                },
                ["rate_limit_id", "scope"],
            )
        ),
        "reservation_id": STR,
        "reserved_usd": USD,
        "note": STR,
        "policy": {**ref("PolicyVerdict"), "description": "The policies' verdict, when a policy applies."},
    },
    ["decision", "decided_by"],
)

ROWS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {"message": STR, "type": STR, "code": OPT_STR, "param": OPT_STR, "approval_id": _APPROVAL_ID},
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
            "error": obj({"type": STR, "message": STR, "approval_id": _APPROVAL_ID}, ["type", "message"], closed=True),
        },
        ["type", "error"],
        closed=True,
    ),
    "Workspace": obj({"id": STR, "name": STR, "created_at": TIMESTAMP}, ["id", "name", "created_at"]),
    "Department": obj({"workspace_id": STR, "id": STR, "name": STR, "created_at": TIMESTAMP}, ["id", "name"]),
    "Agent": obj(
        {
            "id": STR,
            "department_id": STR,
            "name": STR,
            "kind": enum(["ai", "workflow"]),
            "created_at": TIMESTAMP,
            "runtime": {**ref("Runtime"), "description": "When created with one (never its secret)."},
        },
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
            "owner_member_id": {**OPT_STR, "description": "The member who owns the key (revoked with them)."},
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
    "RunDetail": {
        "allOf": [
            ref("Run"),
            obj(
                {
                    "steps": _STEP_TREE,
                    "control": nullable(obj(_control(), list(_control()), closed=True)),
                    "audit_events": {**array(ref("AuditEvent")), "description": "Its refused decisions (audit log)."},
                },
                ["steps"],
            ),
        ]
    },
    "RunControl": obj({"run_id": {**ID}, **_control()}, ["run_id", *_control()], closed=True),
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
            "tree": {
                **array(ref("SessionPathNode")),
                "description": "The paths nested by segment; each node's count and cost include its subtree.",
            },
            "totals": TOTALS,
        },
        ["id", "name", "runs", "paths", "tree", "totals"],
    ),
    "SessionPathNode": obj(
        {
            "segment": STR,
            "path": STR,
            "count": INT,
            "cost_nanos": INT,
            "cost_usd": TOTALS["properties"]["cost_usd"],
            "children": array(ref("SessionPathNode")),
        },
        ["segment", "path", "count", "cost_nanos", "cost_usd", "children"],
        closed=True,
    ),
    "SessionSummary": obj(
        {
            "workspace_id": STR,
            "id": STR,
            "name": OPT_STR,
            "first_seen_at": TIMESTAMP,
            "last_seen_at": TIMESTAMP,
            "run_count": INT,
            "totals": TOTALS,
        },
        ["workspace_id", "id", "name", "first_seen_at", "last_seen_at", "run_count", "totals"],
        closed=True,
    ),
    "SessionPage": obj(
        {"data": array(ref("SessionSummary")), "next_cursor": nullable(STR)},
        ["data", "next_cursor"],
        closed=True,
    ),
    "RequestPage": obj(
        {"data": array(ref("Request")), "next_cursor": nullable(STR)},
        ["data", "next_cursor"],
        closed=True,
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
            "policy_decision": {
                **nullable(enum(DECISIONS)),
                "description": "What budgets and rate limits decided; null when none applied.",
            },
            "governance": {
                "anyOf": [ref("Governance"), {"type": "null"}],
                "description": "The policy check (who decided, each budget's figures after the call); null when "
                "no budget or rate limit applied.",
            },
        },
        ["id", "model", "provider", "status", "http_status", "cost_nanos", "cost_usd", "started_at"],
    ),
    "Costs": obj(
        {
            "group_by": STR,
            "interval": nullable(enum(["hour", "day"])),
            "from": OPT_TS,
            "to": OPT_TS,
            "data": array({"allOf": [obj({"key": ANY, "bucket": STR, "member": MEMBER_LABEL}, ["key"]), TOTALS]}),
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
    "BudgetStatus": BUDGET_STATUS,
    "Budget": BUDGET,
    "Budgets": _listing("Budget"),
    "RateLimit": RATE_LIMIT,
    "RateLimits": _listing("RateLimit"),
    "LedgerEntry": LEDGER_ENTRY,
    "Ledger": _listing("LedgerEntry"),
    "BudgetAlert": BUDGET_ALERT,
    "BudgetAlerts": _listing("BudgetAlert"),
    "BudgetList": _listing("BudgetStatus"),
    "Governance": GOVERNANCE,
    "SpendAuthorization": obj(
        {
            "decision": {"const": Decision.ALLOWED.value},
            "reservation_id": {
                **OPT_STR,
                "description": "Name it as the settling step's `reservation_id`; null when no budget applies.",
            },
            "amount_usd": USD,
            "expires_at": {**OPT_TS, "description": "Unsettled by then, the reservation is charged in full."},
            "budgets": array(ref("BudgetStatus")),
        },
        ["decision", "reservation_id", "amount_usd", "expires_at", "budgets"],
        closed=True,
    ),
    "Deleted": obj({"id": STR, "deleted": {"const": True}}, ["id", "deleted"], closed=True),
}
