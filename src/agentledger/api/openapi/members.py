"""The OpenAPI paths and rows of members and personal access tokens (api/members.py; docs/security.md)."""

from __future__ import annotations

from agentledger.api.members import ROLES, STATUSES
from agentledger.api.openapi.paths import ADMIN, API_READ, API_WRITE, op, path_id
from agentledger.api.openapi.rows import OPT_STR, OPT_TS, STR
from agentledger.api.openapi.schemas import ID, LABEL, TIMESTAMP
from agentledger.api.openapi.shapes import Schema, array, body, enum, integer, nullable, obj, ok_json, ref, text
from agentledger.core.keys import MAX_PAT_DAYS

_SCOPES = array(enum(["read", "write", "admin"]), min_items=1, max_items=3)
_EMAIL = text(320, pattern="^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$")
_MEMBER = obj(
    {
        "workspace_id": STR,
        "id": STR,
        "email": STR,
        "name": STR,
        "department_id": OPT_STR,
        "role": enum(ROLES),
        "status": enum(STATUSES),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "revoked_at": OPT_TS,
    },
    ["id", "email", "name", "department_id", "role", "status", "created_at", "updated_at", "revoked_at"],
)
_MEMBER_IN = obj(
    {
        "email": _EMAIL,
        "name": nullable(LABEL),
        "department_id": {**nullable(ID), "description": "Required for department_admin."},
        "role": enum(ROLES, default="viewer"),
    },
    ["email"],
)
_MEMBER_PATCH = obj(
    {
        "name": LABEL,
        "department_id": nullable(ID),
        "role": enum(ROLES),
        "status": {**enum(STATUSES), "description": "`revoked` revokes as DELETE does; `active` reinstates."},
    }
)
_TOKEN = obj(
    {
        "workspace_id": STR,
        "id": STR,
        "member_id": STR,
        "name": STR,
        "scopes": array(STR),
        "token_prefix": STR,
        "created_by": OPT_STR,
        "created_at": TIMESTAMP,
        "expires_at": OPT_TS,
        "revoked_at": OPT_TS,
        "token": {"type": "string", "pattern": "^pat_", "description": "Only in the create response."},
    },
    ["id", "member_id", "name", "scopes", "token_prefix", "created_at", "expires_at", "revoked_at"],
)
_TOKEN_IN = obj(
    {
        "member_id": {**nullable(ID), "description": "Default: the calling PAT's member (an admin token names one)."},
        "name": LABEL,
        "scopes": _SCOPES,
        "expires_at": {**nullable(TIMESTAMP), "description": f"Within {MAX_PAT_DAYS} days; or expires_in_days."},
        "expires_in_days": {**nullable(integer(1, MAX_PAT_DAYS)), "description": "Default 90."},
    },
    ["scopes"],
)


def _listing(item: str) -> Schema:
    return obj({"data": array(ref(item))}, ["data"])


MEMBER_ROWS: dict[str, Schema] = {
    "Member": _MEMBER,
    "MemberIn": _MEMBER_IN,
    "MemberPatch": _MEMBER_PATCH,
    "PersonalAccessToken": _TOKEN,
    "PersonalAccessTokenIn": _TOKEN_IN,
}

_MEMBER_ID = [path_id("member_id")]
MEMBER_PATHS: dict[str, Schema] = {
    "/api/members": {
        "get": op(
            "List the workspace's members.", "manage", ADMIN, {200: ok_json("Members.", _listing("Member"))}, API_READ
        ),
        "post": op(
            "Add a member (email unique per workspace). Only an owner grants `owner`.",
            "manage",
            ADMIN,
            {201: ok_json("Created.", ref("Member"))},
            API_WRITE,
            requestBody=body(ref("MemberIn")),
        ),
    },
    "/api/members/{member_id}": {
        "get": op(
            "One member.",
            "manage",
            ADMIN,
            {200: ok_json("The member.", ref("Member"))},
            (*API_READ, 404),
            parameters=_MEMBER_ID,
        ),
        "patch": op(
            "Change a member's name, role, department or status.",
            "manage",
            ADMIN,
            {200: ok_json("The member now.", ref("Member"))},
            (*API_WRITE, 404),
            parameters=_MEMBER_ID,
            requestBody=body(ref("MemberPatch")),
        ),
        "delete": op(
            "Revoke a member: their virtual keys and PATs are revoked with them, at once on every replica.",
            "manage",
            ADMIN,
            {200: ok_json("Revoked.", ref("Revoked"))},
            (401, 403, 404, 503),
            parameters=_MEMBER_ID,
        ),
    },
    "/api/tokens": {
        "get": op(
            "Personal access tokens: the caller's own; all of them with members.write. Never the secret.",
            "manage",
            ADMIN,
            {200: ok_json("Tokens.", _listing("PersonalAccessToken"))},
            API_READ,
        ),
        "post": op(
            "Create a PAT (`pat_…`, shown once). Its rights (member's role ∩ scopes) may not exceed the caller's: 403.",
            "manage",
            ADMIN,
            {201: ok_json("Created.", ref("PersonalAccessToken"))},
            API_WRITE,
            requestBody=body(ref("PersonalAccessTokenIn")),
        ),
    },
    "/api/tokens/{token_id}": {
        "delete": op(
            "Revoke a PAT (own, or any with members.write); refused at once (401).",
            "manage",
            ADMIN,
            {200: ok_json("Revoked.", ref("Revoked"))},
            (401, 403, 404, 503),
            parameters=[path_id("token_id")],
        ),
    },
}
