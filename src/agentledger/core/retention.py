"""Retention (pure): a workspace's settings, which rows have expired, and what `rollups verify` may still compare
once rows are gone (docs/retention.md).

Cutoffs fall on UTC midnight: a row is expired once it started before midnight `days` days ago, so it is kept
between `days` and `days + 1` days. A day boundary is also an hour boundary, so every hourly and daily rollup bucket
lies wholly before a cutoff or wholly after it: the kept books of a bucket after it can still be checked against
the rows, exactly.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agentledger.core.errors import InvalidRequest

MAX_DAYS = 36_500  # a hundred years: past it "forever" (null) says what is meant
FIELDS = ("bodies_days", "traces_days", "audit_days")


@dataclass(frozen=True, slots=True)
class Retention:
    """Days each kind of data is kept; None keeps it forever (the default)."""

    bodies_days: int | None = None  # stored responses, step inputs and outputs, run outputs
    traces_days: int | None = None  # requests, steps, runs and sessions rows
    audit_days: int | None = None  # audit events: never fewer days than traces_days

    def view(self) -> dict[str, int | None]:
        return {"bodies_days": self.bodies_days, "traces_days": self.traces_days, "audit_days": self.audit_days}

    @property
    def keeps_everything(self) -> bool:
        return self.bodies_days is None and self.traces_days is None and self.audit_days is None


def _days(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise InvalidRequest(f"'{name}' must be null (keep forever) or whole days from 1 to {MAX_DAYS}.", param=name)
    return value


def parse_retention(data: Mapping[str, Any]) -> Retention:
    """PUT /api/retention's body: the whole setting (a field left out is null: kept forever)."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"Unknown field {unknown[0]!r}; expected {', '.join(FIELDS)}.", param=unknown[0])
    found = Retention(*(_days(data, name) for name in FIELDS))
    audit, traces = found.audit_days, found.traces_days
    # Audit events describe the traces (a run's decisions): they must outlive them, never the other way round.
    if audit is not None and traces is None:
        raise InvalidRequest(
            f"'audit_days' ({audit}) is shorter than 'traces_days' (null: kept forever); audit events are kept at "
            "least as long as the traces they describe: set audit_days to null or traces_days to at most "
            f"{audit}.",
            param="audit_days",
        )
    if audit is not None and traces is not None and audit < traces:
        raise InvalidRequest(
            f"'audit_days' ({audit}) is shorter than 'traces_days' ({traces}); audit events are kept at least as "
            "long as the traces they describe.",
            param="audit_days",
        )
    return found


def cutoff(now: datetime, days: int | None) -> datetime | None:
    """Rows that started before this have expired; None: nothing expires."""
    if days is None:
        return None
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=days)


@dataclass(frozen=True, slots=True)
class Plan:
    """One sweep of one workspace.

    `traces_before`: requests, steps, runs and sessions that started before it are deleted (a row whose run or
    session started after it stays with them). `bodies_from`/`bodies_before`: the bodies of the rows that started
    in [from, before) are nulled (from None: since the first row); None before: no body work. `audit_before`:
    audit events before it are pruned."""

    traces_before: datetime | None
    bodies_from: datetime | None
    bodies_before: datetime | None
    audit_before: datetime | None


def plan(settings: Retention, bodies_horizon: datetime | None, now: datetime) -> Plan:
    """`bodies_horizon`: every body of a row that started before it was nulled by an earlier sweep."""
    bodies = cutoff(now, settings.bodies_days)
    if bodies is not None and bodies_horizon is not None and bodies <= bodies_horizon:
        bodies = None  # nothing new to null: the window only moves forward
    return Plan(cutoff(now, settings.traces_days), bodies_horizon, bodies, cutoff(now, settings.audit_days))


# -- rollups verify after pruning --------------------------------------------------------------------------------
# Where each kept table's key holds its time bucket (core.books keys: store.books.KEPT's key columns).
_BUCKET_AT = {"hourly": 1, "daily": 1, "sessions": 1, "properties": 2}


def comparable(table: str, key: tuple[Any, ...], horizon: datetime | None, young: Container[str]) -> bool:
    """Whether `rollups verify` can still check this kept row against the raw rows, given the workspace's trace
    horizon (rows that started before it may have been deleted; None: nothing ever was).

    Rollup buckets are compared from the horizon on. Run totals, run marks and session paths have no time in their
    key: they are compared for the runs (sessions) that started at or after the horizon (`young`), since retention
    deletes no row of such a run or session; an older one may have lost rows to retention while its totals (marks)
    kept them."""
    if horizon is None:
        return True
    at = _BUCKET_AT.get(table)
    if at is not None:
        bucket = key[at]
        if bucket.tzinfo is None:  # SQLite returns naive UTC where no type says otherwise
            bucket = bucket.replace(tzinfo=UTC)
        return bool(bucket >= horizon)
    subject = key[1]  # runs: (workspace, run); marks: (workspace, run, mark); paths: (workspace, session, path)
    return subject in young
