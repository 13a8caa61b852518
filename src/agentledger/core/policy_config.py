"""A policy as the management API takes it (JSON) → the model (core/policy.py), and back.

    {"name": "prod guard", "scope": "department", "scope_value": "research", "mode": "enforce",
     "settings": {"models_allow": ["gpt-4o*"], "max_tokens": 4000, "time_windows": [...], ...},
     "rules": [{"id": "no-big", "when": {"max_tokens_over": 8000}, "action": "block", "message": "..."}]}

Every parser raises InvalidRequest naming the field (`rules[3].when.models`). An unknown field anywhere is a
400: a typo (`"modles"`) must not silently switch a rule off. A list a condition takes must hold something:
an empty one could never match or always would, and neither is what its author meant. A setting's list may
be empty: that lifts what a broader scope set. `policy_json` writes the canonical form (rule ids filled in,
CIDRs and header names normalized, money as 9-decimal strings), which parses back to the same policy.

Whether a named department, agent or key exists is the caller's to check: this module knows no store.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import fields
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentledger.core.bounds import MAX_TOKENS
from agentledger.core.budget_config import MAX_LIMIT_USD, MAX_RATE, dollars
from agentledger.core.budgets import Scope
from agentledger.core.errors import InvalidRequest
from agentledger.core.fields import id_field, text_field
from agentledger.core.headers import MAX_PROPERTIES, PROPERTY_NAME_HELP, PROPERTY_NAME_RE
from agentledger.core.money import format_usd, to_nanos
from agentledger.core.policy import (
    CONDITION_FIELDS,
    DAYS,
    PII_KINDS,
    POLICY_SCOPES,
    SETTING_FIELDS,
    Conditions,
    MaxTokensAction,
    Mode,
    Policy,
    Rule,
    RuleAction,
    Settings,
    TimeWindow,
)

MAX_RULES = 200
MAX_LIST = 1000  # globs, CIDRs, prompt ids per list
MAX_ENTRIES = 5000  # list entries in a whole policy: compiling stays well under a second
MAX_WINDOWS = 64
MAX_HEADERS = 64
MAX_KINDS = 64
MAX_TEXT = 256  # a name, a glob
MAX_MESSAGE = 1024
MAX_WAIT_S = 300
MAX_RUN_SECONDS = 31_536_000  # a year
MAX_COUNT = 1_000_000_000  # steps, calls, repeats

# JSON names that differ from the model's: money is dollars on the wire, nano-dollars inside.
_NANOS = {
    "max_run_cost_usd": "max_run_cost_nanos",
    "cost_over_usd": "cost_over_nanos",
    "run_cost_over_usd": "run_cost_over_nanos",
}
_WIRE = {v: k for k, v in _NANOS.items()}
SETTING_KEYS = tuple(_WIRE.get(f, f) for f in SETTING_FIELDS)
CONDITION_KEYS = tuple(_WIRE.get(f, f) for f in CONDITION_FIELDS)
_POLICY_KEYS = ("name", "scope", "scope_value", "mode", "settings", "rules")
_RULE_KEYS = ("id", "name", "when", "action", "throttle_rpm", "redact", "message")
_WINDOW_KEYS = ("days", "start", "end", "tz")

_HEADER_RE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,256}")  # an HTTP token, lowercased
_KIND_RE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_TZ_RE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}")
_CLOCK_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")

T = TypeVar("T")


def _object(value: Any, param: str, keys: Iterable[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"'{param}' must be an object." if param else "A policy must be a JSON object.", param=param or None
        )
    known = tuple(keys)
    unknown = [k for k in value if k not in known]
    if unknown:
        where = f"{param}.{unknown[0]}" if param else str(unknown[0])
        raise InvalidRequest(
            f"Unknown field {where!r}; '{param or 'a policy'}' takes: {', '.join(known)}.", param=where
        )
    return value


def _list(value: Any, param: str, most: int, least: int, item: Callable[[Any, str], T]) -> tuple[T, ...]:
    if not isinstance(value, list) or not least <= len(value) <= most:
        need = "a non-empty array" if least else "an array"
        raise InvalidRequest(f"'{param}' must be {need} of at most {most} entries.", param=param)
    return tuple(item(v, f"{param}[{i}]") for i, v in enumerate(value))


def _int(value: Any, param: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"'{param}' must be an integer from {lo} to {hi}.", param=param)
    return value


def _seconds(value: Any, param: str, lo: float, hi: float, *, above: bool = False) -> float:
    """A number of seconds; `above`: strictly above `lo`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo < value if above else lo <= value) or value > hi:
        low = f"above {lo:g}" if above else f"from {lo:g}"
        raise InvalidRequest(f"'{param}' must be a number of seconds {low} to {hi:g}.", param=param)
    return value  # type: ignore[no-any-return]


