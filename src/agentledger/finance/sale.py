"""A paid call past its claim (finance/selling.py) and the records it leaves: the run's attribution, its payment and
workflow steps, and the headers the workflow gets (docs/paid-endpoints.md, "Headers the workflow gets")."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from x402.schemas import PaymentPayload, PaymentRequirements

from agentledger.core.finance import payment_cost
from agentledger.core.headers import (
    AGENT_ID,
    REQUEST_ID,
    RUN_ID,
    SESSION_ID,
    SESSION_NAME,
    SESSION_PATH,
    TrackingContext,
)
from agentledger.core.ids import new_id
from agentledger.core.model import Attribution, Payment, StepKind, StepRecord, StepStatus
from agentledger.core.pricing import CostSource
from agentledger.core.proofs import PaymentProof
from agentledger.finance.endpoints import LoadedEndpoint

# The scoped virtual key of the endpoint's workflow agent, sent with each call (docs/paid-endpoints.md).
VIRTUAL_KEY_HEADER = "alephant-virtual-key"
PAYER_HEADER = "alephant-payer"
ENDPOINT_HEADER = "alephant-endpoint"


@dataclass(frozen=True, slots=True)
class Sale:
    """A call that passed every check and holds its proof: what the rest of the flow needs."""

    endpoint: LoadedEndpoint
    body: bytes
    params: dict[str, str]
    tracking: TrackingContext
    request_id: str
    payload: PaymentPayload
    requirements: PaymentRequirements
    proof: PaymentProof
    payer: str
    run_id: str
    payment_id: str  # the step of the settled (or failed) payment; the proof's row names it
    claim: dict[str, Any] | None = None  # the proof's claimed row, when the trace journal acknowledges (ProofState)


def attribution_of(sale: Sale) -> Attribution:
    t = sale.tracking
    e = sale.endpoint
    return Attribution(
        workspace_id=e.workspace_id,
        department_id=e.department_id,
        virtual_key_id=e.virtual_key_id,
        agent_id=e.spec.agent_id,
        run_id=sale.run_id,
        session_id=t.session_id,
        session_path=t.session_path,
        session_name=t.session_name,
    )


def payment_step(
    step_id: str,
    sale: Sale,
    attribution: Attribution,
    payment: Payment,
    at: datetime,
    *,
    error: str | None = None,
) -> StepRecord:
    cost = payment_cost(payment)  # what the store derives too (core/finance.py): a settled sale's fee
    return StepRecord(
        step_id=step_id,
        run_id=sale.run_id,
        attribution=attribution,
        kind=StepKind.PAYMENT,
        name=f"x402 payment {payment.status.value}",
        status=StepStatus.ERROR if error else StepStatus.OK,
        started_at=at,
        ended_at=at,
        cost_nanos=cost,
        cost_source=CostSource.REPORTED if cost else None,
        error=error,
        attributes={"proof_id": sale.proof.id, "paid_endpoint": sale.endpoint.spec.slug},
        payment=payment,
    )


def workflow_step(
    sale: Sale,
    attribution: Attribution,
    began: datetime,
    t0: float,
    ended: datetime,
    http_status: int | None,
    failure: str | None,
) -> StepRecord:
    runtime = sale.endpoint.runtime
    return StepRecord(
        step_id=new_id("step"),
        run_id=sale.run_id,
        attribution=attribution,
        kind=StepKind.WORKFLOW_STEP,
        name=f"workflow {sale.endpoint.spec.slug}",
        status=StepStatus.ERROR if failure else StepStatus.OK,
        started_at=began,
        ended_at=ended,
        latency_ms=(time.perf_counter() - t0) * 1000,
        error=failure,
        # Never the runtime's URL: a step is read back through the API, and the URL may be a capability.
        attributes={
            "http_status": http_status,
            "runtime": runtime.type if runtime else None,
            "method": runtime.method if runtime else None,
        },
    )


def workflow_headers(sale: Sale) -> dict[str, str]:
    t = sale.tracking
    headers = {
        RUN_ID: sale.run_id,
        AGENT_ID: sale.endpoint.spec.agent_id,
        REQUEST_ID: sale.request_id,
        VIRTUAL_KEY_HEADER: sale.endpoint.virtual_key,
        PAYER_HEADER: sale.payer,
        ENDPOINT_HEADER: sale.endpoint.spec.slug,
    }
    for name, value in ((SESSION_ID, t.session_id), (SESSION_PATH, t.session_path), (SESSION_NAME, t.session_name)):
        if value is not None:
            headers[name] = value
    return headers


def query_of(data: dict[str, Any]) -> dict[str, str]:
    """A GET runtime's query: each member of the body, strings as they are, anything else as JSON."""
    return {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in data.items()}
