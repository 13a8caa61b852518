"""The approvals routes and their shapes in the OpenAPI document (api/approvals.py)."""

from __future__ import annotations

from agentledger.api.approvals import MAX_COMMENT, MAX_PAGE
from agentledger.api.openapi.paths import ADMIN
from agentledger.api.openapi.rows import BOOL, INT, OBJECT, OPT_STR, OPT_TS, STR
from agentledger.api.openapi.schemas import ID, TIMESTAMP
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
from agentledger.gateway.approvals import STATUSES

_TAG = "approvals"
_APPROVAL_ID = param("approval_id", "path", ID, "The approval's id (in a 403 approval_required: `approval_id`).")

APPROVAL = obj(
    {
        "workspace_id": STR,
        "id": STR,
        "status": enum(STATUSES, description="A pending approval past `expires_at` reads `expired`."),
        "kind": STR,
        "request_id": OPT_STR,
        "virtual_key_id": OPT_STR,
        "agent_id": OPT_STR,
        "run_id": OPT_STR,
        "summary": {**OBJECT, "description": "What the call asked for: model, name, amount_usd, max_tokens, kind."},
        "policy_id": OPT_STR,
        "policy_version": nullable(INT),
        "rule_id": OPT_STR,
        "reason": STR,
        "created_at": TIMESTAMP,
        "expires_at": TIMESTAMP,
        "decided_at": OPT_TS,
        "decided_by": {**OPT_STR, "description": "The id of the admin token that decided."},
        "comment": OPT_STR,
        "used_at": {**OPT_TS, "description": "When the call it allowed went through (once)."},
        "used": BOOL,
    },
    ["id", "status", "kind", "reason", "created_at", "expires_at", "decided_at", "decided_by", "comment", "used"],
)

APPROVAL_ROWS: dict[str, Schema] = {
    "Approval": APPROVAL,
    "Approvals": obj({"data": array(ref("Approval"))}, ["data"], closed=True),
    "ApprovalDecisionIn": obj(
        {"comment": {**nullable(text(MAX_COMMENT)), "description": "Why; a denial's comment reaches the agent."}}
    ),
}


def _decide(verb: str) -> Schema:
    return {
        "summary": f"{verb.capitalize()} a pending approval (owner and admin tokens); its held calls wake at once, "
        "on every replica. 409 says whether it was already decided (by whom, when) or expired.",
        "tags": [_TAG],
        "security": ADMIN,
        "parameters": [_APPROVAL_ID],
        "requestBody": body(ref("ApprovalDecisionIn"), required=False),
        "responses": responses({200: ok_json("Decided.", ref("Approval"))}, (400, 401, 403, 404, 409, 413, 503)),
    }


APPROVAL_PATHS: Schema = {
    "/api/approvals": {
        "get": {
            "summary": "Approvals of escalated calls: pending first (the longest waiting first), then the rest "
            "newest first.",
            "tags": [_TAG],
            "security": ADMIN,
            "parameters": [
                param("status", "query", enum(STATUSES), "Only approvals in this status."),
                param("limit", "query", integer(1, MAX_PAGE, default=100), "Page size."),
            ],
            "responses": responses({200: ok_json("Approvals.", ref("Approvals"))}, (400, 401, 503)),
        }
    },
    "/api/approvals/{approval_id}": {
        "get": {
            "summary": "One approval.",
            "tags": [_TAG],
            "security": ADMIN,
            "parameters": [_APPROVAL_ID],
            "responses": responses({200: ok_json("The approval.", ref("Approval"))}, (401, 404, 503)),
        }
    },
    "/api/approvals/{approval_id}/approve": {"post": _decide("approve")},
    "/api/approvals/{approval_id}/deny": {"post": _decide("deny")},
}
