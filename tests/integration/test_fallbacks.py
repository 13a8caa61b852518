"""Retries and fallbacks through the real gateway: each attempt a `model_attempt` step under the call's
`model_call` step, the call's cost booked once, the provider's Retry-After honoured (and capped), 4xx final,
streams falling back only before their first event, and hops the virtual key may not use (or that name no key)
left out.

Key A (priority 10, so it beats the workspace's own `fake-openai` key) answers from the session's fake upstream;
key B from a second, independent fake started here. Every call says 'hello there world': 6 prompt + 9
completion tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from agentledger.core.money import format_usd
from agentledger.store.sql import SQLStore
from agentledger.testing import FakeUpstream, ServerThread, fake_upstream_app
from tests.harness import Harness

HELLO = [{"role": "user", "content": "hello there world"}]
MINI = 6 * 150 + 9 * 600  # gpt-4o-mini: $0.15 / $0.60 per MTok
GPT4O = 6 * 2_500 + 9 * 10_000  # gpt-4o: $2.50 / $10 per MTok
REPLY = "This is a mock reply to: hello there world"


@pytest.fixture(scope="module")
def second() -> Iterator[ServerThread]:
    with ServerThread(fake_upstream_app(FakeUpstream())) as server:
        yield server


@pytest.fixture
def fb(second: ServerThread) -> FakeUpstream:
    """The second fake, as fresh as the gw fixture leaves the first."""
    fake: FakeUpstream = second.config.app.state.fake
    fake.received.clear()
    fake.script.clear()
    fake.retry_after = None
    fake.delay = 0.0
    return fake


def add_a(gw: Harness, **fields: Any) -> dict[str, Any]:
    fields = {"name": "A", "models": ["gpt-4o-mini"], "priority": 10, "api_key": "sk-key-a", **fields}
    return gw.add_provider_key(**fields)


def add_b(gw: Harness, second: ServerThread, **fields: Any) -> dict[str, Any]:
    fields = {"name": "B", "base_url": second.url + "/v1", "models": ["gpt-*"], "api_key": "sk-key-b", **fields}
    return gw.add_provider_key(**fields)


def chat(gw: Harness, request_id: str, run_id: str, model: str = "gpt-4o-mini", **kw: Any) -> Any:
    headers = {"x-request-id": request_id, "alephant-run-id": run_id, **kw.pop("extra_headers", {})}
    return gw.openai().chat.completions.with_raw_response.create(
        model=model, messages=kw.pop("messages", HELLO), extra_headers=headers, **kw
    )


def model_call(gw: Harness, run_id: str) -> dict[str, Any]:
    """The run's only top-level step: the gateway call."""
    steps = gw.get(f"/api/runs/{run_id}")["steps"]
    assert [s["kind"] for s in steps] == ["model_call"], steps
    return dict(steps[0])


def attempts(step: dict[str, Any]) -> list[dict[str, Any]]:
    children = step["children"]
    assert all(c["kind"] == "model_attempt" and c["parent_id"] == step["id"] for c in children), children
    assert [c["attempt"] for c in children] == list(range(1, len(children) + 1))
    return sorted(children, key=lambda c: c["attempt"])


