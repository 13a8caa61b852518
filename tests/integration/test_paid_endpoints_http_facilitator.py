"""Paid endpoints with an HTTP facilitator (`x402_facilitator` = a URL): x402's HTTP facilitator client to a facilitator
service on loopback (tests/integration/paid_support.py). A sale settles through it; a settlement it refuses after the
workflow ran is a 402 without the output, the work recorded unpaid; and when nobody answers at its address (a dead
loopback port), a paid call is a 503 with nothing run and nothing charged. Neither the workflow's address nor the
facilitator's shows in any answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from eth_account import Account
from x402.http.utils import decode_payment_response_header

from agentledger.finance import wire
from agentledger.store.finance import FAILED, SETTLED, PaymentProofs
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from agentledger.testing.server import free_port
from tests.harness import Harness, running_gateway
from tests.integration.paid_support import (
    FacilitatorService,
    Published,
    Workflow,
    paid_header,
    prepare_workspace,
    publish,
    workflow_agent,
    workflow_server,
)

pytestmark = pytest.mark.e2e


@dataclass
class Setup:
    gw: Harness
    flow: Workflow
    flow_server: ServerThread
    service: FacilitatorService
    facilitator_port: int
    facilitator: ServerThread
    agent: str
    store: SQLStore

    def hidden(self) -> tuple[str, ...]:
        return (
            f":{self.flow_server.port}",
            self.flow.path,
            self.flow.secret,
            f":{self.facilitator_port}",
            "/facilitator",
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread) -> Iterator[Setup]:
    data = tmp_path_factory.mktemp("paid-http")
    url = f"sqlite:///{data / 'paid.db'}"
    service, port = FacilitatorService(), free_port()
    facilitator = ServerThread(service.app(), port=port).start()
    settings = {"x402_facilitator": f"http://127.0.0.1:{port}/facilitator"}
    with workflow_server() as (flow, server), running_gateway(url, data, upstream, **settings) as gw:
        flow.gateway_url = gw.url
        prepare_workspace(gw)
        store = SQLStore(url)
        s = Setup(gw, flow, server, service, port, facilitator, workflow_agent(gw, flow, server), store)
        yield s
        asyncio.run(store.aclose())
    s.facilitator.stop()
    asyncio.run(service.local.aclose())


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        yield c


async def buy(s: Setup, client: httpx.AsyncClient, ep: Published) -> tuple[str, httpx.Response]:
    url = s.gw.url + ep.url
    first = await client.post(url, json={"text": "hello"})
    assert first.status_code == 402
    header = await paid_header(Account.create(), first)
    resp = await client.post(url, json={"text": "hello"}, headers={"PAYMENT-SIGNATURE": header})
    seen = resp.text + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
    assert [h for h in s.hidden() if h in seen] == [], resp.text
    return header, resp


async def proof_state(s: Setup, header: str, until: str | None = None) -> str | None:
    """The proof's state; with `until`, once it is that (recorded just after the answer), or as it is after 5 s."""
    proof_id = wire.proof_of(wire.decode_payment_signature(header)).id
    deadline = time.monotonic() + 5
    while True:
        row = await PaymentProofs(s.store).get(s.gw.workspace, proof_id)
        state = None if row is None else str(row["state"])
        if until is None or state == until or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.01)


async def test_a_sale_settles_through_the_http_facilitator(setup: Setup, client: httpx.AsyncClient) -> None:
    s = setup
    s.service.settle = "ok"
    ep = publish(s.gw, s.agent)
    before = list(s.service.calls)
    header, resp = await buy(s, client, ep)
    assert resp.status_code == 200, resp.text
    assert s.service.calls[len(before) :] == ["verify", "settle"]
    settled = decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.transaction.startswith("local:0x")
    assert await proof_state(s, header, until=SETTLED) == SETTLED


async def test_a_refused_settlement_withholds_the_output_and_records_the_work_unpaid(
    setup: Setup, client: httpx.AsyncClient
) -> None:
    s = setup
    s.service.settle = "fails"
    ep = publish(s.gw, s.agent)
    calls = len(s.flow.calls)
    header, resp = await buy(s, client, ep)
    s.service.settle = "ok"
    assert resp.status_code == 402, resp.text
    assert "summary" not in resp.text  # the workflow's output is withheld
    err = resp.json()["error"]
    assert (err["type"], err["code"], err["reason"]) == ("payment_required", "settlement_failed", "insufficient_funds")
    assert err["message"].startswith("The payment could not be settled (insufficient_funds); nothing was charged")
    failed = decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"])
    assert not failed.success and failed.error_reason == "insufficient_funds"
    assert "PAYMENT-REQUIRED" not in resp.headers  # as x402's own server answers a failed settlement
    assert len(s.flow.calls) == calls + 1  # the work was done
    run = s.gw.get(f"/api/runs/{resp.headers['alephant-run-id']}")
    assert run["status"] == "failed"
    assert run["error"] == "settlement failed (insufficient_funds): the workflow's work was done unpaid"
    t = run["totals"]
    assert (t["revenue_usd"], t["model_cost_usd"], t["margin_usd"]) == ("0.000000000", "0.002000000", "-0.002000000")
    assert await proof_state(s, header, until=FAILED) == FAILED


async def test_a_facilitator_nobody_answers_for_is_a_503_with_nothing_run_or_charged(
    setup: Setup, client: httpx.AsyncClient
) -> None:
    s = setup
    ep = publish(s.gw, s.agent)
    calls = len(s.flow.calls)
    s.facilitator.stop()  # its port is dead now
    try:
        header, resp = await buy(s, client, ep)
    finally:
        s.facilitator = ServerThread(s.service.app(), port=s.facilitator_port).start()
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "5"
    err = resp.json()["error"]
    assert (err["code"], err["message"]) == (
        "facilitator_unavailable",
        "The payment facilitator could not be reached to verify.",
    )
    assert len(s.flow.calls) == calls and await proof_state(s, header) is None
    assert s.gw.get("/api/runs", endpoint=ep.endpoint["id"])["data"] == []
    # Back, the same proof pays: nothing was spent on it.
    retry = await client.post(s.gw.url + ep.url, json={"text": "hello"}, headers={"PAYMENT-SIGNATURE": header})
    assert retry.status_code == 200, retry.text