def _usd(value: Any, param: str) -> int:
    """Dollars as a decimal string or a JSON number → nano-dollars."""
    amount = dollars(value)
    if amount is None and isinstance(value, float) and math.isfinite(value) and value >= 0:
        try:
            amount = Decimal(repr(value))
        except InvalidOperation:  # pragma: no cover - repr of a finite float is always a decimal
            amount = None
    if amount is None or amount > MAX_LIMIT_USD:
        raise InvalidRequest(
            f"'{param}' must be an amount of dollars from 0 to {MAX_LIMIT_USD}, as a decimal string such as "
            '"0.50" or a number.',
            param=param,
        )
    return to_nanos(amount)


def _glob(value: Any, param: str) -> str:
    return text_field(value, param, limit=MAX_TEXT)


def _clock(value: Any, param: str, *, end: bool) -> int:
    match = _CLOCK_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None or (value == "24:00" and not end):
        latest = "24:00" if end else "23:59"
        raise InvalidRequest(f"'{param}' must be a time from 00:00 to {latest} (HH:MM).", param=param)
    return 1440 if value == "24:00" else int(match[1]) * 60 + int(match[2])


def _day(value: Any, param: str) -> int:
    if not isinstance(value, str) or value.lower() not in DAYS:
        raise InvalidRequest(f"'{param}' must be one of {', '.join(DAYS)}.", param=param)
    return DAYS.index(value.lower())


def _tz(value: Any, param: str) -> str:
    # Checked by shape first: ZoneInfo takes a key as a path below the tz database.
    if isinstance(value, str) and len(value) <= 64 and _TZ_RE.fullmatch(value):
        try:
            ZoneInfo(value)
            return value
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise InvalidRequest(f"'{param}' must be an IANA time zone such as 'Europe/Paris' or 'UTC'.", param=param)


def _window(value: Any, param: str) -> TimeWindow:
    data = _object(value, param, _WINDOW_KEYS)
    days = data.get("days")
    day_list = tuple(range(7)) if days is None else _list(days, f"{param}.days", 7 * 4, 1, _day)
    start = _clock(data.get("start"), f"{param}.start", end=False)
    end = _clock(data.get("end"), f"{param}.end", end=True)
    if start == end:
        raise InvalidRequest(
            f"'{param}' is empty: start equals end (00:00 to 24:00 is the whole day).", param=f"{param}.end"
        )
    tz = _tz(data.get("tz", "UTC"), f"{param}.tz")
    return TimeWindow(tuple(sorted(set(day_list))), start, end, tz)


def _cidr(value: Any, param: str) -> str:
    if isinstance(value, str) and len(value) <= 64:
        try:
            return str(ipaddress.ip_network(value.strip(), strict=False))  # 10.1.2.3/8 means 10.0.0.0/8
        except ValueError:
            pass
    raise InvalidRequest(f"'{param}' must be an IPv4 or IPv6 address or CIDR such as '10.0.0.0/8'.", param=param)


def _header(value: Any, param: str) -> str:
    if not isinstance(value, str) or not _HEADER_RE.fullmatch(value.lower()):
        raise InvalidRequest(f"'{param}' must be an HTTP header name such as 'alephant-run-id'.", param=param)
    return value.lower()  # header names are case-insensitive; the gateway hands them in lowercase


