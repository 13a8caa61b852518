"""Which provider key serves a call, through the real gateway: `key/model` names a key only when one has that
name (else the whole string is the model id, as OpenRouter's are), `alephant-forced-routing` picks a key over
the route table, a named key never serves more than its patterns; and what provider-key creation accepts.

The workspace starts with `fake-openai` (priority 0, models gpt-*, o3*, priced-*); every key here answers from
the session's fake upstream and is told apart by the credential it sends.
"""

from __future__ import annotations

from typing import Any

from tests.harness import Harness

HELLO = [{"role": "user", "content": "hello there world"}]
MINI = 6 * 150 + 9 * 600  # gpt-4o-mini: $0.15 / $0.60 per MTok
FORCED = "alephant-forced-routing"


def call(gw: Harness, model: str, request_id: str, **headers: str) -> Any:
    return gw.v1(
        "POST",
        "/v1/chat/completions",
        json={"model": model, "messages": HELLO},
        headers={"x-request-id": request_id, **headers},
    )


def sent(gw: Harness) -> tuple[str, str]:
    """The credential and model id the provider got on the last call."""
    last = gw.fake.received[-1]
    return last["headers"]["authorization"], last["body"]["model"]


def test_a_key_prefix_routes_to_that_key_and_the_provider_gets_the_bare_model(gw: Harness) -> None:
    gw.add_provider_key(name="acme", models=["gpt-*"], api_key="sk-acme", priority=-5)
    resp = call(gw, "acme/gpt-4o-mini", "req-prefix")
    assert resp.status_code == 200, resp.text
    assert sent(gw) == ("Bearer sk-acme", "gpt-4o-mini")
    assert (resp.headers["alephant-provider"], resp.headers["alephant-model"]) == ("acme", "gpt-4o-mini")
    assert resp.headers["alephant-cost-usd"] == "0.000006300"
    req = gw.get("/api/requests/req-prefix")
    assert (req["provider_key"], req["model"], req["requested_model"]) == ("acme", "gpt-4o-mini", "acme/gpt-4o-mini")
    assert (req["cost_nanos"], req["route_attempts"]) == (MINI, 1)

    # Without the prefix the route table decides: fake-openai outranks acme.
    assert call(gw, "gpt-4o-mini", "req-plain").status_code == 200
    assert sent(gw) == ("Bearer sk-fake-upstream-secret", "gpt-4o-mini")
    assert gw.get("/api/requests/req-plain")["requested_model"] is None

    # Naming a key never widens what it serves.
    resp = call(gw, "acme/o3-mini", "req-narrow")
    assert resp.status_code == 404, resp.text
    assert (resp.json()["error"]["code"], resp.json()["error"]["param"]) == ("model_not_found", "model")
    assert "'acme'" in resp.json()["error"]["message"]


def test_an_openrouter_style_id_without_a_key_of_that_name_is_sent_whole(gw: Harness) -> None:
    gw.add_provider_key(name="router", models=["anthropic/*"], api_key="sk-router")
    resp = gw.api("POST", "/api/prices", json={"model": "anthropic/claude-x", "input_mtok": "1", "output_mtok": "2"})
    assert resp.status_code == 201, resp.text
    resp = call(gw, "anthropic/claude-x", "req-or")
    assert resp.status_code == 200, resp.text
    assert sent(gw) == ("Bearer sk-router", "anthropic/claude-x")
    assert (resp.headers["alephant-provider"], resp.headers["alephant-model"]) == ("router", "anthropic/claude-x")
    req = gw.get("/api/requests/req-or")
    assert (req["provider_key"], req["model"], req["requested_model"]) == ("router", "anthropic/claude-x", None)
    assert req["cost_nanos"] == 6 * 1_000 + 9 * 2_000  # the override: $1 / $2 per MTok

    # Unpriced and unrouted: no key serves it.
    resp = call(gw, "mistral/large", "req-none")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_forced_routing_picks_its_key_over_a_higher_priority_one(gw: Harness) -> None:
    gw.add_provider_key(name="low", models=["gpt-*"], api_key="sk-low", priority=-50)
    resp = call(gw, "gpt-4o-mini", "req-forced", **{FORCED: "low"})
    assert resp.status_code == 200, resp.text
    assert sent(gw) == ("Bearer sk-low", "gpt-4o-mini")
    assert resp.headers["alephant-provider"] == "low"
    req = gw.get("/api/requests/req-forced")
    assert (req["provider_key"], req["cost_nanos"]) == ("low", MINI)

    # The key's own prefix is understood (and stripped) when it is also forced.
    assert call(gw, "low/gpt-4o", "req-forced-prefix", **{FORCED: "low"}).status_code == 200
    assert sent(gw) == ("Bearer sk-low", "gpt-4o")

    # Forcing the default key, which would have won anyway, changes nothing.
    assert call(gw, "gpt-4o-mini", "req-forced-default", **{FORCED: "fake-openai"}).status_code == 200
    assert sent(gw) == ("Bearer sk-fake-upstream-secret", "gpt-4o-mini")


