"""POST /v1/x402/fetch: an agent buys a paid resource, and the gateway pays from the workspace's signer, within the
agent's budgets and policies, and keeps the books (docs/paid-endpoints.md, "Outbound payments").

    validate (400) → the run's control → the address guard (403) → first request → not 402: relay it
    → 402: the offer (402 payment_refused kinds) → policies (403) and budgets (402), one spend authorization
    → sign (x402's client, off the loop) → the same request with PAYMENT-SIGNATURE → its PAYMENT-RESPONSE
    → the payment step (settled: the reservation settled at the amount; failed: released) → the answer

Nothing is signed before the authorization is durable: a crash between signing and recording leaves the
reservation open, and the sweep charges it at its estimate, which is the amount (gateway/budget_recovery.py), so a
payment that may have happened is never missing from the budget.

Under a client's x-request-id a fetch is idempotent, as a model call is (gateway/claims.py): the first claims the id,
a concurrent duplicate waits for it, and once it is final (paid, or may have paid; or answered without payment and
without error) a repeat of the same request replays its answer, paying, recording and charging nothing. A fetch that
failed before any payment left releases the id, so a retry tries again (docs/paid-endpoints.md).

Every fetch is in a run (the one named, else a new one, answered in Alephant-Run-Id), so every payment is in the
books. Its steps carry no `request_id`: a step with one is a gateway model call's, which the ledger counts through
its request row (core/books.py); the fetch's x-request-id is in their attributes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from x402.schemas import SettleResponse

from agentledger.api.auth import AdminAuth, json_body
from agentledger.api.payment_signers import payment_signer_routes
from agentledger.config import Settings
from agentledger.core.budgets import Decision, Subject
from agentledger.core.errors import AgentLedgerError, ReplayUnavailable, StoreUnavailable, UpstreamError
from agentledger.core.finance import payment_cost
from agentledger.core.headers import parse_tracking
from agentledger.core.ids import new_id
from agentledger.core.model import (
    Attribution,
    Payment,
    PaymentDirection,
    PaymentProtocol,
    PaymentStatus,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.money import format_usd
from agentledger.finance import buying
from agentledger.finance.fetch_request import FetchAsk, answer_view, parse_fetch
from agentledger.finance.outbound_http import Answer, NotSent, Outbound
from agentledger.finance.signers import Signer, sign
from agentledger.gateway.budgets import Governed, headline
from agentledger.gateway.claims import Claims
from agentledger.gateway.flow import Gateway
from agentledger.gateway.policies import names_of
from agentledger.gateway.responses import (
    COST_HEADER,
    DECISION_HEADER,
    REPLAYED_HEADER,
    RUN_ID_HEADER,
    JSONResponse,
    error_response,
)
from agentledger.gateway.spend import SpendDesk
from agentledger.limits.base import CountersUnavailable
from agentledger.secrets_box import SecretBox
from agentledger.store.base import Store, StoredResponse
from agentledger.store.fetch_replays import FetchReplayStore
from agentledger.store.payment_signers import PaymentSignerStore
from agentledger.store.sql import SQLStore
from agentledger.webhooks.guard import AllowList

log = logging.getLogger(__name__)
PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
MAX_ERROR = 1024


@dataclass(slots=True)
class _Fetch:
    """One fetch in flight: who asks, where it goes, and the steps it leaves."""

    request: Request
    request_id: str
    ask: FetchAsk
    attribution: Attribution
    started: datetime
    t0: float
    client_request_id: bool = False  # the agent sent its x-request-id (an approval names it)
    host: str = ""
    governed: Governed | None = None
    sent: bool = False  # a signed payment left (or may have left) the gateway: the fetch is final
    relayed: int | None = None  # the seller's status relayed without payment

    @property
    def run_id(self) -> str:
        assert self.attribution.run_id is not None
        return self.attribution.run_id

    @property
    def workspace_id(self) -> str:
        return self.attribution.workspace_id

    @property
    def request_hash(self) -> str:
        return self.ask.fingerprint


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: PaymentStatus
    confirmed: bool
    reference: str | None = None
    error: str | None = None


class X402Fetch:
    def __init__(
        self,
        gateway: Gateway,
        desk: SpendDesk,
        signers: PaymentSignerStore,
        decrypt: Callable[[str], str],
        outbound: Outbound,
        replays: FetchReplayStore,
        claims: Claims,
    ) -> None:
        self.gateway = gateway
        self.replays = replays
        self.claims = claims
        self.desk = desk
        self.signers = signers
        self.decrypt = decrypt
        self.outbound = outbound

    def routes(self) -> list[Route]:
        return [Route("/v1/x402/fetch", self.handle, methods=["POST"])]

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.gateway.clock

    async def handle(self, request: Request) -> Response:
        fetch: _Fetch | None = None
        try:
            principal = await self.gateway.authenticate(request.headers)
            tracking = parse_tracking(request.scope["headers"])
            ask = parse_fetch(await json_body(request), tracking.run_id)
            attribution = await self.gateway.attribute(principal, tracking)
            attribution = replace(attribution, run_id=ask.run_id or new_id("run"))
            fetch = _Fetch(
                request,
                request.scope["state"]["request_id"],
                ask,
                attribution,
                self.clock(),
                time.perf_counter(),
                client_request_id=tracking.request_id is not None,
            )
            if not fetch.client_request_id:
                return await self._fetch(fetch)
            stored = await self.claims.claim(fetch)
        except AgentLedgerError as exc:
            return error_response(exc, _refusal_headers(fetch, exc))
        if stored is not None:
            return _replay(stored)
        return await self._once(fetch)

    async def _once(self, f: _Fetch) -> Response:
        """A fetch holding its x-request-id's claim: final (a payment left, or the seller's answer was relayed
        without error), its answer is kept for replay before the claim goes; otherwise the claim is released."""
        kept: StoredResponse | None = None
        try:
            try:
                response = await self._fetch(f)
            except AgentLedgerError as exc:
                response = error_response(exc, _refusal_headers(f, exc))
            if f.sent or (f.relayed is not None and f.relayed < 400 and response.status_code == 200):
                kept = StoredResponse(f.request_hash, response.status_code, bytes(response.body), "", f.run_id, 0)
                await self.replays.keep(f.workspace_id, f.request_id, kept, f.started)
            return response
        finally:
            if kept is None and f.sent:
                # Cut short (the client left) after the payment left: never paid again from this node; the store's
                # claim is kept until its lease runs out.
                kept = StoredResponse(f.request_hash, 502, None, "", f.run_id, 0)
            if kept is not None:
                self.claims.remember((f.workspace_id, f.request_id), kept)
            self.claims.release(f)

    # -- the flow ------------------------------------------------------------------------------------------------
    async def _fetch(self, f: _Fetch) -> Response:
        governed = f.governed = Governed()
        controls = self.gateway.controls
        if controls is not None:
            try:
                await controls.admit(f.attribution.workspace_id, f.run_id, governed)
            except AgentLedgerError as exc:
                await self._record(f, [self._api_step(f, None, exc.message)], checked=True)
                raise
        target = await self.outbound.target(f.ask.url)
        f.host = target.host
        try:
            first = await self.outbound.send(target, f.ask.method, f.ask.headers, f.ask.body)
        except AgentLedgerError as exc:
            await self._record(f, [self._api_step(f, None, exc.message)])
            raise
        if first.too_large:
            await self._record(f, [self._api_step(f, first, "the answer was too large")])
            first.check_size(self.outbound.max_bytes)
        if first.status != 402:
            await self._record(f, [self._api_step(f, first)])
            f.relayed = first.status
            return self._answer(f, first, None)
        try:
            required = buying.payment_required(first.header)
            choice = buying.choose(required, await self._signers(f), f.ask.max_nanos)
        except AgentLedgerError as exc:
            await self._record(f, [self._api_step(f, first, exc.message)])
            raise
        await self._authorize(f, choice)
        return await self._pay(f, target, choice)

    async def _authorize(self, f: _Fetch, choice: buying.Choice) -> None:
        """The policies (a block, a throttle, an escalation), then one reservation of the price against every
        applicable budget, durable before anything is signed; a refusal is recorded as the run's policy check."""
        assert f.governed is not None
        governed, amount = f.governed, choice.offer.amount_nanos
        subject = Subject.of(f.attribution)
        policies = self.gateway.policies
        try:
            if policies is not None:
                req = f.request
                await policies.check_action(
                    governed,
                    subject,
                    kind="payment",
                    name=f.host,
                    amount_nanos=amount,
                    client_ip=policies.client_ip(req.client.host if req.client else None, req.headers),
                    header_names=names_of(req.scope["headers"]),
                    prompt_id=None,
                    # What an escalation's approval is bound to (with the key and the run): the same purchase sent
                    # again in the same run finds it.
                    body={
                        "kind": "payment",
                        "name": f.host,
                        "amount_usd": format_usd(amount),
                        "url": f.ask.shown_url,
                        "pay_to": choice.requirements.pay_to,
                    },
                    request_id=f.request_id if f.client_request_id else None,
                )
            try:
                entries = await self.desk.authorize(governed, subject, amount, kind="payment", name=f.host)
            except CountersUnavailable:
                raise StoreUnavailable("The budget counters are unavailable; retry shortly.") from None
        except AgentLedgerError as exc:
            if exc.status == 402:
                governed.decision = Decision.BLOCKED
            await self._record(f, [self._api_step(f, None, exc.message)], checked=True)
            raise
        if entries:
            await self.gateway.pipeline.submit(entries)

    async def _pay(self, f: _Fetch, target: Any, choice: buying.Choice) -> Response:
        amount = choice.offer.amount_nanos
        signer = replace(choice.signer, key=self.decrypt(choice.signer.key))
        try:
            _, header = await sign(signer, choice.required, choice.requirements)
        except Exception as exc:  # x402 refusing to sign what we chose: nothing left the gateway
            log.warning("x402 refused to sign a payment: %s", exc)
            outcome = _Outcome(PaymentStatus.FAILED, True, error=f"not signed: {exc}"[:MAX_ERROR])
            await self._finish(f, choice, None, outcome)
            raise buying.PaymentUnsupported(f"x402's client refused to sign the payment: {exc}") from None
        headers = {**f.ask.headers, PAYMENT_SIGNATURE: header}
        f.sent = True
        try:
            second = await self.outbound.send(target, f.ask.method, headers, f.ask.body)
        except NotSent as exc:
            f.sent = False
            await self._finish(f, choice, None, _Outcome(PaymentStatus.FAILED, True, error=exc.message))
            raise
        except UpstreamError as exc:
            # The signed authorization may have reached the seller, who can settle it until it expires: counted.
            unsure = _Outcome(PaymentStatus.SETTLED, False, error=f"no answer after paying: {exc.message}"[:MAX_ERROR])
            step_id = await self._finish(f, choice, None, unsure)
            raise type(exc)(
                f"{exc.message} The signed payment of ${format_usd(amount)} may have reached the seller, who can "
                f"settle it until it expires: it is counted as spent, unconfirmed (payment step {step_id})."
            ) from None
        outcome = _outcome(second)
        step_id = await self._finish(f, choice, second, outcome)
        charged = amount if outcome.status is PaymentStatus.SETTLED else 0
        second.check_size(self.outbound.max_bytes)  # the payment is on the books first, whatever the body
        return self._answer(f, second, self._payment_view(choice, outcome, charged, step_id), charged)

    async def _finish(self, f: _Fetch, choice: buying.Choice, answer: Answer | None, outcome: _Outcome) -> str:
        """The paid fetch's steps (the call and its payment) with the reservation's settle or release, durable;
        returns the payment step's id."""
        assert f.governed is not None
        req, offer = choice.requirements, choice.offer
        payment = Payment(
            direction=PaymentDirection.OUTBOUND,
            status=outcome.status,
            amount_nanos=offer.amount_nanos,
            protocol=PaymentProtocol.X402,
            asset_amount=req.amount,
            network=req.network,
            asset=req.asset,
            counterparty=req.pay_to,
            reference=outcome.reference,
        )
        call = self._api_step(f, answer, outcome.error if answer is None else None)
        settled = outcome.status is PaymentStatus.SETTLED
        step = StepRecord(
            step_id=new_id("step"),
            run_id=f.run_id,
            attribution=f.attribution,
            kind=StepKind.PAYMENT,
            name=f"x402 {f.host}"[:256],
            status=StepStatus.OK if settled else StepStatus.ERROR,
            started_at=f.started,
            ended_at=self.clock(),
            latency_ms=(time.perf_counter() - f.t0) * 1000,
            parent_id=call.step_id,
            cost_nanos=payment_cost(payment),
            error=outcome.error,
            payment=payment,
            attributes={
                "x_request_id": f.request_id,
                "signer": choice.signer.name,
                "payer": choice.signer.address,
                "confirmed": outcome.confirmed,
                "reservation_id": f.governed.reservation_id,
            },
        )
        gate = self.gateway.gate
        ledger = (
            gate.settle(f.governed, offer.amount_nanos if settled else 0, 0, request_id=f.request_id, run_id=f.run_id)
            if gate is not None
            else []
        )
        await self._record(f, [call, step, *ledger], checked=True)
        return step.step_id

    # -- signers -------------------------------------------------------------------------------------------------
    async def _signers(self, f: _Fetch) -> list[Signer]:
        """The workspace's active signers (the one named, when the fetch names one), keys still encrypted."""
        rows = await self.signers.active(f.attribution.workspace_id)
        if f.ask.signer is not None:
            rows = [r for r in rows if r["name"] == f.ask.signer]
            if not rows:
                raise buying.NoPaymentSigner(
                    f"The workspace has no active payment signer named {f.ask.signer!r}; nothing was paid.",
                    param="signer",
                )
        return [
            Signer(r["id"], r["name"], r["address"], tuple(r["networks"]), r["max_payment_nanos"], r["key_encrypted"])
            for r in rows
        ]

    # -- records -------------------------------------------------------------------------------------------------
    def _api_step(self, f: _Fetch, answer: Answer | None, error: str | None = None) -> StepRecord:
        """The request to the seller (the last one made), or the refusal that stopped the fetch before it."""
        ok = error is None and answer is not None and answer.status < 400
        if error is None and answer is not None and not ok:
            error = f"the seller answered {answer.status}"
        return StepRecord(
            step_id=new_id("step"),
            run_id=f.run_id,
            attribution=f.attribution,
            kind=StepKind.API_CALL,
            name=f"{f.ask.method} {f.host or 'x402 fetch'}"[:256],
            status=StepStatus.OK if ok else StepStatus.ERROR,
            started_at=f.started,
            ended_at=self.clock(),
            latency_ms=(time.perf_counter() - f.t0) * 1000,
            error=error[:MAX_ERROR] if error else None,
            input={"method": f.ask.method, "url": f.ask.shown_url},
            output={"status": answer.status} if answer is not None else None,
            attributes={"x_request_id": f.request_id, "x402_fetch": True},
        )

    async def _record(self, f: _Fetch, events: list[TraceEvent], *, checked: bool = False) -> None:
        """The fetch's events in its run (created on first sight), with its policy check when something governed
        it, durable before the answer."""
        check = None
        gate, governed = self.gateway.gate, f.governed
        if checked and gate is not None and governed is not None and governed.governed:
            check = gate.policy_step(
                governed,
                gate.report(governed),
                request_id=f.request_id,
                base=f.attribution,
                started_at=f.started,
                name="authorize payment" if governed.reservation_id or governed.figures else None,
            )
        start = RunStart(run_id=f.run_id, attribution=f.attribution, started_at=f.started)
        await self.gateway.pipeline.submit([start, *events, *([check] if check else [])])

    # -- answers -------------------------------------------------------------------------------------------------
    def _answer(self, f: _Fetch, answer: Answer, payment: dict[str, Any] | None, charged: int = 0) -> Response:
        body = {**answer_view(answer.status, answer.headers, answer.body), "run_id": f.run_id, "payment": payment}
        headers = {RUN_ID_HEADER: f.run_id, COST_HEADER: format_usd(charged)}
        if f.governed is not None and f.governed.governed:
            headers.update(headline(f.governed))
        else:
            headers[DECISION_HEADER] = "allowed"
        return JSONResponse(body, headers=headers)

    @staticmethod
    def _payment_view(choice: buying.Choice, outcome: _Outcome, charged: int, step_id: str) -> dict[str, Any]:
        req = choice.requirements
        return {
            "status": outcome.status.value,
            "confirmed": outcome.confirmed,
            "amount_usd": format_usd(choice.offer.amount_nanos),
            "charged_usd": format_usd(charged),
            "asset_amount": req.amount,
            "network": req.network,
            "asset": req.asset,
            "payee": req.pay_to,
            "payer": choice.signer.address,
            "signer": choice.signer.name,
            "reference": outcome.reference,
            "error": outcome.error,
            "step_id": step_id,
        }


