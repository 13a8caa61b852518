"""What `agentledger demo` runs on 127.0.0.1 itself, beside the gateway: the paid endpoint's workflow (a webhook
that, like an n8n flow, calls the gateway's chat with the scoped key it is given) and a flaky provider (the fake
upstream's failure modes, which the built-in mock provider has none of), plus an x402 buyer with a fresh key.

They live only while the demo runs: a sale made after it ends finds no workflow and is refused before settlement,
so nobody pays for it."""

from __future__ import annotations

import os
from typing import Any

import httpx
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner

from agentledger.testing import FakeUpstream, ServerThread, fake_upstream_app

AUTH_NAME = "X-Demo-Flow-Auth"


class LocalServices:
    """The webhook at `/hook/<random>` and the fake provider under `/flaky/v1`, on one loopback server."""

    def __init__(self, gateway_url: str) -> None:
        self.gateway_url = gateway_url
        self.secret = "flow-" + os.urandom(12).hex()
        self.path = "/hook/" + os.urandom(8).hex()
        self.upstream = FakeUpstream()
        self.calls = 0
        self._client: httpx.AsyncClient | None = None
        app = Starlette(
            routes=[
                Route(self.path, self._hook, methods=["POST"]),
                Mount("/flaky", app=fake_upstream_app(self.upstream)),
            ]
        )
        self.server = ServerThread(app)

    @property
    def hook_url(self) -> str:
        return self.server.url + self.path

    @property
    def provider_url(self) -> str:
        return self.server.url + "/flaky/v1"

    def __enter__(self) -> LocalServices:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=5)

    async def _hook(self, request: Request) -> Response:
        if request.headers.get(AUTH_NAME) != self.secret:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        self.calls += 1
        body: dict[str, Any] = await request.json()
        if self._client is None:  # made on the server thread's own loop
            self._client = httpx.AsyncClient(timeout=30, trust_env=False)
        answer = await self._client.post(
            self.gateway_url + "/v1/chat/completions",
            headers={
                "authorization": f"Bearer {request.headers['alephant-virtual-key']}",
                "alephant-run-id": request.headers["alephant-run-id"],
                "alephant-agent-id": request.headers["alephant-agent-id"],
            },
            json={
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Summarize in one line."},
                    {"role": "user", "content": str(body.get("text", ""))},
                ],
            },
        )
        if answer.status_code != 200:
            return JSONResponse({"error": "model call failed", "status": answer.status_code}, status_code=502)
        return JSONResponse({"summary": answer.json()["choices"][0]["message"]["content"]})


async def buy(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """One purchase as any x402 v2 client makes it, with a key made for it: ask, read the 402's offer, sign the
    EIP-3009 authorization, ask again with PAYMENT-SIGNATURE."""
    first = await client.post(url, json=body, headers=headers)
    if first.status_code != 402:
        return first
    http = x402HTTPClient(_signer())
    required = http.get_payment_required_response(lambda name: first.headers.get(name))
    payload = await http.create_payment_payload(required)
    return await client.post(url, json=body, headers={**headers, **http.encode_payment_signature_header(payload)})


def _signer() -> x402Client:
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(Account.create()))
    return client
