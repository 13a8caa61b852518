"""POST /v1/x402/fetch and /api/payment-signers against real servers: a gateway over SQLite and PostgreSQL whose
allow-list names 127.0.0.1, a loopback x402 seller (finance/wire.py + LocalFacilitator), and x402's own client
signing inside the gateway. Nothing is mocked; no traffic leaves 127.0.0.1 (the guard's refusals are decided
before any connection, and a refused URL is never connected to)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402.mechanisms.evm.utils import normalize_address

from agentledger.api.openapi import document
from agentledger.core.assets import USDC_BASE, USDC_BASE_SEPOLIA
from agentledger.finance import wire
from agentledger.store.fetch_replays import FetchReplayStore
from agentledger.store.retention import RetentionStore
from agentledger.store.sql import SQLStore
from agentledger.testing import ServerThread
from tests.harness import Harness, provision, running_gateway, unlocked
from tests.integration.x402_seller import Seller, seller_app

ALLOW = dict(x402_fetch_allow_hosts="127.0.0.1", x402_fetch_timeout=5.0)
KEY = "0x" + "11" * 32
KEY_ADDRESS = str(Account.from_key(KEY).address)


@pytest.fixture(scope="module")
def seller() -> Iterator[tuple[Seller, ServerThread]]:
    state = Seller()
    with ServerThread(seller_app(state)) as server:
        yield state, server


@pytest.fixture
def shop(seller: tuple[Seller, ServerThread]) -> Iterator[tuple[Seller, str]]:
    state, server = seller
    state.reset()
    yield state, server.url + "/goods"


@pytest.fixture
def gw(db_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    with running_gateway(db_url, tmp_path, upstream, **ALLOW) as harness:
        yield harness


@pytest.fixture
def closed(sqlite_url: str, tmp_path: Path, upstream: ServerThread) -> Iterator[Harness]:
    """A gateway with no allow-list: the guard's defaults."""
    with running_gateway(sqlite_url, tmp_path, upstream) as harness:
        yield harness


