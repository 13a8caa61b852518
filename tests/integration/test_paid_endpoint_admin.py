"""Setting up paid endpoints through the management API: every rule between fields refused with an exact 400 naming
the field, workflow runtimes (their secret never shown back), PATCH checked as a whole and seen by the public route
at once. One gateway for the module (SQLite); nothing here pays."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account

from agentledger.testing import ServerThread
from tests.harness import Harness, running_gateway
from tests.integration.paid_support import (
    AUTH_NAME,
    Workflow,
    offer_of,
    paid_header,
    prepare_workspace,
    publish,
    workflow_agent,
    workflow_server,
)

pytestmark = pytest.mark.e2e
PAY_TO = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55's own test vector


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread) -> Iterator[tuple[Harness, str, Workflow]]:
    data = tmp_path_factory.mktemp("paid-admin")
    with workflow_server() as (flow, server), running_gateway(f"sqlite:///{data / 'db'}", data, upstream) as gw:
        flow.gateway_url = gw.url
        prepare_workspace(gw)
        yield gw, workflow_agent(gw, flow, server), flow


def body(agent: str, **changes: Any) -> dict[str, Any]:
    return {"slug": "summarize", "agent_id": agent, "price_usd": "0.01", "pay_to": PAY_TO, **changes}


def refused(resp: httpx.Response, param: str, message: str, status: int = 400) -> None:
    assert resp.status_code == status, resp.text
    code = "invalid_request" if status == 400 else resp.json()["error"]["code"]
    assert resp.json() == {
        "error": {"message": message, "type": resp.json()["error"]["type"], "code": code, "param": param}
    }


CASES = [
    pytest.param(
        {"timeout_s": 60, "max_timeout_s": 80},
        "max_timeout_s",
        "'max_timeout_s' (80) must be at least timeout_s + 30 (90): the payment must stay valid until the workflow "
        "has answered and the payment is settled.",
        id="validity-window-too-short",
    ),
    pytest.param(
        {"price_usd": "0.02", "policy": {"max_price_usd": "0.015"}},
        "price_usd",
        "'price_usd' (0.020000000) is above the policy's max_price_usd (0.015000000).",
        id="price-over-max-price",
    ),
    pytest.param(
        {"pay_to": "0x1234"},
        "pay_to",
        "'pay_to' must be an EVM address: 0x followed by 40 hex digits.",
        id="pay-to-not-an-address",
    ),
    pytest.param(
        {"pay_to": PAY_TO.replace("E7", "e7")},
        "pay_to",
        "'pay_to' fails its EIP-55 checksum (a mistyped address?).",
        id="pay-to-bad-checksum",
    ),
    pytest.param({"pay_to": "0x" + "0" * 40}, "pay_to", "'pay_to' may not be the zero address.", id="pay-to-zero"),
    pytest.param(
        {"input_schema": {"type": "object", "properties": {"text": {"type": "nope"}}}},
        "input_schema",
        "'input_schema' is not a valid JSON Schema: 'nope' is not valid under any of the given schemas "
        "(at properties/text/type)",
        id="schema-invalid",
    ),
    pytest.param(
        {"input_schema": {"$ref": "https://example.com/schema.json"}},
        "input_schema",
        "'input_schema' is not a valid JSON Schema: reference 'https://example.com/schema.json' leaves the schema; "
        "only local references ('#/...') are applied",
        id="schema-remote-ref",
    ),
    pytest.param(
        {"price_usd": "0.0000015"},
        "price_usd",
        "'price_usd' must be a whole number of USDC's atomic units (multiples of $0.000001): a price is charged "
        "exactly, never rounded.",
        id="price-not-whole-units",
    ),
    pytest.param(
        {"price_usd": "0"},
        "price_usd",
        "'price_usd' must be a positive decimal string of dollars up to 1000000, such as \"0.01\".",
        id="price-zero",
    ),
    pytest.param(
        {"network": "eip155:8453"},
        "network",
        "'network' must be one of the accepted networks: eip155:84532.",
        id="network-not-accepted",
    ),
    pytest.param(
        {"asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"},
        "asset",
        "'asset' must be an accepted asset on eip155:84532: 0x036CbD53842c5426634e7929541eC2318f3dCF7e (USDC).",
        id="asset-of-another-network",
    ),
    pytest.param(
        {"timeout_s": 301},
        "timeout_s",
        "'timeout_s' must be a number of seconds above 0 and at most 300.",
        id="timeout-over-cap",
    ),
    pytest.param(
        {"fee": {"percent": "101"}},
        "fee.percent",
        "'fee.percent' must be a decimal string from 0 to 100 with at most 4 decimals, such as \"2.5\".",
        id="fee-percent",
    ),
    pytest.param(
        {"slug": "Has Space"},
        "slug",
        "'slug' must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit.",
        id="slug",
    ),
    pytest.param(
        {"policy": {"allowed_payers": ["0x12"]}},
        "policy.allowed_payers",
        "'policy.allowed_payers' must be an EVM address: 0x followed by 40 hex digits.",
        id="payer-not-an-address",
    ),
]


@pytest.mark.parametrize(("changes", "param", "message"), CASES)
def test_an_endpoint_breaking_a_rule_is_refused_naming_the_field(
    admin: tuple[Harness, str, Workflow], changes: dict[str, Any], param: str, message: str
) -> None:
    gw, agent, _ = admin
    refused(gw.api("POST", "/api/paid-endpoints", json=body(agent, **changes)), param, message)


def test_only_a_workflow_agent_with_a_runtime_can_be_sold(admin: tuple[Harness, str, Workflow]) -> None:
    gw, _, _ = admin
    refused(
        gw.api("POST", "/api/paid-endpoints", json=body(gw.agent)),
        "agent_id",
        f"Agent {gw.agent!r} is an 'ai' agent: only a 'workflow' agent has a runtime and can be sold as a paid "
        "endpoint.",
    )
    bare = gw.api("POST", "/api/agents", json={"id": "bare-flow", "department_id": gw.department, "kind": "workflow"})
    assert bare.status_code == 201 and "runtime" not in bare.json()
    refused(
        gw.api("POST", "/api/paid-endpoints", json=body("bare-flow")),
        "agent_id",
        "Agent 'bare-flow' has no runtime: set one first (PUT /api/agents/bare-flow/runtime).",
    )
    refused(gw.api("POST", "/api/paid-endpoints", json=body("nobody")), "agent_id", "Agent 'nobody' does not exist.")


def test_a_slug_is_taken_for_good(admin: tuple[Harness, str, Workflow]) -> None:
    gw, agent, _ = admin
    ep = publish(gw, agent, slug="taken-slug")
    again = gw.api("POST", "/api/paid-endpoints", json=body(agent, slug="taken-slug"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert gw.api("DELETE", f"/api/paid-endpoints/{ep.endpoint['id']}").status_code == 200
    assert gw.api("POST", "/api/paid-endpoints", json=body(agent, slug="taken-slug")).status_code == 409


def test_an_endpoint_is_shown_with_its_url_and_without_its_key(admin: tuple[Harness, str, Workflow]) -> None:
    gw, agent, _ = admin
    ep = publish(gw, agent, slug="shown", policy={"requests_per_minute": 30}, fee={"percent": "1.25"})
    e = gw.get(f"/api/paid-endpoints/{ep.endpoint['id']}")
    assert e == ep.endpoint
    assert e["url"] == f"/x402/{gw.workspace}/shown" and e["enabled"] is True and e["disabled_at"] is None
    assert (e["price_usd"], e["asset_amount"], e["network"]) == ("0.010000000", "10000", "eip155:84532")
    assert e["fee"] == {"percent": "1.25", "fixed_usd": "0.000000000"}
    assert e["policy"] == {
        "max_price_usd": None,
        "requests_per_minute": 30,
        "concurrent": None,
        "allowed_payers": None,
    }
    assert e["virtual_key_id"].startswith("vkid_") and "vk-" not in str(e)
    assert ep.endpoint["id"] in [x["id"] for x in gw.get("/api/paid-endpoints")["data"]]
    assert gw.api("GET", "/api/paid-endpoints/pe_nope").status_code == 404


def test_a_patch_is_checked_whole_and_seen_at_once(admin: tuple[Harness, str, Workflow]) -> None:
    gw, agent, _ = admin
    ep = publish(gw, agent, slug="patched", policy={"max_price_usd": "0.05", "concurrent": 3})
    path = f"/api/paid-endpoints/{ep.endpoint['id']}"
    public = gw.url + ep.url
    assert offer_of(httpx.post(public, json={"text": "x"})).accepts[0].amount == "10000"  # cached now
    refused(
        gw.api("PATCH", path, json={"price_usd": "0.06"}),
        "price_usd",
        "'price_usd' (0.060000000) is above the policy's max_price_usd (0.050000000).",
    )
    refused(
        gw.api("PATCH", path, json={"slug": "other"}), "slug", "'slug' cannot change: it is the endpoint's public URL."
    )
    resp = gw.api("PATCH", path, json={"price_usd": "0.02", "policy": {"requests_per_minute": 10}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["price_usd"] == "0.020000000"
    # The policy is merged member by member: what the patch does not name stays.
    assert resp.json()["policy"] == {
        "max_price_usd": "0.050000000",
        "requests_per_minute": 10,
        "concurrent": 3,
        "allowed_payers": None,
    }
    assert offer_of(httpx.post(public, json={"text": "x"})).accepts[0].amount == "20000"  # the cache was dropped
    assert gw.api("DELETE", path).status_code == 200
    refused(
        gw.api("PATCH", path, json={"price_usd": "0.03"}),
        "endpoint_id",
        f"Paid endpoint {ep.endpoint['id']!r} is disabled: it cannot change.",
    )


def test_a_runtime_is_checked_and_its_secret_never_shown(admin: tuple[Harness, str, Workflow]) -> None:
    gw, agent, flow = admin
    runtime = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "auth_header": {"name": "X-Key", "value": "k1"}}
    refused(
        gw.api("POST", "/api/agents", json={"department_id": gw.department, "kind": "ai", "runtime": runtime}),
        "runtime",
        "Only a 'workflow' agent has a runtime.",
    )
    put = f"/api/agents/{agent}/runtime"
    refused(
        gw.api("PUT", put, json={**runtime, "url": "https://user:pw@example.com/hook"}),
        "runtime.url",
        "'runtime.url' must be an absolute http(s) URL of at most 2048 characters, without credentials (put a "
        "secret in auth_header).",
    )
    refused(
        gw.api("PUT", put, json={**runtime, "auth_header": {"name": "Alephant-Run-Id", "value": "x"}}),
        "runtime.auth_header.name",
        "'runtime.auth_header.name' may not be 'Alephant-Run-Id': the gateway sets that header on a workflow call "
        "itself.",
    )
    refused(
        gw.api("PUT", put, json={**runtime, "method": "DELETE"}),
        "runtime.method",
        "'runtime.method' must be one of POST, GET, PUT.",
    )
    refused(
        gw.api("PUT", f"/api/agents/{gw.agent}/runtime", json=runtime),
        "agent_id",
        f"Agent {gw.agent!r} is an 'ai' agent: only a 'workflow' agent has a runtime and can be sold as a paid "
        "endpoint.",
    )
    assert gw.api("PUT", "/api/agents/nobody/runtime", json=runtime).status_code == 404
    shown = gw.get(f"/api/agents/{agent}")
    assert shown["runtime"]["auth_header"] == {"name": AUTH_NAME, "set": True} and shown["kind"] == "workflow"
    assert flow.secret not in gw.api("GET", f"/api/agents/{agent}").text
    assert gw.get(f"/api/agents/{gw.agent}")["runtime"] is None


async def test_a_new_runtime_reaches_the_agents_endpoints_at_once(admin: tuple[Harness, str, Workflow]) -> None:
    gw, _, flow = admin
    dead = {"type": "webhook", "url": "http://127.0.0.1:9/nowhere"}
    created = gw.api(
        "POST",
        "/api/agents",
        json={"id": "rewired", "department_id": gw.department, "kind": "workflow", "runtime": dead},
    )
    assert created.status_code == 201
    ep = publish(gw, "rewired", slug="rewired")
    first = httpx.post(gw.url + ep.url, json={"text": "x", "mode": "sleep", "seconds": 0})
    assert first.status_code == 402  # the endpoint is loaded, with the dead runtime, and cached
    runtime = {"type": "n8n", "url": flow.url, "auth_header": {"name": AUTH_NAME, "value": flow.secret}}
    moved = gw.api("PUT", "/api/agents/rewired/runtime", json={"runtime": runtime})
    assert moved.status_code == 200 and moved.json()["runtime"]["type"] == "n8n"
    header = await paid_header(Account.create(), first)
    paid = httpx.post(
        gw.url + ep.url, json={"text": "x", "mode": "sleep", "seconds": 0}, headers={"PAYMENT-SIGNATURE": header}
    )
    assert paid.status_code == 200, paid.text  # the new runtime answered: the cached endpoint was dropped