def test_forcing_an_unknown_key_is_an_invalid_header(gw: Harness) -> None:
    resp = call(gw, "gpt-4o-mini", "req-ghost", **{FORCED: "ghost"})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_header", FORCED)
    assert "'ghost'" in err["message"]
    assert gw.fake.received == []
    req = gw.get("/api/requests/req-ghost")  # refused, and on the books at no cost
    assert (req["status"], req["http_status"], req["error_code"], req["cost_nanos"]) == (
        "error",
        400,
        "invalid_header",
        0,
    )

    # On /v1/messages the same refusal is Anthropic-shaped.
    resp = gw.v1(
        "POST",
        "/v1/messages",
        json={"model": "gpt-4o-mini", "max_tokens": 16, "messages": HELLO},
        headers={FORCED: "ghost"},
    )
    assert resp.status_code == 400
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == "invalid_request_error"


def test_a_forced_key_that_does_not_serve_the_model_is_model_not_found(gw: Harness) -> None:
    gw.add_provider_key(name="embedder", models=["text-embedding-*"], api_key="sk-emb")
    resp = call(gw, "gpt-4o-mini", "req-nserve", **{FORCED: "embedder"})
    assert resp.status_code == 404, resp.text
    err = resp.json()["error"]
    assert (err["code"], err["param"]) == ("model_not_found", "model")
    assert "'embedder'" in err["message"] and "'gpt-4o-mini'" in err["message"]
    assert gw.fake.received == []


BAD_KEYS: list[tuple[dict[str, Any], str]] = [
    ({"fallbacks": "B"}, "fallbacks"),
    ({"fallbacks": {"key": "B"}}, "fallbacks"),
    ({"fallbacks": [{"key": f"k{i}"} for i in range(9)]}, "fallbacks"),
    ({"fallbacks": ["B"]}, "fallbacks[0]"),
    ({"fallbacks": [{}]}, "fallbacks[0]"),
    ({"fallbacks": [{"key": "B"}, {"key": "C", "weight": 2}]}, "fallbacks[1]"),
    ({"fallbacks": [{"key": None, "model": None}]}, "fallbacks[0]"),
    ({"fallbacks": [{"key": ""}]}, "fallbacks[0].key"),
    ({"fallbacks": [{"key": "   "}]}, "fallbacks[0].key"),
    ({"fallbacks": [{"key": 7}]}, "fallbacks[0].key"),
    ({"fallbacks": [{"key": "a\x00b"}]}, "fallbacks[0].key"),
    ({"fallbacks": [{"model": "m" * 257}]}, "fallbacks[0].model"),
    ({"retry": 3}, "retry"),
    ({"retry": [3]}, "retry"),
    ({"retry": {"attempts": 2, "jitter": True}}, "retry"),
    ({"retry": {"attempts": 0}}, "retry.attempts"),
    ({"retry": {"attempts": 6}}, "retry.attempts"),
    ({"retry": {"attempts": True}}, "retry.attempts"),
    ({"retry": {"attempts": 2.0}}, "retry.attempts"),
    ({"retry": {"attempts": "2"}}, "retry.attempts"),
    ({"retry": {"backoff_ms": -1}}, "retry.backoff_ms"),
    ({"retry": {"backoff_ms": 120_001}}, "retry.backoff_ms"),
    ({"retry": {"max_backoff_ms": 10**12}}, "retry.max_backoff_ms"),
    ({"options": {"api_version": "2024-10-21"}}, "options"),  # not an openai key's option
    ({"options": "x"}, "options"),
    ({"kind": "anthropic", "options": {"api_version": "2024-10-21"}}, "options"),
    ({"kind": "anthropic", "options": {"anthropic_version": ""}}, "options.anthropic_version"),
    ({"kind": "anthropic", "options": {"anthropic_version": "v" * 65}}, "options.anthropic_version"),
    ({"kind": "azure", "options": {"deployments": ["gpt-4o"]}}, "options"),
    ({"kind": "azure", "options": {"api_version": 2024}}, "options.api_version"),
    ({"kind": "azure", "options": {"deployments": {"gpt-4o": ""}}}, "options.deployments.gpt-4o"),
    ({"kind": "azure", "options": {"anthropic_version": "2023-06-01"}}, "options"),
    ({"kind": "azure", "base_url": None}, "base_url"),
    ({"kind": "bedrock"}, "kind"),
]


