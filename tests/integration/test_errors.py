"""Every error a client can meet, against a real gateway (SQLite and PostgreSQL) and a fake upstream.

Each case asserts the exact status, the exact OpenAI-style body `{"error": {message, type, code, param}}`,
and what was recorded: a refused request is one complete error row (zero cost, against its key) and
nothing under the run it named; an upstream failure is an error row plus a failed `model_call` step.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import orjson
import pytest

from agentledger.testing.server import free_port
from tests.harness import HTTP, Harness

HELLO = [{"role": "user", "content": "hello there world"}]
CHAT = "/v1/chat/completions"
# gpt-4o-mini: $0.15 / $0.60 per MTok → 150 / 600 nano-dollars a token.
MINI_IN, MINI_OUT = 150, 600


def rid(prefix: str = "req-err") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def assert_error_body(body: Any, type_: str, code: str | None, param: str | None) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "code", "param"}, err
    assert (err["type"], err["code"], err["param"]) == (type_, code, param), err
    assert isinstance(err["message"], str) and err["message"], err


def assert_http_error(resp: httpx.Response, status: int, type_: str, code: str | None, param: str | None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert_error_body(resp.json(), type_, code, param)


def assert_sdk_error(
    exc: openai.APIStatusError,
    cls: type[openai.APIStatusError],
    status: int,
    type_: str,
    code: str,
    param: str | None = None,
) -> None:
    assert type(exc) is cls, type(exc)
    assert exc.status_code == status
    # The SDK unwraps the "error" object into `.body` and mirrors its fields as attributes.
    assert_error_body({"error": exc.body}, type_, code, param)
    assert (exc.type, exc.code, exc.param) == (type_, code, param)


def assert_not_found(gw: Harness, path: str) -> None:
    resp = gw.api("GET", path)
    assert resp.status_code == 404, resp.text
    assert_error_body(resp.json(), "not_found_error", "not_found", resp.json()["error"]["param"])


def assert_rejected_row(gw: Harness, request_id: str, status: int, code: str, *, model: str = "gpt-4o-mini") -> None:
    """A request refused before forwarding: one complete error row at zero cost, attributed to its key only."""
    row = gw.get(f"/api/requests/{request_id}")
    assert row["status"] == "error"
    assert row["http_status"] == status
    assert row["error_code"] == code
    assert row["error_message"]
    assert row["provider"] == "none" and row["model"] == model
    assert row["cost_nanos"] == 0 and row["cost_source"] is None
    assert row["input_tokens"] == 0 and row["output_tokens"] == 0
    assert row["run_id"] is None and row["session_id"] is None and row["properties"] in ({}, None)
    assert row["workspace_id"] == gw.workspace and row["department_id"] == gw.department
    assert row["virtual_key_id"]
    assert row["ended_at"] is not None and row["latency_ms"] >= 0


def assert_failed_call(gw: Harness, request_id: str, run_id: str, status: int, code: str) -> dict[str, Any]:
    """An upstream failure: an error row and one failed model_call step in the run, both at zero cost."""
    row = gw.get(f"/api/requests/{request_id}")
    assert row["status"] == "error"
    assert row["http_status"] == status
    assert row["error_code"] == code
    assert row["error_message"]
    assert row["provider"] == "openai" and row["model"] == "gpt-4o-mini"
    assert row["run_id"] == run_id and row["attempts"] == 1
    assert row["cost_nanos"] == 0 and row["cost_source"] is None
    assert row["input_tokens"] == 0 and row["output_tokens"] == 0
    assert row["ended_at"] is not None

    run = gw.get(f"/api/runs/{run_id}")
    [step] = run["steps"]
    assert step["kind"] == "model_call" and step["status"] == "error"
    assert step["request_id"] == request_id and step["attempt"] == 1
    assert step["error"] == row["error_message"]
    assert step["attributes"]["http_status"] == status
    assert step["cost_nanos"] == 0
    totals = run["totals"]
    assert (totals["model_calls"], totals["errors"], totals["retries"], totals["cost_nanos"]) == (1, 1, 0, 0)
    return row


# -- authentication --------------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_not_recorded(gw: Harness) -> None:
    request_id = rid()
    resp = HTTP.post(
        gw.url + CHAT,
        json={"model": "gpt-4o-mini", "messages": HELLO},
        headers={"x-request-id": request_id, "Alephant-Run-Id": "run-nokey"},
    )
    assert_http_error(resp, 401, "authentication_error", "invalid_api_key", None)
    assert resp.headers["x-request-id"] == request_id
    # Nothing to attribute it to: no request row, no run.
    assert_not_found(gw, f"/api/requests/{request_id}")
    assert_not_found(gw, "/api/runs/run-nokey")

    client = gw.openai(api_key="vk-not-a-real-key")
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert_sdk_error(info.value, openai.AuthenticationError, 401, "authentication_error", "invalid_api_key")
    assert info.value.response.headers["x-request-id"].startswith("req_")

    # The Anthropic-style header is checked the same way; a non-bearer scheme is no key at all.
    for headers in ({"x-api-key": "vk-nope"}, {"authorization": f"Basic {gw.vk}"}):
        resp = HTTP.post(gw.url + CHAT, json={"model": "gpt-4o-mini", "messages": HELLO}, headers=headers)
        assert_http_error(resp, 401, "authentication_error", "invalid_api_key", None)
    assert gw.fake.received == []
    assert gw.get("/api/analytics/costs", group_by="workspace")["data"] == []


def test_revoked_key_is_refused_immediately(gw: Harness) -> None:
    created = gw.api("POST", "/api/virtual-keys", json={"name": "short-lived", "department_id": gw.department})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    client = gw.openai(api_key=key)
    # A first call succeeds and leaves the key's principal in the gateway's cache.
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]

    [listed] = [k for k in gw.get("/api/virtual-keys")["data"] if k["name"] == "short-lived"]
    assert listed["revoked_at"] is None and "key_hash" not in listed and "key" not in listed
    revoked = gw.api("DELETE", f"/api/virtual-keys/{listed['id']}")
    assert revoked.status_code == 200 and revoked.json() == {"id": listed["id"], "revoked": True}

    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert_sdk_error(info.value, openai.AuthenticationError, 401, "authentication_error", "invalid_api_key")
    [listed] = [k for k in gw.get("/api/virtual-keys")["data"] if k["name"] == "short-lived"]
    assert listed["revoked_at"] is not None
    assert len(gw.fake.received) == 1

    # Revoking an unknown key is a 404, not a silent success.
    missing = gw.api("DELETE", "/api/virtual-keys/vkid-does-not-exist")
    assert_http_error(missing, 404, "not_found_error", "not_found", "key_id")


# -- request body ------------------------------------------------------------------------------------------

_MSGS = b'"messages": [{"role": "user", "content": "hi"}]'
_MINI = b'{"model": "gpt-4o-mini", '
# (raw body, error code, param, the model recorded for the refused request)
BAD_BODIES: list[tuple[bytes, str, str | None, str]] = [
    (b"{not json", "invalid_json", None, "unknown"),
    (b"", "invalid_json", None, "unknown"),
    (b'[{"model": "gpt-4o-mini"}]', "invalid_json", None, "unknown"),  # not an object
    (b"{" + _MSGS + b"}", "invalid_request", "model", "unknown"),
    (b'{"model": 42, ' + _MSGS + b"}", "invalid_request", "model", "unknown"),
    (b'{"model": "", ' + _MSGS + b"}", "invalid_request", "model", ""),
    (b'{"model": "' + b"m" * 257 + b'", ' + _MSGS + b"}", "invalid_request", "model", "m" * 256),
    (_MINI + b'"messages": []}', "invalid_request", "messages", "gpt-4o-mini"),
    (b'{"model": "gpt-4o-mini"}', "invalid_request", "messages", "gpt-4o-mini"),
    (_MINI + b'"messages": "hi"}', "invalid_request", "messages", "gpt-4o-mini"),
    (_MINI + _MSGS + b', "stream": "yes"}', "invalid_request", "stream", "gpt-4o-mini"),
    (_MINI + _MSGS + b', "stream": 1}', "invalid_request", "stream", "gpt-4o-mini"),
    (_MINI + _MSGS + b', "stream": true, "stream_options": []}', "invalid_request", "stream_options", "gpt-4o-mini"),
]


def test_bad_body_is_400_with_param(gw: Harness) -> None:
    for body, code, param, model in BAD_BODIES:
        request_id, run_id = rid(), rid("run-badbody")
        resp = gw.v1(
            "POST",
            CHAT,
            content=body,
            headers={"content-type": "application/json", "x-request-id": request_id, "Alephant-Run-Id": run_id},
        )
        assert_http_error(resp, 400, "invalid_request_error", code, param)
        assert resp.headers["x-request-id"] == request_id
        assert_rejected_row(gw, request_id, 400, code, model=model)
        assert_not_found(gw, f"/api/runs/{run_id}")

    with pytest.raises(openai.BadRequestError) as info:
        gw.openai().chat.completions.create(model="gpt-4o-mini", messages=[])
    assert_sdk_error(info.value, openai.BadRequestError, 400, "invalid_request_error", "invalid_request", "messages")
    assert gw.get("/api/runs")["data"] == []
    assert gw.fake.received == []


# -- tracking headers ----------------------------------------------------------------------------------------

_PROP = b"alephant-property-"
# (offending headers, the param the 400 names)
BAD_HEADERS: list[tuple[list[tuple[bytes, bytes]], str]] = [
    ([(b"alephant-run-id", b"r" * 129)], "alephant-run-id"),  # over-long
    ([(b"alephant-run-id", b"run with spaces")], "alephant-run-id"),
    ([(b"alephant-run-id", b"-leading-dash")], "alephant-run-id"),
    ([(b"alephant-session-name", b"Trip\tplanning")], "alephant-session-name"),  # control character
    ([(_PROP + b"env", b"a\tb")], "alephant-property-env"),
    ([(b"alephant-session-name", b"\xff\xfe")], "alephant-session-name"),  # invalid UTF-8
    ([(_PROP + b"env", b"pro\xc3")], "alephant-property-env"),  # truncated UTF-8 sequence
    ([(b"alephant-session-name", b"x" * 257)], "alephant-session-name"),
    ([(b"alephant-session-path", b"///")], "alephant-session-path"),
    ([(b"alephant-session-path", b"/" + b"a" * 1024)], "alephant-session-path"),
    ([(b"alephant-session-id", b"sess/1")], "alephant-session-id"),
    ([(_PROP + b"bad!", b"x")], "alephant-property-bad!"),  # bad property name
    ([(_PROP + b"p" * 65, b"x")], "alephant-property-" + "p" * 65),
    ([(_PROP + b"env", b"x" * 1025)], "alephant-property-env"),
    ([(_PROP + f"p{i}".encode(), b"v") for i in range(33)], "alephant-property-p32"),  # too many
    ([(b"alephant-prompt-version", b"3")], "alephant-prompt-version"),
    ([(b"alephant-prompt-id", b"summarize@bad version")], "alephant-prompt-version"),
    ([(b"alephant-agent-id", b"agent id")], "alephant-agent-id"),
]


def test_bad_tracking_header_is_400_and_stores_nothing_under_it(gw: Harness) -> None:
    for bad, param in BAD_HEADERS:
        request_id = rid()
        run_id = rid("run-badhdr")
        headers: list[tuple[bytes, bytes]] = [
            (b"authorization", f"Bearer {gw.vk}".encode()),
            (b"x-request-id", request_id.encode()),
            (b"alephant-session-id", b"sess-badhdr"),
        ]
        if not any(name == b"alephant-run-id" for name, _ in bad):
            headers.append((b"alephant-run-id", run_id.encode()))
        resp = HTTP.post(gw.url + CHAT, json={"model": "gpt-4o-mini", "messages": HELLO}, headers=headers + bad)
        assert_http_error(resp, 400, "invalid_request_error", "invalid_header", param)
        assert resp.headers["x-request-id"] == request_id
        assert "alephant-run-id" not in resp.headers
        assert_rejected_row(gw, request_id, 400, "invalid_header")
        assert_not_found(gw, f"/api/runs/{run_id}")

    # A malformed x-request-id is not echoed: the 400 goes out (and is recorded) under a generated id.
    resp = gw.v1("POST", CHAT, json={"model": "gpt-4o-mini", "messages": HELLO}, headers={"x-request-id": "a b"})
    assert_http_error(resp, 400, "invalid_request_error", "invalid_header", "x-request-id")
    generated = resp.headers["x-request-id"]
    assert generated.startswith("req_")
    assert_rejected_row(gw, generated, 400, "invalid_header")

    # Only HTAB reaches the app: the HTTP parser itself answers 400 to any other control byte in a header.
    for value in (b"Trip\x01planning", b"Trip\x7fplanning", b"Trip\x1bplanning"):
        headers = [(b"authorization", f"Bearer {gw.vk}".encode()), (b"alephant-session-name", value)]
        resp = HTTP.post(gw.url + CHAT, json={"model": "gpt-4o-mini", "messages": HELLO}, headers=headers)
        assert resp.status_code == 400, value

    # Nothing anywhere: no run (not even the over-long one), no session, no upstream call.
    assert gw.get("/api/runs")["data"] == []
    assert_not_found(gw, "/api/sessions/sess-badhdr")
    assert gw.fake.received == []


# -- agents ------------------------------------------------------------------------------------------------


def test_unknown_agent_is_400(gw: Harness) -> None:
    request_id, run_id = rid(), rid("run-agent")
    client = gw.openai()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"Alephant-Agent-Id": "ghost", "x-request-id": request_id, "Alephant-Run-Id": run_id},
        )
    assert_sdk_error(
        info.value, openai.BadRequestError, 400, "invalid_request_error", "agent_not_found", "alephant-agent-id"
    )
    assert info.value.response.headers["x-request-id"] == request_id
    assert_rejected_row(gw, request_id, 400, "agent_not_found")
    assert gw.get(f"/api/requests/{request_id}")["agent_id"] is None
    assert_not_found(gw, f"/api/runs/{run_id}")
    assert gw.fake.received == []


def test_agent_bound_key_may_not_claim_another_agent(gw: Harness) -> None:
    writer = gw.api("POST", "/api/agents", json={"id": "writer", "department_id": gw.department, "name": "Writer"})
    assert writer.status_code == 201, writer.text
    created = gw.api("POST", "/api/virtual-keys", json={"name": "planner-key", "agent_id": "planner"})
    assert created.status_code == 201, created.text
    client = gw.openai(api_key=created.json()["key"])

    request_id, run_id = rid(), rid("run-mismatch")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"Alephant-Agent-Id": "writer", "x-request-id": request_id, "Alephant-Run-Id": run_id},
        )
    assert_sdk_error(
        info.value, openai.PermissionDeniedError, 403, "permission_error", "agent_mismatch", "alephant-agent-id"
    )
    assert_rejected_row(gw, request_id, 403, "agent_mismatch")
    row = gw.get(f"/api/requests/{request_id}")
    assert row["agent_id"] == "planner" and row["virtual_key_id"] == created.json()["id"]
    assert_not_found(gw, f"/api/runs/{run_id}")
    assert gw.fake.received == []

    # Claiming its own agent is fine; so is the unbound key claiming either agent.
    ok_id = rid()
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,  # type: ignore[arg-type]
        extra_headers={"Alephant-Agent-Id": "planner", "x-request-id": ok_id},
    )
    assert gw.get(f"/api/requests/{ok_id}")["agent_id"] == "planner"
    gw.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,  # type: ignore[arg-type]
        extra_headers={"Alephant-Agent-Id": "writer", "x-request-id": (writer_id := rid())},
    )
    assert gw.get(f"/api/requests/{writer_id}")["agent_id"] == "writer"


# -- models and prices -----------------------------------------------------------------------------------------


def test_unknown_or_unpriced_model_is_404_until_a_price_is_added(gw: Harness) -> None:
    client = gw.openai()
    # No route serves it.
    unknown_id = rid()
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="llama-unknown",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-request-id": unknown_id},
        )
    assert_sdk_error(info.value, openai.NotFoundError, 404, "invalid_request_error", "model_not_found", "model")
    assert_rejected_row(gw, unknown_id, 404, "model_not_found", model="llama-unknown")

    # Routed ('priced-*'), but nothing prices it: refused rather than recorded at zero.
    request_id = rid()
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="priced-foo",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-request-id": request_id},
        )
    assert_sdk_error(info.value, openai.NotFoundError, 404, "invalid_request_error", "model_not_found", "model")
    assert "price" in info.value.body["message"]  # type: ignore[index]
    assert_rejected_row(gw, request_id, 404, "model_not_found", model="priced-foo")
    assert gw.fake.received == []

    price = gw.api("POST", "/api/prices", json={"model": "priced-foo", "input_mtok": "1", "output_mtok": "2"})
    assert price.status_code == 201, price.text

    # The price takes effect at once, and the same id may be used again: a refusal is not a completed call.
    run_id = rid("run-priced")
    raw = client.chat.completions.with_raw_response.create(
        model="priced-foo",
        messages=HELLO,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id, "Alephant-Run-Id": run_id},
    )
    assert raw.parse().usage is not None
    # 6 prompt tokens × $1/MTok + 9 completion tokens × $2/MTok = 24 micro-dollars.
    assert raw.headers["alephant-cost-usd"] == "0.000024000"
    assert raw.headers["alephant-cost-source"] == "computed"
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["http_status"], row["error_code"], row["error_message"]) == ("ok", 200, None, None)
    assert (row["input_tokens"], row["output_tokens"], row["cost_nanos"]) == (6, 9, 24_000)
    assert row["provider"] == "openai" and row["run_id"] == run_id
    assert gw.get(f"/api/runs/{run_id}")["totals"]["cost_nanos"] == 24_000
    assert len(gw.fake.received) == 1


def test_model_outside_the_keys_allow_list_is_403(gw: Harness) -> None:
    created = gw.api(
        "POST",
        "/api/virtual-keys",
        json={"name": "mini-only", "department_id": gw.department, "allowed_models": ["gpt-4o-mini"]},
    )
    assert created.status_code == 201, created.text
    client = gw.openai(api_key=created.json()["key"])
    request_id = rid()
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-request-id": request_id},
        )
    assert_sdk_error(info.value, openai.PermissionDeniedError, 403, "permission_error", "model_not_allowed", "model")
    assert_rejected_row(gw, request_id, 403, "model_not_allowed", model="gpt-4o")
    assert gw.get(f"/api/requests/{request_id}")["virtual_key_id"] == created.json()["id"]
    assert gw.fake.received == []
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]


# -- upstream failures ---------------------------------------------------------------------------------------

UPSTREAM_FAILURES = [
    pytest.param("FAIL:500", openai.InternalServerError, 502, "upstream_bad_response", id="5xx"),
    pytest.param("FAIL:429", openai.RateLimitError, 429, "upstream_rate_limited", id="429"),
    pytest.param("FAIL:400", openai.BadRequestError, 400, "upstream_rejected", id="4xx"),
    pytest.param("FAIL:timeout", openai.InternalServerError, 504, "upstream_timeout", id="timeout"),
    pytest.param("FAIL:garbage", openai.InternalServerError, 502, "upstream_bad_response", id="non-json-200"),
]


@pytest.mark.parametrize(("content", "cls", "status", "code"), UPSTREAM_FAILURES)
def test_upstream_failure_is_mapped_and_recorded(
    gw: Harness, content: str, cls: type[openai.APIStatusError], status: int, code: str
) -> None:
    request_id, run_id = rid(), rid("run-upstream")
    with pytest.raises(cls) as info:
        gw.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": content}],
            extra_headers={"x-request-id": request_id, "Alephant-Run-Id": run_id},
        )
    assert_sdk_error(info.value, cls, status, "upstream_error", code)
    headers = info.value.response.headers
    assert headers["x-request-id"] == request_id and headers["alephant-run-id"] == run_id
    assert "alephant-cost-usd" not in headers
    # The provider's own error text is kept in the message; its credential never is.
    assert "sk-fake-upstream-secret" not in info.value.response.text
    assert len(gw.fake.received) == 1
    assert_failed_call(gw, request_id, run_id, status, code)

    # Streamed, the same failure before the first chunk is still an ordinary HTTP error: nothing was sent
    # yet, and SDK retry logic keys off the status. (A non-JSON 200 cannot happen there: it is not SSE.)
    if content == "FAIL:garbage":
        return
    request_id, run_id = rid(), rid("run-upstream-stream")
    with pytest.raises(cls) as info:
        gw.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": content}],
            stream=True,
            extra_headers={"x-request-id": request_id, "Alephant-Run-Id": run_id},
        )
    assert_sdk_error(info.value, cls, status, "upstream_error", code)
    assert info.value.response.headers["x-request-id"] == request_id
    assert info.value.response.headers["content-type"].startswith("application/json")
    row = assert_failed_call(gw, request_id, run_id, status, code)
    assert row["stream"] is True


def test_refused_connection_is_502_unavailable(gw: Harness) -> None:
    port = free_port()  # bound and released: nothing listens there
    key = gw.api(
        "POST",
        "/api/provider-keys",
        json={
            "name": "dead",
            "kind": "openai",
            "provider": "openai",
            "base_url": f"http://127.0.0.1:{port}/v1",
            "api_key": "sk-dead",
            "models": ["refused-*"],
        },
    )
    assert key.status_code == 201, key.text
    price = gw.api("POST", "/api/prices", json={"model": "refused-model", "input_mtok": "1", "output_mtok": "2"})
    assert price.status_code == 201, price.text

    request_id, run_id = rid(), rid("run-refused")
    with pytest.raises(openai.InternalServerError) as info:
        gw.openai().chat.completions.create(
            model="refused-model",
            messages=HELLO,  # type: ignore[arg-type]
            extra_headers={"x-request-id": request_id, "Alephant-Run-Id": run_id},
        )
    assert_sdk_error(info.value, openai.InternalServerError, 502, "upstream_error", "upstream_unavailable")
    assert "dead" in info.value.body["message"]  # type: ignore[index]
    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["http_status"], row["error_code"]) == ("error", 502, "upstream_unavailable")
    assert row["model"] == "refused-model" and row["cost_nanos"] == 0
    [step] = gw.get(f"/api/runs/{run_id}")["steps"]
    assert (step["kind"], step["status"], step["model"]) == ("model_call", "error", "refused-model")
    assert gw.fake.received == []


def _sse_data(lines: list[str]) -> list[str]:
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def test_stream_dropped_midway_ends_with_an_in_band_error(gw: Harness) -> None:
    request_id, run_id = rid(), rid("run-drop")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "FAIL:drop now"}], "stream": True}
    headers = {"authorization": f"Bearer {gw.vk}", "x-request-id": request_id, "Alephant-Run-Id": run_id}
    with HTTP.stream("POST", gw.url + CHAT, json=body, headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-request-id"] == request_id
        lines = list(resp.iter_lines())
    events = _sse_data(lines)
    # The fake sends the role chunk and the first word, then cuts the connection.
    assert len(events) == 3, lines
    first, second = orjson.loads(events[0]), orjson.loads(events[1])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert second["choices"][0]["delta"] == {"content": "This"}
    assert_error_body(orjson.loads(events[2]), "upstream_error", "upstream_unavailable", None)
    assert "[DONE]" not in events

    # No usage chunk arrived: the cost is estimated (~4 bytes a prompt token, one token a content chunk sent).
    sent = orjson.dumps(gw.fake.received[-1]["body"])
    assert gw.fake.received[-1]["body"]["stream_options"] == {"include_usage": True}
    input_tokens, output_tokens = len(sent) // 4, 1
    expected = input_tokens * MINI_IN + output_tokens * MINI_OUT

    row = gw.get(f"/api/requests/{request_id}")
    assert (row["status"], row["http_status"], row["error_code"]) == ("error", 502, "upstream_unavailable")
    assert row["stream"] is True and row["run_id"] == run_id
    assert (row["input_tokens"], row["output_tokens"]) == (input_tokens, output_tokens)
    assert row["cost_source"] == "estimated" and row["cost_nanos"] == expected
    run = gw.get(f"/api/runs/{run_id}")
    [step] = run["steps"]
    assert (step["kind"], step["status"], step["cost_source"]) == ("model_call", "error", "estimated")
    assert step["cost_nanos"] == expected and step["error"] == row["error_message"]
    assert (run["totals"]["errors"], run["totals"]["cost_nanos"]) == (1, expected)

    # The SDK raises the in-band error as an APIError carrying the same body.
    stream = gw.openai().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "FAIL:drop now"}],
        stream=True,
    )
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert_error_body({"error": info.value.body}, "upstream_error", "upstream_unavailable", None)


# -- x-request-id ------------------------------------------------------------------------------------------------


def test_request_id_is_echoed_on_every_response(gw: Harness) -> None:
    cases = [
        ("GET", "/no/such/path", {}, 404),
        ("POST", "/v1/no-such-endpoint", {}, 404),
        ("GET", CHAT, {"authorization": f"Bearer {gw.vk}"}, 405),  # wrong method: 405 method_not_allowed
        ("POST", CHAT, {}, 401),
        ("GET", "/api/runs", {}, 401),
        ("GET", "/healthz", {}, 200),
    ]
    for method, path, headers, status in cases:
        request_id = rid("echo")
        resp = HTTP.request(method, gw.url + path, headers={**headers, "x-request-id": request_id})
        assert resp.status_code == status, (method, path, resp.text)
        assert resp.headers["x-request-id"] == request_id, (method, path)
        if status >= 400:
            body = resp.json()
            assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}

        anonymous = HTTP.request(method, gw.url + path, headers=headers)
        assert anonymous.status_code == status
        assert anonymous.headers["x-request-id"].startswith("req_"), (method, path)

    unknown = HTTP.get(gw.url + "/no/such/path")
    assert_http_error(unknown, 404, "not_found_error", "not_found", None)

    # Generated on a successful call too, and the row is found under it.
    raw = gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    generated = raw.headers["x-request-id"]
    assert generated.startswith("req_") and len(generated) > len("req_")
    row = gw.get(f"/api/requests/{generated}")
    assert row["status"] == "ok" and row["cost_nanos"] == 6 * MINI_IN + 9 * MINI_OUT

    # Echoed on an upstream error as well, whatever the casing of the header name.
    resp = gw.v1(
        "POST",
        CHAT,
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "FAIL:500"}]},
        headers={"X-Request-ID": "Case-Check-1"},
    )
    assert resp.status_code == 502 and resp.headers["x-request-id"] == "Case-Check-1"
