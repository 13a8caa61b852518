"""What the paid endpoint tests share: a workflow on loopback standing in for n8n, a facilitator service standing in
for x402's HTTP facilitators, the set-up of a workflow agent and its paid endpoint through the API, and a buyer.

The workflow (`Workflow`) is a small Starlette app: it checks its auth header, counts every call it gets (so a test
can say nothing ran), and then does what the body's `mode` asks: `ok` calls the gateway's /v1/chat/completions with
the run id and scoped key it was given (a mock model at a known price) and answers JSON; `error` makes that call and
then fails (500, with an error page naming its own URL); `slow` makes it and then outlives the endpoint's timeout;
`text` answers 200 with something that is not JSON; `sleep` only sleeps (`seconds`) and answers JSON.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from agentledger.core.assets import USDC_BASE_SEPOLIA
from agentledger.finance.local import LocalFacilitator
from agentledger.testing import ServerThread
from tests.harness import Harness
from tests.unit.finance.buyers import buyer

AUTH_NAME = "X-N8N-Auth"
MODEL = "seller-model"
# The mock's usage is dictated: 1000 input and 500 output tokens at $1 and $2 a million: $0.002 a call.
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
MODEL_COST_NANOS = 2_000_000
PRICE_USD = "0.01"
PRICE_NANOS = 10_000_000
FEE = {"percent": "2.5", "fixed_usd": "0.0005"}
FEE_NANOS = 250_000 + 500_000  # 2.5 % of $0.01, and $0.0005
INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "mode": {"enum": ["ok", "error", "slow", "text", "sleep"]},
        "seconds": {"type": "number"},
    },
    "required": ["text"],
}


@dataclass
class Workflow:
    """The n8n stand-in (module docstring)."""

    secret: str = field(default_factory=lambda: "n8n-" + os.urandom(8).hex())
    path: str = field(default_factory=lambda: "/webhook/" + os.urandom(8).hex())
    gateway_url: str = ""
    url: str = ""  # where it listens (set once its server runs)
    calls: list[dict[str, Any]] = field(default_factory=list)
    model_answers: list[int] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None

    async def hook(self, request: Request) -> Response:
        body = await request.json() if request.method != "GET" else dict(request.query_params)
        self.calls.append({"headers": dict(request.headers), "body": body, "method": request.method})
        if request.headers.get(AUTH_NAME) != self.secret:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        mode = body.get("mode", "ok")
        if mode == "sleep":
            await asyncio.sleep(float(body.get("seconds", 1)))
            return JSONResponse({"slept": True})
        if self._client is None:  # made on this server's own loop
            self._client = httpx.AsyncClient(timeout=30, trust_env=False)
        answer = await self._client.post(
            self.gateway_url + "/v1/chat/completions",
            headers={
                "authorization": f"Bearer {request.headers['alephant-virtual-key']}",
                "alephant-run-id": request.headers["alephant-run-id"],
                "alephant-agent-id": request.headers["alephant-agent-id"],
            },
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": str(body.get("text"))}],
                "metadata": {"mock_usage": USAGE},
            },
        )
        self.model_answers.append(answer.status_code)
        if mode == "error":
            return PlainTextResponse(f"workflow crashed at {request.url}", status_code=500)
        if mode == "slow":
            await asyncio.sleep(3.0)
        if mode == "text":
            return PlainTextResponse(f"done, see {request.url}")
        reply = answer.json()["choices"][0]["message"]["content"] if answer.status_code == 200 else None
        return JSONResponse({"summary": reply, "model_status": answer.status_code})

    def app(self) -> Starlette:
        return Starlette(routes=[Route(self.path, self.hook, methods=["POST", "GET", "PUT"])])


@contextmanager
def workflow_server() -> Iterator[tuple[Workflow, ServerThread]]:
    flow = Workflow()
    with ServerThread(flow.app()) as server:
        flow.url = server.url + flow.path
        yield flow, server


class FacilitatorService:
    """x402's facilitator HTTP API (`/verify`, `/settle`) over the local facilitator. `settle` = "fails": every
    settlement is refused (as a chain would refuse one whose payer has no funds)."""

    def __init__(self) -> None:
        self.settle = "ok"
        self.local = LocalFacilitator([USDC_BASE_SEPOLIA])
        self.calls: list[str] = []

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        op = request.path_params["op"]
        self.calls.append(op)
        payload = PaymentPayload.model_validate(body["paymentPayload"])
        req = PaymentRequirements.model_validate(body["paymentRequirements"])
        if op == "verify":
            result: Any = await self.local.verify(payload, req)
        elif self.settle == "fails":
            result = {"success": False, "errorReason": "insufficient_funds", "transaction": "", "network": req.network}
            return JSONResponse(result)
        else:
            result = await self.local.settle(payload, req)
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/facilitator/{op}", self.handle, methods=["POST"])])


# -- set-up through the API --------------------------------------------------------------------------------------


@dataclass
class Published:
    agent: str
    endpoint: dict[str, Any]
    pay_to: str

    @property
    def url(self) -> str:
        return str(self.endpoint["url"])


def prepare_workspace(gw: Harness) -> None:
    """A mock provider for the workflow's model at a known price."""
    gw.add_provider_key(name="mock", kind="mock", provider="mock", models=["seller-*"], base_url=None, api_key=None)
    resp = gw.api("POST", "/api/prices", json={"model": MODEL, "input_mtok": "1", "output_mtok": "2"})
    assert resp.status_code == 201, resp.text


