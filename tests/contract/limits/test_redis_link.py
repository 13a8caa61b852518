"""`RedisCounters`' own connection (limits/resp.py): one per client, commands pipelined on it.

What the contract suite cannot see: replies matched to their commands under concurrency, scripts Redis forgot
(a restart, SCRIPT FLUSH) run again, a connection Redis closed replaced by the next operation, the URL's
password and database used, and URL options it does not support refused rather than ignored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as redis_sync

from agentledger.limits import CountersUnavailable
from agentledger.limits.base import Charge, Standing
from agentledger.limits.redis import RedisCounters
from agentledger.limits.resp import pack
from tests.contract.limits.test_counters import REDIS_URL, drop_prefix, needs_redis

pytestmark = needs_redis


@pytest.fixture
async def counters() -> AsyncIterator[RedisCounters]:
    prefix = f"t:{uuid.uuid4().hex}:"
    made = RedisCounters(REDIS_URL, prefix, timeout=10.0, connect_timeout=10.0)
    yield made
    await made.aclose()
    await drop_prefix(prefix)


async def test_concurrent_operations_each_get_their_own_reply(counters: RedisCounters) -> None:
    amounts = list(range(1, 301))
    answers = await asyncio.gather(*(counters.add([Charge(f"k{n}", None, n)]) for n in amounts))
    assert answers == [{f"k{n}": Standing(n, 0)} for n in amounts]
    reserved = await asyncio.gather(*(counters.reserve(f"r{n}", [Charge(f"k{n}", None, n)], 60) for n in amounts))
    settled = await asyncio.gather(*(counters.settle(f"r{n}", 1) for n in amounts))
    assert reserved == [{f"k{n}": Standing(n, n)} for n in amounts]
    assert settled == [{f"k{n}": Standing(n + 1, 0)} for n in amounts]


async def test_scripts_redis_forgot_are_run_again(counters: RedisCounters) -> None:
    assert await counters.add([Charge("a", None, 5)]) == {"a": Standing(5, 0)}
    redis_sync.Redis.from_url(REDIS_URL).script_flush()
    assert await counters.add([Charge("a", None, 5)]) == {"a": Standing(10, 0)}  # EVAL, caching it again
    assert await counters.add([Charge("a", None, 5)]) == {"a": Standing(15, 0)}


async def test_a_connection_redis_closed_is_replaced(counters: RedisCounters) -> None:
    await counters.add([Charge("a", None, 1)])
    ident = await counters._link.call(["CLIENT", "ID"])
    redis_sync.Redis.from_url(REDIS_URL).client_kill_filter(_id=ident)
    await asyncio.sleep(0.1)  # the close reaches the client
    assert await counters.add([Charge("a", None, 1)]) == {"a": Standing(2, 0)}
    assert await counters._link.call(["CLIENT", "ID"]) != ident


class _Writes:
    """A transport that counts its writes."""

    def __init__(self, transport: Any) -> None:
        self.transport, self.writes = transport, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def abort(self) -> None:
        self.transport.abort()


async def test_a_lazy_settle_goes_out_with_the_next_command_or_soon(counters: RedisCounters) -> None:
    await counters.reserve("r1", [Charge("a", None, 5)], 60)
    await counters.reserve("r2", [Charge("a", None, 7)], 60)
    await counters.settle("never", 0)  # Redis has both scripts (none is sent again as EVAL below)
    await counters.standing(["a"])
    conn = counters._link._conn
    assert conn is not None
    spy = conn.transport = _Writes(conn.transport)  # type: ignore[assignment]
    settling = asyncio.create_task(counters.settle("r1", 1, lazy=True))
    await asyncio.sleep(0)
    assert spy.writes == 0  # held
    assert await counters.standing(["a"]) == {"a": Standing(1, 7)}  # written with it, answered after it
    assert spy.writes == 1 and await settling == {"a": Standing(1, 7)}
    started = asyncio.get_running_loop().time()
    assert await counters.settle("r2", 2, lazy=True) == {"a": Standing(3, 0)}  # alone: within LAZY_DELAY
    assert spy.writes == 2 and asyncio.get_running_loop().time() - started < 1.0


async def test_the_urls_password_and_database_are_used() -> None:
    # This Redis has no password: AUTH is refused, so the operation is unavailable (and nothing else was sent).
    wrong = RedisCounters("redis://:not-the-password@127.0.0.1:6379/15", timeout=10.0, connect_timeout=10.0)
    try:
        with pytest.raises(CountersUnavailable):
            await wrong.standing(["a"])
    finally:
        await wrong.aclose()
    other = RedisCounters("redis://127.0.0.1:6379/14", f"t:{uuid.uuid4().hex}:", timeout=10.0, connect_timeout=10.0)
    try:
        assert " db=14 " in await other._link.call(["CLIENT", "INFO"])
    finally:
        await other.aclose()


def test_url_options_it_does_not_support_are_refused() -> None:
    with pytest.raises(ValueError, match="health_check_interval"):
        RedisCounters("redis://127.0.0.1:6379/15?health_check_interval=3")
    timed = RedisCounters("redis://127.0.0.1:6379/15?socket_timeout=3&socket_connect_timeout=2")
    assert (timed._link.timeout, timed._link.connect_timeout) == (3.0, 2.0)


def test_commands_are_packed_as_resp() -> None:
    assert pack(["SET", "k", 12]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert pack(["SET", "ké", "v"]) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$1\r\nv\r\n"  # lengths in bytes


async def test_a_redis_that_never_answers_fails_what_is_in_flight_after_the_timeout() -> None:
    """A server that takes the connection and never replies (a hung Redis): every command in flight fails with the
    timeout, as `CountersUnavailable` to the counters' callers, and the next command opens a new connection."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = RedisCounters(f"redis://127.0.0.1:{port}/0", timeout=0.3, connect_timeout=1.0)
    try:
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(
            hung.standing(["a"]), hung.standing(["b"]), return_exceptions=True
        )  # fmt: skip
        waited = asyncio.get_running_loop().time() - started
        assert all(isinstance(r, CountersUnavailable) for r in results), results
        assert 0.25 <= waited < 2.0, waited
        with pytest.raises(CountersUnavailable):
            await hung.standing(["c"])
        assert len(connections) == 2  # the broken connection was not used again
    finally:
        await hung.aclose()
        server.close()
        await server.wait_closed()
