"""Paid endpoints over x402 on a real gateway (SQLite and PostgreSQL) with the local facilitator: x402's own client
buys from a workflow agent whose runtime is a webhook server on loopback (tests/integration/paid_support.py), and
the workflow's model call through the gateway joins the run. Then every refusal, each with nothing executed (the
workflow counts its calls) and nothing charged (the proof is not settled), and the workflow failing.

The workflow's own URL (its port and secret path) must appear in no answer: every answer is checked."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from eth_account import Account
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.constants import (
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_INVALID_SIGNATURE,
    ERR_NONCE_ALREADY_USED,
    ERR_VALID_BEFORE_EXPIRED,
)

from agentledger.core.assets import USDC_BASE, AcceptedAsset
from agentledger.finance import wire
from agentledger.store.finance import FAILED, RELEASED, SETTLED, PaymentProofs
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from tests.conftest import BACKENDS
from tests.harness import Harness, running_gateway
from tests.integration.paid_support import (
    AUTH_NAME,
    FEE_NANOS,
    MODEL_COST_NANOS,
    PRICE_NANOS,
    Published,
    Workflow,
    header_of,
    offer_of,
    paid_header,
    prepare_workspace,
    publish,
    workflow_agent,
    workflow_server,
)
from tests.unit.finance.buyers import signed

pytestmark = pytest.mark.e2e


@dataclass
class Seller:
    gw: Harness
    flow: Workflow
    server: ServerThread
    agent: str
    store: SQLStore

    def leaks(self, resp: httpx.Response) -> list[str]:
        """Where the workflow's address shows in an answer (body or headers): nowhere, or it leaked."""
        secrets = (f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}", self.flow.path, self.flow.secret)
        seen = resp.text + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
        return [s for s in secrets if s in seen]

    async def proof(self, header: str, until: str | None = None) -> dict[str, Any] | None:
        """The proof's row; with `until`, once it reached that state (recorded just after the answer), or as it is
        after 5 s."""
        proof = wire.proof_of(wire.decode_payment_signature(header))
        deadline = time.monotonic() + 5
        while True:
            row = await PaymentProofs(self.store).get(self.gw.workspace, proof.id)
            if until is None or (row is not None and row["state"] == until) or time.monotonic() > deadline:
                return row
            await asyncio.sleep(0.01)

    def runs_of(self, endpoint: Published) -> list[dict[str, Any]]:
        return list(self.gw.get("/api/runs", endpoint=endpoint.endpoint["id"])["data"])


@pytest.fixture(scope="module", params=BACKENDS)
def seller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread
) -> Iterator[Seller]:
    data = tmp_path_factory.mktemp("paid")
    url = f"sqlite:///{data / 'paid.db'}" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    with workflow_server() as (flow, server), running_gateway(url, data, upstream) as gw:
        flow.gateway_url = gw.url
        prepare_workspace(gw)
        store = SQLStore(url)
        yield Seller(gw, flow, server, workflow_agent(gw, flow, server), store)
        asyncio.run(store.aclose())


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        yield c


async def call(
    s: Seller, client: httpx.AsyncClient, ep: Published, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await client.post(
        s.gw.url + ep.url, content=content, headers={"content-type": "application/json", **(headers or {})}
    )
    assert s.leaks(resp) == [], (resp.status_code, resp.text)
    return resp


async def pay(s: Seller, client: httpx.AsyncClient, ep: Published, body: Any, **headers: str) -> httpx.Response:
    """x402's client end to end: the 402, then the same call paid."""
    first = await call(s, client, ep, body)
    assert first.status_code == 402, first.text
    header = await paid_header(Account.create(), first)
    return await call(s, client, ep, body, {"PAYMENT-SIGNATURE": header, **headers})


def error_of(resp: httpx.Response) -> dict[str, Any]:
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) <= {"message", "type", "code", "param", "reason"}, err
    return err


def settlement_of(resp: httpx.Response) -> Any:
    return decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"])


# -- the sale ---------------------------------------------------------------------------------------------------


