"""The Store seam: everything agentledger persists goes through this protocol. No SQL here.

Implementations: `store.sql.SQLStore` (SQLite embedded default, PostgreSQL for several replicas).
Every method takes the workspace id it is scoped to; no query crosses workspaces.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from agentledger.core.model import AdminPrincipal, Principal, ProviderRoute, TraceEvent
from agentledger.core.pricing import Price

if TYPE_CHECKING:
    from agentledger.store.audit import AuditStore
    from agentledger.store.budgets import BudgetStore
    from agentledger.store.governance import GovernanceStore


class WriteResult(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # retryable: the store is down or busy; the batch was rolled back whole


@dataclass(frozen=True, slots=True)
class RunFilter:
    agent_id: str | None = None
    session_id: str | None = None
    workflow: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    offset: int = 0
    cursor: tuple[datetime, str] | None = None  # (started_at, id) of the last run of the previous page
    endpoint_id: str | None = None  # the paid endpoint whose sale started the run
    # Runs in which a call or check had this decision (core.marks), and in which a step or request carried each of
    # these (property name, value) pairs: every one of them.
    decision: str | None = None
    properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """The sessions list, most recently active first by (last_seen_at, id)."""

    limit: int = 50
    cursor: tuple[datetime, str] | None = None  # (last_seen_at, id) of the last session of the previous page


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """The gateway requests list, newest first by (started_at, id)."""

    model: str | None = None
    provider: str | None = None
    status: str | None = None  # ok / error
    decision: str | None = None  # the policy decision (allowed / blocked / throttled)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: tuple[datetime, str] | None = None  # (started_at, id) of the last request of the previous page


GROUP_COLUMNS = (
    "workspace",
    "department",
    "agent",
    "virtual_key",
    "member",
    "workflow",
    "session",
    "run",
    "model",
    "provider",
    "prompt",
)


@dataclass(frozen=True, slots=True)
class CostQuery:
    group_by: str  # one of GROUP_COLUMNS or "property.<name>"
    since: datetime | None = None
    until: datetime | None = None
    interval: str | None = None  # "hour" | "day" | None


# The finance summary's groupings (GET /api/finance/summary; store/finance_queries.py), besides property.<name>.
FINANCE_GROUPS = ("workspace", "department", "agent", "member", "workflow", "endpoint", "session", "run")


@dataclass(frozen=True, slots=True)
class FinanceQuery:
    group_by: str  # one of FINANCE_GROUPS or "property.<name>" (an indexed property)
    since: datetime | None = None
    until: datetime | None = None
    bucket: str | None = None  # "hour" | "day" | None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class FinanceSummary:
    """Rows of kept measures (money joined with its carries), the same over every row, and whether `limit` cut
    the rows short."""

    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    more: bool


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A completed request as kept for replays. `body` None: the request completed but its response was not kept
    (alephant-omit-response, or pruned by retention): a repeat of its x-request-id is refused, never forwarded."""

    request_hash: str
    http_status: int
    body: bytes | None
    content_type: str
    run_id: str | None
    cost_nanos: int


@dataclass(frozen=True, slots=True)
class RequestClaim:
    """What `Store.claim_request` found: the completed response, or whether this caller now holds the id."""

    stored: StoredResponse | None
    claimed: bool  # False with `stored` None: another holder's claim is live; ask again shortly


