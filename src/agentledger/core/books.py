"""The books kept at write time: what the trace rows of one batch add to the totals and rollups.

Pure: the store hands in the rows it actually inserted or replaced (as the column dicts it writes, and for a
replaced row the one it replaced), and applies the deltas that come out in the same transaction. So every
total is the sum of its rows at every commit, whatever replays, retries or late steps arrive, and
`agentledger rollups verify` can recompute each one from the raw rows and compare.

What is counted where (as the read-time queries counted before, docs/architecture.md "Books"):

* run totals: every step of the run (a gateway call in a run is a `model_call` step too), but the cost and
  tokens of a `model_attempt` step, which are part of its parent model_call's;
* the ledger — session paths and the hourly rollups behind `/api/analytics/costs` — counts every gateway
  request, plus the steps that did not come through the gateway (no `request_id`), so nothing twice.

Finance (core.finance): besides cost, the books keep revenue, refunds, fees and outbound payments (a payment
step's own columns), tool spend (the cost of steps that are neither model calls nor payments) and estimated cost
(cost whose provenance is `estimated` or `clamped`), and count errors in the ledger as in run totals.

Every money measure `x_nanos` is kept as a remainder below 10^15 and `x_carry` (multiples of 10^15) when
applied: a counter adds up any number of events at the $10^6 bound without overflowing BIGINT (`split_money`).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agentledger.core.finance import PNL_MEASURES
from agentledger.core.rollup import TOKEN_FIELDS

_LAST_HOUR = datetime.max.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
COST_UNIT = 10**15  # one carry unit; also the per-event cost bound (core.bounds)

# Money measures (each kept with its carry) and the finance ones among them, in the tables' column order.
MONEY_MEASURES = PNL_MEASURES
FINANCE_MEASURES = MONEY_MEASURES[1:]
# A payment step's own columns (store.schema steps), in FINANCE_MEASURES' order.
PAYMENT_COLUMNS = ("revenue_nanos", "refund_nanos", "fee_nanos", "payment_out_nanos")
assert FINANCE_MEASURES[: len(PAYMENT_COLUMNS)] == PAYMENT_COLUMNS
# Measures, in the order of the lists below and of the tables' columns.
# Both end in the same measures (from `errors` on): Books folds one step's once for its run and its ledger rows.
RUN_MEASURES = (
    "steps",
    "model_calls",
    "retries",
    "model_latency_ms",
    "errors",
    "cost_nanos",
    *TOKEN_FIELDS,
    *FINANCE_MEASURES,
)
LEDGER_MEASURES = ("events", "requests", "errors", "cost_nanos", *TOKEN_FIELDS, *FINANCE_MEASURES)
assert RUN_MEASURES[4:] == LEDGER_MEASURES[2:]
# The hourly rollup's dimensions: every `group_by` of the analytics API but session, run and properties, and the
# paid endpoint whose sale started the run (the finance summary's `group_by=endpoint`).
HOURLY_DIMS = (
    "department_id",
    "agent_id",
    "virtual_key_id",
    "workflow",
    "endpoint_id",
    "model",
    "provider",
    "prompt_id",
)
# What an event's run gives its ledger rows (the writer looks them up once a run and remembers them).
RUN_DIMS = ("workflow", "endpoint_id")
assert HOURLY_DIMS[3:5] == RUN_DIMS  # Books._ledger builds the key in this order

Key = tuple[Any, ...]
RunDims = tuple[str | None, str | None]  # a run's RUN_DIMS
NO_RUN: RunDims = (None, None)  # an event without a run, or whose run is not stored yet
NO_SESSION = ""  # the session rollup's key for events without a session (a primary key holds no NULL)
# Cost whose figure is not the provider's or the price's: what the estimated share of a P&L counts.
ESTIMATED_SOURCES = ("estimated", "clamped")
_ESTIMATED = frozenset(ESTIMATED_SOURCES)
# Step kinds whose cost is not tool spend: models (an attempt's cost is its call's) and payments.
NOT_TOOL_KINDS = ("model_call", "model_attempt", "payment")
_NOT_TOOL = frozenset(NOT_TOOL_KINDS)
_NO_PAYMENT = (0,) * len(PAYMENT_COLUMNS)
_NO_TOKENS = (0,) * len(TOKEN_FIELDS)
_TOKENS = operator.itemgetter(*TOKEN_FIELDS)
_PAID = operator.itemgetter(*PAYMENT_COLUMNS)


def hour_of(ts: datetime) -> datetime:
    """The start of the UTC hour `ts` falls in (the rollups' bucket)."""
    utc = ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return utc.replace(minute=0, second=0, microsecond=0)


def hour_window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """The window a cost rollup answers for [since, until): whole hours, `since` rounded down and `until` up
    (an `until` in the last hour of the calendar leaves the window open). Rollups are hourly; reading the
    events of the partial hours instead would cost as much as the busiest hour holds, which is the current one
    of every dashboard ("until now")."""
    lo = None if since is None else hour_of(since)
    hi = None
    if until is not None:
        hi = hour_of(until)
        if hi != until:
            hi = hi + timedelta(hours=1) if hi < _LAST_HOUR else None
    return lo, hi


def dims_key(values: tuple[str | None, ...]) -> str:
    """A fixed-size key for a tuple of labels (a primary-key column): labels may be up to 1024 characters,
    past what a PostgreSQL index entry holds. None and '' differ (labels never hold control characters)."""
    text = "\x1f".join("\x00" if v is None else v for v in values)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def carry_of(measure: str) -> str:
    """The carry column of a money measure: `cost_nanos` → `cost_carry`."""
    return measure.removesuffix("_nanos") + "_carry"


MONEY_CARRIES = tuple(carry_of(m) for m in MONEY_MEASURES)


def split_money(nanos: int) -> tuple[int, int]:
    """nanos → (remainder in [0, 10^15), carry), so nanos = carry·10^15 + remainder, negatives too.

    A counter keeps its remainder in [0, 10^15); adding a split delta leaves at most 2·10^15 - 1 before the
    carry is taken out (store: `x_carry + (x_nanos + d) / 10^15`), all non-negative, so integer division is
    floor division on both stores. A negative measure (an outbound payment refunded lowers cost) is a negative
    carry with a non-negative remainder."""
    carry, rest = divmod(nanos, COST_UNIT)
    return rest, carry


split_cost = split_money


@dataclass(slots=True)
class Books:
    """Deltas folded per row of each kept table, keyed by its primary key (see store.schema).

    Ledger events are first folded once each under one combined key (every dimension of every ledger table:
    the events of a batch mostly share them) and spread over the four ledger tables in `tables()`: a fifth of
    the dictionary work per event of folding into each table."""

    runs: dict[Key, list[Any]] = field(default_factory=dict)  # (ws, run_id)
    paths: dict[Key, list[Any]] = field(default_factory=dict)  # (ws, session_id, path)
    hourly: dict[Key, list[Any]] = field(default_factory=dict)  # (ws, hour, *HOURLY_DIMS)
    daily: dict[Key, list[Any]] = field(default_factory=dict)  # (ws, day, *HOURLY_DIMS)
    sessions: dict[Key, list[Any]] = field(default_factory=dict)  # (ws, hour, session_id or NO_SESSION)
    properties: dict[Key, list[Any]] = field(default_factory=dict)  # (ws, name, hour, value)
    # (ws, hour, *HOURLY_DIMS, session_id, session_path, ((name, value), ...) of the indexed properties)
    _ledger_rows: dict[Key, list[Any]] = field(default_factory=dict)

    def step(self, row: Mapping[str, Any], run: RunDims, indexed: frozenset[str], sign: int = 1) -> None:
        """A step row inserted (sign 1). Steps are never replaced: a step id is written once."""
        common = _step_common(row, sign)
        model_call = row["kind"] == "model_call"
        _add(
            self.runs,
            (row["workspace_id"], row["run_id"]),
            [
                sign,
                sign if model_call else 0,
                sign if row["attempt"] > 1 else 0,
                (row["latency_ms"] or 0.0) * sign if model_call else 0.0,
                *common,
            ],
        )
        if row["request_id"] is None:
            self._ledger(row, run, indexed, [sign, 0, *common])

    def request(self, row: Mapping[str, Any], run: RunDims, indexed: frozenset[str], sign: int = 1) -> None:
        """A request row inserted (sign 1), or replaced by a retry (its old row with sign -1, the new with 1)."""
        self._ledger(row, run, indexed, _request_measures(row, sign))

    def move(
        self, row: Mapping[str, Any], is_request: bool, old: RunDims, new: RunDims, indexed: frozenset[str]
    ) -> None:
        """A ledger row booked under its run's dimensions `old` belongs to `new` (its run was created after it)."""
        m = _request_measures(row, 1) if is_request else [1, 0, *_step_common(row, 1)]
        self._ledger(row, old, indexed, [-v for v in m])
        self._ledger(row, new, indexed, m)

    def _ledger(self, row: Mapping[str, Any], run: RunDims, indexed: frozenset[str], m: list[Any]) -> None:
        # An event without an indexed property counts under None, as group_by=property.<name> shows it unindexed.
        props = row["properties"] or {}
        key = (
            row["workspace_id"],
            hour_of(row["started_at"]),
            row["department_id"],  # HOURLY_DIMS, in order, spelled out: this runs for every event written
            row["agent_id"],
            row["virtual_key_id"],
            *run,
            row["model"],
            row["provider"],
            row["prompt_id"],
            row["session_id"],
            row["session_path"],
            tuple((name, props.get(name)) for name in sorted(indexed)) if indexed else (),
        )
        _add(self._ledger_rows, key, m)

    def tables(self) -> dict[str, dict[Key, list[Any]]]:
        """Each kept table's deltas, without those that cancelled out (a replay that changed nothing)."""
        for key, m in self._ledger_rows.items():
            ws, hour, *dims, session, path, props = key
            _add(self.hourly, (ws, hour, *dims), m)
            _add(self.daily, (ws, hour.replace(hour=0), *dims), m)
            _add(self.sessions, (ws, hour, session or NO_SESSION), m)
            if session is not None:
                _add(self.paths, (ws, session, path), m)
            for name, value in props:
                _add(self.properties, (ws, name, hour, value), m)
        self._ledger_rows = {}
        out = {}
        for name in ("runs", "paths", "hourly", "daily", "sessions", "properties"):
            deltas = {k: v for k, v in getattr(self, name).items() if any(v)}
            if deltas:
                out[name] = deltas
        return out


def _request_measures(row: Mapping[str, Any], sign: int) -> list[Any]:
    """A request's LEDGER_MEASURES: a model call, so no payment and no tool spend."""
    cost = row["cost_nanos"] * sign
    return [
        sign,
        sign,
        sign if row["status"] == "error" else 0,
        cost,
        *(_TOKENS(row) if sign == 1 else [row[f] * sign for f in TOKEN_FIELDS]),
        *_NO_PAYMENT,
        0,
        cost if row["cost_source"] in _ESTIMATED else 0,
    ]


def _step_common(row: Mapping[str, Any], sign: int) -> tuple[Any, ...]:
    """What a step adds to the measures its run totals and its ledger rows share (RUN_MEASURES[4:])."""
    kind = row["kind"]
    if kind == "model_attempt":
        # An attempt's cost and tokens are its model_call's already (gateway/records.py): counted there, once.
        cost, tokens = 0, _NO_TOKENS
    elif sign == 1:  # every step but a moved one's negation: no multiplications
        cost, tokens = row["cost_nanos"], _TOKENS(row)
    else:
        cost, tokens = row["cost_nanos"] * sign, tuple(row[f] * sign for f in TOKEN_FIELDS)
    if kind != "payment":
        paid = _NO_PAYMENT
    else:
        paid = _PAID(row) if sign == 1 else tuple(row[c] * sign for c in PAYMENT_COLUMNS)
    return (
        sign if row["status"] == "error" else 0,
        cost,
        *tokens,
        *paid,
        0 if kind in _NOT_TOOL else cost,
        cost if row["cost_source"] in _ESTIMATED else 0,
    )


def _add(table: dict[Key, list[Any]], key: Key, m: list[Any]) -> None:
    # Never in place: one delta list may be held by several tables (Books.tables spreads a ledger row's).
    held = table.get(key)
    table[key] = m if held is None else list(map(operator.add, held, m))