def _outcome(answer: Answer) -> _Outcome:
    """What the seller's answer to the payment says happened to it."""
    settle: SettleResponse | None = buying.settlement(answer.header)
    if settle is not None:
        if settle.success:
            return _Outcome(PaymentStatus.SETTLED, True, reference=(settle.transaction or None))
        why = settle.error_message or settle.error_reason or "settlement failed"
        return _Outcome(PaymentStatus.FAILED, True, error=f"the seller's settlement failed: {why}"[:MAX_ERROR])
    if answer.status == 402:
        why = buying.refusal_reason(answer.header) or "the payment was refused"
        return _Outcome(PaymentStatus.FAILED, True, error=f"the seller refused the payment: {why}"[:MAX_ERROR])
    if 200 <= answer.status < 300:
        # Served without a receipt: the seller holds a valid authorization it may still settle, so it is counted.
        return _Outcome(PaymentStatus.SETTLED, False, error="the seller answered without a PAYMENT-RESPONSE")
    return _Outcome(PaymentStatus.FAILED, True, error=f"the seller answered {answer.status} without settling")


def _replay(stored: StoredResponse) -> Response:
    """The kept answer of a final fetch, as first given; nothing is paid, recorded or charged again."""
    if stored.body is None:
        exc = ReplayUnavailable(
            "This x-request-id's fetch is final (a payment left), but its answer was not kept (the workspace's "
            "retention pruned it, or the fetch was cut short): it is not replayed and not paid again. Send a new "
            "x-request-id to fetch again.",
            param="x-request-id",
        )
        return error_response(exc, {COST_HEADER: format_usd(0)})
    headers = {REPLAYED_HEADER: "true", COST_HEADER: format_usd(0)}
    if stored.run_id:
        headers[RUN_ID_HEADER] = stored.run_id
    return Response(stored.body, status_code=stored.http_status, media_type="application/json", headers=headers)


