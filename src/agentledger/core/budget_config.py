"""A budget or a rate limit as the management API takes it: validated into the row the store keeps.

Each parser raises InvalidRequest naming the field. Whether a named department, agent or key exists is the
caller's to check (a 404): this module knows no store.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from agentledger.core.bounds import MAX_EVENT_COST_USD
from agentledger.core.budgets import DEFAULT_THRESHOLDS, Action, Period, Scope, default_anchor
from agentledger.core.errors import InvalidRequest
from agentledger.core.headers import PROPERTY_NAME_HELP, PROPERTY_NAME_RE, has_control
from agentledger.core.money import to_nanos

MAX_LIMIT_USD = MAX_EVENT_COST_USD * 1000  # a billion dollars: past any budget, within BIGINT nano-dollars
MAX_THRESHOLDS = 10
MAX_RATE = 10_000_000


def _choice(value: Any, what: str, kinds: type[Any], default: Any = None) -> Any:
    if value is None and default is not None:
        return default
    try:
        return kinds(value)
    except ValueError:
        names = ", ".join(k.value for k in kinds)
        raise InvalidRequest(f"'{what}' must be one of {names}.", param=what) from None


def scope_fields(data: dict[str, Any]) -> tuple[Scope, str | None, str | None]:
    """(scope, scope_value, property name), checked against each other."""
    scope = _choice(data.get("scope"), "scope", Scope)
    value = data.get("scope_value")
    prop = data.get("property")
    if scope is Scope.WORKSPACE:
        if value is not None or prop is not None:
            raise InvalidRequest("A workspace scope takes no 'scope_value' or 'property'.", param="scope_value")
        return scope, None, None
    if not isinstance(value, str) or not value.strip() or len(value) > 1024 or has_control(value):
        raise InvalidRequest(
            f"'scope_value' must name the {scope.value} (a non-empty string of at most 1024 characters).",
            param="scope_value",
        )
    if scope is Scope.PROPERTY:
        if not isinstance(prop, str) or not PROPERTY_NAME_RE.fullmatch(prop):
            raise InvalidRequest(f"'property' must name the property: {PROPERTY_NAME_HELP}.", param="property")
        return scope, value.strip(), prop  # as a tracking header's value is read: trimmed
    if prop is not None:
        raise InvalidRequest("'property' is only for scope 'property'.", param="property")
    return scope, value.strip(), None


def _name(name: Any) -> str | None:
    if name is not None and (not isinstance(name, str) or len(name) > 256 or has_control(name)):
        raise InvalidRequest("'name' must be a string of at most 256 characters.", param="name")
    return name


DOLLARS_RE = re.compile(r"[0-9]{1,16}(\.[0-9]{1,9})?")


def dollars(value: Any) -> Decimal | None:
    """An amount as the API writes money: an integer, or a plain decimal string with at most 9 decimals (no
    exponent, sign or spaces: "1e3" or " 5" is more likely a mistake than a budget)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Decimal(value)
    if isinstance(value, str) and DOLLARS_RE.fullmatch(value):
        return Decimal(value)
    return None


def _limit_nanos(value: Any) -> int:
    amount = dollars(value)
    if amount is None or amount > MAX_LIMIT_USD:
        raise InvalidRequest(
            f"'limit_usd' must be a decimal string (or integer) of dollars from 0 to {MAX_LIMIT_USD}, at most 9 "
            'decimals, such as "25.00".',
            param="limit_usd",
        )
    return to_nanos(amount)


def _thresholds(value: Any) -> list[int]:
    if value is None:
        return list(DEFAULT_THRESHOLDS)
    if (
        not isinstance(value, list)
        or len(value) > MAX_THRESHOLDS
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000 for v in value)
    ):
        raise InvalidRequest(
            f"'thresholds' must be an array of at most {MAX_THRESHOLDS} percentages from 1 to 1000.",
            param="thresholds",
        )
    return sorted(set(value))


def budget_row(data: dict[str, Any], now: datetime, anchor: datetime | None) -> dict[str, Any]:
    """The stored row of a new budget (without workspace_id and id)."""
    scope, value, prop = scope_fields(data)
    period = _choice(data.get("period"), "period", Period)
    action = _choice(data.get("action"), "action", Action, Action.BLOCK_REQUESTS)
    if action is Action.PAUSE_ALL and scope is not Scope.DEPARTMENT:
        raise InvalidRequest("'pause_all' is the department scope's name for block_requests.", param="action")
    if action is Action.DISABLE_KEY and scope is not Scope.VIRTUAL_KEY:
        raise InvalidRequest("'disable_key' applies to a virtual_key budget only.", param="action")
    rpm = data.get("throttle_rpm")
    if action is Action.SOFT_THROTTLE:
        if isinstance(rpm, bool) or not isinstance(rpm, int) or not 1 <= rpm <= MAX_RATE:
            raise InvalidRequest(
                f"'throttle_rpm' (1 to {MAX_RATE}) is the request rate a soft_throttle budget allows past its limit.",
                param="throttle_rpm",
            )
    elif rpm is not None:
        raise InvalidRequest("'throttle_rpm' is only for action 'soft_throttle'.", param="throttle_rpm")
    return {
        "name": _name(data.get("name")),
        "scope": scope.value,
        "scope_value": value,
        "property": prop,
        "limit_nanos": _limit_nanos(data.get("limit_usd")),
        "period": period.value,
        "anchor": anchor or default_anchor(now),
        "action": action.value,
        "thresholds": _thresholds(data.get("thresholds")),
        "throttle_rpm": rpm,
        "created_at": now,
    }


def _rate(value: Any, what: str, most: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidRequest(f"'{what}' must be an integer from 1 to {most}.", param=what)
    return value


def rate_limit_row(data: dict[str, Any], now: datetime) -> dict[str, Any]:
    scope, value, prop = scope_fields(data)
    rpm = _rate(data.get("requests_per_minute"), "requests_per_minute", MAX_RATE)
    tpm = _rate(data.get("tokens_per_minute"), "tokens_per_minute", MAX_RATE * 1000)
    concurrent = _rate(data.get("concurrent"), "concurrent", MAX_RATE)
    if rpm is None and tpm is None and concurrent is None:
        raise InvalidRequest(
            "A rate limit needs 'requests_per_minute', 'tokens_per_minute' or 'concurrent'.",
            param="requests_per_minute",
        )
    return {
        "name": _name(data.get("name")),
        "scope": scope.value,
        "scope_value": value,
        "property": prop,
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "concurrent": concurrent,
        "created_at": now,
    }


def amount_nanos(value: Any) -> int:
    """`amount_usd` of a spend authorization or a policy check: a positive decimal of dollars within the
    per-event bound, in nano-dollars; else a 400 naming it."""
    amount = dollars(value)
    if amount is None or amount <= 0:
        raise InvalidRequest(
            "'amount_usd' must be a positive decimal string of dollars, such as \"0.25\".", param="amount_usd"
        )
    nanos = to_nanos(amount)
    if nanos > MAX_EVENT_COST_USD * 10**9:
        raise InvalidRequest("'amount_usd' is past the per-event bound of $1,000,000.", param="amount_usd")
    return nanos