async def test_a_buyer_pays_the_workflow_runs_and_the_run_keeps_the_books(
    seller: Seller, client: httpx.AsyncClient
) -> None:
    s = seller
    ep = publish(s.gw, s.agent)
    calls = len(s.flow.calls)
    first = await call(s, client, ep, {"text": "the quarterly report"})
    assert first.status_code == 402
    err = error_of(first)
    assert (err["type"], err["code"], err["param"]) == ("payment_required", "payment_required", "PAYMENT-SIGNATURE")
    assert "$0.010000000 a call (10000 atomic units of USDC on eip155:84532)" in err["message"]
    assert first.headers["cache-control"] == "no-store"
    offer = offer_of(first)
    (req,) = offer.accepts
    assert (offer.x402_version, req.scheme, req.network, req.amount) == (2, "exact", "eip155:84532", "10000")
    assert (req.pay_to, req.max_timeout_seconds) == (ep.pay_to, 60)
    assert req.asset == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    assert offer.resource.url.endswith(ep.url) and offer.error is None
    assert len(s.flow.calls) == calls  # asking the price runs nothing

    account = Account.create()
    header = await paid_header(account, first)
    session = {"alephant-session-id": "sess-buyer-1", "alephant-session-path": "/buy/summarize", "x-request-id": "rq-1"}
    resp = await call(s, client, ep, {"text": "the quarterly report"}, {"PAYMENT-SIGNATURE": header, **session})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"summary": "This is a mock reply to: the quarterly report", "model_status": 200}
    settled = settlement_of(resp)
    assert settled.success and settled.payer == account.address and settled.network == "eip155:84532"
    assert settled.transaction.startswith("local:0x")
    run_id = resp.headers["alephant-run-id"]

    # The workflow got the body, the run's headers, the scoped key and its own auth header.
    (got,) = s.flow.calls[calls:]
    h = got["headers"]
    assert got["body"] == {"text": "the quarterly report"} and got["method"] == "POST"
    assert (h["alephant-run-id"], h["alephant-agent-id"], h["x-request-id"]) == (run_id, s.agent, "rq-1")
    assert (h["alephant-session-id"], h["alephant-session-path"]) == ("sess-buyer-1", "/buy/summarize")
    assert h[AUTH_NAME.lower()] == s.flow.secret and h["alephant-virtual-key"].startswith("vk-")
    assert (h["alephant-payer"], h["alephant-endpoint"]) == (account.address, ep.endpoint["slug"])
    assert s.flow.model_answers[-1] == 200

    run = s.gw.get(f"/api/runs/{run_id}")
    assert (run["status"], run["agent_id"], run["department_id"]) == ("succeeded", s.agent, s.gw.department)
    assert (run["endpoint_id"], run["session_id"]) == (ep.endpoint["id"], "sess-buyer-1")
    assert run["virtual_key_id"] == ep.endpoint["virtual_key_id"]
    t = run["totals"]
    assert t["revenue_usd"] == "0.010000000" and t["model_cost_usd"] == "0.002000000"
    assert t["fees_usd"] == "0.000750000" and t["cost_usd"] == "0.002750000"
    assert t["margin_usd"] == "0.007250000" == f"0.00{PRICE_NANOS - MODEL_COST_NANOS - FEE_NANOS}"
    steps = _flat(run["steps"])
    kinds = [(st["kind"], st["status"]) for st in steps]
    assert kinds == [("payment", "ok"), ("workflow_step", "ok"), ("model_call", "ok"), ("payment", "ok")], kinds
    verified, flow_step, model, final = steps
    assert verified["payment"]["status"] == "verified" and final["payment"]["status"] == "settled"
    assert flow_step["attributes"]["http_status"] == 200 and "url" not in flow_step["attributes"]
    assert model["model"] == "seller-model" and model["cost_usd"] == "0.002000000"
    p = final["payment"]
    assert (p["direction"], p["protocol"], p["amount_usd"], p["fee_usd"]) == (
        "inbound",
        "x402",
        "0.010000000",
        "0.000750000",
    )
    assert (p["asset_amount"], p["network"], p["counterparty"]) == ("10000", "eip155:84532", account.address)
    assert (p["reference"], p["endpoint_id"]) == (settled.transaction, ep.endpoint["id"])

    row = await s.proof(header, until=SETTLED)
    assert row is not None and (row["state"], row["reference"], row["run_id"]) == (SETTLED, settled.transaction, run_id)
    assert row["payment_id"] == final["id"] and row["endpoint_id"] == ep.endpoint["id"]

    # Replayed, the proof is refused (the facilitator knows its nonce is used), and nothing runs again.
    again = await call(s, client, ep, {"text": "the quarterly report"}, {"PAYMENT-SIGNATURE": header})
    assert again.status_code == 402
    assert (error_of(again)["code"], error_of(again)["reason"]) == ("payment_already_used", ERR_NONCE_ALREADY_USED)
    assert offer_of(again).error == ERR_NONCE_ALREADY_USED
    assert len(s.flow.calls) == calls + 1 and len(s.runs_of(ep)) == 1