def _refusal_headers(f: _Fetch | None, exc: AgentLedgerError) -> dict[str, str] | None:
    if f is None:
        return None
    headers = {RUN_ID_HEADER: f.run_id}
    governed = f.governed
    if governed is not None and governed.governed:
        headers.update(headline(governed))
    if exc.status == 402 and governed is not None and governed.decision is Decision.BLOCKED:
        headers[DECISION_HEADER] = "blocked"
    return headers


def outbound_routes(
    settings: Settings, auth: AdminAuth, store: Store, gateway: Gateway, desk: SpendDesk, box: SecretBox
) -> list[Route]:
    """POST /v1/x402/fetch and /api/payment-signers over the SQL store, with the settings' guard and bounds."""
    if not isinstance(store, SQLStore):
        raise TypeError("outbound payments need an SQLStore")
    signers = PaymentSignerStore(store)
    allow = AllowList.parse(settings.x402_fetch_allow_hosts.split(","))
    outbound = Outbound(allow, timeout=settings.x402_fetch_timeout, max_bytes=settings.x402_fetch_max_response_bytes)
    replays = FetchReplayStore(store)
    # Its own claims (keyed apart in the store, store/fetch_replays.py) with the model calls' lease.
    claims = Claims(replays, gateway.claims.inflight_timeout)
    fetch = X402Fetch(gateway, desk, signers, box.decrypt, outbound, replays, claims)
    return [*fetch.routes(), *payment_signer_routes(auth, signers, box)]
