"""Budgets and rate limits: which apply to a call, their windows, the reservation a call makes, and the decision.

Pure: the gateway hands in the call's subject (who and what it is for), `now` and the counters' standings; the
counters (limits/) make the reservation atomic, the ledger (store) keeps every movement.

Periods, all UTC. `24h`, `7d`, `30d` are consecutive fixed windows of that length from the budget's `anchor`:
window k is [anchor + k·length, anchor + (k+1)·length). `billing_cycle` is monthly from the anchor's day of
month at 00:00 UTC; an anchor day past the end of a short month falls on that month's last day (31 → 28/29
Feb). `total` never resets. `run` gives each run in the scope its own allowance (a call outside any run is not
under a run budget).

Levels do not cascade: each applicable budget is evaluated on its own, and the strictest outcome wins.
"""

from __future__ import annotations

import calendar
import enum
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agentledger.core.frozen import frozen
from agentledger.core.model import Attribution, LedgerEntries, pickled_by_fields
from agentledger.core.money import MAX_EVENT_COST_NANOS, format_usd


class Scope(enum.StrEnum):
    WORKSPACE = "workspace"
    DEPARTMENT = "department"
    AGENT = "agent"
    VIRTUAL_KEY = "virtual_key"
    WORKFLOW = "workflow"
    PROPERTY = "property"


class Period(enum.StrEnum):
    DAY = "24h"
    WEEK = "7d"
    MONTH = "30d"
    BILLING_CYCLE = "billing_cycle"
    TOTAL = "total"
    RUN = "run"


class Action(enum.StrEnum):
    """What happens at the limit (the reference's names). `pause_all` is `block_requests` at department scope."""

    ALERT_ONLY = "alert_only"
    SOFT_THROTTLE = "soft_throttle"
    BLOCK_REQUESTS = "block_requests"
    PAUSE_ALL = "pause_all"
    DISABLE_KEY = "disable_key"


class Decision(enum.StrEnum):
    ALLOWED = "allowed"
    BLOCKED = "blocked"
    THROTTLED = "throttled"
    ESCALATED = "escalated"


BLOCKING = frozenset({Action.BLOCK_REQUESTS, Action.PAUSE_ALL, Action.DISABLE_KEY})
_LENGTHS = {Period.DAY: timedelta(hours=24), Period.WEEK: timedelta(days=7), Period.MONTH: timedelta(days=30)}
DEFAULT_THRESHOLDS = (50, 80, 100)


def scope_label(scope: Scope, value: str | None, prop: str | None) -> str:
    """`department:research`, `property.customer:acme`, `workspace`: how headers, steps and errors name a scope."""
    if scope is Scope.WORKSPACE:
        return "workspace"
    name = f"property.{prop}" if scope is Scope.PROPERTY else scope.value
    return f"{name}:{value}"


@frozen
class Subject:
    """What a call or a step is for: the scopes a budget or a rate limit may name."""

    workspace_id: str
    department_id: str | None = None
    agent_id: str | None = None
    virtual_key_id: str | None = None
    workflow: str | None = None
    run_id: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, a: Attribution, *, workflow: str | None = None, run_id: str | None = None) -> Subject:
        """The subject of a call or step attributed as `a` (its run's workflow, when known, and another run id
        when the caller names one)."""
        return cls(
            a.workspace_id, a.department_id, a.agent_id, a.virtual_key_id, workflow, run_id or a.run_id, a.properties
        )


