"""The OpenAI Agents SDK (openai-agents) through the gateway: an agent with one function tool, run over the
Responses API (the SDK's default, non-streamed and streamed) and over chat completions. The mock answers the
first call with a call of the tool and the second with text; the run's steps carry exact tokens and costs.

Nothing may leave the machine: for each agent test every socket connect, `socket.create_connection` and name
lookup in this process is checked, and anything not loopback is recorded and refused (the test then fails).
The SDK's traffic runs on the test's asyncio loop, whose connects go through `socket.socket.connect`; the
gateway's own upstream calls (uvloop, in the server thread) go to the fake upstream, which records each one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.models import _openai_shared

from tests.harness import Harness

pytestmark = pytest.mark.e2e

MODEL = "gpt-4o-mini"
INSTRUCTIONS = "You answer weather questions."  # 4 words
QUESTION = "What is the weather in Paris?"  # 6 words
TOOL_OUTPUT = "Sunny and warm in mock today"  # 6 words; the mock's schema instance for a string is "mock"
FINAL = "This is a mock reply to: " + TOOL_OUTPUT  # 12 words

# gpt-4o-mini: $0.15 input, $0.60 output per MTok (OpenAI's pricing page, as genai-prices 0.2.3 carries it;
# tests/e2e/test_openai_formats.py checks the catalog holds these). At $X per MTok a token is X * 1000 nanos.
INPUT_RATE = Decimal("0.15")
OUTPUT_RATE = Decimal("0.60")


def _nanos(tokens_in: int, tokens_out: int) -> int:
    nanos = (tokens_in * INPUT_RATE + tokens_out * OUTPUT_RATE) * 1000
    assert nanos == nanos.to_integral_value()
    return int(nanos)


# Responses: instructions 4 words (no +3) + the question 6 + 3 = 13 in; the call's arguments '{"city": "mock"}'
# are 2 pieces out: 13 × $0.15 + 2 × $0.60 = $3.15 per MTok.
# Then + the function_call item (no words) 3 + the function_call_output 6 + 3 = 25 in; the reply 12 out:
# 25 × $0.15 + 12 × $0.60 = $10.95 per MTok.
RESPONSES_STEPS = [(13, 2, 3_150), (25, 12, 10_950)]
# Chat completions: the instructions travel as a system message, 4 + 3 = 7, + the question 9 = 16 in, 2 out
# ($3.60 per MTok); then + the assistant's tool call 3 + the tool message 9 = 28 in, 12 out ($11.40 per MTok).
CHAT_STEPS = [(16, 2, 3_600), (28, 12, 11_400)]


# --- the loopback-only guard --------------------------------------------------------------------------------

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _is_loopback(host: Any) -> bool:
    if host is None:  # getaddrinfo(None, port): the local host
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%", 1)[0].lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass
class LoopbackOnly:
    """Records every connect and lookup; refuses (and records) any that is not loopback."""

    refused: list[tuple[str, Any]] = field(default_factory=list)
    allowed: list[tuple[str, Any]] = field(default_factory=list)

    def check(self, what: str, host: Any, target: Any) -> None:
        if _is_loopback(host):
            self.allowed.append((what, target))
            return
        self.refused.append((what, target))
        if what == "getaddrinfo":
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookups of {host!r}")
        raise ConnectionRefusedError(f"test guard: no connections to {target!r}")

    def check_address(self, what: str, sock: socket.socket, address: Any) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return  # a local IPC socket, not the network
        host = address[0] if isinstance(address, tuple) and address else address
        self.check(what, host, address)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        real_create_connection = socket.create_connection
        real_getaddrinfo = socket.getaddrinfo

        def connect(sock: socket.socket, address: Any) -> None:
            self.check_address("connect", sock, address)
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            self.check_address("connect_ex", sock, address)
            return real_connect_ex(sock, address)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            self.check("create_connection", address[0], address)
            return real_create_connection(address, *args, **kwargs)

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            self.check("getaddrinfo", host, (host, port))
            return real_getaddrinfo(host, port, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "create_connection", create_connection)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackOnly]:
    guard = LoopbackOnly()
    guard.install(monkeypatch)
    yield guard
    assert guard.refused == [], f"non-loopback network access was attempted: {guard.refused}"


@pytest.fixture
def agents_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK's process-wide settings for one test: tracing off, no OpenAI credentials from the environment,
    and the default client restored afterwards."""
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    previous = _openai_shared.get_default_openai_client()
    set_tracing_disabled(True)
    yield
    _openai_shared.set_default_openai_client(previous)  # type: ignore[arg-type]