async def test_a_sale_and_its_model_call_count_against_the_workflow_agents_budget(
    seller: Seller, client: httpx.AsyncClient
) -> None:
    s = seller
    agent = workflow_agent(s.gw, s.flow, s.server)
    budget = s.gw.api(
        "POST",
        "/api/budgets",
        json={"scope": "agent", "scope_value": agent, "limit_usd": "10", "period": "total", "action": "alert_only"},
    )
    assert budget.status_code == 201, budget.text
    resp = await pay(s, client, publish(s.gw, agent), {"text": "hi"})
    assert resp.status_code == 200
    # The model call through the scoped key, and the sale's fee, as the step API charges a payment step's cost.
    spent = s.gw.get(f"/api/budgets/{budget.json()['id']}")["status"]["spent_usd"]
    assert spent == "0.002750000" == f"0.00{MODEL_COST_NANOS + FEE_NANOS}"


async def test_a_get_runtime_gets_the_body_as_query_parameters(seller: Seller, client: httpx.AsyncClient) -> None:
    s = seller
    agent = workflow_agent(s.gw, s.flow, s.server, method="GET")
    ep = publish(s.gw, agent)
    calls = len(s.flow.calls)
    resp = await pay(s, client, ep, {"text": "x", "mode": "sleep", "seconds": 0})
    assert resp.status_code == 200 and resp.json() == {"slept": True}
    (got,) = s.flow.calls[calls:]
    assert got["method"] == "GET" and got["body"] == {"text": "x", "mode": "sleep", "seconds": "0"}


# -- refusals before the claim: nothing executed, nothing charged, nothing recorded ---------------------------------


def _forged(account: Any, req: Any) -> Any:
    good = signed(account, req)
    forged = signed(Account.create(), req, nonce=good.payload["authorization"]["nonce"])
    return good.model_copy(update={"payload": {**forged.payload, "authorization": good.payload["authorization"]}})


def _other_asset(req: Any) -> Any:
    return wire.payment_requirements(USDC_BASE, amount_nanos=PRICE_NANOS, pay_to=req.pay_to, max_timeout_seconds=60)


