"""The OpenAPI paths and rows of the audit log (api/audit.py; docs/audit.md)."""

from __future__ import annotations

from agentledger.api.audit import ACTOR_TYPES, EXPORT_FORMATS, MAX_PAGE
from agentledger.api.openapi.paths import ADMIN, API_READ, op
from agentledger.api.openapi.schemas import ANY, ID, TIMESTAMP
from agentledger.api.openapi.shapes import Schema, array, enum, integer, nullable, obj, ok_json, param, ref, text
from agentledger.audit.chain import FIELDS

STR = {"type": "string"}
OPT_STR = nullable(STR)
INT = {"type": "integer"}
HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
PROBLEMS = (
    "altered",
    "rewritten",
    "missing",
    "out_of_order",
    "foreign",
    "unlinked",
    "checkpoint_signature",
    "checkpoint_key",
    "checkpoint_mismatch",
    "head_mismatch",
)

EVENT = obj(
    {
        "workspace_id": STR,
        "seq": {**INT, "minimum": 1, "description": "The event's place in its workspace's chain."},
        "id": STR,
        "time": {**TIMESTAMP, "description": "When it happened (UTC, microseconds): the text that was hashed."},
        "actor": obj(
            {
                "type": {**STR, "description": "`admin_token`, `cli` (user@host), `system` or `anonymous`."},
                "id": STR,
                "role": OPT_STR,
            },
            ["type", "id", "role"],
            closed=True,
        ),
        "action": {**STR, "description": "`budget.create`, `virtual_key.revoke`, `decision.blocked`, ..."},
        "target": obj({"type": STR, "id": STR}, ["type", "id"], closed=True),
        "before": {**ANY, "description": "The target before the change (null for a creation); secrets never."},
        "after": {**ANY, "description": "The target after it (null for a deletion); secrets never, only prefixes."},
        "client_ip": OPT_STR,
        "request_id": OPT_STR,
        "run_id": OPT_STR,
        "step_id": OPT_STR,
        "prev_hash": {**HASH, "description": "The previous event's hash (64 zeros before the first)."},
        "hash": {**HASH, "description": "SHA-256 of the canonical JSON of every field above (docs/audit.md)."},
        "diff": nullable(
            array(obj({"field": STR, "from": ANY, "to": ANY}, ["field", "from", "to"], closed=True)),
        ),
    },
    [*FIELDS, "hash", "diff"],  # every hashed field (audit.chain.FIELDS), its hash and the listing's diff
)
_AT = obj({"seq": INT, "hash": STR}, ["seq", "hash"])
REPORT = obj(
    {
        "workspace_id": STR,
        "ok": {"type": "boolean"},
        "events": INT,
        "first_seq": nullable(INT),
        "last_seq": nullable(INT),
        "head": nullable(_AT),
        "anchor": nullable(
            obj({"kind": enum(["genesis", "checkpoint"]), "seq": INT, "hash": STR}, ["kind", "seq", "hash"])
        ),
        "checkpoints": {**INT, "description": "Signed checkpoints verified."},
        "last_checkpoint": nullable(
            obj({"seq": INT, "hash": STR, "key_id": STR, "signed_at": STR}, ["seq", "hash", "key_id", "signed_at"])
        ),
        "unsigned": {**INT, "description": "Events after the last checkpoint: chained, not signed yet."},
        "keys": enum(["stored", "pinned", "export"]),
        "broken": nullable(
            obj({"seq": INT, "problem": enum(PROBLEMS), "detail": STR}, ["seq", "problem", "detail"], closed=True)
        ),
        "notes": array(STR),
    },
    [
        "workspace_id",
        "ok",
        "events",
        "first_seq",
        "last_seq",
        "head",
        "anchor",
        "checkpoints",
        "last_checkpoint",
        "unsigned",
        "keys",
        "broken",
        "notes",
    ],
)
_KEY = {
    "key_id": {**STR, "description": "The first 16 hex digits of SHA-256 over the raw public key."},
    "algorithm": {"const": "Ed25519"},
    "public_key": {**STR, "description": "PEM (SubjectPublicKeyInfo)."},
    "created_at": TIMESTAMP,
}
PUBLIC_KEY = obj(
    {"workspace_id": STR, **_KEY, "keys": array(obj(_KEY, list(_KEY), closed=True))},
    ["workspace_id", *_KEY, "keys"],
)