def _kind(value: Any, param: str) -> str:
    if not isinstance(value, str) or not _KIND_RE.fullmatch(value.lower()):
        raise InvalidRequest(
            f"'{param}' must be a call kind such as 'model_call' or 'tool_call' (a-z, 0-9, '_', '.', ':', '-').",
            param=param,
        )
    return value.lower()


def _pii(value: Any, param: str) -> str:
    if not isinstance(value, str) or value not in PII_KINDS:  # a list is unhashable: a TypeError, so a 500
        raise InvalidRequest(f"'{param}' must be one of {', '.join(sorted(PII_KINDS))}.", param=param)
    return str(value)


def _properties(value: Any, param: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_PROPERTIES:
        raise InvalidRequest(
            f"'{param}' must be an object of 1 to {MAX_PROPERTIES} property names to value globs.", param=param
        )
    for name in value:
        if not PROPERTY_NAME_RE.fullmatch(name):
            raise InvalidRequest(f"'{param}.{name}': {PROPERTY_NAME_HELP}.", param=f"{param}.{name}")
    return tuple(sorted((name, _glob(glob, f"{param}.{name}")) for name, glob in value.items()))


def _choice(value: Any, param: str, kinds: type[T], default: T | None = None) -> T:
    if value is None and default is not None:
        return default
    try:
        return kinds(value)  # type: ignore[call-arg]
    except ValueError:
        names = ", ".join(k.value for k in kinds)  # type: ignore[attr-defined]
        raise InvalidRequest(f"'{param}' must be one of {names}.", param=param) from None


# -- settings ---------------------------------------------------------------------------------------------------


def _globs(least: int) -> Callable[[Any, str], tuple[str, ...]]:
    return lambda v, p: _list(v, p, MAX_LIST, least, _glob)


_SETTING_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "models_allow": _globs(0),
    "models_deny": _globs(0),
    "providers_allow": _globs(0),
    "providers_deny": _globs(0),
    "max_tokens": lambda v, p: _int(v, p, 1, MAX_TOKENS),
    "max_tokens_action": lambda v, p: _choice(v, p, MaxTokensAction),
    "time_windows": lambda v, p: _list(v, p, MAX_WINDOWS, 0, _window),
    "ip_allow": lambda v, p: _list(v, p, MAX_LIST, 0, _cidr),
    "required_headers": lambda v, p: _list(v, p, MAX_HEADERS, 0, _header),
    "prompt_ids_allow": lambda v, p: _list(v, p, MAX_LIST, 0, id_field),
    "requests_per_minute": lambda v, p: _int(v, p, 1, MAX_RATE),
    "tokens_per_minute": lambda v, p: _int(v, p, 1, MAX_RATE * 1000),
    "concurrent": lambda v, p: _int(v, p, 1, MAX_RATE),
    "approval_wait_s": lambda v, p: _seconds(v, p, 0, MAX_WAIT_S),
    "max_run_steps": lambda v, p: _int(v, p, 1, MAX_COUNT),
    "max_run_model_calls": lambda v, p: _int(v, p, 1, MAX_COUNT),
    "max_run_duration_s": lambda v, p: _seconds(v, p, 0, MAX_RUN_SECONDS, above=True),
    "max_run_cost_usd": _usd,
    "loop_repeats": lambda v, p: _int(v, p, 2, MAX_COUNT),
}


def parse_settings(value: Any, param: str = "settings") -> Settings:
    data = _object({} if value is None else value, param, SETTING_KEYS)
    parsed = {
        _NANOS.get(key, key): _SETTING_PARSERS[key](v, f"{param}.{key}") for key, v in data.items() if v is not None
    }
    if "max_tokens_action" in parsed and "max_tokens" not in parsed:
        raise InvalidRequest(
            f"'{param}.max_tokens_action' says what to do past 'max_tokens': set both.",
            param=f"{param}.max_tokens_action",
        )
    return Settings(**parsed)


# -- rules ------------------------------------------------------------------------------------------------------


def _ids(v: Any, p: str) -> frozenset[str]:
    return frozenset(_list(v, p, MAX_LIST, 1, id_field))