def summary(tried: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Per attempt: key, model, status, error_class, fallback."""
    return [
        (
            a["attributes"]["provider_key"],
            a["model"],
            a["status"],
            a["attributes"]["error_class"],
            a["attributes"]["fallback"],
        )
        for a in tried
    ]


def verify_books(gw: Harness) -> list[Any]:
    """What `agentledger rollups verify --workspace` checks: kept totals and rollups against the raw rows."""

    async def run() -> list[Any]:
        store = SQLStore(gw.settings.database_url)
        try:
            return [m.describe() for m in await store.verify_books(gw.workspace)]
        finally:
            await store.aclose()

    return asyncio.run(run())


def test_rate_limit_then_server_error_then_fallback_books_the_cost_once(
    gw: Harness, second: ServerThread, fb: FakeUpstream
) -> None:
    add_a(gw, fallbacks=[{"key": "B"}], retry={"attempts": 2, "backoff_ms": 1})
    add_b(gw, second, provider="backup")
    gw.fake.script[:] = [429, 500]

    raw = chat(gw, "req-fb", "run-fb")
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["alephant-provider"] == "B"
    assert raw.headers["alephant-model"] == "gpt-4o-mini"
    assert raw.headers["alephant-attempts"] == "3"
    assert raw.headers["alephant-cost-usd"] == "0.000006300"
    assert [r["headers"]["authorization"] for r in gw.fake.received] == ["Bearer sk-key-a"] * 2
    assert [r["headers"]["authorization"] for r in fb.received] == ["Bearer sk-key-b"]
    assert fb.received[0]["body"]["model"] == "gpt-4o-mini"

    req = gw.get("/api/requests/req-fb")
    assert (req["provider"], req["model"], req["provider_key"]) == ("backup", "gpt-4o-mini", "B")
    assert req["route_attempts"] == 3 and req["requested_model"] is None
    assert (req["status"], req["http_status"], req["cost_nanos"]) == ("ok", 200, MINI)
    assert (req["input_tokens"], req["output_tokens"]) == (6, 9)

    step = model_call(gw, "run-fb")
    assert (step["request_id"], step["status"], step["cost_nanos"]) == ("req-fb", "ok", MINI)
    assert step["attributes"]["attempts"] == 3 and step["attributes"]["provider_key"] == "B"
    tried = attempts(step)
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_rate_limited", False),
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "ok", None, True),
    ]
    assert [a["cost_nanos"] for a in tried] == [0, 0, MINI]
    assert [a["provider"] for a in tried] == ["openai", "openai", "backup"]
    assert [a["attributes"]["backoff_ms"] for a in tried] == [0, 1, 0]
    assert all(a["attributes"]["provider_format"] == "chat" for a in tried)
    assert all(a["request_id"] == "req-fb" for a in tried)
    assert tried[0]["error"] and "429" in tried[0]["error"] and tried[2]["error"] is None

    run = gw.get("/api/runs/run-fb")
    assert run["totals"]["cost_nanos"] == MINI
    assert (run["totals"]["input_tokens"], run["totals"]["output_tokens"]) == (6, 9)
    assert run["totals"]["model_calls"] == 1
    by_provider = {d["key"]: d for d in gw.get("/api/analytics/costs", group_by="provider")["data"]}
    assert {k: (d["cost_nanos"], d["requests"], d["events"]) for k, d in by_provider.items()} == {
        "backup": (MINI, 1, 1)
    }
    by_run = gw.get("/api/analytics/costs", group_by="run")["data"]
    assert [(d["key"], d["cost_nanos"], d["requests"], d["events"]) for d in by_run] == [("run-fb", MINI, 1, 1)]
    assert verify_books(gw) == []
    # A run's errors and retries count the failed and repeated attempts (docs/api.md).
    assert (run["totals"]["steps"], run["totals"]["errors"], run["totals"]["retries"]) == (4, 2, 2)

    # Each attempt's http_status is what its provider answered.
    assert [a["attributes"]["http_status"] for a in tried] == [429, 500, 200]


def test_retry_after_is_honoured_and_capped(gw: Harness) -> None:
    add_a(gw, retry={"attempts": 2, "backoff_ms": 1, "max_backoff_ms": 5_000})
    gw.fake.retry_after = "1"
    gw.fake.script[:] = [429]
    t0 = time.perf_counter()
    raw = chat(gw, "req-ra", "run-ra")
    waited = time.perf_counter() - t0
    assert raw.headers["alephant-attempts"] == "2" and raw.headers["alephant-provider"] == "A"
    assert waited >= 1.0
    tried = attempts(model_call(gw, "run-ra"))
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_rate_limited", False),
        ("A", "gpt-4o-mini", "ok", None, False),
    ]
    assert 1_000 <= tried[1]["attributes"]["backoff_ms"] <= 5_000

    # The same advice against a policy that waits at most 50 ms.
    add_a(gw, name="capped", models=["gpt-4o"], retry={"attempts": 2, "backoff_ms": 1, "max_backoff_ms": 50})
    gw.fake.script[:] = [429]
    t0 = time.perf_counter()
    raw = chat(gw, "req-cap", "run-cap", model="gpt-4o")
    assert time.perf_counter() - t0 < 0.9
    assert raw.headers["alephant-attempts"] == "2"
    tried = attempts(model_call(gw, "run-cap"))
    assert [a["attributes"]["backoff_ms"] for a in tried] == [0, 50]
    assert gw.get("/api/requests/req-cap")["cost_nanos"] == GPT4O


def test_backoff_doubles_up_to_its_cap(gw: Harness) -> None:
    add_a(gw, retry={"attempts": 4, "backoff_ms": 20, "max_backoff_ms": 30})
    gw.fake.script[:] = [500, 502, 503]
    raw = chat(gw, "req-dbl", "run-dbl")
    assert raw.headers["alephant-attempts"] == "4"
    tried = attempts(model_call(gw, "run-dbl"))
    assert [a["attributes"]["backoff_ms"] for a in tried] == [0, 20, 30, 30]
    assert [a["status"] for a in tried] == ["error", "error", "error", "ok"]
    assert gw.get("/api/requests/req-dbl")["route_attempts"] == 4


def test_each_attempt_records_the_status_its_provider_answered(gw: Harness) -> None:
    """A provider's 500, 503 and 529 are all `upstream_bad_response` (and a 502 to the client when final), so
    the attempt's `http_status` is the only place that says which one the provider sent."""
    add_a(gw, retry={"attempts": 5, "backoff_ms": 0})
    gw.fake.script[:] = [500, 503, 529, 429]
    chat(gw, "req-st", "run-st")
    tried = attempts(model_call(gw, "run-st"))
    assert [a["attributes"]["error_class"] for a in tried] == [
        "upstream_bad_response",
        "upstream_bad_response",
        "upstream_bad_response",
        "upstream_rate_limited",
        None,
    ]
    assert [a["attributes"]["http_status"] for a in tried] == [500, 503, 529, 429, 200]


def test_a_client_error_is_neither_retried_nor_fallen_back(gw: Harness, second: ServerThread, fb: FakeUpstream) -> None:
    add_a(gw, fallbacks=[{"key": "B"}], retry={"attempts": 3, "backoff_ms": 1})
    add_b(gw, second)
    gw.fake.script[:] = [400]
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gw, "req-400", "run-400")
    resp = caught.value.response
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "upstream_rejected"
    assert "fake upstream scripted failure 400" in resp.json()["error"]["message"]
    assert resp.headers["alephant-attempts"] == "1" and resp.headers["alephant-provider"] == "A"
    assert len(gw.fake.received) == 1 and fb.received == []

    req = gw.get("/api/requests/req-400")
    assert (req["status"], req["http_status"], req["error_code"]) == ("error", 400, "upstream_rejected")
    assert (req["route_attempts"], req["provider_key"], req["cost_nanos"]) == (1, "A", 0)
    step = model_call(gw, "run-400")
    assert step["children"] == [] and step["status"] == "error"
    assert verify_books(gw) == []


