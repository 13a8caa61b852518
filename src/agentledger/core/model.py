"""Domain records. Frozen dataclasses: the gateway, ingest and store pass these, never ORM rows or dicts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from agentledger.core.frozen import frozen
from agentledger.core.pricing import CostSource
from agentledger.core.usage import Usage

if TYPE_CHECKING:
    from agentledger.core.budgets import PolicyReport


class StepKind(enum.StrEnum):
    MODEL_CALL = "model_call"
    # One try of a model call at one provider, a child of its model_call step when the call took more than one
    # (retries, fallbacks). Its cost and tokens are part of its parent's, so no total counts them again.
    MODEL_ATTEMPT = "model_attempt"
    TOOL_CALL = "tool_call"
    API_CALL = "api_call"
    WORKFLOW_STEP = "workflow_step"
    PAYMENT = "payment"
    POLICY_CHECK = "policy_check"
    AUDIT = "audit"


class StepStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"


class PaymentDirection(enum.StrEnum):
    INBOUND = "inbound"  # a buyer paid the workspace (a paid endpoint's sale): revenue
    OUTBOUND = "outbound"  # the agent paid someone (e.g. over x402): spend


class PaymentStatus(enum.StrEnum):
    VERIFIED = "verified"  # the proof checked out; no money has moved yet (not in the books)
    SETTLED = "settled"  # money moved: revenue (inbound) or spend (outbound)
    FAILED = "failed"  # never settled (refused, workflow failed, settlement failed): not in the books
    REFUNDED = "refunded"  # money moved back: a step of its own, taking `amount` back out of the books


class PaymentProtocol(enum.StrEnum):
    X402 = "x402"
    MANUAL = "manual"


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Role(enum.StrEnum):
    """What a member (or an admin token) may do: api/permissions.py maps each to its permissions
    (docs/security.md). Admin tokens are owner, admin or viewer; the others are members' roles."""

    OWNER = "owner"
    ADMIN = "admin"
    VIEWER = "viewer"
    BILLING_ADMIN = "billing_admin"
    APPROVER = "approver"
    DEPARTMENT_ADMIN = "department_admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a Virtual Key speaks for. Cached on the hot path; revocation invalidates the cache."""

    workspace_id: str
    department_id: str
    virtual_key_id: str
    agent_id: str | None
    allowed_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Who an /api request speaks for: an admin token (`member_id` None, no scopes: its role is its right) or a
    member's personal access token (`token_id` the PAT's id; `scopes` narrow the member's role;
    `department_id` set for a department admin; `expires_at` checked per request, since the principal is cached)."""

    workspace_id: str
    token_id: str
    role: Role
    member_id: str | None = None
    scopes: frozenset[str] | None = None
    department_id: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Fallback:
    """Where a call goes when its provider key fails (429, 5xx, timeout, refused): another key (by name),
    another model, or both. None keeps the failed attempt's own key or model."""

    key: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often one provider key is tried before its fallbacks, and how long to wait in between: `backoff_ms`
    doubled each time, or the provider's `Retry-After` when it says more, never past `max_backoff_ms`."""

    attempts: int = 1
    backoff_ms: int = 200
    max_backoff_ms: int = 10_000


NO_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    """One upstream credential: which models it serves and where. `api_key` is decrypted only in memory."""

    id: str
    workspace_id: str
    name: str
    provider: str  # price-catalog provider id: openai, openrouter, anthropic, mock, ...
    kind: str  # adapter: openai (any OpenAI-compatible base URL), azure, anthropic or mock
    base_url: str | None
    api_key: str | None
    models: tuple[str, ...]  # glob patterns
    priority: int = 0
    fallbacks: tuple[Fallback, ...] = ()
    retry: RetryPolicy = NO_RETRY
    # Per kind: azure `api_version` and `deployments` (model → deployment name); anthropic `anthropic_version`.
    options: dict[str, Any] = field(default_factory=dict)


@frozen
class Attribution:
    """Everything a recorded request or step is grouped by."""

    workspace_id: str
    department_id: str | None = None
    virtual_key_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    session_path: str | None = None
    session_name: str | None = None
    prompt_id: str | None = None
    prompt_version: str | None = None
    properties: dict[str, str] = field(default_factory=dict)