AUDIT_ROWS: dict[str, Schema] = {
    "AuditEvent": EVENT,
    "AuditEvents": obj(
        {
            "data": array(ref("AuditEvent")),
            "next_cursor": nullable({**STR, "description": "Pass as `cursor` for the next page; null on the last."}),
        },
        ["data", "next_cursor"],
    ),
    "AuditVerification": REPORT,
    "AuditPublicKey": PUBLIC_KEY,
}

_HEADER = {"schema": STR}
_EXPORT_HEADERS = {
    "audit-head": {**_HEADER, "description": "`seq:hash` of the chain's head when the export began."},
    "audit-checkpoint": {**_HEADER, "description": "The last checkpoint: `seq=…;hash=…;key_id=…;signed_at=…`."},
    "audit-checkpoint-signature": {**_HEADER, "description": "Its Ed25519 signature (hex)."},
    "audit-public-key": {**_HEADER, "description": "The signing key (base64 DER SubjectPublicKeyInfo)."},
}

AUDIT_PATHS: dict[str, Schema] = {
    "/api/audit-logs": {
        "get": op(
            "Audit events, newest first: control-plane changes, refused data-plane decisions, failed authentications.",
            "audit",
            ADMIN,
            {200: ok_json("A page of events; `next_cursor` is null on the last.", ref("AuditEvents"))},
            (400, *API_READ),
            parameters=[
                param("actor", "query", text(256), "Only events by this actor id (a token id, user@host, ...)."),
                param("actor_type", "query", enum(ACTOR_TYPES), "Only events by actors of this type."),
                param(
                    "action",
                    "query",
                    {**text(64, pattern="^[a-z][a-z_]*(\\.[a-z][a-z_]*)*(\\.\\*)?$")},
                    "Only this action, or every action under a prefix: `budget.*`.",
                ),
                param("target_type", "query", text(64), "Only events about targets of this type."),
                param("target_id", "query", text(256), "Only events about this target."),
                param("run_id", "query", ID, "Only events of this run (its refused decisions)."),
                param("from", "query", TIMESTAMP, "Events at or after."),
                param("to", "query", TIMESTAMP, "Events before."),
                param("limit", "query", integer(1, MAX_PAGE, default=100), "Page size."),
                param("cursor", "query", STR, "The `next_cursor` of the previous page."),
            ],
        )
    },
    "/api/audit-logs/export": {
        "get": op(
            "Every kept event with the keys and checkpoints to verify it offline (`agentledger audit verify --file`), "
            "streamed.",
            "audit",
            ADMIN,
            {
                200: {
                    "description": "JSONL (a record a line: audit_export, public_key, checkpoint, event, end) or CSV.",
                    "headers": _EXPORT_HEADERS,
                    "content": {"application/x-ndjson": {"schema": STR}, "text/csv": {"schema": STR}},
                }
            },
            (400, *API_READ),
            parameters=[param("format", "query", enum(EXPORT_FORMATS, default="jsonl"), "The export's format.")],
        )
    },
    "/api/audit/verify": {
        "get": op(
            "Recompute the chain and check every checkpoint's signature; `broken` names the first broken link.",
            "audit",
            ADMIN,
            {200: ok_json("The verification; `ok` false when a link is broken.", ref("AuditVerification"))},
            API_READ,
        )
    },
    "/api/audit/public-key": {
        "get": op(
            "The workspace's checkpoint-signing public key (made on first use), and every older key.",
            "audit",
            ADMIN,
            {200: ok_json("The key.", ref("AuditPublicKey"))},
            API_READ,
        )
    },
}