def test_a_fallback_the_virtual_key_may_not_use_is_skipped(gw: Harness, second: ServerThread, fb: FakeUpstream) -> None:
    add_a(gw, models=["gpt-4o*"], fallbacks=[{"model": "gpt-4o"}, {"key": "B"}])
    add_b(gw, second)
    resp = gw.api(
        "POST",
        "/api/virtual-keys",
        json={"name": "mini-only", "department_id": gw.department, "allowed_models": ["gpt-4o-mini"]},
    )
    assert resp.status_code == 201, resp.text
    limited = resp.json()["key"]

    gw.fake.script[:] = [500]
    raw = gw.openai(api_key=limited).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"x-request-id": "req-vk", "alephant-run-id": "run-vk"}
    )
    assert raw.headers["alephant-provider"] == "B" and raw.headers["alephant-model"] == "gpt-4o-mini"
    assert [r["body"]["model"] for r in gw.fake.received] == ["gpt-4o-mini"]  # A never asked for gpt-4o
    assert [r["body"]["model"] for r in fb.received] == ["gpt-4o-mini"]
    tried = attempts(model_call(gw, "run-vk"))
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "ok", None, True),
    ]
    assert gw.get("/api/requests/req-vk")["cost_nanos"] == MINI

    # The workspace's unrestricted key takes the gpt-4o fallback first.
    gw.fake.script[:] = [500]
    raw = chat(gw, "req-open", "run-open")
    assert raw.headers["alephant-model"] == "gpt-4o" and raw.headers["alephant-provider"] == "A"