@dataclass(frozen=True, slots=True)
class Budget:
    workspace_id: str
    id: str
    scope: Scope
    value: str | None  # the department/agent/key id, the workflow name or the property's value; None: workspace
    limit_nanos: int
    period: Period
    anchor: datetime
    action: Action = Action.ALERT_ONLY
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    property_name: str | None = None  # the property's name, for scope `property`
    throttle_rpm: int | None = None  # soft_throttle: the request rate allowed past the limit
    # Derived once: a budget is read on every call it governs (a key of the window caches, its label on headers),
    # and the dataclass's own hash would hash every field again, its three enums by a Python call each.
    blocks: bool = field(init=False, repr=False, compare=False)
    scope_label: str = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", self.action in BLOCKING)
        object.__setattr__(self, "scope_label", scope_label(self.scope, self.value, self.property_name))
        object.__setattr__(self, "_hash", hash(_budget_fields(self)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[Budget], tuple[object, ...]]:  # rebuilt, so its hash is this process's
        return Budget, (*_budget_fields(self), self.thresholds, self.property_name, self.throttle_rpm)


@dataclass(frozen=True, slots=True)
class RateLimit:
    workspace_id: str
    id: str
    scope: Scope
    value: str | None
    property_name: str | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None
    policy_version: int | None = None  # a policy's rate setting (id `policy:<id>:<setting>`): the version that set it
    scope_label: str = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope_label", scope_label(self.scope, self.value, self.property_name))
        limits = (self.requests_per_minute, self.tokens_per_minute, self.concurrent)
        object.__setattr__(self, "_hash", hash((self.workspace_id, self.id, self.scope, self.value, *limits)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[RateLimit], tuple[object, ...]]:  # rebuilt, so its hash is this process's
        limits = (self.requests_per_minute, self.tokens_per_minute, self.concurrent)
        scope = (self.workspace_id, self.id, self.scope, self.value, self.property_name)
        return RateLimit, (*scope, *limits, self.policy_version)


def _budget_fields(b: Budget) -> tuple[object, ...]:
    return (b.workspace_id, b.id, b.scope, b.value, b.limit_nanos, b.period, b.anchor, b.action)


def _scope_value(scope: Scope, prop: str | None, subject: Subject) -> str | None:
    if scope is Scope.WORKSPACE:
        return subject.workspace_id
    if scope is Scope.DEPARTMENT:
        return subject.department_id
    if scope is Scope.AGENT:
        return subject.agent_id
    if scope is Scope.VIRTUAL_KEY:
        return subject.virtual_key_id
    if scope is Scope.WORKFLOW:
        return subject.workflow
    return subject.properties.get(prop or "")


def applies(scope: Scope, value: str | None, prop: str | None, subject: Subject) -> bool:
    if scope is Scope.WORKSPACE:
        return True
    found = _scope_value(scope, prop, subject)
    return found is not None and found == value


def applicable_budgets(budgets: Sequence[Budget], subject: Subject) -> list[Budget]:
    """The budgets that govern this subject; a run budget only inside a run."""
    return [
        b
        for b in budgets
        if applies(b.scope, b.value, b.property_name, subject) and (b.period is not Period.RUN or subject.run_id)
    ]


def applicable_limits(limits: Sequence[RateLimit], subject: Subject) -> list[RateLimit]:
    return [r for r in limits if applies(r.scope, r.value, r.property_name, subject)]


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def default_anchor(created_at: datetime) -> datetime:
    """A budget's creation time truncated to 00:00 UTC."""
    return _utc(created_at).replace(hour=0, minute=0, second=0, microsecond=0)


def _cycle_start(year: int, month: int, day: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, min(day, last), tzinfo=UTC)


def _add_months(year: int, month: int, n: int) -> tuple[int, int]:
    total = year * 12 + (month - 1) + n
    return total // 12, total % 12 + 1


def window(budget: Budget, now: datetime) -> tuple[datetime | None, datetime | None]:
    """[start, end) of the window `now` falls in; (anchor, None) for `total`, (None, None) for `run`."""
    anchor = _utc(budget.anchor)
    now = _utc(now)
    if budget.period is Period.TOTAL:
        return anchor, None
    if budget.period is Period.RUN:
        return None, None
    if budget.period is Period.BILLING_CYCLE:
        day = anchor.day
        start = _cycle_start(now.year, now.month, day)
        if start > now:
            start = _cycle_start(*_add_months(now.year, now.month, -1), day)
        end = _cycle_start(*_add_months(start.year, start.month, 1), day)
        return start, end
    length = _LENGTHS[budget.period]
    k = (now - anchor) // length  # floor division: windows before the anchor count back from it
    start = anchor + k * length
    return start, start + length


def counter_key(budget: Budget, now: datetime, run_id: str | None) -> str:
    """The counter a call charges: one per budget and window (per run for `run`). `|` separates the parts: no id
    holds one (ids are letters, digits and `. _ : -`)."""
    if budget.period is Period.RUN:
        return f"b|{budget.workspace_id}|{budget.id}|run:{run_id}"
    # The key changes once a window: kept with the window's bounds, it is a comparison per call, not the
    # window's arithmetic (the calendar's, for billing_cycle).
    at = now.timestamp()
    found = _KEYS.get(budget)
    if found is not None and found[0] <= at < found[1]:
        if found[3] is not budget:  # an equal budget read again (the rules were reloaded): keyed by the new one
            del _KEYS[budget]
            _KEYS[budget] = (found[0], found[1], found[2], budget)
        return found[2]
    if budget.period is Period.TOTAL:
        key, bounds = f"b|{budget.workspace_id}|{budget.id}|total", (-math.inf, math.inf)
    else:
        start, end = window(budget, now)
        assert start is not None and end is not None
        key = f"b|{budget.workspace_id}|{budget.id}|{int(start.timestamp())}"
        bounds = (start.timestamp(), end.timestamp())
    if len(_KEYS) >= KEYS_KEPT:
        _KEYS.clear()  # deleted and changed budgets, mostly
    _KEYS[budget] = (*bounds, key, budget)
    return key


# Each budget's current window: [start, end) epoch, its key, and the budget the entry is keyed by: a dict finds a
# key by identity before equality, and the equality of two budgets compares every field (six lookups a call).
_KEYS: dict[Budget, tuple[float, float, str, Budget]] = {}
KEYS_KEPT = 10_000


def parse_counter_key(key: str) -> tuple[str, str, str]:
    """(workspace_id, budget_id, window) of a counter key: the window is the start in epoch seconds, `total`,
    or `run:<run id>`."""
    _, workspace_id, budget_id, part = key.split("|", 3)
    return workspace_id, budget_id, part


def window_of_key(key: str) -> str:
    return parse_counter_key(key)[2]


@frozen
class Figures:
    """A budget's figures in one window, in nano-dollars."""

    budget: Budget
    key: str
    spent: int
    reserved: int

    @property
    def remaining(self) -> int:
        return self.budget.limit_nanos - self.spent - self.reserved

    @property
    def remaining_usd(self) -> str:
        """What is left as exact USD text, never below zero (a budget over its limit has nothing left)."""
        return format_usd(max(self.remaining, 0))

    @property
    def percent_used(self) -> float:
        limit = self.budget.limit_nanos
        return round(100.0 * (self.spent + self.reserved) / limit, 2) if limit else 100.0

    def view(self, now: datetime) -> dict[str, object]:
        """As the policy_check step, the status API and `GET /v1/budget` show it."""
        return {
            **static_view(self.budget, self.key, now),
            "spent_usd": format_usd(self.spent),
            "reserved_usd": format_usd(self.reserved),
            "remaining_usd": self.remaining_usd,
            "remaining_nanos": self.remaining,
            "percent_used": self.percent_used,
        }


# What a budget's view says of it and its window is the same for every call in the window (the counter key
# names the window): built once, not per call (a policy check shows every applicable budget).
_STATIC_VIEWS: dict[tuple[Budget, str], tuple[Budget, dict[str, object]]] = {}  # the budget keyed by, as _KEYS
STATIC_VIEWS_KEPT = 4096


def static_view(b: Budget, key: str, now: datetime) -> dict[str, object]:
    """What a budget's view (`Figures.view`) says of it and of the window of `key`: the same for every call in that
    window, so built once (shared: not to be changed)."""
    kept = _STATIC_VIEWS.get((b, key))
    if kept is not None:
        if kept[0] is not b:
            _STATIC_VIEWS.pop((b, key), None)  # (the store's writer thread builds views too: no KeyError race)
            _STATIC_VIEWS[(b, key)] = (b, kept[1])
        return kept[1]
    keyed = key.count("|") == 3  # a counter key (else: figures made up by a caller, viewed as of `now`)
    part = window_of_key(key) if keyed else ""
    if part.isdigit():  # the key's own window, whatever the clock says now (a call may straddle two)
        now = datetime.fromtimestamp(int(part), UTC)
    start, end = window(b, now)
    found: dict[str, object] = {
        "budget_id": b.id,
        "scope_label": b.scope_label,
        "scope": b.scope.value,
        "scope_value": b.value,
        "property": b.property_name,
        "period": b.period.value,
        "action": b.action.value,
        "limit_usd": format_usd(b.limit_nanos),
        "window_start": start.isoformat() if start is not None else None,
        "window_end": end.isoformat() if end is not None else None,
    }
    if not keyed:
        return found
    if len(_STATIC_VIEWS) >= STATIC_VIEWS_KEPT:
        _STATIC_VIEWS.clear()  # past windows and deleted budgets, mostly
    _STATIC_VIEWS[(b, key)] = (b, found)
    return found


_LIMIT_VIEWS: dict[RateLimit, dict[str, object]] = {}


def limit_view(r: RateLimit) -> dict[str, object]:
    """A rate limit as a policy check shows it: the same for every call, so built once (shared: not to be changed)."""
    found = _LIMIT_VIEWS.get(r)
    if found is None:
        if len(_LIMIT_VIEWS) >= STATIC_VIEWS_KEPT:
            _LIMIT_VIEWS.clear()  # deleted and changed limits, mostly
        found = _LIMIT_VIEWS[r] = {
            "rate_limit_id": r.id,
            "scope": r.scope_label,
            "requests_per_minute": r.requests_per_minute,
            "tokens_per_minute": r.tokens_per_minute,
            "concurrent": r.concurrent,
            # A policy's setting names its version, as every policy decision does (core/policy_hits.py).
            **({"policy_version": r.policy_version} if r.policy_version is not None else {}),
        }
    return found


@frozen
class PolicyReport:
    """A call's policy check as its figures stood, kept as numbers and turned into the trace's shape (`as_dict`:
    each budget's view, each rate limit's, amounts as exact USD text) where it is written, by the store's writer:
    building the views on the event loop was most of what budgets added to an answer's latency. Each budget's
    figures are `numbers[2i]` spent and `numbers[2i + 1]` reserved in the window of `keys[i]` (`figures` makes
    them objects, off the answer's path)."""

    decision: Decision
    decided_by: dict[str, Any] | None
    budgets: tuple[Budget, ...]
    keys: tuple[str, ...]
    numbers: tuple[int, ...]
    limits: tuple[RateLimit, ...]
    reservation_id: str | None
    estimate: int
    note: str | None
    policy: dict[str, Any] | None
    at: datetime
    # A model call's ledger entries travel in its report, written by the store's writer with its request row (two
    # events of their own each call were most of what budgets added to a call's CPU): its `settle` or `release`
    # entries (`closed`, at `at`). `reserve_written` False: the call ended before its `reserve` entries were
    # written, and reserving and closing net out to what it spent (a hold settled before it is ever written is not
    # written, as a card's pending authorization leaves no line once the charge posts).
    closed: str | None = None
    actual: int = 0
    reserve_written: bool = True

    @property
    def figures(self) -> tuple[Figures, ...]:
        return tuple(figures_of(self.budgets, self.keys, self.numbers))

    def tightest(self) -> Figures | None:
        """The budget with the least left: the one response headers and model_call steps name."""
        at, _ = least_left(self.budgets, self.numbers)
        n = self.numbers
        return None if at < 0 else Figures(self.budgets[at], self.keys[at], n[2 * at], n[2 * at + 1])

    def ledger(self, request_id: str, run_id: str | None) -> list[LedgerEntries]:
        """The ledger entries this report carries (none unless `closed`): with its reserve written, the close
        (−estimate, +actual); without, what the call spent, if anything (0, +actual)."""
        if self.closed is None or self.reservation_id is None or not self.budgets:
            return []
        if not self.reserve_written and not self.actual:
            return []  # released before its reserve was written: nothing moved
        held = self.estimate if self.reserve_written else 0
        ws = self.budgets[0].workspace_id
        counters = tuple([(b.id, k) for b, k in zip(self.budgets, self.keys, strict=True)])
        return [
            LedgerEntries.of_reservation(
                ws, self.closed, held, self.actual, self.at, self.reservation_id, counters, request_id, run_id
            )
        ]

    def as_dict(self, views: list[Any] | None = None) -> dict[str, Any]:
        """The request row's `governance` and the policy_check step's attributes. `views`: the budgets' views as
        made elsewhere (the store's writer makes them as JSON text: store.budgets.stored_governance)."""
        out: dict[str, Any] = {"decision": self.decision.value, "decided_by": self.decided_by}
        if self.budgets:
            out["budgets"] = [f.view(self.at) for f in self.figures] if views is None else views
        if self.limits:
            out["rate_limits"] = [limit_view(r) for r in self.limits]
        if self.reservation_id:
            out["reservation_id"] = self.reservation_id
            out["reserved_usd"] = format_usd(self.estimate)
        if self.note:
            out["note"] = self.note
        if self.policy is not None:
            out["policy"] = self.policy
        return out


def flat(figures: Sequence[Figures]) -> tuple[tuple[Budget, ...], tuple[str, ...], tuple[int, ...]]:
    """Figures as a report keeps them: the budgets, their keys, and spent and reserved of each, flat."""
    return (
        tuple([f.budget for f in figures]),
        tuple([f.key for f in figures]),
        tuple([n for f in figures for n in (f.spent, f.reserved)]),
    )


def figures_of(budgets: Sequence[Budget], keys: Sequence[str], numbers: Sequence[int]) -> list[Figures]:
    pairs = enumerate(zip(budgets, keys, strict=True))
    return [Figures(b, k, numbers[2 * i], numbers[2 * i + 1]) for i, (b, k) in pairs]


def least_left(budgets: Sequence[Budget], numbers: Sequence[int]) -> tuple[int, int]:
    """Of figures kept flat: the index of the budget with the least left (the first of equals; -1: none) and what it
    has left (below zero when over its limit)."""
    least, at = 0, -1
    for i, b in enumerate(budgets):
        left = b.limit_nanos - numbers[2 * i] - numbers[2 * i + 1]
        if at < 0 or left < least:
            least, at = left, i
    return at, least


def governance_dict(governance: dict[str, Any] | PolicyReport | None) -> dict[str, Any] | None:
    """A request's `governance` as stored: a report's dict, built now if it was kept as numbers."""
    return governance.as_dict() if isinstance(governance, PolicyReport) else governance


def crossed(limit: int, before: int, after: int, thresholds: Sequence[int]) -> list[int]:
    """Thresholds (percent) passed between `before` and `after` spent (an alert each, once per window)."""
    if limit <= 0:
        return [t for t in thresholds if before <= 0 < after] if after > before else []
    return [t for t in thresholds if before * 100 < t * limit <= after * 100]


# -- the reservation a call makes --------------------------------------------------------------------------------


def input_bound(body_bytes: int) -> int:
    """Prompt tokens, bounded from above without a tokenizer: no tokenizer's token is shorter than one byte of
    the text, and the body holds the text plus JSON around it. (Images and audio are the exception: a few bytes
    of URL can stand for many tokens; the docs state it in the overspend bound.)"""
    return max(body_bytes, 1)


def reservation_nanos(input_tokens: int, output_tokens: int, input_rate: int, output_rate: int) -> int:
    """The most a call may cost: `rate`s are nano-dollars per million tokens (the worst input rate, i.e. a
    cache write's when it is dearer than plain input), within the bound any one event's cost is held to."""
    return min(-(-(input_tokens * input_rate + output_tokens * output_rate) // 1_000_000), MAX_EVENT_COST_NANOS)


_SCOPES_PICKLED: dict[tuple[tuple[Budget, ...], tuple[RateLimit, ...]], bytes] = {}


def _report_from(
    decision: str, scopes: bytes, keys: tuple[str, ...], numbers: tuple[int, ...], rest: tuple[Any, ...]
) -> PolicyReport:
    budgets, limits = pickle.loads(scopes)
    return PolicyReport(Decision(decision), rest[0], budgets, keys, numbers, limits, *rest[1:])


def _report_reduce(r: PolicyReport) -> tuple[Any, ...]:
    # Pickled on every governed call's path (the trace journal), where each object it reaches costs: the budgets
    # and rate limits, the same for every call of a scope, go as one blob pickled once; the figures as numbers.
    scopes = _SCOPES_PICKLED.get((r.budgets, r.limits))
    if scopes is None:
        if len(_SCOPES_PICKLED) >= STATIC_VIEWS_KEPT:
            _SCOPES_PICKLED.clear()  # changed budgets and limits, mostly
        scopes = _SCOPES_PICKLED[(r.budgets, r.limits)] = pickle.dumps((r.budgets, r.limits), pickle.HIGHEST_PROTOCOL)
    rest = (r.decided_by, r.reservation_id, r.estimate, r.note, r.policy, r.at, r.closed, r.actual, r.reserve_written)
    return _report_from, (r.decision.value, scopes, r.keys, r.numbers, rest)


PolicyReport.__reduce__ = _report_reduce  # type: ignore[assignment]
pickled_by_fields(Figures)