def add_signer(gw: Harness, **fields: Any) -> dict[str, Any]:
    fields.setdefault("name", "main")
    if "generate" not in fields:
        fields.setdefault("private_key", KEY)
    resp = gw.api("POST", "/api/payment-signers", json=fields)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def add_budget(gw: Harness, limit: str, **fields: Any) -> dict[str, Any]:
    fields = {"scope": "workspace", "period": "total", "limit_usd": limit, "action": "block_requests", **fields}
    resp = gw.api("POST", "/api/budgets", json=fields)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def fetch(gw: Harness, hdrs: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return gw.v1("POST", "/v1/x402/fetch", json=body, headers=hdrs or {})


def run_steps(gw: Harness, run_id: str) -> list[dict[str, Any]]:
    """The run's steps, the tree flattened."""
    doc = gw.get(f"/api/runs/{run_id}")
    out: list[dict[str, Any]] = []

    def walk(nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            out.append(node)
            walk(node.get("children") or [])

    walk(doc["steps"])
    return out


def budget_figures(gw: Harness, budget_id: str, want: tuple[str, str]) -> tuple[str, str]:
    """(spent, reserved) once the counters have settled (a settle runs beside the answer, never before it)."""
    deadline = time.monotonic() + 5
    while True:
        status = gw.get(f"/api/budgets/{budget_id}")["status"]
        found = (status["spent_usd"], status["reserved_usd"])
        if found == want or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def ledger(gw: Harness, budget_id: str) -> list[tuple[str, int, int]]:
    rows = gw.get("/api/ledger", budget=budget_id, limit=100)["data"]
    return sorted((r["kind"], r["reserved_delta"], r["spent_delta"]) for r in rows)


# -- the paid path -------------------------------------------------------------------------------------------------


def test_a_paid_fetch_pays_records_the_payment_and_charges_the_budget(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    signer = add_signer(gw)
    budget = add_budget(gw, "1.00")
    resp = fetch(gw, url=url, method="POST", body={"q": "weather"}, max_amount_usd="0.05", run_id="run-buy-1")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    settle = seller.settled[0]
    assert out == {
        "status": 200,
        "headers": {"content-type": "application/json", "payment-response": out["headers"]["payment-response"]},
        "body": {"goods": "the data", "echo": '{"q":"weather"}'},
        "body_encoding": "json",
        "run_id": "run-buy-1",
        "payment": {
            "status": "settled",
            "confirmed": True,
            "amount_usd": "0.010000000",
            "charged_usd": "0.010000000",
            "asset_amount": "10000",
            "network": "eip155:84532",
            "asset": normalize_address(USDC_BASE_SEPOLIA.address),
            "payee": normalize_address(seller.pay_to),
            "payer": KEY_ADDRESS,
            "signer": "main",
            "reference": settle.transaction,
            "error": None,
            "step_id": out["payment"]["step_id"],
        },
    }
    assert settle.transaction.startswith("local:") and settle.payer == KEY_ADDRESS == signer["address"]
    assert resp.headers["alephant-cost-usd"] == "0.010000000"
    assert resp.headers["alephant-run-id"] == "run-buy-1"
    assert resp.headers["alephant-policy-decision"] == "allowed"
    assert resp.headers["alephant-budget-remaining-usd"] == "0.990000000"
    # The seller was asked twice: without a payment, then with x402's signature for exactly its price.
    first, second = seller.payment_headers()
    assert first is None and second is not None
    paid = wire.decode_payment_signature(second)
    assert (paid.accepted.amount, paid.payload["authorization"]["from"]) == ("10000", KEY_ADDRESS)

    steps = {s["kind"]: s for s in run_steps(gw, "run-buy-1")}
    call, payment = steps["api_call"], steps["payment"]
    assert (call["name"], call["status"], call["cost_nanos"]) == ("POST 127.0.0.1", "ok", 0)
    assert call["input"] == {"method": "POST", "url": url}
    assert (payment["parent_id"], payment["status"], payment["cost_nanos"]) == (call["id"], "ok", 10_000_000)
    assert payment["payment"] == {
        "direction": "outbound",
        "status": "settled",
        "amount_usd": "0.010000000",
        "fee_usd": "0.000000000",
        "protocol": "x402",
        "asset_amount": "10000",
        "network": "eip155:84532",
        "asset": normalize_address(USDC_BASE_SEPOLIA.address),
        "counterparty": normalize_address(seller.pay_to),
        "reference": settle.transaction,
        "endpoint_id": None,
    }
    assert payment["id"] == out["payment"]["step_id"]
    assert payment["attributes"]["signer"] == "main" and payment["attributes"]["confirmed"] is True
    assert steps["policy_check"]["name"] == "authorize payment" and steps["policy_check"]["status"] == "ok"
    run = gw.get("/api/runs/run-buy-1")
    assert run["totals"]["cost_usd"] == "0.010000000"

    assert budget_figures(gw, budget["id"], ("0.010000000", "0.000000000")) == ("0.010000000", "0.000000000")
    assert ledger(gw, budget["id"]) == [("reserve", 10_000_000, 0), ("settle", -10_000_000, 10_000_000)]


def test_the_run_header_names_the_run_and_a_fetch_without_one_gets_its_own(
    gw: Harness, shop: tuple[Seller, str]
) -> None:
    _, url = shop
    add_signer(gw)
    named = fetch(gw, {"alephant-run-id": "run-from-header"}, url=url, max_amount_usd="0.05")
    assert named.status_code == 200 and named.json()["run_id"] == "run-from-header"
    fresh = fetch(gw, url=url, max_amount_usd="0.05")
    assert fresh.status_code == 200, fresh.text
    run_id = fresh.json()["run_id"]
    assert run_id.startswith("run_") and fresh.headers["alephant-run-id"] == run_id
    assert [s["kind"] for s in run_steps(gw, run_id)] == ["api_call", "payment"]


def test_a_seller_that_asks_nothing_is_relayed_without_paying(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    seller.mode = "free"
    budget = add_budget(gw, "1.00")
    resp = fetch(gw, url=url + "?token=secret", max_amount_usd="0.05", run_id="run-free")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": {"free": True},
        "body_encoding": "json",
        "run_id": "run-free",
        "payment": None,
    }
    assert resp.headers["alephant-cost-usd"] == "0.000000000"
    (step,) = run_steps(gw, "run-free")
    assert (step["kind"], step["status"], step["cost_nanos"]) == ("api_call", "ok", 0)
    assert step["input"] == {"method": "GET", "url": url}  # the query (it may hold secrets) is not kept
    assert ledger(gw, budget["id"]) == []


def test_a_failed_settlement_fails_the_payment_and_releases_the_reservation(
    gw: Harness, shop: tuple[Seller, str]
) -> None:
    seller, url = shop
    seller.mode = "settle_fails"
    add_signer(gw)
    budget = add_budget(gw, "1.00")
    resp = fetch(gw, url=url, max_amount_usd="0.05", run_id="run-unsettled")
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["status"], out["body"], out["body_encoding"]) == (402, {}, "json")
    assert out["payment"]["status"] == "failed" and out["payment"]["charged_usd"] == "0.000000000"
    assert out["payment"]["error"] == "the seller's settlement failed: insufficient_funds"
    assert out["payment"]["reference"] is None
    assert resp.headers["alephant-cost-usd"] == "0.000000000"
    steps = {s["kind"]: s for s in run_steps(gw, "run-unsettled")}
    assert steps["payment"]["status"] == "error" and steps["payment"]["cost_nanos"] == 0
    assert steps["payment"]["payment"]["status"] == "failed"
    assert steps["api_call"]["status"] == "error"
    assert gw.get("/api/runs/run-unsettled")["totals"]["cost_usd"] == "0.000000000"
    assert budget_figures(gw, budget["id"], ("0.000000000", "0.000000000")) == ("0.000000000", "0.000000000")
    assert ledger(gw, budget["id"]) == [("release", -10_000_000, 0), ("reserve", 10_000_000, 0)]


def test_a_seller_serving_without_a_receipt_is_counted_unconfirmed(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    seller.mode = "no_receipt"
    add_signer(gw)
    resp = fetch(gw, url=url, max_amount_usd="0.05", run_id="run-unreceipted")
    assert resp.status_code == 200, resp.text
    payment = resp.json()["payment"]
    assert (payment["status"], payment["confirmed"], payment["charged_usd"]) == ("settled", False, "0.010000000")
    assert payment["error"] == "the seller answered without a PAYMENT-RESPONSE"
    assert gw.get("/api/runs/run-unreceipted")["totals"]["cost_usd"] == "0.010000000"


# -- refusals: nothing signed ----------------------------------------------------------------------------------------


def test_a_price_over_max_amount_is_refused_and_nothing_is_signed(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    budget = add_budget(gw, "1.00")
    resp = fetch(gw, url=url, max_amount_usd="0.009999999", run_id="run-dear")
    assert resp.status_code == 402
    req = seller.requirements()
    assert resp.json() == {
        "error": {
            "message": "The seller's price is $0.010000000, over max_amount_usd $0.009999999; nothing was paid.",
            "type": "invalid_request_error",
            "code": "payment_over_max",
            "param": "max_amount_usd",
            "price_usd": "0.010000000",
            "max_amount_usd": "0.009999999",
            "accepts": [
                {
                    "scheme": "exact",
                    "network": "eip155:84532",
                    "asset": req.asset,
                    "amount": "10000",
                    "pay_to": req.pay_to,
                }
            ],
        }
    }
    assert seller.payment_headers() == [None]
    assert ledger(gw, budget["id"]) == []
    (step,) = run_steps(gw, "run-dear")
    assert (step["kind"], step["status"], step["error"]) == ("api_call", "error", resp.json()["error"]["message"])


def test_a_budget_too_small_is_402_budget_exceeded_and_nothing_is_signed(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    budget = add_budget(gw, "0.005")
    resp = fetch(gw, url=url, max_amount_usd="0.05", run_id="run-poor")
    assert resp.status_code == 402
    error = resp.json()["error"]
    assert (error["code"], error["type"], error["param"]) == ("budget_exceeded", "budget_exceeded", None)
    assert error["message"] == (
        f"Budget {budget['id']!r} (workspace, total, block_requests) has too little left for payment "
        "'127.0.0.1': limit $0.005000000, spent $0.000000000, reserved $0.000000000, asked $0.010000000 at most."
    )
    assert resp.headers["alephant-policy-decision"] == "blocked"
    assert seller.payment_headers() == [None]  # the seller never saw a payment
    assert ledger(gw, budget["id"]) == []
    steps = {s["kind"]: s for s in run_steps(gw, "run-poor")}
    assert steps["policy_check"]["status"] == "error"
    assert steps["policy_check"]["attributes"]["decided_by"] == {
        "kind": "budget",
        "id": budget["id"],
        "scope": "workspace",
    }
    assert steps["api_call"]["error"] == error["message"]
    assert "payment" not in steps


def test_a_policy_blocking_payments_is_403_and_nothing_is_signed(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    policy = {
        "name": "no paying",
        "scope": "workspace",
        "rules": [{"id": "no-pay", "action": "block", "message": "no payments", "when": {"kinds": ["payment"]}}],
    }
    assert gw.api("POST", "/api/policies", json=policy).status_code == 201
    resp = fetch(gw, url=url, max_amount_usd="0.05", run_id="run-blocked")
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert (error["code"], error["type"]) == ("policy_blocked", "permission_error")
    assert "no payments" in error["message"]
    assert resp.headers["alephant-policy-decision"] == "blocked"
    assert seller.payment_headers() == [None]


def test_nothing_payable_or_no_signer_is_refused_before_signing(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    resp = fetch(gw, url=url, max_amount_usd="0.05")
    assert resp.status_code == 402
    assert resp.json()["error"]["code"] == "no_payment_signer"
    assert resp.json()["error"]["message"] == (
        "The workspace has no active payment signer for eip155:84532 (POST /api/payment-signers); nothing was paid."
    )
    add_signer(gw, networks=["eip155:8453"])  # Base only: the seller wants Base Sepolia
    assert fetch(gw, url=url, max_amount_usd="0.05").json()["error"]["code"] == "no_payment_signer"
    seller.mode = "v1"
    resp = fetch(gw, url=url, max_amount_usd="0.05")
    assert (resp.status_code, resp.json()["error"]["code"]) == (402, "payment_unsupported")
    assert seller.payment_headers() == [None, None, None]


def test_the_cheapest_payable_offer_is_paid(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    # A dearer offer on Base (known, and this signer pays on it) and a token nobody knows: the cheaper one is paid.
    seller.extra_offers.append(
        wire.payment_requirements(USDC_BASE, amount_nanos=20_000_000, pay_to=seller.pay_to, max_timeout_seconds=60)
    )
    resp = fetch(gw, url=url, max_amount_usd="0.05")
    assert resp.status_code == 200, resp.text
    assert (resp.json()["payment"]["network"], resp.json()["payment"]["amount_usd"]) == ("eip155:84532", "0.010000000")


def test_a_revoked_signer_pays_no_more(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    signer = add_signer(gw)
    revoked = gw.api("DELETE", f"/api/payment-signers/{signer['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    resp = fetch(gw, url=url, max_amount_usd="0.05")
    assert (resp.status_code, resp.json()["error"]["code"]) == (402, "no_payment_signer")
    assert seller.payment_headers() == [None]


# -- the address guard ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("localhost", "'localhost' resolves to"),
        ("169.254.169.254", "169.254.169.254 is a cloud metadata address"),
        ("10.1.2.3", "10.1.2.3 is a private address"),
        ("[::1]", "::1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1 is a loopback address"),
        ("0.0.0.0", "0.0.0.0 is a unspecified address"),
        ("[fd00:ec2::254]", "fd00:ec2::254 is a cloud metadata address"),
    ],
)
def test_private_loopback_and_metadata_urls_are_refused_without_the_allow_list(
    closed: Harness, shop: tuple[Seller, str], host: str, why: str
) -> None:
    seller, url = shop
    port = url.split(":")[2].split("/")[0]
    resp = fetch(closed, url=f"http://{host}:{port}/goods", max_amount_usd="0.05")
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["type"], error["param"]) == ("address_refused", "permission_error", "url")
    assert error["message"].startswith(f"The URL is refused: {why}")
    assert error["message"].endswith("add it to x402_fetch_allow_hosts to allow it.")
    assert seller.received == []


def test_the_exact_refusal_of_a_loopback_url(closed: Harness) -> None:
    resp = fetch(closed, url="http://127.0.0.1:9/x", max_amount_usd="0.05")
    assert resp.status_code == 403
    assert resp.json() == {
        "error": {
            "message": "The URL is refused: 127.0.0.1 is a loopback address; add it to x402_fetch_allow_hosts to "
            "allow it.",
            "type": "permission_error",
            "code": "address_refused",
            "param": "url",
        }
    }


# -- bad input ---------------------------------------------------------------------------------------------------------

GOOD = {"url": "http://127.0.0.1:9/x", "max_amount_usd": "0.05"}
NEED_MAX = (
    "'max_amount_usd' is required: a positive decimal string of dollars, such as \"0.05\", the most this fetch may pay."
)


def refused_header(name: str) -> str:
    why = "hop-by-hop, framing, credential, forwarding and x402 headers are the gateway's."
    return f"'headers' may not set {name!r}: {why}"


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"max_amount_usd": "0.05"}, "url", "'url' is required."),
        (
            {**GOOD, "url": "ftp://127.0.0.1/x"},
            "url",
            "'url' must be an absolute http or https URL with a host (no credentials, no spaces).",
        ),
        (
            {**GOOD, "url": "http://user:pw@127.0.0.1/x"},
            "url",
            "'url' must be an absolute http or https URL with a host (no credentials, no spaces).",
        ),
        (
            {**GOOD, "url": "http:///x"},
            "url",
            "'url' must be an absolute http or https URL with a host (no credentials, no spaces).",
        ),
        (
            {**GOOD, "url": "http://127.0.0.1:99999/x"},
            "url",
            "'url' must be an absolute http or https URL with a host (no credentials, no spaces).",
        ),
        ({**GOOD, "url": 7}, "url", "'url' must be a non-empty string of at most 2048 characters."),
        (
            {"url": GOOD["url"]},
            "max_amount_usd",
            NEED_MAX,
        ),
        (
            {**GOOD, "max_amount_usd": "0"},
            "max_amount_usd",
            NEED_MAX,
        ),
        (
            {**GOOD, "max_amount_usd": 0.05},
            "max_amount_usd",
            NEED_MAX,
        ),
        (
            {**GOOD, "max_amount_usd": "1000000.000000001"},
            "max_amount_usd",
            "'max_amount_usd' is past the per-event bound of $1,000,000.",
        ),
        ({**GOOD, "method": "TRACE"}, "method", "'method' must be one of GET, POST, PUT, PATCH, DELETE."),
        ({**GOOD, "body": {"a": 1}}, "body", "'body' cannot be sent with GET; use POST, PUT or PATCH."),
        ({**GOOD, "headers": ["x"]}, "headers", "'headers' must be an object of header names to string values."),
        (
            {**GOOD, "headers": {"Authorization": "Bearer x"}},
            "headers",
            refused_header("Authorization"),
        ),
        (
            {**GOOD, "headers": {"Transfer-Encoding": "chunked"}},
            "headers",
            refused_header("Transfer-Encoding"),
        ),
        (
            {**GOOD, "headers": {"PAYMENT-SIGNATURE": "x"}},
            "headers",
            refused_header("PAYMENT-SIGNATURE"),
        ),
        (
            {**GOOD, "headers": {"X-Forwarded-For": "1.2.3.4"}},
            "headers",
            refused_header("X-Forwarded-For"),
        ),
        (
            {**GOOD, "headers": {"x-a": "1\r\nHost: evil"}},
            "headers",
            "'headers' value of 'x-a' must be a string of at most 8192 characters without control characters.",
        ),
        ({**GOOD, "headers": {"bad name": "1"}}, "headers", "'headers' has an invalid header name 'bad name'."),
        (
            {**GOOD, "run_id": "bad id"},
            "run_id",
            "'run_id' must start with a letter or digit and hold only letters, digits, '.', '_', ':', '-'.",
        ),
        ({**GOOD, "signer": ""}, "signer", "'signer' must be a non-empty string of at most 256 characters."),
        (
            {**GOOD, "maximum": "1"},
            "maximum",
            "Unknown field 'maximum': a fetch takes url, method, headers, body, max_amount_usd, run_id, signer.",
        ),
    ],
)
def test_bad_input_is_an_exact_400(closed: Harness, body: dict[str, Any], param: str, message: str) -> None:
    resp = fetch(closed, **body)
    assert resp.status_code == 400, resp.text
    assert resp.json() == {
        "error": {"message": message, "type": "invalid_request_error", "code": "invalid_request", "param": param}
    }


def test_run_id_and_header_must_agree_and_auth_is_required(closed: Harness) -> None:
    resp = fetch(closed, {"alephant-run-id": "run-a"}, **GOOD, run_id="run-b")
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "message": "'run_id' ('run-b') and the Alephant-Run-Id header ('run-a') name different runs.",
        "type": "invalid_request_error",
        "code": "invalid_request",
        "param": "run_id",
    }
    unauth = httpx.post(closed.url + "/v1/x402/fetch", json=GOOD)
    assert unauth.status_code == 401 and unauth.json()["error"]["code"] == "invalid_api_key"
    not_json = closed.v1("POST", "/v1/x402/fetch", content=b"[1]")
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"


# -- signers ---------------------------------------------------------------------------------------------------------


def test_signers_answer_the_address_never_the_key(closed: Harness) -> None:
    given = add_signer(closed, name="given", max_payment_usd="0.50")
    assert given == {
        "id": given["id"],
        "name": "given",
        "address": KEY_ADDRESS,
        "networks": ["eip155:84532", "eip155:8453"],
        "created_at": given["created_at"],
        "revoked_at": None,
        "max_payment_usd": "0.500000000",
        "revoked": False,
    }
    made = add_signer(closed, name="made", generate=True, networks=["eip155:84532"])
    assert made["address"].startswith("0x") and len(made["address"]) == 42 and made["networks"] == ["eip155:84532"]
    listed = closed.get("/api/payment-signers")["data"]
    assert [s["name"] for s in listed] == ["given", "made"]
    assert all(set(s) == set(given) for s in listed)
    assert "11" * 32 not in closed.api("GET", "/api/payment-signers").text
    dup = closed.api("POST", "/api/payment-signers", json={"name": "given", "generate": True})
    assert dup.status_code == 409
    revoked = closed.api("DELETE", f"/api/payment-signers/{made['id']}").json()
    assert revoked["revoked"] is True and revoked["revoked_at"] is not None
    again = closed.api("DELETE", f"/api/payment-signers/{made['id']}")
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked["revoked_at"]
    assert closed.api("DELETE", "/api/payment-signers/psg_none").status_code == 404


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"private_key": KEY}, "name", "'name' is required."),
        ({"name": "a"}, "private_key", "Send 'private_key' (32 bytes of hex) or 'generate': true."),
        ({"name": "a", "generate": False}, "private_key", "Send 'private_key' (32 bytes of hex) or 'generate': true."),
        (
            {"name": "a", "generate": True, "private_key": KEY},
            "private_key",
            "Send 'private_key' or 'generate': true, not both.",
        ),
        (
            {"name": "a", "private_key": "0x1234"},
            "private_key",
            "'private_key' must be 32 bytes of hex (64 hex digits, 0x optional).",
        ),
        ({"name": "a", "private_key": "00" * 32}, "private_key", "'private_key' is not a valid secp256k1 private key."),
        ({"name": "a", "generate": "yes"}, "generate", "'generate' must be true or false."),
        (
            {"name": "a", "generate": True, "networks": ["eip155:1"]},
            "networks",
            "'networks' must be a non-empty list of the networks payments are made on (eip155:84532, eip155:8453), "
            "or omitted for all of them.",
        ),
        (
            {"name": "a", "generate": True, "max_payment_usd": "-1"},
            "max_payment_usd",
            "'max_payment_usd' must be a positive decimal string of dollars (at most 1000000), such as \"0.50\".",
        ),
        (
            {"name": "a", "generate": True, "key": "x"},
            "key",
            "Unknown field 'key': a payment signer takes name, private_key, generate, networks, max_payment_usd.",
        ),
    ],
)
def test_bad_signers_are_exact_400s(closed: Harness, body: dict[str, Any], param: str, message: str) -> None:
    resp = closed.api("POST", "/api/payment-signers", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json() == {
        "error": {"message": message, "type": "invalid_request_error", "code": "invalid_request", "param": param}
    }


def test_a_signer_limit_below_the_price_refuses_the_payment(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw, max_payment_usd="0.005")
    resp = fetch(gw, url=url, max_amount_usd="0.05")
    assert resp.status_code == 402
    assert resp.json()["error"]["message"] == (
        "The seller's price is $0.010000000, over max_amount_usd $0.050000000 and over the signers' own limit "
        "($0.005000000 a payment); nothing was paid."
    )
    assert seller.payment_headers() == [None]


# -- closing the loop: agent A buys from agent B's paid endpoint on the same gateway --------------------------------

PAID_ROUTE = "/x402/{workspace}/{slug}"


def _workflow_app() -> Starlette:
    """Agent B's workflow: a loopback webhook standing in for n8n."""

    async def summarize(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse({"summary": str(data.get("text", ""))[:10], "run": request.headers.get("alephant-run-id")})

    return Starlette(routes=[Route("/hook", summarize, methods=["POST"])])


@pytest.mark.skipif(
    PAID_ROUTE not in document()["paths"],
    reason="closing the loop needs H2b's paid endpoint route POST /x402/{workspace}/{slug} and /api/paid-endpoints, "
    "not on main yet",
)
def test_agent_a_buys_from_agent_b_on_the_same_gateway_and_both_sides_are_in_the_books(gw: Harness) -> None:
    with ServerThread(_workflow_app()) as workflow:
        seller_agent = {
            "id": "seller-bot",
            "department_id": gw.department,
            "name": "Seller",
            "kind": "workflow",
            "runtime": {"type": "webhook", "url": workflow.url + "/hook"},
        }
        assert gw.api("POST", "/api/agents", json=seller_agent).status_code == 201
        pay_to = str(Account.create().address)
        endpoint = {"slug": "summarize", "agent_id": "seller-bot", "price_usd": "0.01", "pay_to": pay_to}
        created = gw.api("POST", "/api/paid-endpoints", json=endpoint)
        assert created.status_code == 201, created.text
        add_signer(gw)
        budget = add_budget(gw, "1.00", scope="agent", scope_value=gw.agent)

        url = gw.url + f"/x402/{gw.workspace}/summarize"
        resp = fetch(
            gw,
            {"alephant-agent-id": gw.agent},
            url=url,
            method="POST",
            body={"text": "a long text to summarize"},
            max_amount_usd="0.05",
            run_id="run-buyer",
        )
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert (out["status"], out["body"]["summary"]) == (200, "a long tex")
        payment = out["payment"]
        assert (payment["status"], payment["confirmed"], payment["amount_usd"]) == ("settled", True, "0.010000000")
        assert payment["payee"] == normalize_address(pay_to) and payment["reference"].startswith("local:")

    # A's side: the outbound payment in its run, its agent's budget charged.
    buyer = gw.get("/api/runs/run-buyer")["totals"]
    assert (buyer["outbound_payments_usd"], buyer["cost_usd"], buyer["revenue_usd"]) == (
        "0.010000000",
        "0.010000000",
        "0.000000000",
    )
    assert budget_figures(gw, budget["id"], ("0.010000000", "0.000000000")) == ("0.010000000", "0.000000000")
    # B's side and A's side, from the books: revenue for the seller agent, the outbound payment for the buyer.
    rows = {r["key"]: r for r in gw.get("/api/finance/summary", group_by="agent")["data"]}
    assert rows["seller-bot"]["revenue_usd"] == "0.010000000"
    assert rows[gw.agent]["outbound_payments_usd"] == "0.010000000"
    assert rows[gw.agent]["margin_usd"] == "-0.010000000"


def test_an_escalated_payment_waits_for_approval_and_the_same_purchase_resent_pays(
    gw: Harness, shop: tuple[Seller, str]
) -> None:
    seller, url = shop
    add_signer(gw)
    policy = {
        "name": "approve payments",
        "scope": "workspace",
        "settings": {"approval_wait_s": 0},
        "rules": [{"id": "ask", "action": "escalate", "when": {"kinds": ["payment"], "cost_over_usd": "0.001"}}],
    }
    assert gw.api("POST", "/api/policies", json=policy).status_code == 201
    held = fetch(gw, url=url, max_amount_usd="0.05", run_id="run-approve")
    assert held.status_code == 403, held.text
    error = held.json()["error"]
    assert error["code"] == "approval_required" and held.headers["retry-after"]
    assert seller.payment_headers() == [None]
    approval = gw.get(f"/api/approvals/{error['approval_id']}")
    assert (approval["kind"], approval["run_id"], approval["summary"]["amount_usd"]) == (
        "payment",
        "run-approve",
        "0.010000000",
    )
    assert gw.api("POST", f"/api/approvals/{error['approval_id']}/approve").status_code == 200
    paid = fetch(gw, url=url, max_amount_usd="0.05", run_id="run-approve")
    assert paid.status_code == 200, paid.text
    assert paid.json()["payment"]["status"] == "settled"
    assert gw.get(f"/api/approvals/{error['approval_id']}")["used"] is True


def test_an_answer_past_the_size_bound_is_502_and_its_payment_is_still_on_the_books(
    sqlite_url: str, tmp_path: Path, upstream: ServerThread, shop: tuple[Seller, str]
) -> None:
    seller, url = shop
    seller.mode = "big"
    with running_gateway(sqlite_url, tmp_path, upstream, **ALLOW, x402_fetch_max_response_bytes=1024) as small:
        add_signer(small)
        resp = fetch(small, url=url, max_amount_usd="0.05", run_id="run-big")
        assert resp.status_code == 502
        assert resp.json()["error"] == {
            "message": "The seller's answer is larger than 1024 bytes.",
            "type": "upstream_error",
            "code": "response_too_large",
            "param": None,
        }
        steps = {s["kind"]: s for s in run_steps(small, "run-big")}
        assert steps["payment"]["payment"]["status"] == "settled"
        assert small.get("/api/runs/run-big")["totals"]["cost_usd"] == "0.010000000"


# -- idempotency by x-request-id -------------------------------------------------------------------------------------


def payment_steps(gw: Harness, run_id: str) -> list[dict[str, Any]]:
    return [s for s in run_steps(gw, run_id) if s["kind"] == "payment"]


def test_a_retried_fetch_is_replayed_and_pays_once(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    budget = add_budget(gw, "1.00")
    ask: dict[str, Any] = dict(url=url, method="POST", body={"q": "weather"}, max_amount_usd="0.05", run_id="run-retry")
    first = fetch(gw, {"x-request-id": "fetch-once-1"}, **ask)
    assert first.status_code == 200, first.text
    assert "alephant-replayed" not in first.headers
    again = fetch(gw, {"x-request-id": "fetch-once-1"}, **ask)
    assert again.status_code == 200, again.text
    assert again.content == first.content  # the seller's body and its PAYMENT-RESPONSE, as first relayed
    assert again.json()["headers"]["payment-response"] == first.json()["headers"]["payment-response"]
    assert again.headers["alephant-replayed"] == "true"
    assert again.headers["alephant-cost-usd"] == "0.000000000"
    assert again.headers["alephant-run-id"] == "run-retry"
    assert again.headers["x-request-id"] == "fetch-once-1"
    assert seller.payment_headers().count(None) == 1 and len(seller.payment_headers()) == 2
    assert len(seller.settled) == 1
    assert [s["kind"] for s in run_steps(gw, "run-retry")].count("api_call") == 1
    assert len(payment_steps(gw, "run-retry")) == 1
    assert budget_figures(gw, budget["id"], ("0.010000000", "0.000000000")) == ("0.010000000", "0.000000000")
    assert ledger(gw, budget["id"]) == [("reserve", 10_000_000, 0), ("settle", -10_000_000, 10_000_000)]
    # Without an x-request-id every fetch is its own, and pays.
    assert fetch(gw, **ask).status_code == 200
    assert len(seller.settled) == 2


def test_two_concurrent_duplicates_pay_once(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    budget = add_budget(gw, "1.00")
    ask: dict[str, Any] = dict(url=url, max_amount_usd="0.05", run_id="run-dup")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: fetch(gw, {"x-request-id": "fetch-dup-1"}, **ask), range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].content == answers[1].content
    assert sorted(a.headers.get("alephant-replayed", "") for a in answers) == ["", "true"]
    assert len(seller.settled) == 1 and [h is not None for h in seller.payment_headers()] == [False, True]
    assert len(payment_steps(gw, "run-dup")) == 1
    assert budget_figures(gw, budget["id"], ("0.010000000", "0.000000000")) == ("0.010000000", "0.000000000")


def test_the_same_id_for_another_request_is_409_idempotency_key_reused(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    hdrs = {"x-request-id": "fetch-reused-1"}
    assert fetch(gw, hdrs, url=url, method="POST", body={"q": 1}, max_amount_usd="0.05").status_code == 200
    for other in (
        dict(url=url + "?other=1", method="POST", body={"q": 1}, max_amount_usd="0.05"),
        dict(url=url, method="POST", body={"q": 2}, max_amount_usd="0.05"),
        dict(url=url, method="GET", max_amount_usd="0.05"),
        dict(url=url, method="POST", body={"q": 1}, max_amount_usd="0.06"),
    ):
        resp = fetch(gw, hdrs, **other)
        assert resp.status_code == 409, resp.text
        error = resp.json()["error"]
        assert error == {
            "message": "x-request-id 'fetch-reused-1' was already used for a different request body.",
            "type": "conflict_error",
            "code": "idempotency_key_reused",
            "param": "x-request-id",
        }
        assert resp.headers["x-request-id"] == "fetch-reused-1"
    assert len(seller.settled) == 1 and len(seller.received) == 2


def test_a_fetch_refused_before_paying_can_be_retried_and_then_pays(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    hdrs = {"x-request-id": "fetch-later-1"}
    refused = fetch(gw, hdrs, url=url, max_amount_usd="0.05", run_id="run-later")
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "no_payment_signer"
    add_signer(gw)
    paid = fetch(gw, hdrs, url=url, max_amount_usd="0.05", run_id="run-later")
    assert paid.status_code == 200, paid.text
    assert "alephant-replayed" not in paid.headers and paid.json()["payment"]["status"] == "settled"
    assert len(seller.settled) == 1
    replayed = fetch(gw, hdrs, url=url, max_amount_usd="0.05", run_id="run-later")
    assert replayed.headers["alephant-replayed"] == "true" and replayed.content == paid.content
    assert len(seller.settled) == 1 and len(payment_steps(gw, "run-later")) == 1


def test_a_replay_never_crosses_workspaces(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    add_signer(gw)
    hdrs = {"x-request-id": "fetch-tenant-1"}
    ask: dict[str, Any] = dict(url=url, max_amount_usd="0.05", run_id="run-tenant")
    a = fetch(gw, hdrs, **ask)
    assert a.status_code == 200, a.text
    b_ids = provision(gw.settings, gw.upstream_url)
    b = Harness(url=gw.url, fake=gw.fake, server=gw.server, settings=gw.settings, upstream_url=gw.upstream_url, **b_ids)
    add_signer(b, generate=True)
    # B's same id and same request is B's own fetch: not A's answer, and B's signer pays for it.
    other = fetch(b, hdrs, **ask)
    assert other.status_code == 200, other.text
    assert "alephant-replayed" not in other.headers
    assert other.json()["payment"]["payer"] == b.get("/api/payment-signers")["data"][0]["address"] != KEY_ADDRESS
    assert len(seller.settled) == 2
    assert b.get("/api/runs/run-tenant")["workspace_id"] == b.workspace
    assert len(payment_steps(gw, "run-tenant")) == 1 and len(payment_steps(b, "run-tenant")) == 1


def test_a_seller_error_without_payment_frees_the_id(gw: Harness, shop: tuple[Seller, str]) -> None:
    seller, url = shop
    hdrs = {"x-request-id": "fetch-missing-1"}
    for _ in range(2):
        resp = fetch(gw, hdrs, url=url + "-missing", max_amount_usd="0.05")
        assert resp.status_code == 200 and resp.json()["status"] == 404, resp.text
        assert "alephant-replayed" not in resp.headers
    assert len(seller.received) == 0  # the route does not exist: both asks reached the server, neither paid
    free = {"x-request-id": "fetch-free-1"}
    seller.mode = "free"
    first = fetch(gw, free, url=url, max_amount_usd="0.05")
    assert first.status_code == 200 and first.json()["payment"] is None
    again = fetch(gw, free, url=url, max_amount_usd="0.05")
    assert again.headers["alephant-replayed"] == "true" and again.content == first.content
    assert len(seller.received) == 1  # a relayed success is final: replayed, not asked again


def test_retention_nulls_and_deletes_kept_fetch_answers(gw: Harness, shop: tuple[Seller, str]) -> None:
    _, url = shop
    add_signer(gw)
    assert fetch(gw, {"x-request-id": "fetch-kept-1"}, url=url, max_amount_usd="0.05").status_code == 200
    store = SQLStore(gw.settings.database_url)
    replays, retention = FetchReplayStore(store), RetentionStore(store)
    later = datetime.now(UTC) + timedelta(days=1)

    async def run() -> list[Any]:
        try:
            kept = await replays.stored(gw.workspace, "fetch-kept-1")
            nulled = await unlocked(retention.null_batch, "fetch_replays", gw.workspace, None, later, None, 100)
            after_null = await replays.stored(gw.workspace, "fetch-kept-1")
            deleted = await unlocked(retention.delete_batch, "fetch_replays", gw.workspace, later, None, 100)
            return [kept, nulled.done, after_null, deleted.done, await replays.stored(gw.workspace, "fetch-kept-1")]
        finally:
            await store.aclose()

    kept, nulled, after_null, deleted, gone = asyncio.run(run())
    assert kept is not None and kept.body is not None and kept.http_status == 200
    assert (nulled, deleted, gone) == (1, 1, None)
    assert after_null is not None and after_null.body is None and after_null.request_hash == kept.request_hash
