"""What an audit event says of a change: its action, target, and the target before and after, with every secret
taken out.

Secrets never enter the log: fields that hold one are dropped (private keys, auth header values, encrypted or
hashed copies), and the credentials that listings show by prefix (a virtual key, an admin token, a webhook's
signing secret) keep only that prefix (`core.keys.display_prefix`). Any string that looks like one of our
credentials is cut to its prefix wherever it appears, so a view that grows a secret field later cannot leak it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentledger.audit.chain import json_value
from agentledger.core.keys import display_prefix

# Fields whose value is a secret, or derived from one: never recorded.
DROPPED = frozenset(
    {
        "api_key",
        "private_key",
        "auth_value",
        "authorization",
        "password",
        "key_hash",
        "token_hash",
        "api_key_encrypted",
        "secret_encrypted",
        "key_encrypted",
        "virtual_key_encrypted",
        "auth_value_encrypted",
        "private_key_encrypted",
    }
)
# Credentials shown once and then by prefix: recorded as their prefix.
PREFIXED = frozenset({"key", "token", "secret", "owner_token", "admin_token", "virtual_key"})
# Our credentials' shapes (vk-…, adm-…, whsec_…; pat_… once personal access tokens come): cut wherever they appear.
_CREDENTIAL = re.compile(r"(?:vk-|adm-|whsec_|pat_)[A-Za-z0-9_\-]{16,}")
# Dotted lower-case words: `budget.create`, `virtual_key.revoke`, `decision.blocked`.
ACTION_RE = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")
# What a listing filters on: an exact action, or every action under a prefix (`budget.*`, `decision.*`).
ACTION_FILTER_RE = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)*(\.\*)?$")


@dataclass(frozen=True, slots=True)
class Change:
    """A control-plane change as a handler describes it (api/auth.py `describe`): the guard records it once the
    write has succeeded. `before` is None for a creation, `after` None for a deletion."""

    action: str
    target_type: str
    target_id: str
    before: Any = None
    after: Any = None

    def __post_init__(self) -> None:
        if not ACTION_RE.fullmatch(self.action):
            raise ValueError(f"audit action {self.action!r} is not dotted lower-case words")


def _prefix(value: str) -> str:
    return display_prefix(value) + "…"


def scrub(value: Any) -> Any:
    """`value` as plain JSON with every secret removed (module docstring)."""
    return _scrub(json_value(value))


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = k.lower()
            if name in DROPPED or name.endswith("_encrypted"):
                continue
            if name in PREFIXED and isinstance(v, str):
                out[k] = _prefix(v)
                continue
            out[k] = _scrub(v)
        return out
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and _CREDENTIAL.search(value):
        return _CREDENTIAL.sub(lambda m: _prefix(m.group(0)), value)
    return value


def diff(before: Any, after: Any) -> list[dict[str, Any]] | None:
    """What changed between two objects, field by field (nested objects by dotted path): None unless both are
    objects. Shown with an event (GET /api/audit-logs), computed from before and after, never stored."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return None
    out: list[dict[str, Any]] = []
    _diff(before, after, "", out)
    return out


def with_diff(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event as the API shows it: its view (what the chain hashed) and `diff`."""
    return {**event, "diff": diff(event["before"], event["after"])}


def _diff(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str, out: list[dict[str, Any]]) -> None:
    for k in sorted({*before, *after}):
        path = f"{prefix}{k}"
        old, new = before.get(k), after.get(k)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            _diff(old, new, path + ".", out)
        elif old != new or (k in before) != (k in after):
            out.append({"field": path, "from": old, "to": new})
