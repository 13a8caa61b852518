"""The policy routes and their shapes in the OpenAPI document (api/policies.py, core/policy_config.py)."""

from __future__ import annotations

from agentledger.api.openapi.paths import ADMIN, VIRTUAL_KEY
from agentledger.api.openapi.rows import DECISIONS, INT, OBJECT, OPT_STR, STR
from agentledger.api.openapi.schemas import AMOUNT_USD, ID, TIMESTAMP
from agentledger.api.openapi.shapes import (
    Schema,
    array,
    body,
    enum,
    integer,
    nullable,
    obj,
    ok_json,
    param,
    ref,
    responses,
    text,
)
from agentledger.core.policy import POLICY_SCOPES, Mode, RuleAction
from agentledger.core.policy_config import MAX_RULES

_TAG = "policies"
_POLICY_ID = param("policy_id", "path", ID, "The policy's id.", required=True)
_MODES = enum([m.value for m in Mode])

# Every optional field may be null, as absent (core/policy_config.py reads both alike).
_RULE = obj(
    {
        "id": {**nullable(text(64)), "description": "Stable id the trace names (default `r<position>`)."},
        "name": nullable(text(256)),
        "when": {**nullable(OBJECT), "description": "Conditions, all of which must hold (docs/policies.md)."},
        "action": enum([a.value for a in RuleAction]),
        "throttle_rpm": nullable(INT),
        "redact": nullable(array(STR)),
        "message": nullable(text(1024)),
    },
    ["action"],
)
_CONTENT = {
    "name": text(256),
    "scope": enum([s.value for s in POLICY_SCOPES]),
    "scope_value": {**nullable(text(1024)), "description": "The department, agent or virtual key; none for workspace."},
    "mode": {**nullable(_MODES), "description": "`enforce` (default) or `monitor`."},
    "settings": {
        **nullable(OBJECT),
        "description": "The settings it sets; the most specific scope that sets one wins (null: none).",
    },
    "rules": {**nullable(array(ref("PolicyRule"), max_items=MAX_RULES)), "description": "Its rules (null: none)."},
}
_VERDICT = obj(
    {
        "decision": enum(DECISIONS),
        "policy_id": OPT_STR,
        "policy_version": nullable(INT),
        "rule_id": {**OPT_STR, "description": "The rule's id, or `setting:<name>` for a setting."},
        "reason": STR,
        "mode": _MODES,
        "changes": {**OBJECT, "description": "`max_tokens` {field, from, to}; `redacted` [{kind, path, count}]."},
        "changed_by": array(OBJECT),
        "throttle_rpm": nullable(INT),
        "alerts": array(OBJECT),
        "would": {**nullable(OBJECT), "description": "Monitor mode: what enforcing every policy would decide."},
        "approval": {**OBJECT, "description": "An escalation: its approval, status, decider and the wait."},
    },
    ["decision", "reason", "mode"],
)

_BY_MODE = obj({m.value: INT for m in Mode}, [m.value for m in Mode], closed=True)
_HIT = obj(
    {
        "id": STR,
        "at": {**TIMESTAMP, "description": "When the call started."},
        "policy_id": STR,
        "policy_version": nullable(INT),
        "rule_id": {**OPT_STR, "description": "The rule's id, or `setting:<name>` for a setting."},
        "mode": {**_MODES, "description": "`monitor`: the policy decided nothing; `decision` is what it would have."},
        "decision": enum(DECISIONS),
        "reason": STR,
        "request_id": {**OPT_STR, "description": "The call's x-request-id (a pre-check's own id in a run)."},
        "run_id": OPT_STR,
        "step_id": {**OPT_STR, "description": "The run's policy_check step; null for a request outside a run."},
        "session_id": OPT_STR,
        "department_id": OPT_STR,
        "virtual_key_id": OPT_STR,
        "agent_id": OPT_STR,
    },
    ["id", "at", "policy_id", "mode", "decision", "reason"],
)

POLICY_ROWS: dict[str, Schema] = {
    "PolicyRule": _RULE,
    "PolicyIn": obj(_CONTENT, ["name", "scope"], closed=True),
    "Policy": obj(
        {
            "id": STR,
            "version": INT,
            **_CONTENT,
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "hits_24h": {**_BY_MODE, "description": "GET /api/policies: its hits of the last 24 hours, by mode."},
            "hits_7d": {**_BY_MODE, "description": "GET /api/policies: its hits of the last 7 days, by mode."},
        },
        ["id", "version", "name", "scope", "mode", "settings", "rules"],
    ),
    "Policies": obj({"data": array(ref("Policy"))}, ["data"], closed=True),
    "PolicyHit": _HIT,
    "PolicyHits": obj(
        {
            "data": array(ref("PolicyHit")),
            "next_cursor": nullable({**STR, "description": "Pass as `cursor` for the next page; null on the last."}),
        },
        ["data", "next_cursor"],
        closed=True,
    ),
    "PolicyVersions": obj(
        {
            "data": array(
                obj(
                    {"version": INT, "change": enum(["create", "update", "delete"]), **_CONTENT, "created_by": OPT_STR},
                    ["version", "change"],
                )
            )
        },
        ["data"],
        closed=True,
    ),
    "PolicyVerdict": _VERDICT,
    "PolicyEvaluateIn": obj(
        {
            "virtual_key_id": nullable(ID),
            "agent_id": nullable(ID),
            "department_id": nullable(ID),
            "call": obj(
                {
                    "kind": text(64),
                    "model": nullable(text(1024)),
                    "provider": nullable(text(1024)),
                    "name": nullable(text(1024)),
                    "max_tokens": nullable(INT),
                    "amount_usd": nullable(AMOUNT_USD),
                    "headers": array(text(256)),
                    "client_ip": nullable(text(64)),
                    "prompt_id": nullable(text(1024)),
                    "properties": OBJECT,
                    "messages": nullable(array(OBJECT)),
                }
            ),
        }
    ),
    "PolicyEvaluation": obj({**_VERDICT["properties"], "policies": array(OBJECT)}, ["decision", "reason", "policies"]),
    "PolicyCheckIn": obj(
        {
            "run_id": {**nullable(ID), "description": "The run the action is for (else the alephant-run-id header's)."},
            "kind": text(64),
            "name": text(256),
            "amount_usd": {**nullable(AMOUNT_USD), "description": "What it would cost, if it is paid."},
            "attributes": OBJECT,
        }
    ),
    "PolicyCheck": obj({"decision": enum(DECISIONS), "policy": nullable(ref("PolicyVerdict"))}, ["decision"]),
}

