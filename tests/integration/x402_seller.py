"""A loopback x402 seller for the outbound payment tests: x402 version 2 on the wire through finance/wire.py (x402's
codecs and matching) and the chain-free LocalFacilitator, as a real HTTP server. What it was sent is kept, so a
test can say the seller never saw a payment header.

Modes: `paid` (402 until paid, then verified and settled), `free` (answers without asking for payment),
`settle_fails` (verifies, then reports a failed settlement: 402 with a failed PAYMENT-RESPONSE), `no_receipt`
(verifies and serves without PAYMENT-RESPONSE), `v1` (a 402 with no version 2 header), `big` (paid, then a 4 KiB
answer).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from x402.schemas import PaymentRequirements, SettleResponse

from agentledger.core.assets import USDC_BASE_SEPOLIA, AcceptedAsset
from agentledger.finance import wire
from agentledger.finance.errors import MalformedPayment
from agentledger.finance.local import LocalFacilitator


@dataclass
class Seller:
    price_nanos: int = 10_000_000  # $0.01
    mode: str = "paid"
    asset: AcceptedAsset = USDC_BASE_SEPOLIA
    pay_to: str = field(default_factory=lambda: str(Account.create().address))
    extra_offers: list[PaymentRequirements] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    settled: list[SettleResponse] = field(default_factory=list)

    def requirements(self) -> PaymentRequirements:
        return wire.payment_requirements(
            self.asset, amount_nanos=self.price_nanos, pay_to=self.pay_to, max_timeout_seconds=120
        )

    def payment_headers(self) -> list[str | None]:
        return [r["headers"].get("payment-signature") for r in self.received]

    def reset(self, **changes: Any) -> None:
        self.received.clear()
        self.settled.clear()
        self.extra_offers.clear()
        self.mode = changes.get("mode", "paid")
        self.price_nanos = changes.get("price_nanos", 10_000_000)


def _answer(a: wire.Answer, body: dict[str, Any] | None = None) -> Response:
    return Response(orjson.dumps(body if body is not None else a.body), status_code=a.status, headers=a.headers)


def seller_app(seller: Seller) -> Starlette:
    facilitator = LocalFacilitator([USDC_BASE_SEPOLIA])

    async def goods(request: Request) -> Response:
        body = await request.body()
        seller.received.append({"method": request.method, "headers": dict(request.headers), "body": body})
        if seller.mode == "free":
            return Response(orjson.dumps({"free": True}), media_type="application/json")
        if seller.mode == "v1":
            return Response(orjson.dumps({"x402Version": 1, "accepts": []}), status_code=402)
        req = seller.requirements()
        offered = [*seller.extra_offers, req]
        required = wire.payment_required(offered, resource_url=str(request.url), description="goods")
        header = request.headers.get("payment-signature")
        if header is None:
            return _answer(wire.payment_required_answer(required))

        def refuse(error: str) -> Response:
            again = wire.payment_required(offered, resource_url=str(request.url), error=error)
            return _answer(wire.payment_required_answer(again))

        try:
            payload = wire.decode_payment_signature(header)
        except MalformedPayment as exc:
            return refuse(exc.message)
        match = wire.matching_requirements(offered, payload)
        if match is None:
            return refuse("No matching payment requirements")
        verified = await facilitator.verify(payload, match)
        if not verified.is_valid:
            return refuse(verified.invalid_reason or "invalid")
        if seller.mode == "no_receipt":
            return Response(orjson.dumps({"goods": "unreceipted"}), media_type="application/json")
        if seller.mode == "settle_fails":
            failed = SettleResponse(
                success=False, error_reason="insufficient_funds", transaction="", network=match.network
            )
            return _answer(wire.settlement_failed_answer(failed), {})
        settle = await facilitator.settle(payload, match)
        if not settle.success:
            return _answer(wire.settlement_failed_answer(settle), {})
        seller.settled.append(settle)
        headers = {"content-type": "application/json", **wire.settlement_headers(settle), "set-cookie": "s=1"}
        if seller.mode == "big":
            return Response(b"x" * 4096, headers=headers)
        return Response(orjson.dumps({"goods": "the data", "echo": body.decode() or None}), headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await facilitator.aclose()

    return Starlette(
        routes=[Route("/goods", goods, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])], lifespan=lifespan
    )