FAKE_TOKEN = AcceptedAsset("eip155:84532", "0x" + "ab" * 20, 6, "USDC", "2")
BROKEN: dict[str, tuple[Any, str, str | None]] = {
    # name: (make the payload from (account, offered requirements), code, x402 reason)
    "bad signature": (_forged, "payment_invalid", ERR_INVALID_SIGNATURE),
    "wrong amount offered": (
        lambda a, r: signed(a, r.model_copy(update={"amount": "5000"})),
        "payment_mismatch",
        "No matching payment requirements",
    ),
    "wrong amount signed": (
        lambda a, r: signed(a, r, value="5000"),
        "payment_invalid",
        ERR_AUTHORIZATION_VALUE_MISMATCH,
    ),
    "wrong asset: another network": (
        lambda a, r: signed(a, _other_asset(r)),
        "payment_mismatch",
        "No matching payment requirements",
    ),
    "wrong asset: another token": (
        lambda a, r: signed(a, r.model_copy(update={"asset": FAKE_TOKEN.address})),
        "payment_mismatch",
        "No matching payment requirements",
    ),
    "expired": (
        lambda a, r: signed(a, r, valid_before=int(time.time()) - 60),
        "payment_expires_too_soon",
        ERR_VALID_BEFORE_EXPIRED,
    ),
    "expires before the workflow could settle": (
        lambda a, r: signed(a, r, valid_before=int(time.time()) + 8),
        "payment_expires_too_soon",
        ERR_VALID_BEFORE_EXPIRED,
    ),
    "for another recipient": (
        lambda a, r: signed(a, r.model_copy(update={"pay_to": Account.create().address})),
        "payment_mismatch",
        "No matching payment requirements",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_payment_that_does_not_pay_is_refused_before_anything_runs(
    seller: Seller, client: httpx.AsyncClient, case: str
) -> None:
    s, (make, code, reason) = seller, BROKEN[case]
    ep = publish(s.gw, s.agent)
    first = await call(s, client, ep, {"text": "hi"})
    (req,) = offer_of(first).accepts
    calls = len(s.flow.calls)
    header = header_of(make(Account.create(), req))
    resp = await call(s, client, ep, {"text": "hi"}, {"PAYMENT-SIGNATURE": header})
    assert resp.status_code == 402, resp.text
    err = error_of(resp)
    assert (err["type"], err["code"], err.get("reason")) == ("payment_required", code, reason)
    assert offer_of(resp).error == reason and offer_of(resp).accepts == [req]  # pay again: the same offer
    assert len(s.flow.calls) == calls and s.runs_of(ep) == []
    assert await s.proof(header) is None  # never claimed: nothing charged, and the proof is not spent


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("not base64 at all!", "PAYMENT-SIGNATURE is not base64-encoded JSON"),
        (base64.b64encode(b'{"x402Version": 1}').decode(), "PAYMENT-SIGNATURE is not an x402 payment payload"),
        ("A" * 20_000, "PAYMENT-SIGNATURE is longer than 16384 characters"),
    ],
)
async def test_a_malformed_payment_is_a_402_naming_what_is_wrong(
    seller: Seller, client: httpx.AsyncClient, header: str, message: str
) -> None:
    s = seller
    ep = publish(s.gw, s.agent)
    calls = len(s.flow.calls)
    resp = await call(s, client, ep, {"text": "hi"}, {"PAYMENT-SIGNATURE": header})
    assert resp.status_code == 402
    err = error_of(resp)
    assert (err["code"], err["reason"], err["param"]) == ("invalid_payment", "invalid_payload", "PAYMENT-SIGNATURE")
    assert err["message"].startswith(message), err["message"]
    assert offer_of(resp).accepts[0].amount == "10000"
    assert len(s.flow.calls) == calls and s.runs_of(ep) == []


async def test_a_payer_the_endpoint_does_not_sell_to_is_refused(seller: Seller, client: httpx.AsyncClient) -> None:
    s = seller
    allowed = Account.create().address
    ep = publish(s.gw, s.agent, policy={"allowed_payers": [allowed.lower()]})
    assert ep.endpoint["policy"]["allowed_payers"] == [allowed]  # stored checksummed
    first = await call(s, client, ep, {"text": "hi"})
    calls = len(s.flow.calls)
    stranger = Account.create()
    header = await paid_header(stranger, first)
    resp = await call(s, client, ep, {"text": "hi"}, {"PAYMENT-SIGNATURE": header})
    assert resp.status_code == 403
    err = error_of(resp)
    assert (err["type"], err["code"]) == ("permission_error", "payer_not_allowed")
    assert err["message"] == f"This endpoint does not sell to {stranger.address}."
    assert len(s.flow.calls) == calls and s.runs_of(ep) == [] and await s.proof(header) is None