class Store(Protocol):
    """Persistence for governance objects and traces.

    `write_batch` is the only trace-write path and must be idempotent: writing the same events twice
    leaves the same rows (request and step ids are unique per workspace; a run is created on first
    sight and never overwritten by a later RunStart). It applies a batch in one transaction, so a
    failure leaves nothing half-written, and returns FAILURE rather than raising for a retryable fault.
    It raises only when the batch itself is unacceptable (a constraint violation, a value the backend cannot
    hold): nothing is written, and since the same batch would fail again, the caller must not retry it whole
    (`pipeline.queue` writes its events one by one and skips only the rejected ones).

    Every other method raises `core.errors.StoreUnavailable` when the database cannot be reached (down,
    refused, timed out, pool exhausted), so callers render a 503 rather than a 500.
    """

    budgets: BudgetStore  # the budget domain: budgets, rate limits, the ledger and alerts (store/budgets.py)
    governance: GovernanceStore  # policies and their versions, approvals, run controls (store/governance.py)
    audit: AuditStore  # the hash-chained audit log, its checkpoints and signing keys (store/audit.py)

    async def migrate(self) -> None: ...
    async def aclose(self) -> None: ...
    async def write_batch(self, events: Sequence[TraceEvent]) -> WriteResult: ...

    # governance
    async def create_workspace(self, workspace_id: str, name: str, now: datetime) -> None: ...
    async def list_workspaces(self, workspace_id: str) -> list[dict[str, Any]]: ...
    async def create_department(self, workspace_id: str, department_id: str, name: str, now: datetime) -> None: ...
    async def list_departments(self, workspace_id: str) -> list[dict[str, Any]]: ...
    async def create_agent(
        self, workspace_id: str, agent_id: str, department_id: str, name: str, kind: str, now: datetime
    ) -> None: ...
    async def list_agents(self, workspace_id: str) -> list[dict[str, Any]]: ...
    async def get_agent(self, workspace_id: str, agent_id: str) -> dict[str, Any] | None: ...
    async def create_virtual_key(self, row: dict[str, Any]) -> None: ...
    async def list_virtual_keys(self, workspace_id: str) -> list[dict[str, Any]]: ...
    async def revoke_virtual_key(self, workspace_id: str, key_id: str, now: datetime) -> str | None:
        """Marks the key revoked; returns its hash (for cache invalidation) or None if unknown."""
        ...

    async def principal_for_key(self, key_hash: str) -> Principal | None: ...
    async def create_provider_key(self, row: dict[str, Any]) -> None: ...
    async def list_provider_keys(self, workspace_id: str) -> list[dict[str, Any]]: ...
    async def revoke_provider_key(self, workspace_id: str, key_id: str, now: datetime) -> bool: ...
    async def provider_routes(self, workspace_id: str, decrypt: Any) -> list[ProviderRoute]: ...
    async def create_admin_token(self, row: dict[str, Any]) -> None: ...
    async def admin_for_token(self, token_hash: str) -> AdminPrincipal | None: ...
    async def add_price_override(self, row: dict[str, Any]) -> None: ...
    async def price_overrides(self, workspace_id: str) -> dict[str, list[Price]]: ...
    async def list_price_overrides(self, workspace_id: str) -> list[dict[str, Any]]: ...
    async def list_all_workspaces(self) -> list[dict[str, Any]]: ...
    async def list_admin_tokens(self, workspace_id: str) -> list[dict[str, Any]]:
        """The workspace's admin tokens without their hashes, oldest first."""
        ...

    async def revoke_admin_token(self, workspace_id: str, token_id: str, now: datetime) -> bool:
        """Marks the token revoked; False if it is unknown or already revoked."""
        ...

    # traces
    async def stored_response(self, workspace_id: str, request_id: str) -> StoredResponse | None: ...
    async def claim_request(self, workspace_id: str, request_id: str, holder: str, lease: float) -> RequestClaim:
        """One round trip that either finds the completed response of a client-supplied x-request-id or
        atomically claims the id for `holder` for `lease` seconds, so that of several gateway processes
        sharing the store only one forwards it.

        * a completed response exists: `RequestClaim(stored, claimed=False)`; replay it.
        * no live claim (none, or an expired one, e.g. of a crashed holder): the claim is taken,
          `RequestClaim(None, claimed=True)`; forward the call, then either let its completed record supersede
          the claim (nothing to do) or, if it failed, `release_claim` so a retry may forward again.
        * another holder's live claim: `RequestClaim(None, claimed=False)`; ask again after a short wait.

        A store that only one process writes (SQLite) may grant every claim: the caller's in-memory claim
        already serializes duplicates. Raises `StoreUnavailable` when the store cannot answer.
        """
        ...

    async def release_claim(self, workspace_id: str, request_id: str, holder: str) -> None:
        """Drop `holder`'s claim on the id (its call failed and may be retried). A no-op if it holds none."""
        ...

    async def list_runs(self, workspace_id: str, flt: RunFilter) -> list[dict[str, Any]]: ...
    async def get_run(self, workspace_id: str, run_id: str) -> dict[str, Any] | None: ...
    async def run_identity(self, workspace_id: str, run_id: str) -> dict[str, Any] | None:
        """department_id, agent_id, session_id and workflow of a stored run, or None."""
        ...

    async def run_steps(self, workspace_id: str, run_id: str) -> list[dict[str, Any]]: ...
    async def get_session(self, workspace_id: str, session_id: str) -> dict[str, Any] | None: ...
    async def get_request(self, workspace_id: str, request_id: str) -> dict[str, Any] | None: ...
    async def list_sessions(self, workspace_id: str, flt: SessionFilter) -> list[dict[str, Any]]:
        """A page of sessions, each with `run_count` and `paths` (its kept session_paths rows)."""
        ...

    async def list_requests(self, workspace_id: str, flt: RequestFilter) -> list[dict[str, Any]]: ...
    async def step_exists(self, workspace_id: str, step_ids: Sequence[str]) -> set[str]: ...
    async def costs(self, workspace_id: str, query: CostQuery) -> list[dict[str, Any]]:
        """Raises InvalidRequest when the grouping has no rollup and its window holds too many events to read."""
        ...

    async def finance_summary(self, workspace_id: str, query: FinanceQuery) -> FinanceSummary:
        """Raises InvalidRequest for a grouping it does not keep (an undeclared property) or a `run` window
        holding too many runs to read."""
        ...

    async def indexed_properties(self, workspace_id: str) -> list[str]: ...
    async def declare_property(self, workspace_id: str, name: str, now: datetime) -> bool: ...
    async def verify_books(self, workspace_id: str | None = None) -> list[Any]: ...
    async def rebuild_books(self, workspace_id: str | None = None) -> int: ...
