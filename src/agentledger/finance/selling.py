"""`POST /x402/{workspace}/{slug}`: a workflow agent sold per call over x402 version 2 (docs/paid-endpoints.md,
"The flow", which says why each step is where it is).

    body checks → no PAYMENT-SIGNATURE: 402 → rate limit → decode → match the requirements → validity window →
    verify (facilitator, off the loop) → payer allowed → claim the proof (single-use, every replica) →
    concurrency slot → run + verified payment step → invoke the workflow → settle → answer + records

Everything before the claim refuses with nothing executed, nothing charged and nothing recorded. From the claim
on, the call is a run of the workflow agent: its records (the run, a `payment` step verified, a `workflow_step`,
the payment settled or failed, the run's end) are durable before the answer, and the rest of the call finishes
even if the buyer hangs up, so the proof, the run and the books always agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from x402.mechanisms.evm.constants import ERR_NONCE_ALREADY_USED, ERR_VALID_BEFORE_EXPIRED
from x402.schemas import SettleResponse

from agentledger.core.errors import (
    AgentLedgerError,
    NotFound,
    RateLimited,
    RequestTooLarge,
    StoreUnavailable,
)
from agentledger.core.finance import fee_nanos
from agentledger.core.headers import is_id, parse_tracking
from agentledger.core.ids import new_id
from agentledger.core.model import (
    Attribution,
    Payment,
    PaymentDirection,
    PaymentProtocol,
    PaymentStatus,
    ProofState,
    RunEnd,
    RunStart,
    RunStatus,
    StepRecord,
    TraceEvent,
)
from agentledger.core.money import format_usd
from agentledger.core.paid_endpoints import SETTLE_RESERVE_S, lasts_long_enough, payer_allowed
from agentledger.finance import wire
from agentledger.finance.endpoints import EndpointCatalog, LoadedEndpoint
from agentledger.finance.errors import FacilitatorError, MalformedPayment
from agentledger.finance.facilitator import Facilitator
from agentledger.finance.inputs import input_error
from agentledger.finance.refusals import (
    NO_MATCHING_REQUIREMENTS,
    InvalidInput,
    InvalidPayment,
    PayerNotAllowed,
    PaymentAlreadyUsed,
    PaymentExpiresTooSoon,
    PaymentInvalid,
    PaymentMismatch,
    PaymentRequired,
    SettlementFailed,
)
from agentledger.finance.sale import Sale, attribution_of, payment_step, query_of, workflow_headers, workflow_step
from agentledger.finance.workflows import WorkflowBadResponse, WorkflowFailed, WorkflowInvoker
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.responses import RUN_ID_HEADER, JSONResponse
from agentledger.gateway.spend import SpendDesk
from agentledger.limits.base import Counters, Rate
from agentledger.pipeline.queue import TracePipeline
from agentledger.store.finance import FAILED, SETTLED, PaymentProofs, claim_row

log = logging.getLogger(__name__)
T = TypeVar("T")
PATH = "/x402/{workspace}/{slug}"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_SLOT_EXTRA_S = 60.0  # a concurrency slot outlives the workflow's timeout by the settlement's time, then frees itself


class Seller:
    def __init__(
        self,
        catalog: EndpointCatalog,
        proofs: PaymentProofs,
        facilitator: Facilitator,
        workflows: WorkflowInvoker,
        pipeline: TracePipeline,
        counters: Counters,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        desk: SpendDesk | None = None,
        ordered_start: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.catalog = catalog
        self.proofs = proofs
        self.facilitator = facilitator
        self.workflows = workflows
        self.pipeline = pipeline
        self.counters = counters
        self.max_body_bytes = max_body_bytes
        self.desk = desk  # charges a sale's fee to the budgets that apply, as the step API does
        self.ordered_start = ordered_start  # replicas: the run's start is durable before the workflow runs
        self.clock = clock
        self._finishing: set[asyncio.Task[Any]] = set()

    def routes(self) -> list[Route]:
        return [Route(PATH, self.handle, methods=["POST"])]

    async def aclose(self, wait_s: float = 30.0) -> None:
        """Let paid calls whose buyer left finish (settle or fail, and write their records), and the last proofs'
        states be recorded, before shutdown."""
        deadline = time.monotonic() + wait_s
        while self._finishing and time.monotonic() < deadline:  # a finishing call leaves its proof's task behind
            await asyncio.wait(set(self._finishing), timeout=deadline - time.monotonic())

    async def handle(self, request: Request) -> Response:
        try:
            endpoint = await self._endpoint(request)
            try:
                return await self._sell(request, endpoint)
            except PaymentRequired as exc:
                return _payment_required(request, endpoint, exc)
        except AgentLedgerError as exc:
            return error(exc)

    async def _endpoint(self, request: Request) -> LoadedEndpoint:
        workspace, slug = request.path_params["workspace"], request.path_params["slug"]
        found = await self.catalog.get(workspace, slug) if is_id(workspace) and is_id(slug) else None
        if found is None or found.runtime is None:
            raise NotFound(f"No paid endpoint {slug!r} in workspace {workspace!r}.", param="slug")
        return found

    # -- before the claim: refusals leave nothing executed, charged or recorded ---------------------------------
    async def _sell(self, request: Request, endpoint: LoadedEndpoint) -> Response:
        body = await self._body(request)
        data = parse_json_object(body)
        if endpoint.validator is not None:
            wrong = input_error(endpoint.validator, data)
            if wrong is not None:
                message, path = wrong
                raise InvalidInput(f"The body does not match the endpoint's input schema: {message}", param=path)
        tracking = parse_tracking(request.headers.raw)
        header = request.headers.get(wire.PAYMENT_SIGNATURE_HEADER)
        if not header:
            spec = endpoint.spec
            raise PaymentRequired(
                f"This endpoint costs ${format_usd(spec.price_nanos)} a call ({spec.asset_amount} atomic units of "
                f"{spec.asset.symbol} on {spec.asset.network}), paid with x402: the requirements are in the "
                f"{wire.PAYMENT_REQUIRED_HEADER} header; send the payment in {wire.PAYMENT_SIGNATURE_HEADER}."
            )
        await self._rate(endpoint)
        try:
            payload = wire.decode_payment_signature(header)
            proof = wire.proof_of(payload)
        except MalformedPayment as exc:
            raise InvalidPayment(exc.message, reason="invalid_payload") from None
        requirements = wire.matching_requirements([endpoint.requirements], payload)
        if requirements is None:
            raise PaymentMismatch(
                "The payment is not for this endpoint's requirements (scheme, network, asset, amount, recipient and "
                "maxTimeoutSeconds must be the offered ones).",
                reason=NO_MATCHING_REQUIREMENTS,
            )
        if not lasts_long_enough(proof.valid_before, time.time(), endpoint.spec.timeout_s):
            raise PaymentExpiresTooSoon(
                f"The payment's authorization must stay valid for the workflow's {endpoint.spec.timeout_s:g} s and "
                f"{SETTLE_RESERVE_S} s more to settle; sign one valid for maxTimeoutSeconds.",
                reason=ERR_VALID_BEFORE_EXPIRED,
            )
        verified = await self.facilitator.verify(payload, requirements)
        if not verified.is_valid:
            reason = verified.invalid_reason or "invalid_payment"
            if reason == ERR_NONCE_ALREADY_USED:
                raise PaymentAlreadyUsed("This payment was already used: sign a new one.", reason=reason)
            detail = f": {verified.invalid_message}" if verified.invalid_message else ""
            raise PaymentInvalid(f"The payment was refused ({reason}){detail}.", reason=reason)
        payer = verified.payer or proof.payer
        if not payer_allowed(endpoint.spec.policy, payer):
            raise PayerNotAllowed(f"This endpoint does not sell to {payer}.", param=wire.PAYMENT_SIGNATURE_HEADER)
        run_id, payment_id = new_id("run"), new_id("step")
        claim = claim_row(
            endpoint.workspace_id,
            proof,
            self.clock(),
            endpoint.spec.price_nanos,
            endpoint_id=endpoint.id,
            run_id=run_id,
            payment_id=payment_id,
        )
        if not await self.proofs.claim_prepared(claim):
            raise PaymentAlreadyUsed("This payment was already used: sign a new one.", reason=ERR_NONCE_ALREADY_USED)
        sale = Sale(
            endpoint=endpoint,
            body=body,
            params=query_of(data),
            tracking=tracking,
            request_id=str(request.scope.get("state", {}).get("request_id") or new_id("req")),
            payload=payload,
            requirements=requirements,
            proof=proof,
            payer=payer,
            run_id=run_id,
            payment_id=payment_id,
            claim=claim if self.pipeline.journal is not None else None,
        )
        await self._slot(sale)
        # From the claim on the call finishes whatever the buyer does: a hang-up must not leave a proof claimed, a
        # slot taken or a run open (the task is kept until done; its answer goes to whoever still waits).
        return await asyncio.shield(self._keep(self._complete(sale)))

    def _keep(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    async def _body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_large = RequestTooLarge(f"The request body is larger than the {limit} bytes this endpoint accepts.")
        if declared.strip().isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _rate(self, endpoint: LoadedEndpoint) -> None:
        """Before the CPU-heavy verification: a flood of proofs, good or bad, costs one counter hit each."""
        rpm = endpoint.spec.policy.requests_per_minute
        if rpm is None:
            return
        key = f"x402:rpm:{endpoint.workspace_id}:{endpoint.id}"
        wait = await self.counters.hit([Rate(key, rpm, 60.0)], time.time())
        if wait is not None:
            raise RateLimited(
                f"This paid endpoint takes at most {rpm} paid calls a minute; retry later (nothing was charged).",
                retry_after=math.ceil(wait),
            )

    def _slot_key(self, endpoint: LoadedEndpoint) -> str:
        return f"x402:slots:{endpoint.workspace_id}:{endpoint.id}"

    async def _slot(self, sale: Sale) -> None:
        """A concurrency slot, after the claim (a replay must not take one); refused, the proof is given back."""
        limit = sale.endpoint.spec.policy.concurrent
        if limit is None:
            return
        ttl = sale.endpoint.spec.timeout_s + SETTLE_RESERVE_S + _SLOT_EXTRA_S
        try:
            taken = await self.counters.acquire(self._slot_key(sale.endpoint), limit, sale.run_id, ttl)
        except StoreUnavailable:
            await self._release(sale, "the concurrency counters were unavailable")
            raise
        if not taken:
            await self._release(sale, "over the endpoint's concurrency limit")
            raise RateLimited(
                f"This paid endpoint runs at most {limit} calls at once; retry shortly (nothing was charged, and the "
                "same payment may be sent again).",
                retry_after=1,
            )

    async def _release(self, sale: Sale, why: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # unreleased, the proof stays claimed: spent, never charged
            await self.proofs.release(sale.endpoint.workspace_id, sale.proof.id, self.clock(), reason=why)

    # -- after the claim: a run of the workflow agent -----------------------------------------------------------
    async def _complete(self, sale: Sale) -> Response:
        endpoint = sale.endpoint
        try:
            started = self.clock()
            attribution = attribution_of(sale)
            spec = endpoint.spec
            payment = Payment(
                direction=PaymentDirection.INBOUND,
                status=PaymentStatus.VERIFIED,
                amount_nanos=spec.price_nanos,
                protocol=PaymentProtocol.X402,
                fee_nanos=fee_nanos(spec.price_nanos, spec.fee_percent, spec.fee_fixed_nanos),
                asset_amount=str(spec.asset_amount),
                network=spec.asset.network,
                asset=spec.asset.address,
                counterparty=sale.payer,
                endpoint_id=endpoint.id,
            )
            start: list[TraceEvent] = [
                RunStart(
                    run_id=sale.run_id,
                    attribution=attribution,
                    started_at=started,
                    name=f"x402 {spec.slug}",
                    metadata={"paid_endpoint": spec.slug, "payer": sale.payer, "proof_id": sale.proof.id},
                    endpoint_id=endpoint.id,
                ),
                payment_step(new_id("step"), sale, attribution, payment, started),
            ]
            # A run is created on first sight, so it must exist with its endpoint before the workflow's model calls
            # name it. In one process the pipeline's order sees to that: these records are queued before anything
            # the workflow's calls write, and go out with the first of their batches (or with the run's last
            # records, whose wait covers them), not in a write of their own. With replicas a call may reach
            # another process, so the start is made durable before the workflow runs.
            if self.ordered_start:
                await _durable(self.pipeline.commit(start))
            else:
                self.pipeline.defer(start)
            return await self._invoke(sale, attribution, payment)
        except Exception:
            # A defect, not a refusal: the proof is failed (never charged) and the run ended, then the 500.
            log.exception("paid call %s failed unexpectedly", sale.run_id)
            with contextlib.suppress(Exception):
                now = self.clock()
                await self.proofs.fail(endpoint.workspace_id, sale.proof.id, "internal error", now)
                await _durable(
                    self.pipeline.commit(
                        [RunEnd(endpoint.workspace_id, sale.run_id, RunStatus.FAILED, now, error="internal error")]
                    )
                )
            raise
        finally:
            if endpoint.spec.policy.concurrent is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self.counters.release_slot(self._slot_key(endpoint), sale.run_id)

    async def _invoke(self, sale: Sale, attribution: Attribution, payment: Payment) -> Response:
        endpoint, spec = sale.endpoint, sale.endpoint.spec
        assert endpoint.runtime is not None  # checked when the endpoint was found
        run_header = {RUN_ID_HEADER: sale.run_id}
        began, t0 = self.clock(), time.perf_counter()
        try:
            answer = await self.workflows.invoke(
                endpoint.runtime, sale.body, sale.params, workflow_headers(sale), spec.timeout_s
            )
        except AgentLedgerError as exc:
            status = exc.workflow_status if isinstance(exc, WorkflowFailed | WorkflowBadResponse) else None
            step = workflow_step(sale, attribution, began, t0, self.clock(), status, exc.message)
            why = f"not settled: the workflow failed: {exc.message}"
            await self._finish(sale, [step], replace(payment, status=PaymentStatus.FAILED), why)
            return error(exc, run_header)
        step = workflow_step(sale, attribution, began, t0, self.clock(), answer.status, None)
        try:
            settled = await self.facilitator.settle(sale.payload, sale.requirements)
        except Exception as exc:  # as x402's own server does: any failure to settle is a failed settlement
            code = exc.code if isinstance(exc, FacilitatorError) else "settlement_error"
            log.warning("paid call %s: settlement raised %s: %s", sale.run_id, type(exc).__name__, exc)
            settled = SettleResponse(
                success=False,
                error_reason=code,
                error_message=exc.message if isinstance(exc, FacilitatorError) else "The settlement failed.",
                transaction="",
                network=sale.requirements.network,
                payer=sale.payer,
            )
        if not settled.success:
            reason = settled.error_reason or "settlement_failed"
            why = f"settlement failed ({reason}): the workflow's work was done unpaid"
            await self._finish(sale, [step], replace(payment, status=PaymentStatus.FAILED), why)
            refused = SettlementFailed(
                f"The payment could not be settled ({reason}); nothing was charged, and the output is withheld. "
                "Pay again with a new authorization.",
                reason=reason,
            )
            return error(refused, {**wire.settlement_failed_answer(settled).headers, **run_header})
        done = replace(payment, status=PaymentStatus.SETTLED, reference=settled.transaction)
        await self._finish(sale, [step], done, None, reference=settled.transaction)
        headers = {"content-type": "application/json", **run_header, **wire.settlement_headers(settled)}
        return Response(answer.body, status_code=answer.status, headers=headers)

    async def _finish(
        self,
        sale: Sale,
        steps: list[StepRecord],
        payment: Payment,
        failure: str | None,
        *,
        reference: str | None = None,
    ) -> None:
        """The run's last records, durable, and the proof's state, together: settled, or failed for good."""
        ws, now = sale.endpoint.workspace_id, self.clock()
        attribution = steps[0].attribution
        final = payment_step(sale.payment_id, sale, attribution, payment, now, error=failure)
        status = RunStatus.FAILED if failure else RunStatus.SUCCEEDED
        end = RunEnd(ws, sale.run_id, status, now, error=failure)
        charged: list[TraceEvent] = []
        if final.cost_nanos and self.desk is not None:
            try:
                charged = await self.desk.charge_steps([final], None, {})
            except AgentLedgerError as exc:  # the sale stands; its fee is in the books, not in the budgets
                log.warning("paid call %s: its fee could not be charged to budgets: %s", sale.run_id, exc.message)
        # The proof's state goes with the records, in their transaction: one write, and never behind the books.
        if failure is None:
            proof = ProofState(ws, sale.proof.id, SETTLED, now, reference=reference, claim=sale.claim)
        else:
            proof = ProofState(ws, sale.proof.id, FAILED, now, error=failure, claim=sale.claim)
        await _durable(self.pipeline.commit([*steps, final, *charged, end, proof]))


def error(exc: AgentLedgerError, headers: dict[str, str] | None = None) -> Response:
    """This route's one error shape: `{"error": {"message", "type", "code", "param"[, "reason"]}}`."""
    out = dict(headers or {})
    if exc.retry_after is not None:
        out["retry-after"] = str(exc.retry_after)
    return JSONResponse(exc.body(), status_code=exc.status, headers=out)


def _payment_required(request: Request, endpoint: LoadedEndpoint, exc: PaymentRequired) -> Response:
    resource = str(request.url.replace(query=""))
    required = wire.payment_required(
        [endpoint.requirements], resource_url=resource, description=endpoint.spec.description, error=exc.reason
    )
    return error(exc, wire.payment_required_answer(required).headers)


async def _durable(fut: asyncio.Future[None] | None) -> None:
    """Wait for records to be durable (strict mode). A record that can never be (logged and counted by the
    pipeline) does not hold the answer: the work was done, and its payment decided, either way."""
    if fut is None:
        return
    try:
        await fut
    except AgentLedgerError:
        log.error("a paid call's records could not be made durable; it is answered anyway")