async def test_over_the_rate_a_paid_call_is_refused_before_verification(
    seller: Seller, client: httpx.AsyncClient
) -> None:
    s = seller
    ep = publish(s.gw, s.agent, policy={"requests_per_minute": 1})
    first = await call(s, client, ep, {"text": "hi"})
    junk = await call(s, client, ep, {"text": "hi"}, {"PAYMENT-SIGNATURE": "junk"})
    assert junk.status_code == 402  # counted: every payment presented is
    calls = len(s.flow.calls)
    header = await paid_header(Account.create(), first)
    resp = await call(s, client, ep, {"text": "hi"}, {"PAYMENT-SIGNATURE": header})
    assert resp.status_code == 429
    err = error_of(resp)
    assert (err["code"], err["message"]) == (
        "rate_limited",
        "This paid endpoint takes at most 1 paid calls a minute; retry later (nothing was charged).",
    )
    assert 1 <= int(resp.headers["retry-after"]) <= 120  # the sliding window's wait (limits/base.py)
    assert len(s.flow.calls) == calls and s.runs_of(ep) == [] and await s.proof(header) is None
    # Asking the price is never limited.
    assert (await call(s, client, ep, {"text": "hi"})).status_code == 402


async def test_over_concurrency_the_proof_is_given_back_and_can_pay_later(
    seller: Seller, client: httpx.AsyncClient
) -> None:
    s = seller
    ep = publish(s.gw, s.agent, policy={"concurrent": 1})
    body = {"text": "hi", "mode": "sleep", "seconds": 1.0}
    calls = len(s.flow.calls)
    busy = asyncio.create_task(pay(s, client, ep, body))
    while len(s.flow.calls) == calls:  # the first call is in the workflow now
        await asyncio.sleep(0.01)
    first = await call(s, client, ep, body)
    header = await paid_header(Account.create(), first)
    resp = await call(s, client, ep, body, {"PAYMENT-SIGNATURE": header})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "1"
    assert error_of(resp)["code"] == "rate_limited" and "at most 1 calls at once" in error_of(resp)["message"]
    row = await s.proof(header)
    assert row is not None and row["state"] == RELEASED and len(s.flow.calls) == calls + 1
    assert (await busy).status_code == 200
    again = await call(s, client, ep, body, {"PAYMENT-SIGNATURE": header})  # nothing ran on it: it pays now
    assert again.status_code == 200, again.text
    row = await s.proof(header, until=SETTLED)
    assert row is not None and row["state"] == SETTLED and len(s.runs_of(ep)) == 2


async def test_a_body_the_endpoint_does_not_take_is_refused_before_anyone_pays(
    seller: Seller, client: httpx.AsyncClient
) -> None:
    s = seller
    ep = publish(s.gw, s.agent)
    calls = len(s.flow.calls)
    cases = [
        (b"[1, 2]", 400, "invalid_json", None, "The request body must be a JSON object."),
        (b"{nope", 400, "invalid_json", None, None),
        (orjson.dumps({"mode": "ok"}), 400, "invalid_input", None, "'text' is a required property"),
        (orjson.dumps({"text": ""}), 400, "invalid_input", "$.text", "'' should be non-empty"),
        (b'{"text": "' + b"x" * 1_100_000 + b'"}', 413, "request_too_large", None, None),
    ]
    for content, status, code, param, message in cases:
        resp = await call(s, client, ep, content, {"PAYMENT-SIGNATURE": "anything"})
        assert resp.status_code == status, (content[:20], resp.text)
        err = error_of(resp)
        assert (err["code"], err["param"]) == (code, param), err
        if message is not None:
            assert err["message"].endswith(message), err["message"]
    assert len(s.flow.calls) == calls and s.runs_of(ep) == []


