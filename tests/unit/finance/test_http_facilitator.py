"""The HTTP facilitator (finance/facilitator.py): x402's HTTP facilitator client to a URL we give it, on loopback.

A facilitator service stands in here: a small app serving x402's `/verify` and `/settle` with the local
facilitator behind them, which can also fail in the ways a real one does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from x402.schemas import PaymentPayload, PaymentRequirements

from agentledger.core.assets import USDC_BASE_SEPOLIA
from agentledger.finance.errors import FacilitatorError, FacilitatorUnavailable
from agentledger.finance.facilitator import HttpFacilitator
from agentledger.finance.local import LocalFacilitator
from agentledger.testing import ServerThread
from agentledger.testing.server import free_port
from tests.unit.finance.buyers import new_account, pay, requirements


class FacilitatorService:
    """x402's facilitator HTTP API over the local facilitator; `mode` makes it fail instead."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.local = LocalFacilitator([USDC_BASE_SEPOLIA])
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(body)
        if self.mode == "down":
            return JSONResponse({"error": "maintenance"}, status_code=503)
        if self.mode == "busy":
            return JSONResponse({"error": "slow down"}, status_code=429)
        if self.mode == "refuses":
            return JSONResponse({"error": "bad request"}, status_code=400)
        if self.mode == "garbage":
            return Response("<html>hello</html>", media_type="text/html")
        if self.mode == "slow":
            await asyncio.sleep(0.6)
        payload = PaymentPayload.model_validate(body["paymentPayload"])
        req = PaymentRequirements.model_validate(body["paymentRequirements"])
        if request.url.path.endswith("/verify"):
            result: Any = await self.local.verify(payload, req)
        else:
            result = await self.local.settle(payload, req)
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/facilitator/{op}", self.handle, methods=["POST"])])


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[FacilitatorService, str]]:
    svc = FacilitatorService()
    with ServerThread(svc.app()) as server:
        yield svc, f"{server.url}/facilitator"
    asyncio.run(svc.local.aclose())


@pytest.fixture
async def remote(service: tuple[FacilitatorService, str]) -> AsyncIterator[HttpFacilitator]:
    svc, url = service
    svc.mode = "ok"
    facilitator = HttpFacilitator(url, timeout_s=0.3)
    yield facilitator
    await facilitator.aclose()


async def test_verify_and_settle_through_x402s_http_client(
    remote: HttpFacilitator, service: tuple[FacilitatorService, str]
) -> None:
    account, req = new_account(), requirements()
    payload = await pay(account, req)
    verified = await remote.verify(payload, req)
    assert verified.is_valid and verified.payer == account.address
    settled = await remote.settle(payload, req)
    assert settled.success and settled.transaction.startswith("local:0x")
    assert (await remote.settle(payload, req)).error_reason == "invalid_exact_evm_nonce_already_used"
    sent = service[0].seen[-1]
    assert sent["x402Version"] == 2 and sent["paymentRequirements"]["payTo"] == req.pay_to


async def test_a_dead_port_is_facilitator_unavailable() -> None:
    facilitator = HttpFacilitator(f"http://127.0.0.1:{free_port()}/facilitator", timeout_s=0.5)
    req = requirements()
    payload = await pay(new_account(), req)
    try:
        with pytest.raises(FacilitatorUnavailable) as caught:
            await facilitator.verify(payload, req)
        assert caught.value.status == 503 and caught.value.retry_after
        assert "127.0.0.1" not in caught.value.message  # the configured address is not an answer's business
        with pytest.raises(FacilitatorUnavailable):
            await facilitator.settle(payload, req)
    finally:
        await facilitator.aclose()


@pytest.mark.parametrize("mode", ["down", "busy", "slow"])
async def test_5xx_429_and_timeouts_are_facilitator_unavailable(
    mode: str, remote: HttpFacilitator, service: tuple[FacilitatorService, str]
) -> None:
    service[0].mode = mode
    req = requirements()
    payload = await pay(new_account(), req)
    with pytest.raises(FacilitatorUnavailable):
        await remote.verify(payload, req)


@pytest.mark.parametrize("mode", ["refuses", "garbage"])
async def test_a_refused_or_unreadable_answer_is_a_facilitator_error_not_unavailability(
    mode: str, remote: HttpFacilitator, service: tuple[FacilitatorService, str]
) -> None:
    service[0].mode = mode
    req = requirements()
    payload = await pay(new_account(), req)
    with pytest.raises(FacilitatorError) as caught:
        await remote.settle(payload, req)
    assert not isinstance(caught.value, FacilitatorUnavailable) and caught.value.status == 502


@pytest.mark.parametrize("url", ["", "facilitator.example", "ftp://127.0.0.1/f", "http:///verify"])
def test_the_url_is_required_and_absolute(url: str) -> None:
    with pytest.raises(ValueError):
        HttpFacilitator(url)
