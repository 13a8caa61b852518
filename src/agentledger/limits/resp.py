"""`RedisLink`: the counters' connection to Redis, one per client, every command pipelined on it.

redis-py spent ~0.14 ms of CPU per script call on the gateway's hot path (the blocking pool's checkout and
release, its locks, packing the command, the reply's way back: docs/benchmark.md), as much as a governed call's
whole budget. Here a command is one write of RESP, a future, and hiredis' parse of the reply: it goes out as soon
as it is made, on the one connection every operation shares, and replies come back in the order commands were
sent (Redis answers a connection in order), so there is no pool to check a connection out of and no lock.

Failures: a connection refused or broken, not made within `connect_timeout`, or a command not answered within
`timeout` fails every command in flight on that connection with redis-py's `ConnectionError` /
`TimeoutError` (their outcome is unknown) and closes it; the next command opens a new one. An error reply
(NOSCRIPT, READONLY, OOM, LOADING, a script's error) is a `ResponseError` raised for its command alone. Nothing is
retried here.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS; ``?ssl_cert_reqs=none`` to skip
verification) and ``unix://path[?db=N]``; ``?socket_timeout=`` and ``?socket_connect_timeout=`` (seconds) set
the timeouts, as with redis-py; other options in the URL are refused (ValueError), not ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    RedisError,
    ResponseError,
    TimeoutError as RedisTimeoutError,
)

Arg = str | int

LAZY_DELAY = 0.005  # seconds a lazy command may wait for another to go out with

_KNOWN = {
    "host",
    "port",
    "db",
    "username",
    "password",
    "path",
    "connection_class",
    "ssl_cert_reqs",
    "socket_timeout",
    "socket_connect_timeout",
}


def pack(args: Sequence[Arg]) -> bytes:
    """A command as RESP (an array of bulk strings). Built as text when it is ASCII (lengths in characters are
    then lengths in bytes), the usual case: one encode instead of one per argument."""
    out = [f"*{len(args)}\r\n"]
    for a in args:
        s = a if isinstance(a, str) else str(a)
        if not s.isascii():
            return _pack_bytes(args)
        out.append(f"${len(s)}\r\n{s}\r\n")
    return "".join(out).encode()


def _pack_bytes(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = (a if isinstance(a, str) else str(a)).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    """One connection: replies are handed to the waiting futures in the order the commands were written."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError, encoding="utf-8")
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.broken: RedisError | None = None
        self.held: list[bytes] = []  # lazy commands not written yet (in `waiting` already: written in that order)
        self.flush_at: asyncio.TimerHandle | None = None

    def write(self, data: bytes) -> None:
        """Write `data` after whatever lazy commands are held: one write (one system call) for all of them."""
        assert self.transport is not None
        if self.held:
            self.held.append(data)
            self.flush()
        else:
            self.transport.write(data)

    def hold(self, data: bytes, delay: float) -> None:
        self.held.append(data)
        if self.flush_at is None:
            self.flush_at = asyncio.get_running_loop().call_later(delay, self.flush)

    def flush(self) -> None:
        if self.flush_at is not None:
            self.flush_at.cancel()
            self.flush_at = None
        if self.held and self.transport is not None and self.broken is None:
            self.transport.write(b"".join(self.held))
        self.held.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, not by subclass

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                fut = waiting.popleft()
                if not fut.done():
                    fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbled, or a reply no command asked for
            self.fail(RedisConnectionError(f"Redis protocol error: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc!r}" if exc else "Redis closed the connection"))

    def fail(self, exc: RedisError) -> None:
        """Fail every command in flight with `exc` and close: the replies still to come would be out of step."""
        if self.broken is None:
            self.broken = exc
        self.held.clear()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def timed_out(self, fut: asyncio.Future[Any], timeout: float) -> None:
        if not fut.done():
            self.fail(RedisTimeoutError(f"Timeout reading from Redis: no reply within {timeout} s"))


class RedisLink:
    """Commands to one Redis over one pipelined connection (module docstring)."""

    def __init__(self, url: str, *, timeout: float, connect_timeout: float) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        unknown = set(options) - _KNOWN
        if unknown:
            raise ValueError(f"redis_url options not supported by the counters' connection: {sorted(unknown)}")
        self._host: str = options.get("host") or "localhost"
        self._port: int = int(options.get("port") or 6379)
        self._path: str | None = options.get("path")
        self._ssl: ssl.SSLContext | None = None
        if options.get("connection_class") is SSLConnection:
            self._ssl = ssl.create_default_context()
            if str(options.get("ssl_cert_reqs", "required")).lower() == "none":
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        setup: list[list[Arg]] = []
        if options.get("password") is not None:
            user = options.get("username")
            setup.append(["AUTH", *([user] if user else []), options["password"]])
        if int(options.get("db") or 0):
            setup.append(["SELECT", int(options["db"])])
        self._setup = setup
        self.timeout = float(options.get("socket_timeout") or timeout)  # the URL's, as redis-py took them
        self.connect_timeout = float(options.get("socket_connect_timeout") or connect_timeout)
        self._conn: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None

    async def call(self, args: Sequence[Arg], *, lazy: bool = False) -> Any:
        """Send one command and return its reply (hiredis' types: str, int, list, None); an error reply is
        raised as `ResponseError`, a failure of the connection as `ConnectionError` or `TimeoutError`.

        `lazy`: nobody waits on it (a call's settle, in the background): it is written with the next command,
        or after `LAZY_DELAY` at the latest. One system call, and one read by Redis, for both: with one call at
        a time, a call's settle goes out with the next call's reservation."""
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is None or conn.broken is not None or loop is not self._loop:
            conn = await self._connect(loop)
        return await self._send(conn, loop, pack(args), lazy)

    async def _send(self, conn: _Protocol, loop: asyncio.AbstractEventLoop, data: bytes, lazy: bool = False) -> Any:
        fut: asyncio.Future[Any] = loop.create_future()
        conn.waiting.append(fut)
        if lazy:
            conn.hold(data, LAZY_DELAY)
        else:
            conn.write(data)
        timeout = self.timeout + (LAZY_DELAY if lazy else 0.0)
        timer = loop.call_later(timeout, conn.timed_out, fut, timeout)
        try:
            reply = await fut
        finally:
            timer.cancel()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        if self._loop is not loop:  # a connection (and a lock) belongs to the loop that made it
            self._conn, self._loop, self._connecting = None, loop, asyncio.Lock()
        assert self._connecting is not None
        async with self._connecting:
            conn = self._conn
            if conn is not None and conn.broken is None:
                return conn  # another command opened it meanwhile
            try:
                async with asyncio.timeout(self.connect_timeout):
                    if self._path is not None:
                        _, conn = await loop.create_unix_connection(_Protocol, self._path)
                    else:
                        _, conn = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl)
            except TimeoutError as exc:  # (the builtin: an OSError, so first)
                raise RedisTimeoutError(f"Timeout connecting to Redis ({self.connect_timeout} s)") from exc
            except OSError as exc:
                raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
            try:
                for command in self._setup:  # AUTH, SELECT: before any other command on this connection
                    await self._send(conn, loop, pack(command))
            except RedisError as exc:
                conn.fail(exc)
                raise
            self._conn = conn
            return conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.flush()  # what is held was sent as far as its callers know
            conn.fail(RedisConnectionError("Connection closed by the client"))
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)  # let the transport close
