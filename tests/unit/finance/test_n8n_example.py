"""examples/n8n-paid-endpoint.json stays an importable workflow that does what docs/paid-endpoints.md says: Webhook
(POST, header auth, answered by a Respond node) → HTTP Request to the gateway's chat completions with the scoped key
and the run's headers, named as the gateway sends them → Respond to Webhook with JSON."""

from __future__ import annotations

import json
from pathlib import Path

from agentledger.core.headers import AGENT_ID, RUN_ID
from agentledger.finance.sale import VIRTUAL_KEY_HEADER

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "n8n-paid-endpoint.json"


def test_the_n8n_example_chains_webhook_chat_and_response() -> None:
    flow = json.loads(EXAMPLE.read_text())
    nodes = {n["name"]: n for n in flow["nodes"]}
    by_type = {n["type"]: n for n in flow["nodes"]}
    hook = by_type["n8n-nodes-base.webhook"]["parameters"]
    assert (hook["httpMethod"], hook["authentication"], hook["responseMode"]) == ("POST", "headerAuth", "responseNode")
    chat = by_type["n8n-nodes-base.httpRequest"]["parameters"]
    assert chat["method"] == "POST" and chat["url"].endswith("/v1/chat/completions")
    headers = {h["name"].lower(): h["value"] for h in chat["headerParameters"]["parameters"]}
    assert headers["authorization"] == f'=Bearer {{{{$json.headers["{VIRTUAL_KEY_HEADER}"]}}}}'
    assert headers[RUN_ID] == f'={{{{$json.headers["{RUN_ID}"]}}}}'
    assert headers[AGENT_ID] == f'={{{{$json.headers["{AGENT_ID}"]}}}}'
    assert by_type["n8n-nodes-base.respondToWebhook"]["parameters"]["respondWith"] == "json"
    order, node = [], "Webhook"
    while node:
        order.append(nodes[node]["type"].removeprefix("n8n-nodes-base."))
        nxt = flow["connections"].get(node, {}).get("main", [[]])[0]
        node = nxt[0]["node"] if nxt else ""
    assert order == ["webhook", "httpRequest", "respondToWebhook"]