def test_a_fallback_to_another_model_on_the_same_key_is_priced_at_that_model(gw: Harness) -> None:
    add_a(gw, models=["gpt-4o*"], fallbacks=[{"model": "gpt-4o"}])
    gw.fake.script[:] = [500]
    raw = chat(gw, "req-model", "run-model")
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["alephant-model"] == "gpt-4o" and raw.headers["alephant-attempts"] == "2"
    assert raw.headers["alephant-cost-usd"] == "0.000105000"
    assert [r["body"]["model"] for r in gw.fake.received] == ["gpt-4o-mini", "gpt-4o"]

    req = gw.get("/api/requests/req-model")
    assert (req["model"], req["requested_model"], req["provider_key"]) == ("gpt-4o", "gpt-4o-mini", "A")
    assert (req["cost_nanos"], req["route_attempts"]) == (GPT4O, 2)
    step = model_call(gw, "run-model")
    assert (step["model"], step["name"], step["cost_nanos"]) == ("gpt-4o", "gpt-4o-mini", GPT4O)
    tried = attempts(step)
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("A", "gpt-4o", "ok", None, True),
    ]
    assert [a["attributes"]["requested_model"] for a in tried] == ["gpt-4o-mini"] * 2
    assert gw.get("/api/runs/run-model")["totals"]["cost_nanos"] == GPT4O
    by_model = {d["key"]: d["cost_nanos"] for d in gw.get("/api/analytics/costs", group_by="model")["data"]}
    assert by_model == {"gpt-4o": GPT4O}
    assert verify_books(gw) == []


def test_a_stream_falls_back_before_its_first_event(gw: Harness, second: ServerThread, fb: FakeUpstream) -> None:
    add_a(gw, fallbacks=[{"key": "B"}], retry={"attempts": 2, "backoff_ms": 1})
    add_b(gw, second)
    gw.fake.script[:] = [429, 500]
    stream = gw.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        extra_headers={"x-request-id": "req-sfb", "alephant-run-id": "run-sfb"},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(gw.fake.received) == 2 and len(fb.received) == 1
    assert fb.received[0]["body"]["stream"] is True

    req = gw.get("/api/requests/req-sfb")
    assert (req["stream"], req["status"], req["provider_key"], req["route_attempts"]) == (True, "ok", "B", 3)
    assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (6, 9, MINI)
    step = model_call(gw, "run-sfb")
    assert step["cost_nanos"] == MINI and step["attributes"]["stream"] is True
    tried = attempts(step)
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_rate_limited", False),
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "ok", None, True),
    ]
    assert [a["cost_nanos"] for a in tried] == [0, 0, MINI]
    assert gw.get("/api/runs/run-sfb")["totals"]["cost_nanos"] == MINI
    assert verify_books(gw) == []