@frozen
class RequestRecord:
    """One LLM call through the gateway, keyed by (workspace, x-request-id)."""

    request_id: str
    attribution: Attribution
    endpoint: str
    provider: str
    model: str
    stream: bool
    status: StepStatus
    http_status: int
    started_at: datetime
    ended_at: datetime
    latency_ms: float
    request_hash: str
    attempt: int = 1
    ttft_ms: float | None = None
    requested_model: str | None = None  # as the client named it, when it differs from `model` (the final one)
    provider_key: str | None = None  # the name of the provider key that answered last
    route_attempts: int = 1  # tries across retries and fallbacks (each a model_attempt step when above 1)
    policy_decision: str | None = None  # allowed / blocked / throttled, when budgets or rate limits governed it
    # The policy check: who decided, each budget's figures after the call. A dict as stored, or the
    # core.budgets.PolicyReport the gateway keeps it as, which the writer turns into that dict.
    governance: Any = None
    usage: Usage | None = None
    cost_nanos: int = 0
    cost_source: CostSource | None = None
    error_code: str | None = None
    error_message: str | None = None
    response_body: bytes | None = None
    response_content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    """What a `payment` step moved (core/finance.py says how it reaches the books). `amount_nanos` is the USD
    value; `asset_amount` the amount in the asset's atomic units as paid (e.g. USDC: 6 decimals), as a decimal
    string since it may pass 2^63. `fee_nanos`: the platform and settlement fees the workspace paid on it."""

    direction: PaymentDirection
    status: PaymentStatus
    amount_nanos: int
    protocol: PaymentProtocol = PaymentProtocol.MANUAL
    fee_nanos: int = 0
    asset_amount: str | None = None
    network: str | None = None  # CAIP-2, e.g. eip155:84532
    asset: str | None = None  # the token contract's address
    counterparty: str | None = None  # the payer (inbound) or the payee (outbound): an address or a name
    reference: str | None = None  # the settlement's transaction reference
    endpoint_id: str | None = None  # the paid endpoint sold (inbound) or bought from, when known


@frozen
class StepRecord:
    step_id: str
    run_id: str
    attribution: Attribution
    kind: StepKind
    name: str
    status: StepStatus
    started_at: datetime
    ended_at: datetime | None = None
    latency_ms: float | None = None
    parent_id: str | None = None
    request_id: str | None = None
    model: str | None = None
    provider: str | None = None
    usage: Usage | None = None
    cost_nanos: int = 0
    cost_source: CostSource | None = None
    branch: str | None = None
    attempt: int = 1
    error: str | None = None
    input: Any = None
    output: Any = None
    # A dict as stored, or, for the gateway's policy_check step of a model call, the core.budgets.PolicyReport it
    # keeps the check as, which the store's writer turns into that dict (as a request row's `governance`): building
    # each budget's view on the answer's path, and pickling them for the journal, was most of what a run added to a
    # governed call.
    attributes: dict[str, Any] | PolicyReport = field(default_factory=dict)
    payment: Payment | None = None  # kind payment only


@dataclass(frozen=True, slots=True)
class ProofState:
    """An x402 proof leaving `claimed` for `settled` (with the settlement's reference) or `failed` (with why): written
    in the same transaction as its sale's last records (store/finance.py `proof_state_update`)."""

    workspace_id: str
    proof_id: str
    state: str  # store.finance SETTLED or FAILED
    at: datetime
    reference: str | None = None
    error: str | None = None
    # The claim's row (store.finance `claim_row`), when the trace journal acknowledges the sale: the claim was
    # committed without an fsync and the journal is durable before the store, so after a power loss the sale's
    # records bring the claim back (inserted if missing, then moved) instead of leaving its proof reusable.
    claim: dict[str, Any] | None = None


@frozen
class RunStart:
    """Create-on-first-sight: later sightings of the same run id never overwrite what the first one set."""

    run_id: str
    attribution: Attribution
    started_at: datetime
    workflow: str | None = None
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    endpoint_id: str | None = None  # the paid endpoint whose sale started the run (its books group by it)