async def test_an_unknown_or_disabled_endpoint_is_404_and_its_key_stops_working(
    seller: Seller, client: httpx.AsyncClient
) -> None:
    s = seller
    ep = publish(s.gw, s.agent)
    missing = await client.post(f"{s.gw.url}/x402/{s.gw.workspace}/no-such-thing", json={"text": "hi"})
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    # The scoped key works while the endpoint does (the workflow's model calls use it)...
    resp = await pay(s, client, ep, {"text": "hi"})
    assert resp.status_code == 200
    key = s.flow.calls[-1]["headers"]["alephant-virtual-key"]
    disabled = s.gw.api("DELETE", f"/api/paid-endpoints/{ep.endpoint['id']}")
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    gone = await call(s, client, ep, {"text": "hi"})
    assert gone.status_code == 404
    # ...and is revoked with it.
    chat = await client.post(
        s.gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "seller-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert chat.status_code == 401


async def test_a_buyer_who_hangs_up_does_not_leave_the_call_half_done(
    seller: Seller, client: httpx.AsyncClient
) -> None:
    s = seller
    ep = publish(s.gw, s.agent)
    body = {"text": "hi", "mode": "sleep", "seconds": 0.5}
    first = await call(s, client, ep, body)
    header = await paid_header(Account.create(), first)
    with pytest.raises(httpx.ReadTimeout):  # the buyer leaves while the workflow runs
        await client.post(s.gw.url + ep.url, json=body, headers={"PAYMENT-SIGNATURE": header}, timeout=0.2)
    # The call finishes anyway: the work was paid for with a proof the buyer signed, so it is settled and booked.
    row = await s.proof(header, until=SETTLED)
    assert row is not None and row["state"] == SETTLED
    run = s.gw.get(f"/api/runs/{row['run_id']}")
    assert run["status"] == "succeeded" and run["totals"]["revenue_usd"] == "0.010000000"


# -- the workflow failing: not settled, the run failed with its costs --------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status", "code", "message"),
    [
        ("error", 502, "workflow_failed", "The workflow failed (HTTP 500)."),
        ("slow", 504, "workflow_timeout", "The workflow did not answer within 1.5 s."),
        ("text", 502, "workflow_bad_response", "The workflow's answer is not JSON."),
    ],
)
async def test_a_failing_workflow_is_not_paid_and_its_run_shows_the_loss(
    seller: Seller, client: httpx.AsyncClient, mode: str, status: int, code: str, message: str
) -> None:
    s = seller
    ep = publish(s.gw, s.agent)
    first = await call(s, client, ep, {"text": "hi", "mode": mode})
    header = await paid_header(Account.create(), first)
    answers = len(s.flow.model_answers)
    resp = await call(s, client, ep, {"text": "hi", "mode": mode}, {"PAYMENT-SIGNATURE": header})
    assert resp.status_code == status, resp.text
    assert "PAYMENT-RESPONSE" not in resp.headers  # nothing was settled
    err = error_of(resp)
    assert (err["type"], err["code"], err["message"]) == ("upstream_error", code, message)
    run_id = resp.headers["alephant-run-id"]
    assert s.flow.model_answers[answers:] == [200]  # the workflow's model call was made (and paid for)
    run = s.gw.get(f"/api/runs/{run_id}")
    assert run["status"] == "failed" and run["error"] == f"not settled: the workflow failed: {message}"
    t = run["totals"]
    assert (t["revenue_usd"], t["model_cost_usd"], t["fees_usd"]) == ("0.000000000", "0.002000000", "0.000000000")
    assert t["margin_usd"] == "-0.002000000"  # a negative margin is real data
    payments = [st for st in _flat(run["steps"]) if st["kind"] == "payment"]
    assert [st["payment"]["status"] for st in payments] == ["verified", "failed"]
    flow_step = next(st for st in _flat(run["steps"]) if st["kind"] == "workflow_step")
    assert flow_step["status"] == "error" and flow_step["error"] == message
    assert flow_step["attributes"]["http_status"] == (500 if mode == "error" else 200 if mode == "text" else None)
    row = await s.proof(header, until=FAILED)
    assert row is not None and row["state"] == FAILED
    # The proof was used: a replay is refused (the buyer signs a new one), and runs nothing.
    calls = len(s.flow.calls)
    again = await call(s, client, ep, {"text": "hi"}, {"PAYMENT-SIGNATURE": header})
    assert again.status_code == 402 and error_of(again)["code"] == "payment_already_used"
    assert len(s.flow.calls) == calls


def _flat(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in nodes:
        out.append(n)
        out += _flat(n.get("children") or [])
    return sorted(out, key=lambda st: st["started_at"])


def test_the_secret_never_shows(seller: Seller) -> None:
    s = seller
    for path in (f"/api/agents/{s.agent}", "/api/agents", "/api/paid-endpoints"):
        text = s.gw.api("GET", path).text
        assert s.flow.secret not in text and "vk-" not in text, path
    assert s.gw.get(f"/api/agents/{s.agent}")["runtime"]["auth_header"] == {"name": AUTH_NAME, "set": True}