_CONDITION_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "kinds": lambda v, p: frozenset(_list(v, p, MAX_KINDS, 1, _kind)),
    "models": _globs(1),
    "models_not": _globs(1),
    "providers": _globs(1),
    "providers_not": _globs(1),
    "names": _globs(1),
    "names_not": _globs(1),
    "max_tokens_over": lambda v, p: _int(v, p, 0, MAX_TOKENS),
    "cost_over_usd": _usd,
    "hours": lambda v, p: _list(v, p, MAX_WINDOWS, 1, _window),
    "outside_hours": lambda v, p: _list(v, p, MAX_WINDOWS, 1, _window),
    "ip_in": lambda v, p: _list(v, p, MAX_LIST, 1, _cidr),
    "ip_not_in": lambda v, p: _list(v, p, MAX_LIST, 1, _cidr),
    "missing_headers": lambda v, p: _list(v, p, MAX_HEADERS, 1, _header),
    "prompt_ids": _ids,
    "prompt_ids_not": _ids,
    "properties": _properties,
    "run_steps_over": lambda v, p: _int(v, p, 0, MAX_COUNT),
    "run_model_calls_over": lambda v, p: _int(v, p, 0, MAX_COUNT),
    "run_duration_over_s": lambda v, p: _seconds(v, p, 0, MAX_RUN_SECONDS),
    "run_cost_over_usd": _usd,
    "repeated_over": lambda v, p: _int(v, p, 1, MAX_COUNT),
    "pii": lambda v, p: frozenset(_list(v, p, len(PII_KINDS), 1, _pii)),
}


def parse_conditions(value: Any, param: str) -> Conditions:
    data = _object({} if value is None else value, param, CONDITION_KEYS)
    return Conditions(
        **{
            _NANOS.get(key, key): _CONDITION_PARSERS[key](v, f"{param}.{key}")
            for key, v in data.items()
            if v is not None
        }
    )


def _rule(value: Any, param: str, rule_id: str) -> Rule:
    data = _object(value, param, _RULE_KEYS)
    action = _choice(data.get("action"), f"{param}.action", RuleAction)
    rpm = data.get("throttle_rpm")
    if action is RuleAction.THROTTLE:
        rpm = _int(rpm, f"{param}.throttle_rpm", 1, MAX_RATE)
    elif rpm is not None:
        raise InvalidRequest(f"'{param}.throttle_rpm' is only for action 'throttle'.", param=f"{param}.throttle_rpm")
    redact = data.get("redact")
    if action is RuleAction.REDACT:
        kinds = frozenset(_list(redact, f"{param}.redact", len(PII_KINDS), 1, _pii))
    elif redact is not None:
        raise InvalidRequest(f"'{param}.redact' is only for action 'redact'.", param=f"{param}.redact")
    else:
        kinds = frozenset()
    name, message = data.get("name"), data.get("message")
    return Rule(
        id=rule_id,
        action=action,
        when=parse_conditions(data.get("when"), f"{param}.when"),
        name=None if name is None else text_field(name, f"{param}.name", limit=MAX_TEXT, strip=True),
        throttle_rpm=rpm,
        redact=kinds,
        message=None if message is None else text_field(message, f"{param}.message", limit=MAX_MESSAGE, strip=True),
    )