def test_the_guard_refuses_and_records_other_hosts(loopback_only: LoopbackOnly) -> None:
    """The guard itself: sync and asyncio connects and lookups to other hosts never leave the process."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("203.0.113.7", 443), timeout=1)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("198.51.100.1", 80))
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect_ex(("2001:db8::1", 80))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("api.openai.com", 443)

    async def reach_out() -> None:
        with pytest.raises(OSError):
            await asyncio.open_connection("192.0.2.10", 443)
        with pytest.raises(OSError):
            await asyncio.open_connection("api.openai.com", 443)

    asyncio.run(reach_out())
    refused = [(what, target) for what, target in loopback_only.refused]
    assert ("create_connection", ("203.0.113.7", 443)) in refused
    assert ("connect", ("198.51.100.1", 80)) in refused
    assert ("connect_ex", ("2001:db8::1", 80)) in refused
    assert ("connect", ("192.0.2.10", 443)) in refused  # asyncio: the loop's sock_connect
    assert refused.count(("getaddrinfo", ("api.openai.com", 443))) == 2  # socket's, then the loop's lookup
    loopback_only.refused.clear()  # expected here; the fixture's own check is for the agent tests
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert _is_loopback("::ffff:127.0.0.1") and not _is_loopback("10.0.0.1")


# --- the agent ----------------------------------------------------------------------------------------------


def _weather_agent(ran: list[str], model: Any = MODEL) -> Agent[Any]:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"Sunny and warm in {city} today"

    return Agent(name="weather", instructions=INSTRUCTIONS, model=model, tools=[get_weather])


def _client(gw: Harness, run_id: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key=gw.vk, max_retries=0, default_headers={"Alephant-Run-Id": run_id}
    )


def _assert_steps(gw: Harness, run_id: str, expected: list[tuple[int, int, int]], fmt: str, stream: bool) -> None:
    run = gw.get(f"/api/runs/{run_id}")
    steps = sorted(run["steps"], key=lambda s: s["started_at"])
    assert [s["kind"] for s in steps] == ["model_call", "model_call"]
    assert [(s["input_tokens"], s["output_tokens"], s["cost_nanos"]) for s in steps] == expected
    assert [_nanos(i, o) for i, o, _ in expected] == [n for _, _, n in expected]
    for step in steps:
        assert step["status"] == "ok" and step["model"] == MODEL and step["cost_source"] == "computed"
        assert step["attributes"]["format"] == fmt and step["attributes"]["provider_format"] == fmt
        assert step["attributes"]["provider_key"] == "fake-openai"
        assert step["attributes"]["stream"] is stream
        req = gw.get(f"/api/requests/{step['request_id']}")
        assert (req["input_tokens"], req["output_tokens"], req["cost_nanos"]) == (
            step["input_tokens"],
            step["output_tokens"],
            step["cost_nanos"],
        )
    totals = run["totals"]
    assert totals["model_calls"] == 2
    assert totals["input_tokens"] == sum(i for i, _, _ in expected)
    assert totals["output_tokens"] == sum(o for _, o, _ in expected)
    assert totals["cost_nanos"] == sum(n for _, _, n in expected)


def _assert_local_traffic(gw: Harness, guard: LoopbackOnly) -> None:
    assert guard.refused == []
    port = int(gw.url.rsplit(":", 1)[1])
    # The guard saw the SDK's own connections (to the gateway), so it was in their path.
    assert any(what == "connect" and target[1] == port for what, target in guard.allowed), guard.allowed
    assert asyncio.get_running_loop().__class__.__module__.startswith("asyncio")


async def test_agent_over_the_responses_api(gw: Harness, agents_sdk: None, loopback_only: LoopbackOnly) -> None:
    client = _client(gw, "agent-run-responses")
    set_default_openai_client(client, use_for_tracing=False)
    ran: list[str] = []
    result = await Runner.run(_weather_agent(ran), QUESTION)
    await client.close()

    assert ran == ["mock"]
    assert result.final_output == FINAL
    first, second = gw.fake.received
    assert first["path"] == second["path"] == "/v1/responses"
    assert first["body"]["instructions"] == INSTRUCTIONS
    assert [item.get("type") for item in second["body"]["input"]] == [None, "function_call", "function_call_output"]
    assert second["body"]["input"][2]["output"] == TOOL_OUTPUT
    _assert_steps(gw, "agent-run-responses", RESPONSES_STEPS, "responses", stream=False)
    _assert_local_traffic(gw, loopback_only)


async def test_agent_streamed_over_the_responses_api(
    gw: Harness, agents_sdk: None, loopback_only: LoopbackOnly
) -> None:
    client = _client(gw, "agent-run-streamed")
    set_default_openai_client(client, use_for_tracing=False)
    ran: list[str] = []
    result = Runner.run_streamed(_weather_agent(ran), QUESTION)
    kinds = [event.type async for event in result.stream_events()]
    await client.close()

    assert ran == ["mock"]
    assert result.final_output == FINAL
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert all(r["body"]["stream"] is True for r in gw.fake.received) and len(gw.fake.received) == 2
    _assert_steps(gw, "agent-run-streamed", RESPONSES_STEPS, "responses", stream=True)
    _assert_local_traffic(gw, loopback_only)


async def test_agent_over_chat_completions(gw: Harness, agents_sdk: None, loopback_only: LoopbackOnly) -> None:
    client = _client(gw, "agent-run-chat")
    ran: list[str] = []
    agent = _weather_agent(ran, OpenAIChatCompletionsModel(model=MODEL, openai_client=client))
    result = await Runner.run(agent, QUESTION)
    await client.close()

    assert ran == ["mock"]
    assert result.final_output == FINAL
    first, second = gw.fake.received
    assert first["path"] == second["path"] == "/v1/chat/completions"
    assert [m["role"] for m in second["body"]["messages"]] == ["system", "user", "assistant", "tool"]
    _assert_steps(gw, "agent-run-chat", CHAT_STEPS, "chat", stream=False)
    _assert_local_traffic(gw, loopback_only)
