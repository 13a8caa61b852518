"""No stored row holds a secret a call used (SQLite and PostgreSQL): a realistic mix of calls through the real server
(chat, Messages, Responses, embeddings, streams, a translated call, provider failures, refused calls, the step API
with inputs and outputs, a run's end), then every text, JSON and binary column of every table is read back and
searched for the provider keys, the virtual key and the admin token.

Hashes of them are expected (`key_hash`, `token_hash`: a SHA-256 is not the key) and are not what is searched for.
A provider that quotes the key it was given in an error ("Incorrect API key provided: sk-…") must not get it into
the store, nor to the client, which must never learn the provider's key.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import MetaData, select

from tests.harness import HTTP, Harness
from tests.integration.retention_support import engine, flush

HELLO = [{"role": "user", "content": "hello there world"}]


def _texts(value: Any) -> list[str]:
    if value is None or isinstance(value, bool | int | float):
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        return [bytes(value).decode("latin-1")]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict | list):
        return [orjson.dumps(value, default=str).decode()]
    return [str(value)]


def scan(gw: Harness, secrets: dict[str, str]) -> tuple[list[str], int]:
    """(table.column where a secret was found, values read): every column of every table, every row."""
    meta = MetaData()
    found, read = [], 0
    with engine(gw).connect() as conn:
        meta.reflect(conn)
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    for text in _texts(value):
                        read += 1
                        found += [
                            f"{table.name}.{column}: {name}" for name, secret in secrets.items() if secret in text
                        ]
    return sorted(set(found)), read


def test_no_table_stores_a_credential_after_a_mix_of_calls(gw: Harness) -> None:
    tag = uuid.uuid4().hex
    openai_key, anthropic_key = f"sk-scan-openai-{tag}", f"sk-ant-scan-{tag}"
    # Only keys of this test serve its calls: the shared fake key of the harness is revoked.
    for key in gw.get("/api/provider-keys")["data"]:
        assert gw.api("DELETE", f"/api/provider-keys/{key['id']}").status_code == 200
    gw.add_provider_key(name="scan-openai", api_key=openai_key, models=["gpt-*", "text-embedding-*"])
    gw.add_provider_key(
        name="scan-anthropic", kind="anthropic", provider="anthropic", api_key=anthropic_key, models=["claude-*"]
    )
    run = f"run-scan-{tag[:8]}"
    tracking = {"alephant-run-id": run, "alephant-session-id": "sess-scan", "alephant-property-team": "red"}
    bearer = {"authorization": f"Bearer {gw.vk}", **tracking}
    calls: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}, bearer),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}, bearer),
        ("/v1/chat/completions", {"model": "claude-haiku-4-5", "messages": HELLO, "max_tokens": 32}, bearer),
        ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": HELLO}, {"x-api-key": gw.vk}),
        (
            "/v1/messages",
            {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": HELLO, "stream": True},
            {"x-api-key": gw.vk, **tracking},
        ),
        ("/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": HELLO}, {"x-api-key": gw.vk}),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hello there world"}, bearer),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hello there world", "stream": True}, bearer),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["hello", "world"]}, bearer),
    ]
    for n, (path, body, headers) in enumerate(calls):
        resp = HTTP.post(gw.url + path, json=body, headers={**headers, "x-request-id": f"scan-{tag[:8]}-{n}"})
        assert resp.status_code == 200, (path, resp.text)
        assert gw.vk not in resp.text and openai_key not in resp.text

    # Providers that refuse the key and quote it back, plain and streamed, on both kinds; and refused calls.
    gw.fake.echo_credential = True
    try:
        for path, body, headers in (calls[0], calls[1], calls[3], calls[4]):
            gw.fake.script.append(401)
            resp = HTTP.post(gw.url + path, json=body, headers=headers)
            assert resp.status_code == 401, resp.text
            assert "Incorrect API key provided: [provider key redacted]" in resp.text
            assert openai_key not in resp.text and anthropic_key not in resp.text
    finally:
        gw.fake.echo_credential = False
        gw.fake.script.clear()
    assert HTTP.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini"}, headers=bearer).status_code == 400
    assert HTTP.post(gw.url + "/v1/chat/completions", json={}, headers={"authorization": "Bearer vk-nope"}).status_code
    for received in gw.fake.received:  # the provider saw its own key, never the virtual key
        assert gw.vk not in orjson.dumps(received).decode()

    steps = [
        {"id": "plan", "name": "plan", "kind": "workflow_step", "input": {"goal": "trip"}, "output": {"plan": [1, 2]}},
        {"id": "search", "parent_id": "plan", "name": "search", "kind": "tool_call", "input": "q", "output": ["a"]},
        {"id": "pay", "name": "api", "kind": "api_call", "cost_usd": "0.01", "error": "timeout", "status": "error"},
    ]
    assert gw.v1("POST", f"/v1/runs/{run}/steps", json=steps, headers=tracking).status_code == 201
    assert gw.v1("POST", f"/v1/runs/{run}/end", json={"status": "succeeded", "output": {"ok": 1}}).status_code == 200
    assert gw.v1("POST", "/v1/runs", json={"name": "another", "metadata": {"k": "v"}}).status_code == 201
    flush(gw)

    secrets = {"openai provider key": openai_key, "anthropic provider key": anthropic_key, "virtual key": gw.vk}
    secrets["admin token"] = gw.admin
    found, read = scan(gw, secrets)
    assert found == []
    assert read > 200  # the scan read this test's rows, not an empty database
    # What was scanned holds the calls: their responses, the run's inputs and outputs, the provider's refusals.
    run_row = gw.get(f"/api/runs/{run}")
    tree, ids = list(run_row["steps"]), set()
    while tree:
        step = tree.pop()
        ids.add(step["id"])
        tree += step.get("children", [])
    assert run_row["output"] == {"ok": 1} and ids >= {"plan", "search", "pay"}