def test_a_stream_that_began_does_not_fall_back(gw: Harness, second: ServerThread, fb: FakeUpstream) -> None:
    add_a(gw, fallbacks=[{"key": "B"}], retry={"attempts": 3, "backoff_ms": 1})
    add_b(gw, second)
    stream = gw.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "FAIL:drop now"}],
        stream=True,
        extra_headers={"x-request-id": "req-drop", "alephant-run-id": "run-drop"},
    )
    with pytest.raises(openai.APIError):
        list(stream)
    assert len(gw.fake.received) == 1 and fb.received == []
    req = gw.get("/api/requests/req-drop")
    assert (req["status"], req["provider_key"], req["route_attempts"]) == ("error", "A", 1)
    assert req["error_code"] == "upstream_unavailable"


def test_when_every_hop_fails_the_last_error_is_returned_and_every_attempt_recorded(
    gw: Harness, second: ServerThread, fb: FakeUpstream
) -> None:
    add_a(gw, fallbacks=[{"key": "B"}], retry={"attempts": 2, "backoff_ms": 1})
    add_b(gw, second)
    gw.fake.script[:] = [500, 503]
    fb.script[:] = [429]
    with pytest.raises(openai.RateLimitError) as caught:
        chat(gw, "req-all", "run-all")
    resp = caught.value.response
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "upstream_rate_limited" and "'B'" in resp.json()["error"]["message"]
    assert resp.headers["alephant-attempts"] == "3" and resp.headers["alephant-provider"] == "B"

    req = gw.get("/api/requests/req-all")
    assert (req["status"], req["http_status"], req["error_code"]) == ("error", 429, "upstream_rate_limited")
    assert (req["provider_key"], req["route_attempts"], req["cost_nanos"]) == ("B", 3, 0)
    step = model_call(gw, "run-all")
    assert step["status"] == "error" and step["cost_nanos"] == 0
    assert summary(attempts(step)) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "error", "upstream_rate_limited", True),
    ]
    assert gw.get("/api/runs/run-all")["totals"]["cost_nanos"] == 0
    assert verify_books(gw) == []


def test_when_every_hop_fails_on_messages_the_error_is_anthropic_shaped(
    gw: Harness, second: ServerThread, fb: FakeUpstream
) -> None:
    model = "claude-3-5-haiku-20241022"
    add_a(gw, kind="anthropic", models=["claude-*"], fallbacks=[{"key": "B"}])
    add_b(gw, second, kind="anthropic", models=["claude-*"])
    gw.fake.script[:] = [529]
    fb.script[:] = [500]
    resp = gw.v1(
        "POST",
        "/v1/messages",
        json={"model": model, "max_tokens": 64, "messages": HELLO},
        headers={"x-request-id": "req-msg", "alephant-run-id": "run-msg"},
    )
    assert resp.status_code == 502, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "'B'" in body["error"]["message"] and "500" in body["error"]["message"]
    assert [r["path"] for r in gw.fake.received] == ["/v1/messages"]
    assert [r["headers"]["x-api-key"] for r in fb.received] == ["sk-key-b"]
    assert summary(attempts(model_call(gw, "run-msg"))) == [
        ("A", model, "error", "upstream_bad_response", False),
        ("B", model, "error", "upstream_bad_response", True),
    ]
    assert gw.get("/api/requests/req-msg")["route_attempts"] == 2


def test_a_fallback_naming_no_key_is_skipped(gw: Harness, second: ServerThread, fb: FakeUpstream) -> None:
    add_a(gw, fallbacks=[{"key": "ghost"}, {"key": "B"}])
    add_b(gw, second)
    gw.fake.script[:] = [500]
    raw = chat(gw, "req-ghost", "run-ghost")
    assert raw.headers["alephant-provider"] == "B" and raw.headers["alephant-attempts"] == "2"
    assert summary(attempts(model_call(gw, "run-ghost"))) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "ok", None, True),
    ]
    assert gw.get("/api/requests/req-ghost")["cost_nanos"] == MINI