_WRITE = (400, 401, 403, 404, 409, 413, 503)

POLICY_PATHS: Schema = {
    "/api/policies": {
        "get": {
            "summary": "The workspace's policies, each at its current version.",
            "tags": [_TAG],
            "security": ADMIN,
            "responses": responses({200: ok_json("Policies.", ref("Policies"))}, (401, 503)),
        },
        "post": {
            "summary": "Create a policy (version 1). Unknown fields are a 400 naming them; a scope that names a "
            "department, agent or key that does not exist is a 404.",
            "tags": [_TAG],
            "security": ADMIN,
            "requestBody": body(ref("PolicyIn")),
            "responses": responses({201: ok_json("Created.", ref("Policy"))}, _WRITE),
        },
    },
    "/api/policies/evaluate": {
        "post": {
            "summary": "What a call would get from the policies and why (which policy, version and rule), without "
            "forwarding, counting or recording anything.",
            "tags": [_TAG],
            "security": ADMIN,
            "requestBody": body(ref("PolicyEvaluateIn")),
            "responses": responses({200: ok_json("The verdict.", ref("PolicyEvaluation"))}, (400, 401, 404, 413, 503)),
        }
    },
    "/api/policies/{policy_id}": {
        "get": {
            "summary": "One policy at its current version.",
            "tags": [_TAG],
            "security": ADMIN,
            "parameters": [_POLICY_ID],
            "responses": responses({200: ok_json("The policy.", ref("Policy"))}, (401, 404, 503)),
        },
        "put": {
            "summary": "Replace a policy's content: a new version (every version is kept).",
            "tags": [_TAG],
            "security": ADMIN,
            "parameters": [_POLICY_ID],
            "requestBody": body(ref("PolicyIn")),
            "responses": responses({200: ok_json("The new version.", ref("Policy"))}, _WRITE),
        },
        "delete": {
            "summary": "Delete a policy (a last version records the deletion).",
            "tags": [_TAG],
            "security": ADMIN,
            "parameters": [_POLICY_ID],
            "responses": responses({200: ok_json("Deleted.", ref("Deleted"))}, (401, 403, 404, 503)),
        },
    },
    "/api/policies/{policy_id}/versions": {
        "get": {
            "summary": "Every version of a policy, newest first, as it was written.",
            "tags": [_TAG],
            "security": ADMIN,
            "parameters": [_POLICY_ID],
            "responses": responses({200: ok_json("Versions.", ref("PolicyVersions"))}, (401, 404, 503)),
        }
    },
    "/api/policies/{policy_id}/hits": {
        "get": {
            "summary": "The calls the policy decided, changed or alerted on (`enforce`), and those it would have "
            "decided otherwise (`monitor`), newest first; a deleted policy's too.",
            "tags": [_TAG],
            "security": ADMIN,
            "parameters": [
                _POLICY_ID,
                param("mode", "query", _MODES, "Only the hits of this mode."),
                param("from", "query", TIMESTAMP, "Hits of calls started at or after."),
                param("to", "query", TIMESTAMP, "Hits of calls started before."),
                param("limit", "query", integer(1, 1000, default=50), "Page size."),
                param("cursor", "query", STR, "The `next_cursor` of the previous page."),
            ],
            "responses": responses(
                {200: ok_json("A page of hits; `next_cursor` is null on the last.", ref("PolicyHits"))},
                (400, 401, 404, 503),
            ),
        }
    },
    "/v1/policy/check": {
        "post": {
            "summary": "Before a sensitive tool or API call: the policies' decision (200 allowed), or the refusal "
            "(403 policy_blocked, 403 approval_required after the escalation's wait, 429 rate_limited), recorded "
            "as a policy_check step of the run.",
            "tags": [_TAG],
            "security": VIRTUAL_KEY,
            "requestBody": body(ref("PolicyCheckIn")),
            "responses": responses({200: ok_json("Allowed.", ref("PolicyCheck"))}, (400, 401, 403, 413, 429, 503)),
        }
    },
}
