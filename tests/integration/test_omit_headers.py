"""`alephant-omit-request` / `alephant-omit-response` against a real gateway (SQLite and PostgreSQL): the call is
metered and traced, its bodies are not stored, and a repeat of its x-request-id is never forwarded again.

The gateway stores no request body at all (only its SHA-256, for idempotency); a response is kept for replays
unless omitted. An omitted response cannot be replayed: a repeat gets `410 replay_unavailable`, nothing forwarded.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from agentledger.store.sql import SQLStore
from tests.harness import Harness
from tests.integration.retention_support import count, flush, rows

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello there world"}]
HELLO_COST = 6300  # gpt-4o-mini: 6 prompt × 150 + 9 completion × 600 nano-dollars


def rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def chat(gw: Harness, headers: dict[str, str], *, stream: bool = False) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": stream}
    return gw.v1("POST", CHAT, json=body, headers=headers)


def stored(gw: Harness, request_id: str) -> Any:
    found = rows(
        gw,
        "SELECT status, response_body, request_hash, cost_nanos FROM requests WHERE workspace_id = :ws AND id = :id",
        id=request_id,
    )
    assert len(found) == 1, found
    return found[0]


def assert_gone(resp: httpx.Response, request_id: str, *, anthropic: bool = False) -> None:
    assert resp.status_code == 410, resp.text
    assert resp.headers["x-request-id"] == request_id
    assert resp.headers["alephant-cost-usd"] == "0.000000000"
    if anthropic:
        assert resp.json()["error"]["type"] == "invalid_request_error"
        return
    error = resp.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "replay_unavailable",
        "x-request-id",
    )
    assert "not replayed and not forwarded again" in error["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_omitted_response_is_served_metered_not_stored_and_never_forwarded_twice(gw: Harness, stream: bool) -> None:
    request_id, run_id = rid("omit"), rid("run-omit")
    headers = {"x-request-id": request_id, "Alephant-Run-Id": run_id, "Alephant-Omit-Response": "TRUE"}
    first = chat(gw, headers, stream=stream)
    assert first.status_code == 200, first.text
    if stream:
        assert first.content.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in first.content
    else:
        assert first.json()["choices"][0]["message"]["content"] == "This is a mock reply to: hello there world"
    assert len(gw.fake.received) == 1

    # At once (this node's memory of the completion), then once the record is surely in the store: refused.
    for _ in range(2):
        assert_gone(chat(gw, headers, stream=stream), request_id)
        flush(gw)
    assert len(gw.fake.received) == 1

    status, body, request_hash, cost = stored(gw, request_id)
    assert (status, body, cost) == ("ok", None, HELLO_COST)
    assert len(request_hash) == 64  # the body's hash: all a repeat is checked against
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["cost_nanos"], row["input_tokens"], row["output_tokens"]) == ("ok", HELLO_COST, 6, 9)
    run = gw.get(f"/api/runs/{run_id}")
    assert (run["totals"]["model_calls"], run["totals"]["cost_nanos"]) == (1, HELLO_COST)
    assert [(s["input"], s["output"]) for s in run["steps"]] == [(None, None)]

    # Another body under the same id is still the 409 it always was: the hash is kept.
    other = gw.v1("POST", CHAT, json={"model": "gpt-4o-mini", "messages": HELLO, "temperature": 0.5}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(gw.fake.received) == 1


def test_the_store_says_a_completed_request_without_its_body_is_completed(gw: Harness) -> None:
    """What another node, or this one after a restart, finds: the id is taken, its body gone (never a claim)."""
    request_id = rid("omit-store")
    assert chat(gw, {"x-request-id": request_id, "alephant-omit-response": "true"}).status_code == 200
    flush(gw)

    async def look() -> tuple[Any, Any]:
        store = SQLStore(gw.settings.database_url)
        try:
            found = await store.stored_response(gw.workspace, request_id)
            return found, await store.claim_request(gw.workspace, request_id, "node-x", 30.0)
        finally:
            await store.aclose()

    found, claim = asyncio.run(look())
    assert found is not None and found.body is None and found.cost_nanos == HELLO_COST
    assert claim.stored is not None and claim.stored.body is None and not claim.claimed


def test_an_omitted_request_keeps_the_response_for_replays(gw: Harness) -> None:
    request_id = rid("omit-req")
    headers = {"x-request-id": request_id, "alephant-omit-request": "True"}
    first = chat(gw, headers)
    assert first.status_code == 200
    again = chat(gw, headers)
    assert again.status_code == 200 and again.headers["alephant-replayed"] == "true"
    assert again.content == first.content
    assert len(gw.fake.received) == 1
    flush(gw)
    assert stored(gw, request_id)[1] == first.content


def test_both_omitted_on_messages_responses_and_embeddings(gw: Harness) -> None:
    gw.add_provider_key(name="fake-anthropic", kind="anthropic", provider="anthropic", models=["claude-*"])
    calls = [
        ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": HELLO}, True),
        ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": HELLO, "stream": True}, True),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hello there world"}, False),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hello there world", "stream": True}, False),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello there world"}, False),
    ]
    gw.add_provider_key(name="fake-embed", models=["text-embedding-*"])
    ids = []
    for path, body, anthropic in calls:
        request_id = rid("omit-both")
        headers = {"x-request-id": request_id, "alephant-omit-request": "true", "alephant-omit-response": "true"}
        assert gw.v1("POST", path, json=body, headers=headers).status_code == 200
        assert_gone(gw.v1("POST", path, json=body, headers=headers), request_id, anthropic=anthropic)
        ids.append(request_id)
    assert len(gw.fake.received) == len(calls)
    flush(gw)
    for request_id in ids:
        status, body, _, cost = stored(gw, request_id)
        assert (status, body) == ("ok", None) and cost > 0


def test_omit_false_stores_as_usual_and_other_values_are_400_in_the_routes_format(gw: Harness) -> None:
    request_id = rid("omit-false")
    assert chat(gw, {"x-request-id": request_id, "alephant-omit-response": "False"}).status_code == 200
    flush(gw)
    assert stored(gw, request_id)[1] is not None

    for header in ("alephant-omit-request", "Alephant-Omit-Response"):
        for value in ("yes", "1", "", "true, false"):
            resp = chat(gw, {header: value})
            assert resp.status_code == 400, (header, value, resp.text)
            assert resp.json()["error"] == {
                "message": f"Header {header.lower()!r} must be 'true' or 'false'.",
                "type": "invalid_request_error",
                "code": "invalid_header",
                "param": header.lower(),
            }
    messages = gw.v1(
        "POST",
        "/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 8, "messages": HELLO},
        headers={"alephant-omit-response": "maybe"},
    )
    assert messages.status_code == 400
    assert messages.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Header 'alephant-omit-response' must be 'true' or 'false'.",
        },
    }
    assert len(gw.fake.received) == 1


def test_the_step_api_leaves_out_inputs_and_outputs_on_request(gw: Harness) -> None:
    run_id = rid("run-omit-steps")
    step = {"name": "lookup", "kind": "tool_call", "input": {"q": "secret"}, "output": {"a": "answer"}}
    sent = [
        ({}, ({"q": "secret"}, {"a": "answer"})),
        ({"alephant-omit-request": "true"}, (None, {"a": "answer"})),
        ({"alephant-omit-response": "true"}, ({"q": "secret"}, None)),
        ({"alephant-omit-request": "true", "alephant-omit-response": "TRUE"}, (None, None)),
    ]
    for n, (headers, _) in enumerate(sent):
        resp = gw.v1("POST", f"/v1/runs/{run_id}/steps", json={**step, "id": f"s{n}"}, headers=headers)
        assert resp.status_code == 201, resp.text
    bad = gw.v1("POST", f"/v1/runs/{run_id}/steps", json=step, headers={"alephant-omit-request": "no"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "alephant-omit-request"
    ended = gw.v1(
        "POST", f"/v1/runs/{run_id}/end", json={"output": {"final": "x"}}, headers={"alephant-omit-response": "true"}
    )
    assert ended.status_code == 200, ended.text

    run = gw.get(f"/api/runs/{run_id}")
    assert [(s["input"], s["output"]) for s in run["steps"]] == [want for _, want in sent]
    assert run["output"] is None and run["status"] == "succeeded"
    assert count(gw, "steps", "run_id = :run", run=run_id) == 4