@dataclass(frozen=True, slots=True)
class RunEnd:
    workspace_id: str
    run_id: str
    status: RunStatus
    ended_at: datetime
    error: str | None = None
    output: Any = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One movement of a budget's counter (append-only): `reserve` (+reserved), `settle` (−reserved, +spent),
    `release` (−reserved), `expire` (a reservation whose call vanished: −reserved, +the same spent), `spend`
    (+spent after the fact: a tool step's cost) and `adjust` (a correction). Written through the same durable
    path as the call it belongs to."""

    workspace_id: str
    entry_id: str
    budget_id: str
    counter_key: str
    kind: str
    reserved_delta: int
    spent_delta: int
    at: datetime
    reservation_id: str | None = None
    request_id: str | None = None
    step_id: str | None = None
    run_id: str | None = None
    note: str | None = None


_ENTRY_CODE = {"reserve": "r", "settle": "s", "release": "x"}  # in a ledger entry's id, after its reservation's


@frozen
class LedgerEntries:
    """One reservation's `reserve`, `settle` or `release` on each of its counters, as one event: an entry per
    counter, the same deltas on each, each its own ledger row exactly as the `LedgerEntry` of `entries()` would
    be. A model call under three budgets makes two of these on the hot path instead of six entries; the writer
    expands them."""

    workspace_id: str
    kind: str
    reserved_delta: int
    spent_delta: int
    at: datetime
    reservation_id: str | None
    counters: tuple[tuple[str, str], ...]  # (budget_id, counter_key) of each entry, in order
    entry_stem: str  # entry i's id is f"{entry_stem}{i:x}"
    request_id: str | None = None
    step_id: str | None = None
    run_id: str | None = None

    @classmethod
    def of_reservation(
        cls,
        workspace_id: str,
        kind: str,
        estimate: int,
        actual: int,
        at: datetime,
        reservation_id: str,
        counters: tuple[tuple[str, str], ...],
        request_id: str | None,
        run_id: str | None,
        step_id: str | None = None,
    ) -> LedgerEntries:
        """A reservation's `reserve` (+estimate), `settle` (−estimate, +actual) or `release` (−estimate) entries.
        A reservation is reserved once and closed once, so its entries' ids follow from its own (unique, random)
        id: no random draw per entry, and an entry written twice (a replay; a reserve both written early and
        carried by its call's record) names the same row."""
        reserved, spent = (estimate, 0) if kind == "reserve" else (-estimate, actual if kind == "settle" else 0)
        stem = f"led_{reservation_id.partition('_')[2]}{_ENTRY_CODE[kind]}"
        return cls(workspace_id, kind, reserved, spent, at, reservation_id, counters, stem, request_id, step_id, run_id)

    def entry_id(self, i: int) -> str:
        return f"{self.entry_stem}{i:x}"

    def entries(self) -> list[LedgerEntry]:
        return [
            LedgerEntry(
                workspace_id=self.workspace_id,
                entry_id=self.entry_id(i),
                budget_id=budget_id,
                counter_key=key,
                kind=self.kind,
                reserved_delta=self.reserved_delta,
                spent_delta=self.spent_delta,
                at=self.at,
                reservation_id=self.reservation_id,
                request_id=self.request_id,
                step_id=self.step_id,
                run_id=self.run_id,
            )
            for i, (budget_id, key) in enumerate(self.counters)
        ]


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget's threshold crossed in one window (kept once per window; delivered by alerting later)."""

    workspace_id: str
    budget_id: str
    window_key: str
    threshold: int
    spent_nanos: int
    limit_nanos: int
    at: datetime
    request_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """Something people should hear about, recorded once per (workspace, kind, dedupe_key): `dedupe_key` names
    the subject and its window (core/alerts.py builds it; a second raise in the window is a no-op). A newly
    recorded alert enqueues one delivery per subscribed webhook in the same transaction (docs/alerts.md)."""

    workspace_id: str
    kind: str  # core.alerts.AlertKind
    severity: str  # core.alerts.Severity
    dedupe_key: str
    message: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    budget_id: str | None = None
    run_id: str | None = None
    request_id: str | None = None
    agent_id: str | None = None
    department_id: str | None = None
    policy_id: str | None = None
    approval_id: str | None = None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a control-plane change: an admin token (`id` the token's id), the CLI on the host (`user@host`) or
    the system itself (`id` names the part, e.g. `budget` for a key a budget revoked). Members and personal access
    tokens slot in as more types; `role` is the actor's role when it acted (None where roles do not apply)."""

    type: str
    id: str
    role: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event as recorded, before the store chains it (audit/chain.py gives it its seq and hash). `before` and
    `after` are JSON values already cleared of secrets (audit/changes.py). Written through the trace pipeline, so it
    is durable by the same rules; `event_id` makes a replay append nothing twice."""

    workspace_id: str
    event_id: str
    at: datetime
    actor: Actor
    action: str
    target_type: str
    target_id: str
    before: Any = None
    after: Any = None
    client_ip: str | None = None
    request_id: str | None = None
    run_id: str | None = None
    step_id: str | None = None


TraceEvent = (
    RequestRecord
    | StepRecord
    | RunStart
    | RunEnd
    | LedgerEntry
    | LedgerEntries
    | BudgetAlert
    | Alert
    | AuditRecord
    | ProofState
)


def pickled_by_fields(cls: type[Any]) -> None:
    """Pickle as (class, field values), rebuilt through `__init__`. Dataclasses' own `__getstate__` walks
    `fields()` for every object pickled, which made pickling a call's records for the trace journal (on every
    answer's path in strict mode) about 1.7 times as slow."""
    get = attrgetter(*[f.name for f in fields(cls)])

    def __reduce__(self: Any) -> tuple[type[Any], tuple[Any, ...]]:
        return cls, get(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment]


for _cls in (
    Attribution,
    Usage,
    Payment,
    RequestRecord,
    StepRecord,
    RunStart,
    RunEnd,
    LedgerEntry,
    LedgerEntries,
    BudgetAlert,
    Alert,
    Actor,
    AuditRecord,
    ProofState,
):
    pickled_by_fields(_cls)
