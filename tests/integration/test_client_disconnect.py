"""A client that hangs up mid-stream: the gateway stops, and the call is still on the books."""

from __future__ import annotations

import time

import httpx

from tests.harness import Harness


def test_abandoned_stream_is_recorded_with_estimated_cost(gw: Harness) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "FAIL:slow one two"}]}
    headers = {"authorization": f"Bearer {gw.vk}", "x-request-id": "req-abandoned", "Alephant-Run-Id": "run-gone"}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert '"role":"assistant"' in first
        # leaving the block closes the connection with most of the reply still to come

    deadline = time.monotonic() + 10
    while True:
        row = gw.api("GET", "/api/requests/req-abandoned")
        if row.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    req = row.json()
    assert (req["status"], req["http_status"], req["error_code"]) == ("error", 499, "client_closed_request")
    assert req["cost_source"] == "estimated" and req["cost_nanos"] > 0
    assert req["output_tokens"] < 10  # charged for what was sent, not for the whole reply

    run = gw.get("/api/runs/run-gone")
    assert run["totals"]["errors"] == 1 and run["steps"][0]["status"] == "error"
    assert run["totals"]["cost_nanos"] == req["cost_nanos"]