def workflow_agent(gw: Harness, flow: Workflow, server: ServerThread, *, method: str = "POST") -> str:
    agent_id = "flow-" + os.urandom(4).hex()
    runtime = {
        "type": "n8n",
        "url": server.url + flow.path,
        "method": method,
        "auth_header": {"name": AUTH_NAME, "value": flow.secret},
    }
    body = {
        "id": agent_id,
        "department_id": gw.department,
        "name": "Summarizer",
        "kind": "workflow",
        "runtime": runtime,
    }
    resp = gw.api("POST", "/api/agents", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["runtime"] == {**runtime, "auth_header": {"name": AUTH_NAME, "set": True}}
    return agent_id


def publish(gw: Harness, agent: str, **settings: Any) -> Published:
    pay_to = Account.create().address
    body = {
        "slug": "sum-" + os.urandom(4).hex(),
        "description": "Summarize a text",
        "agent_id": agent,
        "price_usd": PRICE_USD,
        "pay_to": pay_to,
        "fee": FEE,
        "input_schema": INPUT_SCHEMA,
        "timeout_s": 1.5,
        "max_timeout_s": 60,
        **settings,
    }
    resp = gw.api("POST", "/api/paid-endpoints", json=body)
    assert resp.status_code == 201, resp.text
    return Published(agent, resp.json(), pay_to)


# -- buying ---------------------------------------------------------------------------------------------------------


def offer_of(resp: httpx.Response) -> PaymentRequired:
    required = buyer(Account.create()).get_payment_required_response(lambda name: resp.headers.get(name))
    assert isinstance(required, PaymentRequired)
    return required


async def paid_header(account: LocalAccount, resp: httpx.Response) -> str:
    """What x402's client sends after this 402: it reads PAYMENT-REQUIRED, signs, encodes PAYMENT-SIGNATURE."""
    http = buyer(account)
    required = http.get_payment_required_response(lambda name: resp.headers.get(name))
    payload = await http.create_payment_payload(required)
    (header,) = http.encode_payment_signature_header(payload).values()
    return str(header)


def header_of(payload: PaymentPayload) -> str:
    """A payload as the PAYMENT-SIGNATURE header carries it (x402's codec)."""
    return str(encode_payment_signature_header(payload))