def test_a_timeout_falls_back(gw: Harness) -> None:
    """FAIL:timeout makes the fake say nothing past the harness's 1 s read timeout; the fallback is an
    in-process mock key, which answers whatever the text says."""
    add_a(gw, fallbacks=[{"key": "M"}])
    gw.add_provider_key(name="M", kind="mock", models=["gpt-*"], priority=-10)
    text = "FAIL:timeout please"  # 2 words + 3 = 5 prompt tokens; the reply quotes it: 8 words
    raw = chat(gw, "req-to", "run-to", messages=[{"role": "user", "content": text}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "This is a mock reply to: " + text
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 8)
    cost = 5 * 150 + 8 * 600
    assert raw.headers["alephant-provider"] == "M" and raw.headers["alephant-attempts"] == "2"
    assert len(gw.fake.received) == 1
    tried = attempts(model_call(gw, "run-to"))
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_timeout", False),
        ("M", "gpt-4o-mini", "ok", None, True),
    ]
    assert 900 <= tried[0]["latency_ms"] < 5_000
    req = gw.get("/api/requests/req-to")
    assert (req["provider"], req["provider_key"], req["cost_nanos"], req["route_attempts"]) == ("mock", "M", cost, 2)


def test_a_streamed_call_falls_back_when_the_first_event_times_out(gw: Harness) -> None:
    """The same with a stream: the harness's first-token timeout is 1 s."""
    add_a(gw, fallbacks=[{"key": "M"}])
    gw.add_provider_key(name="M", kind="mock", models=["gpt-*"], priority=-10)
    text = "FAIL:timeout please"
    stream = gw.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        stream=True,
        extra_headers={"x-request-id": "req-sto", "alephant-run-id": "run-sto"},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "This is a mock reply to: " + text
    tried = attempts(model_call(gw, "run-sto"))
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_timeout", False),
        ("M", "gpt-4o-mini", "ok", None, True),
    ]
    req = gw.get("/api/requests/req-sto")
    assert (req["provider_key"], req["route_attempts"], req["cost_nanos"]) == ("M", 2, 5 * 150 + 8 * 600)


HAIKU = "claude-3-5-haiku-20241022"
HAIKU_COST = 6 * 800 + 9 * 4_000  # $0.80 / $4 per MTok


def test_fallbacks_without_a_price_a_format_or_the_model_are_left_out(
    gw: Harness, second: ServerThread, fb: FakeUpstream
) -> None:
    add_a(
        gw,
        models=["gpt-4o-mini", "unpriced-*"],
        fallbacks=[{"model": "unpriced-x"}, {"key": "K"}, {"key": "K", "model": HAIKU}, {"key": "B"}],
    )
    gw.add_provider_key(name="K", kind="anthropic", base_url=second.url + "/v1", models=["claude-*"], api_key="sk-k")
    add_b(gw, second)

    # Chat: no price for unpriced-x, K does not serve gpt-4o-mini; K's Haiku answers, through Messages.
    gw.fake.script[:] = [500]
    raw = chat(gw, "req-tr", "run-tr")
    assert raw.parse().choices[0].message.content == REPLY
    assert (raw.headers["alephant-provider"], raw.headers["alephant-model"]) == ("K", HAIKU)
    assert [r["body"]["model"] for r in gw.fake.received] == ["gpt-4o-mini"]
    assert [(r["path"], r["body"]["model"], r["headers"]["x-api-key"]) for r in fb.received] == [
        ("/v1/messages", HAIKU, "sk-k")
    ]
    tried = attempts(model_call(gw, "run-tr"))
    assert summary(tried) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("K", HAIKU, "ok", None, True),
    ]
    assert [a["attributes"]["provider_format"] for a in tried] == ["chat", "messages"]
    assert [a["provider"] for a in tried] == ["openai", "anthropic"]
    req = gw.get("/api/requests/req-tr")
    assert (req["provider"], req["model"], req["requested_model"]) == ("anthropic", HAIKU, "gpt-4o-mini")
    assert req["cost_nanos"] == HAIKU_COST

    # Responses: an Anthropic key cannot answer it, so B does.
    fb.received.clear()
    gw.fake.script[:] = [500]
    resp = gw.v1(
        "POST",
        "/v1/responses",
        json={"model": "gpt-4o-mini", "input": "hello there world"},
        headers={"x-request-id": "req-resp", "alephant-run-id": "run-resp"},
    )
    assert resp.status_code == 200, resp.text
    assert (resp.headers["alephant-provider"], resp.headers["alephant-attempts"]) == ("B", "2")
    assert [r["path"] for r in fb.received] == ["/v1/responses"]
    assert summary(attempts(model_call(gw, "run-resp"))) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "ok", None, True),
    ]
    assert verify_books(gw) == []


