"""The OpenAPI path and rows of the retention settings (api/retention.py; docs/retention.md)."""

from __future__ import annotations

from agentledger.api.openapi.paths import ADMIN, API_READ, API_WRITE, op
from agentledger.api.openapi.schemas import TIMESTAMP
from agentledger.api.openapi.shapes import Schema, body, integer, nullable, obj, ok_json, ref
from agentledger.core.retention import MAX_DAYS

_DAYS = {
    "bodies_days": "Days stored responses, step inputs and outputs and run outputs are kept (then nulled; rows stay).",
    "traces_days": "Days requests, steps, runs and sessions are kept (then deleted; the rollups stay).",
    "audit_days": "Days audit events are kept: null, or at least traces_days (else a 400 naming `audit_days`).",
}
_IN = obj(
    {name: {**nullable(integer(1, MAX_DAYS)), "description": f"{what} Null: forever."} for name, what in _DAYS.items()},
    closed=True,
)
_STATE = obj(
    {
        "traces_horizon": {
            **nullable(TIMESTAMP),
            "description": "Trace rows that started before it may have been deleted; `rollups verify` compares the "
            "kept books from it on.",
        },
        "bodies_horizon": {**nullable(TIMESTAMP), "description": "Every body of a row that started before it is gone."},
        "swept_at": {**nullable(TIMESTAMP), "description": "When the retention job last swept this workspace."},
    },
    ["traces_horizon", "bodies_horizon", "swept_at"],
    closed=True,
)
_OUT = obj(
    {
        **{name: nullable(integer(1, MAX_DAYS)) for name in _DAYS},
        "updated_at": nullable(TIMESTAMP),
        "updated_by": nullable({"type": "string"}),
        "state": ref("RetentionState"),
    },
    [*_DAYS, "updated_at", "updated_by", "state"],
    closed=True,
)

RETENTION_ROWS: dict[str, Schema] = {"Retention": _OUT, "RetentionIn": _IN, "RetentionState": _STATE}

RETENTION_PATHS: dict[str, Schema] = {
    "/api/retention": {
        "get": op(
            "How long the workspace's bodies, trace rows and audit events are kept (null: forever), and what the "
            "retention job has done.",
            "manage",
            ADMIN,
            {200: ok_json("The settings.", ref("Retention"))},
            API_READ,
        ),
        "put": op(
            "Replace the retention settings (a field left out is null: kept forever); the job applies them at its "
            "next sweep.",
            "manage",
            ADMIN,
            {200: ok_json("The settings now.", ref("Retention"))},
            API_WRITE,
            requestBody=body(ref("RetentionIn")),
        ),
    }
}
