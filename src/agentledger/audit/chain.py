"""The hash chain of a workspace's audit events.

An event's hash is SHA-256 over the canonical encoding of its content: every field of the event but `hash`
(FIELDS), encoded by orjson with keys sorted and no whitespace. The content holds the previous event's hash
(`prev_hash`; GENESIS for a workspace's first event) and the event's own `seq`, so an event edited, removed or
moved no longer fits its neighbours.

Events travel in one form, the *view*: what GET /api/audit-logs answers, an export line holds, and the verifier
reads. `time` in it is text (UTC, microseconds, `Z`), the form that was hashed, so a view read back from either
store, or from a file, hashes as it did when it was linked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from agentledger.core.model import AuditRecord

GENESIS = "0" * 64
FIELDS = (
    "workspace_id",
    "seq",
    "id",
    "time",
    "actor",
    "action",
    "target",
    "before",
    "after",
    "client_ip",
    "request_id",
    "run_id",
    "step_id",
    "prev_hash",
)


def canonical(value: Any) -> bytes:
    """The one encoding that is hashed and signed: orjson, keys sorted (nested ones too), no whitespace."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def json_value(value: Any) -> Any:
    """`value` as plain JSON (str, int, float, bool, None, list, dict with str keys): what a JSON column gives back,
    so what is hashed is what is stored. Timestamps become ISO 8601 text, decimals their string."""
    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


def time_text(at: datetime) -> str:
    """UTC, always with microseconds, `Z`: 2025-03-01T12:00:00.123456Z."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def event_hash(view: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: view[k] for k in FIELDS})).hexdigest()


def link(record: AuditRecord, seq: int, prev_hash: str) -> dict[str, Any]:
    """The record as the chain's event number `seq` after `prev_hash`: its view, hash included."""
    view: dict[str, Any] = {
        "workspace_id": record.workspace_id,
        "seq": seq,
        "id": record.event_id,
        "time": time_text(record.at),
        "actor": {"type": record.actor.type, "id": record.actor.id, "role": record.actor.role},
        "action": record.action,
        "target": {"type": record.target_type, "id": record.target_id},
        "before": json_value(record.before),
        "after": json_value(record.after),
        "client_ip": record.client_ip,
        "request_id": record.request_id,
        "run_id": record.run_id,
        "step_id": record.step_id,
        "prev_hash": prev_hash,
    }
    view["hash"] = event_hash(view)
    return view
