"""A provider key's routing settings as the management API takes them: fallbacks, retry policy, per-kind options.

Each parser returns the JSON stored in the key's row (or None for "not set"), or raises InvalidRequest naming
the field. A fallback may name a key that does not exist yet (keys are created one at a time); routing skips
names that do not resolve (core/routing.py).
"""

from __future__ import annotations

from typing import Any

from agentledger.core.errors import InvalidRequest
from agentledger.core.headers import has_control

MAX_FALLBACKS = 8
MAX_RETRY_ATTEMPTS = 5
MAX_BACKOFF_MS = 120_000
_OPTIONS = {"azure": {"api_version", "deployments"}, "anthropic": {"anthropic_version"}}


def _label(value: Any, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or has_control(value):
        raise InvalidRequest(f"'{what}' must be a non-empty string of at most {limit} characters.", param=what)
    return value.strip()


def parse_fallbacks(value: Any) -> list[dict[str, str | None]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_FALLBACKS:
        raise InvalidRequest(f"'fallbacks' must be an array of at most {MAX_FALLBACKS} entries.", param="fallbacks")
    out: list[dict[str, str | None]] = []
    for i, entry in enumerate(value):
        what = f"fallbacks[{i}]"
        if not isinstance(entry, dict) or not entry or set(entry) - {"key", "model"}:
            raise InvalidRequest(
                f"'{what}' must be an object with 'key' (a provider key's name), 'model', or both.", param=what
            )
        key = _label(entry["key"], f"{what}.key") if entry.get("key") is not None else None
        model = _label(entry["model"], f"{what}.model") if entry.get("model") is not None else None
        if key is None and model is None:
            raise InvalidRequest(f"'{what}' must name a 'key', a 'model', or both.", param=what)
        out.append({"key": key, "model": model})
    return out


def _bounded_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"'{what}' must be an integer from {lo} to {hi}.", param=what)
    return value


def parse_retry(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"attempts", "backoff_ms", "max_backoff_ms"}:
        raise InvalidRequest(
            "'retry' must be an object with 'attempts', 'backoff_ms' and 'max_backoff_ms'.", param="retry"
        )
    out = {
        "attempts": _bounded_int(value.get("attempts", 1), "retry.attempts", 1, MAX_RETRY_ATTEMPTS),
        "backoff_ms": _bounded_int(value.get("backoff_ms", 200), "retry.backoff_ms", 0, MAX_BACKOFF_MS),
        "max_backoff_ms": _bounded_int(value.get("max_backoff_ms", 10_000), "retry.max_backoff_ms", 0, MAX_BACKOFF_MS),
    }
    return out


def parse_options(kind: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    allowed = _OPTIONS.get(kind, set())
    if not isinstance(value, dict) or set(value) - allowed:
        names = ", ".join(sorted(allowed)) or "none"
        raise InvalidRequest(f"'options' for a {kind} key may hold: {names}.", param="options")
    out: dict[str, Any] = {}
    for name in ("api_version", "anthropic_version"):
        if name in value:
            out[name] = _label(value[name], f"options.{name}", 64)
    if "deployments" in value:
        deployments = value["deployments"]
        if not isinstance(deployments, dict) or len(deployments) > 256:
            raise InvalidRequest("'options.deployments' must map model names to deployment names.", param="options")
        out["deployments"] = {
            _label(k, "options.deployments"): _label(v, f"options.deployments.{k}") for k, v in deployments.items()
        }
    return out
