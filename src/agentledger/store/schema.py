"""Tables shared by SQLite and PostgreSQL. Money is BIGINT nano-dollars; every row carries workspace_id.

Alembic migrations in `store/migrations/versions` create exactly these; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

from agentledger.core.books import (
    FINANCE_MEASURES,
    LEDGER_MEASURES,
    MONEY_MEASURES,
    PAYMENT_COLUMNS,
    RUN_MEASURES,
    carry_of,
)

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that stores and returns aware UTC on both backends.

    SQLite keeps no offset: it would store 12:00+02:00 as 12:00, read back as 12:00 UTC. So values are
    converted to UTC on the way in (naive ones are taken as UTC, as on the way out), in parameters too.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return self.process_bind_param(value, dialect)


TS = UTCDateTime()
ID = String(128)

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("created_at", TS, nullable=False),
)

departments = Table(
    "departments",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("created_at", TS, nullable=False),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
    UniqueConstraint("workspace_id", "name"),
)

agents = Table(
    "agents",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("department_id", ID, nullable=False),
    Column("name", String(256), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("created_at", TS, nullable=False),
    ForeignKeyConstraint(["workspace_id", "department_id"], ["departments.workspace_id", "departments.id"]),
)

virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("department_id", ID, nullable=False),
    Column("agent_id", ID, nullable=True),
    Column("name", String(256), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("allowed_models", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS, nullable=True),
    # The member the key belongs to (members, below): their spend, and revoked with them (store/members.py).
    Column("owner_member_id", ID, nullable=True, index=True),
    ForeignKeyConstraint(["workspace_id", "department_id"], ["departments.workspace_id", "departments.id"]),
)

provider_keys = Table(
    "provider_keys",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("base_url", String(1024), nullable=True),
    Column("api_key_encrypted", Text, nullable=True),
    Column("models", JSON, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
    Column("fallbacks", JSON, nullable=True),  # [{"key": name, "model": id}, ...] (core.model.Fallback)
    Column("retry", JSON, nullable=True),  # {"attempts", "backoff_ms", "max_backoff_ms"} (core.model.RetryPolicy)
    Column("options", JSON, nullable=True),  # per kind: azure api_version / deployments, anthropic_version
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("role", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

price_overrides = Table(
    "price_overrides",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("model", String(256), nullable=False),
    # Rates are exact decimal strings in dollars per million tokens; NUMERIC differs too much across backends.
    Column("input_mtok", String(32), nullable=False),
    Column("output_mtok", String(32), nullable=False),
    Column("cached_input_mtok", String(32), nullable=True),
    Column("cache_write_mtok", String(32), nullable=True),
    Column("effective_from", TS, nullable=True),
    Column("created_at", TS, nullable=False),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

sessions = Table(
    "sessions",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=True),
    Column("first_seen_at", TS, nullable=False),
    Column("last_seen_at", TS, nullable=False),
    # The sessions list pages most recently active first by (last_seen_at, id) (GET /api/sessions); added by 0014.
    Index("ix_sessions_ws_seen", "workspace_id", "last_seen_at", "id"),
)

runs = Table(
    "runs",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("department_id", ID, nullable=True),
    Column("virtual_key_id", ID, nullable=True),
    Column("agent_id", ID, nullable=True),
    Column("session_id", ID, nullable=True),
    Column("workflow", String(256), nullable=True),
    Column("name", String(256), nullable=True),
    Column("status", String(16), nullable=False),
    Column("started_at", TS, nullable=False),
    Column("ended_at", TS, nullable=True),
    Column("error", Text, nullable=True),
    Column("output", JSON, nullable=True),
    Column("metadata", JSON, nullable=False),
    # The runs list pages newest first by (started_at, id), filtered by at most one of these: each index
    # serves its filter and the order, so a page reads its rows and stops (docs/architecture.md, "Books").
    Index("ix_runs_ws_started", "workspace_id", "started_at", "id"),
    Index("ix_runs_ws_session", "workspace_id", "session_id", "started_at", "id"),
    Index("ix_runs_ws_agent", "workspace_id", "agent_id", "started_at", "id"),
    Index("ix_runs_ws_workflow", "workspace_id", "workflow", "started_at", "id"),
    Index("ix_runs_ws_status", "workspace_id", "status", "started_at", "id"),
    # The paid endpoint whose sale started the run (x402): its books group by it (core.books.RUN_DIMS).
    Column("endpoint_id", ID, nullable=True),
    Index("ix_runs_ws_endpoint", "workspace_id", "endpoint_id", "started_at", "id"),
)

_attribution = (
    ("department_id", ID),
    ("virtual_key_id", ID),
    ("agent_id", ID),
    ("run_id", ID),
    ("session_id", ID),
    ("session_path", String(1024)),
    ("prompt_id", ID),
    ("prompt_version", ID),
)


def _attribution_columns() -> list[Column[object]]:
    return [Column(name, type_, nullable=True) for name, type_ in _attribution] + [
        Column("properties", JSON, nullable=False)
    ]


def _usage_columns() -> list[Column[object]]:
    return [
        Column("input_tokens", BigInteger, nullable=False, default=0),
        Column("cached_input_tokens", BigInteger, nullable=False, default=0),
        Column("cache_write_tokens", BigInteger, nullable=False, default=0),
        Column("output_tokens", BigInteger, nullable=False, default=0),
        Column("reasoning_tokens", BigInteger, nullable=False, default=0),
        Column("cost_nanos", BigInteger, nullable=False, default=0),
        Column("cost_source", String(16), nullable=True),
    ]


requests = Table(
    "requests",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    *_attribution_columns(),
    Column("session_name", String(256), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(256), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    *_usage_columns(),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("response_body", LargeBinary, nullable=True),
    Column("response_content_type", String(128), nullable=True),
    Column("started_at", TS, nullable=False),
    Column("ended_at", TS, nullable=False),
    Column("requested_model", String(256), nullable=True),  # as the client named it, when not `model`
    Column("provider_key", String(256), nullable=True),  # the provider key that answered last
    Column("route_attempts", Integer, nullable=False, server_default="1"),  # retries and fallbacks included
    Column("policy_decision", String(16), nullable=True),  # allowed / blocked / throttled, when governed
    Column("governance", JSON, nullable=True),  # the policy check: who decided, each budget's figures after
    # Time first: led by the workspace, PostgreSQL without statistics took it for point lookups by
    # (workspace_id, id) as readily as the primary key, and read a whole workspace to find one request.
    Index("ix_requests_started_ws", "started_at", "workspace_id"),
    Index("ix_requests_ws_run", "workspace_id", "run_id"),
)

steps = Table(
    "steps",
    metadata,
    # A surrogate sequence keeps insertion order when two steps share a timestamp.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("workspace_id", ID, nullable=False),
    Column("id", ID, nullable=False),
    Column("parent_id", ID, nullable=True),
    Column("request_id", ID, nullable=True),
    *_attribution_columns(),
    Column("kind", String(32), nullable=False),
    Column("name", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("model", String(256), nullable=True),
    Column("provider", String(64), nullable=True),
    *_usage_columns(),
    Column("branch", String(256), nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("input", JSON, nullable=True),
    Column("output", JSON, nullable=True),
    Column("attributes", JSON, nullable=False),
    Column("latency_ms", Float, nullable=True),
    Column("started_at", TS, nullable=False),
    Column("ended_at", TS, nullable=True),
    # A payment step's payment (core.finance.payment_values), and what it adds to the books as plain columns that
    # SQL sums (core.finance.payment_books; 0 on every other step).
    Column("payment", JSON, nullable=True),
    *[Column(n, BigInteger, nullable=False, default=0, server_default="0") for n in PAYMENT_COLUMNS],
    UniqueConstraint("workspace_id", "id", name="uq_steps_ws_id"),
    Index("ix_steps_ws_run", "workspace_id", "run_id", "started_at"),
    Index("ix_steps_ws_started", "workspace_id", "started_at"),
)

# -- budgets, rate limits and their ledger (core/budgets.py; docs/budgets.md) ----------------------------------
budgets = Table(
    "budgets",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=True),
    Column("scope", String(16), nullable=False),
    Column("scope_value", String(1024), nullable=True),  # an id, a workflow name or a property's value
    Column("property", String(64), nullable=True),
    Column("limit_nanos", BigInteger, nullable=False),
    Column("period", String(16), nullable=False),
    Column("anchor", TS, nullable=False),
    Column("action", String(16), nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("throttle_rpm", Integer, nullable=True),
    Column("created_at", TS, nullable=False),
    Column("deleted_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

rate_limits = Table(
    "rate_limits",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=True),
    Column("scope", String(16), nullable=False),
    Column("scope_value", String(1024), nullable=True),
    Column("property", String(64), nullable=True),
    Column("requests_per_minute", Integer, nullable=True),
    Column("tokens_per_minute", BigInteger, nullable=True),
    Column("concurrent", Integer, nullable=True),
    Column("created_at", TS, nullable=False),
    Column("deleted_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

# Append-only: every reserve, settle, release, expiry, spend and adjustment of a budget's counter. A counter is
# the sum of its entries (reserved = Σ reserved_delta, spent = Σ spent_delta), which is how counters are
# rebuilt on start.
budget_ledger = Table(
    "budget_ledger",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("budget_id", ID, nullable=False),
    Column("counter_key", String(1200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("reserved_delta", BigInteger, nullable=False),
    Column("spent_delta", BigInteger, nullable=False),
    Column("reservation_id", ID, nullable=True),
    Column("request_id", ID, nullable=True),
    Column("step_id", ID, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("note", String(256), nullable=True),
    Column("at", TS, nullable=False),
    Index("ix_budget_ledger_ws_at", "workspace_id", "at"),
    Index("ix_budget_ledger_budget", "workspace_id", "budget_id", "at"),
    Index("ix_budget_ledger_reservation", "workspace_id", "reservation_id"),
    Index("ix_budget_ledger_run", "workspace_id", "run_id"),
)

# A threshold crossed in a window, once (the primary key makes a second crossing a no-op).
budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("budget_id", ID, primary_key=True),
    Column("window_key", String(160), primary_key=True),  # the window start (epoch s), "total", or "run:<id>"
    Column("threshold", Integer, primary_key=True),
    Column("spent_nanos", BigInteger, nullable=False),
    Column("limit_nanos", BigInteger, nullable=False),
    Column("request_id", ID, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("at", TS, nullable=False),
    Index("ix_budget_alerts_ws_at", "workspace_id", "at"),
)

# Policies (core/policy.py): the current version of each, and every version ever written (append-only), so a
# decision recorded as "policy p, version 3" can always be read back as it was.
policies = Table(
    "policies",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=True),
    Column("scope", String(16), nullable=False),
    Column("scope_value", String(1024), nullable=True),
    Column("mode", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", JSON, nullable=False),  # settings and rules, as core.policy_config.policy_json writes them
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("deleted_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("policy_id", ID, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("change", String(16), nullable=False),  # create, update, delete
    Column("name", String(256), nullable=True),
    Column("scope", String(16), nullable=False),
    Column("scope_value", String(1024), nullable=True),
    Column("mode", String(16), nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("created_by", String(256), nullable=True),
)

# One row per call and policy that the policy decided, changed or alerted on, or that a monitor-mode policy would
# have decided otherwise (core/policy_hits.py; GET /api/policies/{id}/hits). Written by the trace writer from the
# rows a batch inserted, so a replay adds none; `at`, `run_id` and `session_id` are the row's, so retention prunes a
# hit with the step or request it was read from (store/retention.py).
policy_hits = Table(
    "policy_hits",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("at", TS, nullable=False),  # the call's start
    Column("policy_id", ID, nullable=False),
    Column("policy_version", Integer, nullable=True),
    Column("rule_id", String(128), nullable=True),
    Column("mode", String(16), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("request_id", ID, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("step_id", ID, nullable=True),
    Column("session_id", ID, nullable=True),
    Column("department_id", ID, nullable=True),
    Column("virtual_key_id", ID, nullable=True),
    Column("agent_id", ID, nullable=True),
    # A policy's hits of one mode, newest first, and their count over a window: one range of this index each (a
    # page of both modes merges the newest of each range). Retention walks the workspace's hits by time.
    Index("ix_policy_hits_policy", "workspace_id", "policy_id", "mode", "at", "id"),
    Index("ix_policy_hits_ws_at", "workspace_id", "at", "id"),
)

# An escalated call waiting for (or decided by) a human. `binding` ties it to the request that asked: its
# workspace, key, run and body (gateway/approvals.py), so a resend of the same call finds it.
approvals = Table(
    "approvals",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("status", String(16), nullable=False),  # pending, approved, denied, expired
    Column("binding", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("request_id", ID, nullable=True),
    Column("virtual_key_id", ID, nullable=True),
    Column("agent_id", ID, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("summary", JSON, nullable=False),  # what was asked: model, name, amount, tokens
    Column("policy_id", ID, nullable=True),
    Column("policy_version", Integer, nullable=True),
    Column("rule_id", String(128), nullable=True),
    Column("reason", String(1024), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("decided_at", TS, nullable=True),
    Column("decided_by", String(256), nullable=True),
    Column("comment", String(2048), nullable=True),
    Column("used_at", TS, nullable=True),
    Index("ix_approvals_ws_status", "workspace_id", "status", "created_at"),
    Index("ix_approvals_binding", "workspace_id", "binding", "created_at"),
)

# A run stopped or paused from outside (POST /api/runs/{id}/cancel|pause|resume); no row: the run is free.
run_controls = Table(
    "run_controls",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("run_id", ID, primary_key=True),
    Column("state", String(16), nullable=False),  # cancelled, paused, running (resumed)
    Column("reason", String(1024), nullable=True),
    Column("by", String(256), nullable=True),
    Column("at", TS, nullable=False),
)

# Cross-process x-request-id claims (PostgreSQL; see store.base.Store.claim_request). A row lives from the
# first forward of a client-supplied id until its lease ends; the completed request row supersedes it, and
# expired rows are purged. On PostgreSQL the migration creates it UNLOGGED (no WAL, no fsync per claim).
idempotency_claims = Table(
    "idempotency_claims",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("request_id", ID, primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires_at", TS, nullable=False),
    Index("ix_idempotency_claims_expires", "expires_at"),
)

# A paid fetch's answer under a client's x-request-id, replayed to a retry of it (store/fetch_replays.py): not a
# `requests` row, which is a model call's and feeds the books as one. Retention nulls `body` with the other bodies
# and deletes the row with the other traces, by `started_at`.
fetch_replays = Table(
    "fetch_replays",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("body", LargeBinary, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("started_at", TS, nullable=False),
    Index("ix_fetch_replays_ws_started", "workspace_id", "started_at", "id"),
)


# -- the books: totals and rollups kept at write time (core.books; docs/architecture.md, "Books") ------------
# Each row is the sum of the raw rows it covers, changed by deltas in the transaction that writes them. Every
# money measure is `x_carry`·10^15 + `x_nanos` (core.books.split_money): one BIGINT could not hold the sum of
# 9,224 events at the per-event bound.

# Added by migration 0008 to tables that already held rows: a server default fills them (then 0008 rebuilds).
_ADDED_0008 = frozenset({*FINANCE_MEASURES, *(carry_of(m) for m in FINANCE_MEASURES)})


def _measures(names: tuple[str, ...], added: frozenset[str] = _ADDED_0008) -> list[Column[object]]:
    def column(n: str) -> Column[object]:
        type_ = Float if n == "model_latency_ms" else BigInteger
        return Column(n, type_, nullable=False, default=0, server_default="0" if n in added else None)

    return [column(n) for n in (*names, *(carry_of(m) for m in MONEY_MEASURES if m in names))]


_LEDGER = LEDGER_MEASURES
# The ledger tables had no `errors` before 0008 (run_totals had).
_LEDGER_ADDED = _ADDED_0008 | {"errors"}

run_totals = Table(
    "run_totals",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("run_id", ID, primary_key=True),
    *_measures(RUN_MEASURES),
)

# A session's events by `alephant-session-path` (NULL: without a path). `path_key` is core.books.dims_key of
# the path: a 1024-character path would not fit a PostgreSQL index entry.
session_paths = Table(
    "session_paths",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("session_id", ID, primary_key=True),
    Column("path_key", String(32), primary_key=True),
    Column("path", String(1024), nullable=True),
    *_measures(_LEDGER, _LEDGER_ADDED),
)


def _rollup_by(name: str, bucket: str) -> Table:
    """The ledger summed per time bucket and per combination of the analytics dimensions (core.books.HOURLY_DIMS)."""
    return Table(
        name,
        metadata,
        Column("workspace_id", ID, primary_key=True),
        Column(bucket, TS, primary_key=True),
        Column("dims_key", String(32), primary_key=True),
        Column("department_id", ID, nullable=True),
        Column("agent_id", ID, nullable=True),
        Column("virtual_key_id", ID, nullable=True),
        Column("workflow", String(256), nullable=True),
        Column("model", String(256), nullable=True),
        Column("provider", String(64), nullable=True),
        Column("prompt_id", ID, nullable=True),
        *_measures(_LEDGER, _LEDGER_ADDED),
        Column("endpoint_id", ID, nullable=True),  # core.books.HOURLY_DIMS; added by 0008
    )


rollup_hourly = _rollup_by("rollup_hourly", "hour")
# The same rows summed per UTC day: a month's chart reads 30 rows a key instead of 720 (core.books.Books.tables).
rollup_daily = _rollup_by("rollup_daily", "day")

rollup_sessions = Table(
    "rollup_sessions",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("hour", TS, primary_key=True),
    Column("session_id", ID, primary_key=True),
    *_measures(_LEDGER, _LEDGER_ADDED),
)

rollup_properties = Table(
    "rollup_properties",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("hour", TS, primary_key=True),
    Column("value_key", String(32), primary_key=True),
    Column("value", String(1024), nullable=True),  # NULL: the events without the property
    *_measures(_LEDGER, _LEDGER_ADDED),
)

# The runs list's decision and property filters (core/marks.py; added by 0015): a run's row per mark one of its
# steps or requests gives it, `mark` the hash of what it stands for. Keyed by run first, so the writer's insert (a
# conflict: nothing new), the fix of its time when the run comes after its steps, and retention's delete of a
# run's marks are each a probe of the primary key; the index serves a filtered page, in the runs list's order:
# `started_at` is the run's, so the page pages by the same (started_at, id) cursor and stops at its limit.
run_marks = Table(
    "run_marks",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("run_id", ID, primary_key=True),
    Column("mark", String(32), primary_key=True),
    Column("started_at", TS, nullable=False),
    Index("ix_run_marks_ws_mark", "workspace_id", "mark", "started_at", "run_id"),
)

# Properties a workspace groups costs by often enough to keep rollups for (`group_by=property.<name>`).
indexed_properties = Table(
    "indexed_properties",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("created_at", TS, nullable=False),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)


# -- alerts and their webhooks (core/alerts.py, webhooks/; docs/alerts.md) --------------------------------------
# Every alert, of every kind, once per subject and window: the primary key makes a second raise a no-op, and only
# a newly inserted alert enqueues deliveries. `id` is derived from the key (core.alerts.alert_id), so a replayed
# event finds its row by id too.
alerts = Table(
    "alerts",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("dedupe_key", String(512), primary_key=True),  # subject and window, e.g. "budget:b1:1700000000:80"
    Column("id", ID, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("budget_id", ID, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("request_id", ID, nullable=True),
    Column("agent_id", ID, nullable=True),
    Column("department_id", ID, nullable=True),
    Column("policy_id", ID, nullable=True),
    Column("approval_id", ID, nullable=True),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", TS, nullable=False),
    UniqueConstraint("workspace_id", "id", name="uq_alerts_ws_id"),
    # The listing pages newest first by (at, id); a kind filter reads its own index.
    Index("ix_alerts_ws_at", "workspace_id", "at", "id"),
    Index("ix_alerts_ws_kind_at", "workspace_id", "kind", "at", "id"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("url", String(2048), nullable=False),
    Column("kinds", JSON, nullable=True),  # alert kinds subscribed; NULL: every kind
    Column("description", String(1024), nullable=True),
    Column("secret_encrypted", Text, nullable=False),  # Fernet, as provider keys (secrets_box.py)
    Column("created_at", TS, nullable=False),
    Column("deleted_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

# The outbox: one row per (alert or test event, webhook), inserted in the transaction that inserts the alert.
# The worker claims due rows (status pending, next_attempt_at passed, no live lease) and records each attempt.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("webhook_id", ID, nullable=False),
    Column("alert_id", ID, nullable=True),  # NULL for a test event
    Column("event", String(32), nullable=False),  # the alert's kind, or "test"
    Column("payload", JSON, nullable=False),  # the body, without delivery id (added when sent)
    Column("status", String(16), nullable=False),  # pending / delivered / failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", TS, nullable=True),
    Column("lease_until", TS, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_hook", "workspace_id", "webhook_id", "created_at", "id"),
)

# -- x402 payment proofs, each claimed once per workspace (store/finance.py; docs/paid-endpoints.md) -------------------
# One row per proof (core/proofs.py: sha256 of network, asset, payer and nonce), inserted by the one statement that
# claims it: whoever inserted it owns it, on every replica. Its state only moves forward from `claimed`: to
# `settled` (the money moved), `failed` (the proof was used and not settled: the workflow failed or settlement did;
# it stays consumed) or `released` (given back before anything ran, e.g. the endpoint's policy refused it: the
# only state a proof can be claimed again from).
x402_payments = Table(
    "x402_payments",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("network", String(64), nullable=False),  # CAIP-2
    Column("asset", String(64), nullable=False),
    Column("payer", String(64), nullable=False),
    Column("nonce", String(80), nullable=False),
    Column("amount", String(80), nullable=False),  # atomic units, a decimal string (it may pass 2^63)
    Column("amount_nanos", BigInteger, nullable=True),  # its USD value when claimed
    Column("state", String(16), nullable=False),  # claimed / settled / failed / released
    Column("endpoint_id", ID, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("payment_id", ID, nullable=True),  # the run's payment step
    Column("reference", String(256), nullable=True),  # the settlement's transaction reference
    Column("error", String(1024), nullable=True),
    Column("valid_before", TS, nullable=True),  # past it the proof can never be settled
    Column("claimed_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
    Index("ix_x402_payments_run", "workspace_id", "run_id"),
)

# -- payment signers: a workspace's keys for outbound x402 payments (store/payment_signers.py, docs/paid-endpoints.md)
# The private key is kept encrypted (secrets_box.py, as provider keys) and never answered. A revoked signer keeps its
# row and its name: its payments in the trace name it, and a name must always mean one key.
payment_signers = Table(
    "payment_signers",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("address", String(42), nullable=False),  # 0x + 40 hex, EIP-55 checksummed
    Column("networks", JSON, nullable=False),  # CAIP-2 networks it may pay on (core/assets.py KNOWN_ASSETS)
    Column("key_encrypted", Text, nullable=False),
    Column("max_payment_nanos", BigInteger, nullable=True),  # the most one payment may be; NULL: budgets only
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
    UniqueConstraint("workspace_id", "name", name="uq_payment_signers_ws_name"),
)

# -- paid endpoints over x402 and their workflow agents' runtimes (store/paid_endpoints.py; docs/paid-endpoints.md) ---
# How the gateway invokes a workflow agent: one runtime per agent. The auth header's value is Fernet-encrypted as
# provider keys are (secrets_box.py) and never shown back.
workflow_runtimes = Table(
    "workflow_runtimes",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("agent_id", ID, primary_key=True),
    Column("type", String(16), nullable=False),  # n8n / webhook
    Column("url", String(2048), nullable=False),
    Column("method", String(8), nullable=False),
    Column("auth_name", String(64), nullable=True),
    Column("auth_value_encrypted", Text, nullable=True),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    ForeignKeyConstraint(["workspace_id", "agent_id"], ["agents.workspace_id", "agents.id"]),
)

# A workflow agent sold per call (core/paid_endpoints.py). The slug is its public address, /x402/{workspace}/{slug},
# unique in the workspace for good: a disabled endpoint keeps it, so a buyer's URL never reaches another product.
# Its scoped virtual key (owned by the workflow agent) is kept encrypted, since it is sent to the workflow on each
# call, and revoked when the endpoint is disabled.
paid_endpoints = Table(
    "paid_endpoints",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("slug", String(64), nullable=False),
    Column("description", String(1024), nullable=True),
    Column("agent_id", ID, nullable=False),
    Column("price_nanos", BigInteger, nullable=False),
    Column("network", String(64), nullable=False),  # CAIP-2
    Column("asset", String(64), nullable=False),
    Column("pay_to", String(64), nullable=False),
    Column("fee_percent", String(16), nullable=False),  # an exact decimal string
    Column("fee_fixed_nanos", BigInteger, nullable=False),
    Column("input_schema", JSON, nullable=True),
    Column("timeout_s", Float, nullable=False),
    Column("max_timeout_s", Integer, nullable=False),
    Column("policy", JSON, nullable=False),  # max_price_nanos, requests_per_minute, concurrent, allowed_payers
    Column("virtual_key_id", ID, nullable=False),
    Column("virtual_key_encrypted", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("disabled_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id", "agent_id"], ["agents.workspace_id", "agents.id"]),
    UniqueConstraint("workspace_id", "slug", name="uq_paid_endpoints_ws_slug"),
)

# -- retention: per-workspace retention and what the retention job has done (store/retention.py; docs/retention.md) ---
# No row: everything is kept forever. The days are the admin's (PUT /api/retention); the horizons are the job's:
# `traces_horizon`: trace rows that started before it may have been deleted, so `rollups verify` compares the kept
# books after it only; `bodies_horizon`: every body of a row that started before it was nulled (the next sweep
# starts there).
retention = Table(
    "retention",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("bodies_days", Integer, nullable=True),
    Column("traces_days", Integer, nullable=True),
    Column("audit_days", Integer, nullable=True),
    Column("updated_at", TS, nullable=False),
    Column("updated_by", String(256), nullable=True),
    Column("traces_horizon", TS, nullable=True),
    Column("bodies_horizon", TS, nullable=True),
    Column("swept_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

# -- the audit log (store/audit.py; docs/audit.md) ---------------------------------------------------------------------
# One hash chain per workspace (audit/chain.py): an event's hash covers its content, its seq and the previous
# event's hash. Rows are only ever inserted, by the trace writer (one head lock per workspace and batch), and deleted
# only by retention's prune, up to a signed checkpoint. No foreign key to workspaces: failed authentications that
# name no workspace chain under "_installation", and a workspace's trail outlives nothing it refers to.
audit_events = Table(
    "audit_events",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", ID, nullable=False),
    Column("time", TS, nullable=False),
    Column("actor_type", String(32), nullable=False),
    Column("actor_id", String(256), nullable=False),
    Column("actor_role", String(32), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(256), nullable=False),
    Column("before", JSON(none_as_null=True), nullable=True),
    Column("after", JSON(none_as_null=True), nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("request_id", ID, nullable=True),
    Column("run_id", ID, nullable=True),
    Column("step_id", ID, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("workspace_id", "id", name="uq_audit_events_ws_id"),
    Index("ix_audit_events_action", "workspace_id", "action", "seq"),
    Index("ix_audit_events_actor", "workspace_id", "actor_id", "seq"),
    Index("ix_audit_events_target", "workspace_id", "target_type", "target_id", "seq"),
    Index("ix_audit_events_time", "workspace_id", "time"),
    Index("ix_audit_events_run", "workspace_id", "run_id"),
)

# The chain's head: the last event's seq and hash. Appending takes this row's lock first (an upsert), so writers on
# every replica append one after the other and the chain cannot fork.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated_at", TS, nullable=False),
)

# Ed25519 signatures over (workspace, seq, hash) of a chain's event (audit/checkpoints.py).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signed_at", String(32), nullable=False),  # as signed: UTC text, audit/chain.py time_text
    Column("signature", String(128), nullable=False),
)

# Each workspace's signing keys: the private key Fernet-encrypted (secrets_box.py, as provider keys), the public one
# in PEM for GET /api/audit/public-key. The newest signs; older ones stay to verify what they signed.
audit_keys = Table(
    "audit_keys",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("key_id", String(16), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("public_key", Text, nullable=False),
    Column("private_key_encrypted", Text, nullable=False),
    Column("created_at", TS, nullable=False),
)

# -- members and personal access tokens (store/members.py, docs/security.md) -----------------------------------------
members = Table(
    "members",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("email", String(320), nullable=False),
    Column("name", String(256), nullable=False),
    Column("department_id", ID, nullable=True),
    Column("role", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("revoked_at", TS, nullable=True),
    UniqueConstraint("workspace_id", "email", name="uq_members_email"),
    ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
)

# A PAT's secret is kept as its hash only, like admin tokens'; `expires_at` None never expires.
personal_access_tokens = Table(
    "personal_access_tokens",
    metadata,
    Column("workspace_id", ID, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("member_id", ID, nullable=False, index=True),
    Column("name", String(256), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("token_prefix", String(16), nullable=False),
    Column("created_by", String(256), nullable=True),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=True),
    Column("revoked_at", TS, nullable=True),
    ForeignKeyConstraint(["workspace_id", "member_id"], ["members.workspace_id", "members.id"]),
)
