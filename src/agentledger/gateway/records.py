"""A finished call → its trace events: the request row, its run's model_call step, and, when the call took more
than one attempt (retries, fallbacks), one model_attempt step per attempt under that model_call step.

The call's cost is the sum of its attempts' costs. It is booked once: on the request row (the ledger behind the
cost rollups counts requests) and on the model_call step (run totals count steps); model_attempt steps carry
their own cost for reading, and no total adds them (core/books.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import field
from datetime import datetime
from typing import Any

from agentledger.core.budgets import Decision, PolicyReport, Subject
from agentledger.core.errors import AgentLedgerError
from agentledger.core.frozen import frozen
from agentledger.core.headers import TrackingContext
from agentledger.core.model import (
    Attribution,
    Principal,
    RequestRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.pricing import Cost, CostSource, Price, bounded
from agentledger.core.routing import Hop
from agentledger.core.usage import Usage
from agentledger.formats.base import Format, Parsed
from agentledger.formats.registry import Bridge
from agentledger.gateway.budgets import Governed
from agentledger.gateway.policies import Review


@frozen
class Call:
    """A validated request, ready to forward: its hops in the order they are tried, each with its bridge."""

    request_id: str
    principal: Principal
    tracking: TrackingContext
    attribution: Attribution
    fmt: Format
    parsed: Parsed
    hops: tuple[Hop, ...]
    bridges: tuple[Bridge, ...]
    primary_body: bytes  # the first hop's body, built while validating (a translation may refuse it)
    request_hash: str
    started_at: datetime
    t0: float
    client_request_id: bool
    price_overrides: dict[str, list[Price]]
    subject: Subject  # what budgets, rate limits and policies may name of it
    review: Review | None = None  # the policies' verdict (gateway/policies.py), enforced after the claim
    governed: Governed = field(default_factory=Governed)  # filled by the budget gate after the claim

    @property
    def workspace_id(self) -> str:
        return self.principal.workspace_id

    @property
    def model(self) -> str:
        return self.parsed.model

    @property
    def stream(self) -> bool:
        return self.parsed.stream


@frozen
class Attempt:
    """One try at one provider key."""

    hop: Hop
    bridge: Bridge
    status: StepStatus
    http_status: int
    started_at: datetime
    ended_at: datetime
    latency_ms: float
    backoff_ms: float = 0.0
    usage: Usage | None = None
    cost: Cost | None = None
    error: AgentLedgerError | None = None


@frozen
class Outcome:
    status: StepStatus
    http_status: int
    attempts: tuple[Attempt, ...]
    ttft_ms: float | None = None
    error: AgentLedgerError | None = None
    body: bytes | None = None
    content_type: str | None = None

    @property
    def usage(self) -> Usage | None:
        found = [a.usage for a in self.attempts if a.usage is not None]
        if len(found) <= 1:
            return found[0] if found else None
        total = found[0]
        for more in found[1:]:
            total = total + more
        return total

    @property
    def cost(self) -> Cost | None:
        costs = [a.cost for a in self.attempts if a.cost is not None]
        if len(costs) <= 1:
            return costs[0] if costs else None
        clamped = any(c.source is CostSource.CLAMPED for c in costs)
        source = CostSource.ESTIMATED if any(c.source is CostSource.ESTIMATED for c in costs) else costs[-1].source
        return bounded(Cost(sum(c.nanos for c in costs), source), clamped)


def model_step_id(workspace_id: str, request_id: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{workspace_id}\0{request_id}\0{attempt}".encode()).hexdigest()[:24]
    return f"mc_{digest}"


def trace_events(
    call: Call,
    outcome: Outcome,
    attempt: int,
    ended_at: datetime,
    latency_ms: float,
    governance: PolicyReport | None = None,
) -> list[TraceEvent]:
    """`attempt` numbers this x-request-id's tries by the client (idempotent retries), not the provider attempts.
    `governance`: the policy check's report (gateway/budgets.py), when budgets or rate limits applied. A call
    they refused never reached a model: its request row and policy_check step are all there is."""
    a = call.attribution
    err = outcome.error
    cost = outcome.cost
    usage = outcome.usage
    cost_nanos = cost.nanos if cost else 0
    final = outcome.attempts[-1] if outcome.attempts else None
    hop = final.hop if final else call.hops[0]
    bridge = final.bridge if final else call.bridges[0]
    failed = outcome.status is StepStatus.ERROR
    tries = len(outcome.attempts)
    events: list[TraceEvent] = []
    if a.run_id is not None:
        events.append(RunStart(run_id=a.run_id, attribution=a, started_at=call.started_at))
    events.append(
        RequestRecord(
            request_id=call.request_id,
            attribution=a,
            endpoint=call.fmt.endpoint,
            provider=hop.route.provider,
            model=hop.model,
            stream=call.stream,
            status=outcome.status,
            http_status=outcome.http_status,
            started_at=call.started_at,
            ended_at=ended_at,
            latency_ms=latency_ms,
            request_hash=call.request_hash,
            attempt=attempt,
            ttft_ms=outcome.ttft_ms,
            usage=usage,
            cost_nanos=cost_nanos,
            cost_source=cost.source if cost else None,
            error_code=err.code if err else None,
            error_message=err.message if err else None,
            # Kept for replays, unless the client asked for it not to be (alephant-omit-response).
            response_body=None if failed or call.tracking.omit_response else outcome.body,
            response_content_type=outcome.content_type,
            requested_model=call.model if call.model != hop.model else None,
            provider_key=hop.route.name,
            route_attempts=max(tries, 1),
            policy_decision=governance.decision.value if governance else None,
            governance=governance,
        )
    )
    if a.run_id is None or (governance is not None and governance.decision is not Decision.ALLOWED):
        return events
    step_id = model_step_id(a.workspace_id, call.request_id, attempt)
    attributes: dict[str, Any] = {
        "stream": call.stream,
        "ttft_ms": outcome.ttft_ms,
        "http_status": outcome.http_status,
        "format": call.fmt.name,
        "provider_format": bridge.provider.name,
        "provider_key": hop.route.name,
    }
    if tries > 1:
        attributes["attempts"] = tries
        attributes["requested_model"] = call.model
    if governance is not None:
        attributes["policy_decision"] = governance.decision.value
        least = governance.tightest()
        if least is not None:
            attributes["budget_remaining_usd"] = least.remaining_usd
            attributes["budget_scope"] = least.budget.scope_label
    if usage is not None and (usage.cache_write_1h_tokens or usage.web_searches):
        attributes["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
        attributes["web_searches"] = usage.web_searches
    events.append(
        StepRecord(
            step_id=step_id,
            run_id=a.run_id,
            attribution=a,
            kind=StepKind.MODEL_CALL,
            name=call.model,
            status=outcome.status,
            started_at=call.started_at,
            ended_at=ended_at,
            latency_ms=latency_ms,
            request_id=call.request_id,
            model=hop.model,
            provider=hop.route.provider,
            usage=usage,
            cost_nanos=cost_nanos,
            cost_source=cost.source if cost else None,
            attempt=attempt,
            error=err.message if err else None,
            attributes=attributes,
        )
    )
    if tries > 1:
        events.extend(_attempt_steps(call, outcome.attempts, step_id))
    return events


def _attempt_steps(call: Call, attempts: tuple[Attempt, ...], parent_id: str) -> list[StepRecord]:
    a = call.attribution
    steps = []
    for number, tried in enumerate(attempts, 1):
        err = tried.error
        steps.append(
            StepRecord(
                step_id=f"{parent_id}.{number}",
                run_id=a.run_id or "",
                attribution=a,
                kind=StepKind.MODEL_ATTEMPT,
                name=f"{tried.hop.route.name}:{tried.hop.model}",
                status=tried.status,
                started_at=tried.started_at,
                ended_at=tried.ended_at,
                latency_ms=tried.latency_ms,
                parent_id=parent_id,
                request_id=call.request_id,
                model=tried.hop.model,
                provider=tried.hop.route.provider,
                usage=tried.usage,
                cost_nanos=tried.cost.nanos if tried.cost else 0,
                cost_source=tried.cost.source if tried.cost else None,
                attempt=number,
                error=err.message if err else None,
                attributes={
                    "requested_model": call.model,
                    "provider_key": tried.hop.route.name,
                    "fallback": tried.hop.fallback,
                    "provider_format": tried.bridge.provider.name,
                    "http_status": tried.http_status,
                    "error_class": err.code if err else None,
                    "backoff_ms": round(tried.backoff_ms, 3),
                },
            )
        )
    return steps


def rejection(
    request_id: str,
    base: Attribution,
    fmt: Format,
    exc: AgentLedgerError,
    model: str,
    started_at: datetime,
    ended_at: datetime,
    latency_ms: float,
    request_hash: str,
) -> RequestRecord:
    """A request refused after authentication is still on the books (zero cost), against its key."""
    return RequestRecord(
        request_id=request_id,
        attribution=base,
        endpoint=fmt.endpoint,
        provider="none",
        model=model,
        stream=False,
        status=StepStatus.ERROR,
        http_status=exc.status,
        started_at=started_at,
        ended_at=ended_at,
        latency_ms=latency_ms,
        request_hash=request_hash,
        error_code=exc.code,
        error_message=exc.message,
    )