def test_a_fallback_whose_translation_refuses_the_request_is_skipped_unrecorded(
    gw: Harness, second: ServerThread, fb: FakeUpstream
) -> None:
    """`n: 2` cannot be asked of a Messages provider: K is no hop for this call; B is."""
    add_a(gw, fallbacks=[{"key": "K", "model": HAIKU}, {"key": "B"}])
    gw.add_provider_key(name="K", kind="anthropic", base_url=second.url + "/v1", models=["claude-*"], api_key="sk-k")
    add_b(gw, second)
    gw.fake.script[:] = [500]
    resp = gw.v1(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO, "n": 2},
        headers={"x-request-id": "req-n2", "alephant-run-id": "run-n2"},
    )
    assert resp.status_code == 200, resp.text
    assert (resp.headers["alephant-provider"], resp.headers["alephant-attempts"]) == ("B", "2")
    assert [r["path"] for r in fb.received] == ["/v1/chat/completions"]
    assert summary(attempts(model_call(gw, "run-n2"))) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "ok", None, True),
    ]
    assert gw.get("/api/requests/req-n2")["route_attempts"] == 2


def test_a_stream_no_provider_starts_is_answered_with_the_last_error(
    gw: Harness, second: ServerThread, fb: FakeUpstream
) -> None:
    add_a(gw, fallbacks=[{"key": "B"}])
    add_b(gw, second)
    gw.fake.script[:] = [500]
    fb.script[:] = [429]
    with pytest.raises(openai.RateLimitError) as caught:
        gw.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            extra_headers={"x-request-id": "req-snone", "alephant-run-id": "run-snone"},
        )
    resp = caught.value.response
    assert resp.status_code == 429 and resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "upstream_rate_limited"
    req = gw.get("/api/requests/req-snone")
    assert (req["stream"], req["status"], req["http_status"]) == (True, "error", 429)
    assert (req["provider_key"], req["route_attempts"], req["cost_nanos"]) == ("B", 2, 0)
    assert summary(attempts(model_call(gw, "run-snone"))) == [
        ("A", "gpt-4o-mini", "error", "upstream_bad_response", False),
        ("B", "gpt-4o-mini", "error", "upstream_rate_limited", True),
    ]

    # A 400 before the stream starts is final there too.
    gw.fake.script[:] = [400]
    with pytest.raises(openai.BadRequestError):
        gw.openai().chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True, extra_headers={"x-request-id": "req-s400"}
        )
    assert len(fb.received) == 1
    req = gw.get("/api/requests/req-s400")
    assert (req["http_status"], req["route_attempts"], req["error_code"]) == (400, 1, "upstream_rejected")
    assert verify_books(gw) == []


# -- budgets: a fallback to another model reserves again at its price (docs/budgets.md) ----------------------------