def test_provider_key_creation_names_the_bad_field(gw: Harness) -> None:
    """One gateway for every case (a parametrized test would start one per case)."""
    for fields, param in BAD_KEYS:
        body = {"name": "bad", "kind": "openai", "base_url": gw.upstream_url + "/v1", "api_key": "sk-x", **fields}
        if body["base_url"] is None:
            del body["base_url"]
        elif body["kind"] == "azure":
            body["base_url"] = gw.upstream_url
        resp = gw.api("POST", "/api/provider-keys", json=body)
        assert resp.status_code == 400, (fields, resp.text)
        err = resp.json()["error"]
        assert (err["type"], err["param"]) == ("invalid_request_error", param), (fields, err)
    assert [k["name"] for k in gw.get("/api/provider-keys")["data"]] == ["fake-openai"]


def test_provider_keys_list_their_routing_settings(gw: Harness) -> None:
    gw.add_provider_key(
        name="A",
        models=["gpt-4o*"],
        fallbacks=[{"key": " B "}, {"model": "gpt-4o"}, {"key": "B", "model": "gpt-4.1"}],
        retry={"attempts": 3, "backoff_ms": 50},
    )
    gw.add_provider_key(name="B", kind="anthropic", options={"anthropic_version": "2023-06-01"}, api_key="sk-b")
    gw.add_provider_key(
        name="Z",
        kind="azure",
        options={"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-4o"}},
        retry={},
    )
    keys = {k["name"]: k for k in gw.get("/api/provider-keys")["data"]}
    assert set(keys) == {"fake-openai", "A", "B", "Z"}
    assert keys["A"]["fallbacks"] == [
        {"key": "B", "model": None},
        {"key": None, "model": "gpt-4o"},
        {"key": "B", "model": "gpt-4.1"},
    ]
    assert keys["A"]["retry"] == {"attempts": 3, "backoff_ms": 50, "max_backoff_ms": 10_000}
    assert keys["A"]["options"] is None
    assert keys["B"]["options"] == {"anthropic_version": "2023-06-01"}
    assert keys["B"]["fallbacks"] is None and keys["B"]["retry"] is None
    assert keys["Z"]["options"] == {"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-4o"}}
    assert keys["Z"]["retry"] == {"attempts": 1, "backoff_ms": 200, "max_backoff_ms": 10_000}
    assert keys["fake-openai"]["fallbacks"] is None and keys["fake-openai"]["retry"] is None
    for key in keys.values():
        assert "api_key" not in key and "api_key_encrypted" not in key
        assert "sk-" not in str(key)


def test_a_fallback_may_name_a_key_created_after_it(gw: Harness) -> None:
    """Keys are created one at a time: A's fallback to B resolves once B exists (the route cache is dropped)."""
    gw.add_provider_key(name="A", models=["gpt-4o-mini"], priority=10, api_key="sk-a", fallbacks=[{"key": "B"}])
    gw.fake.script[:] = [500]
    resp = call(gw, "gpt-4o-mini", "req-before")
    assert resp.status_code == 502 and resp.headers["alephant-attempts"] == "1"
    gw.add_provider_key(name="B", models=["gpt-*"], api_key="sk-b")
    gw.fake.script[:] = [500]
    resp = call(gw, "gpt-4o-mini", "req-after")
    assert resp.status_code == 200, resp.text
    assert (resp.headers["alephant-provider"], resp.headers["alephant-attempts"]) == ("B", "2")
    assert sent(gw) == ("Bearer sk-b", "gpt-4o-mini")