def parse_rules(value: Any, param: str = "rules") -> tuple[Rule, ...]:
    """Rules in order; one without an id gets `r<position>` (from 1), so the trace can name it and the id
    stays as long as the rules before it do (the canonical JSON then carries it)."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_RULES:
        raise InvalidRequest(f"'{param}' must be an array of at most {MAX_RULES} rules.", param=param)
    seen: set[str] = set()
    rules = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        given = item.get("id") if isinstance(item, dict) else None
        rule_id = f"r{i + 1}" if given is None else id_field(given, f"{where}.id")
        if rule_id in seen:
            raise InvalidRequest(f"'{where}.id': another rule already has the id '{rule_id}'.", param=f"{where}.id")
        seen.add(rule_id)
        rules.append(_rule(item, where, rule_id))
    return tuple(rules)


# -- policies ---------------------------------------------------------------------------------------------------


def _scope(data: dict[str, Any]) -> tuple[Scope, str | None]:
    names = ", ".join(s.value for s in POLICY_SCOPES)
    scope = next((s for s in POLICY_SCOPES if s.value == data.get("scope")), None)
    if scope is None:
        raise InvalidRequest(f"'scope' must be one of {names}.", param="scope")
    value = data.get("scope_value")
    if scope is Scope.WORKSPACE:
        if value is not None:
            raise InvalidRequest("A workspace scope takes no 'scope_value'.", param="scope_value")
        return scope, None
    return scope, text_field(value, "scope_value", limit=1024, strip=True)


def _entries(obj: Settings | Conditions) -> int:
    return sum(len(v) for v in (getattr(obj, f.name) for f in fields(obj)) if isinstance(v, tuple | frozenset))


def _check_size(policy: Policy) -> None:
    total = _entries(policy.settings)
    where = "settings"
    for i, rule in enumerate(policy.rules):
        if total > MAX_ENTRIES:
            break
        total += _entries(rule.when)
        where = f"rules[{i}]"
    if total > MAX_ENTRIES:
        raise InvalidRequest(
            f"A policy may hold at most {MAX_ENTRIES} list entries (globs, CIDRs, ids, windows) in all; "
            f"'{where}' passes that.",
            param=where,
        )


def parse_policy(data: Any, *, id: str, version: int) -> Policy:
    """The API's JSON for a policy (without its id and version, which the store gives) → the model."""
    body = _object(data, "", _POLICY_KEYS)
    scope, value = _scope(body)
    policy = Policy(
        id=id,
        version=version,
        name=text_field(body.get("name"), "name", limit=MAX_TEXT, strip=True),
        scope=scope,
        scope_value=value,
        mode=_choice(body.get("mode"), "mode", Mode, Mode.ENFORCE),
        settings=parse_settings(body.get("settings")),
        rules=parse_rules(body.get("rules")),
    )
    _check_size(policy)
    return policy


# -- back to JSON -----------------------------------------------------------------------------------------------


def _clock_json(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _window_json(w: TimeWindow) -> dict[str, Any]:
    return {"days": [DAYS[d] for d in w.days], "start": _clock_json(w.start), "end": _clock_json(w.end), "tz": w.tz}


def _value_json(value: Any, key: str) -> Any:
    if key in _NANOS:
        return format_usd(value)
    if isinstance(value, frozenset):
        return sorted(value)
    if key == "properties":
        return dict(value)
    if isinstance(value, tuple):
        return [_window_json(v) if isinstance(v, TimeWindow) else v for v in value]
    return value.value if isinstance(value, Mode | MaxTokensAction | RuleAction) else value


def _fields_json(obj: Settings | Conditions, keys: tuple[str, ...], names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name in zip(keys, names, strict=True):
        if (value := getattr(obj, name)) is not None:
            out[key] = _value_json(value, key)
    return out


def settings_json(settings: Settings) -> dict[str, Any]:
    return _fields_json(settings, SETTING_KEYS, SETTING_FIELDS)


def conditions_json(when: Conditions) -> dict[str, Any]:
    return _fields_json(when, CONDITION_KEYS, CONDITION_FIELDS)


def rule_json(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rule.id}
    if rule.name is not None:
        out["name"] = rule.name
    out["when"] = conditions_json(rule.when)
    out["action"] = rule.action.value
    if rule.throttle_rpm is not None:
        out["throttle_rpm"] = rule.throttle_rpm
    if rule.redact:
        out["redact"] = sorted(rule.redact)
    if rule.message is not None:
        out["message"] = rule.message
    return out


def policy_json(policy: Policy) -> dict[str, Any]:
    """The canonical JSON of a policy's content (what `parse_policy` takes; id and version are not in it)."""
    return {
        "name": policy.name,
        "scope": policy.scope.value,
        "scope_value": policy.scope_value,
        "mode": policy.mode.value,
        "settings": settings_json(policy.settings),
        "rules": [rule_json(r) for r in policy.rules],
    }