def _budgeted_call(gw: Harness, limit_nanos: int, request_id: str, delay: float = 0.0) -> tuple[Any, int, int]:
    """A workspace budget of `limit_nanos`, then a gpt-4o-mini call whose first attempt fails over to gpt-4o, each
    attempt taking `delay` s. Returns the answer and the two reservations: the body's bytes and max_tokens at each
    model's rates."""
    add_a(gw, models=["gpt-4o*"], fallbacks=[{"model": "gpt-4o"}])
    budget = {"id": "ws", "scope": "workspace", "limit_usd": format_usd(limit_nanos), "period": "total"}
    assert gw.api("POST", "/api/budgets", json=budget).status_code == 201
    gw.fake.script[:] = [500]
    gw.fake.delay = delay
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 20})
    headers = {"content-type": "application/json", "x-request-id": request_id}
    try:
        resp = gw.v1("POST", "/v1/chat/completions", content=body, headers=headers)
    finally:
        gw.fake.delay = 0.0
    return resp, len(body) * 150 + 20 * 600, len(body) * 2_500 + 20 * 10_000


def by_reservation(gw: Harness) -> list[list[tuple[str, int, int]]]:
    """Each reservation's entries, oldest first."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    for e in reversed(gw.get("/api/ledger", budget="ws", limit=1000)["data"]):
        found.setdefault(e["reservation_id"], []).append((e["kind"], e["reserved_delta"], e["spent_delta"]))
    return list(found.values())


@pytest.mark.parametrize("delay", [0.0, 0.15], ids=["quick", "slow"])
def test_a_fallback_to_a_dearer_model_reserves_again_at_that_price(gw: Harness, delay: float) -> None:
    """Quick, neither reservation lasts the pipeline's interval (20 ms) and the ledger holds the call's settle only,
    what it spent; slow, each attempt outlives it: the first reservation is written, then released, the second
    written, then settled."""
    resp, first, second = _budgeted_call(gw, 10**9, "req-dear", delay)
    assert resp.status_code == 200, resp.text
    assert (resp.headers["alephant-model"], resp.headers["alephant-cost-usd"]) == ("gpt-4o", format_usd(GPT4O))
    row = gw.get("/api/requests/req-dear")["governance"]
    assert row["reserved_usd"] == format_usd(second)  # what the call held when it ended
    released = [("reserve", first, 0), ("release", -first, 0)]
    settled = [("reserve", second, 0), ("settle", -second, GPT4O)]
    if delay:
        assert by_reservation(gw) == [released, settled]
    else:  # each reservation written only if its attempt outlived the interval, which a loaded machine decides
        groups = by_reservation(gw)
        assert groups[-1] in (settled, [("settle", 0, GPT4O)]) and groups[:-1] in ([], [released]), groups
    entries = gw.get("/api/ledger", budget="ws")["data"]
    assert {e["request_id"] for e in entries} == {"req-dear"}
    assert {e["reservation_id"] for e in entries if e["kind"] == "settle"} == {row["reservation_id"]}
    st = gw.get("/api/budgets/ws")["status"]
    assert (st["spent_usd"], st["reserved_usd"]) == (format_usd(GPT4O), "0.000000000")
    assert verify_books(gw) == []


@pytest.mark.parametrize("delay", [0.0, 0.15], ids=["quick", "slow"])
def test_a_fallback_its_budget_cannot_hold_ends_the_call_with_its_first_reservation_released(
    gw: Harness, delay: float
) -> None:
    resp, first, second = _budgeted_call(gw, 100_000, "req-cap", delay)
    assert first < 100_000 < second  # room for the first reservation, not for the fallback's
    assert resp.status_code == 402 and resp.json()["error"]["code"] == "budget_exceeded", resp.text
    assert "a fallback to 'gpt-4o'" in resp.json()["error"]["message"]
    assert [r["body"]["model"] for r in gw.fake.received] == ["gpt-4o-mini"]
    # Released before it was written, the reservation leaves nothing; written, its release follows it.
    released = [("reserve", first, 0), ("release", -first, 0)]
    assert by_reservation(gw) in (([released],) if delay else ([], [released]))
    st = gw.get("/api/budgets/ws")["status"]
    assert (st["spent_usd"], st["reserved_usd"]) == ("0.000000000", "0.000000000")
