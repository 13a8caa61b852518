"""Invoking a workflow agent's runtime (an n8n webhook, any webhook) for a paid call: one lean aiohttp session for
every runtime, shared as providers/http.py shares its own (docs/paid-endpoints.md, "The flow").

What a buyer may learn of a failure is its kind and, for an answer, its HTTP status: never the runtime's URL,
host or port, nor anything the runtime or the transport said (a connection error names the address it tried, a
webhook's error page may echo its URL). So every message here is fixed text, and the detail goes to the log.
Redirects are not followed: the URL an admin configured is the only place a buyer's input is sent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import aiohttp
import orjson

from agentledger.core.errors import UpstreamError, UpstreamTimeout
from agentledger.core.paid_endpoints import RuntimeSpec

log = logging.getLogger(__name__)
USER_AGENT = "agentledger"
MAX_ANSWER_BYTES = 10 * 1024 * 1024
_CHUNK = 64 * 1024


class WorkflowFailed(UpstreamError):
    """The workflow answered with a status other than 2xx (502)."""

    code = "workflow_failed"

    def __init__(self, workflow_status: int) -> None:
        super().__init__(f"The workflow failed (HTTP {workflow_status}).")
        self.workflow_status = workflow_status


class WorkflowUnavailable(UpstreamError):
    """The workflow could not be reached, or dropped the connection (502)."""

    code = "workflow_unavailable"


class WorkflowBadResponse(UpstreamError):
    """The workflow answered 2xx with something that is not JSON, or too much of it (502)."""

    code = "workflow_bad_response"

    def __init__(self, message: str, workflow_status: int) -> None:
        super().__init__(message)
        self.workflow_status = workflow_status


class WorkflowTimeout(UpstreamTimeout):
    """The workflow did not answer within the endpoint's timeout (504)."""

    code = "workflow_timeout"


@dataclass(frozen=True, slots=True)
class WorkflowAnswer:
    status: int
    body: bytes  # JSON, checked
    latency_ms: float


class WorkflowInvoker:
    def __init__(self, *, max_connections: int = 256, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.max_connections = max_connections
        self.max_answer_bytes = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the event loop that runs the server. No cookie jar (one
        # buyer's cookies must never ride along on another's call), no proxy from the environment.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def invoke(
        self, runtime: RuntimeSpec, body: bytes, params: dict[str, str], headers: dict[str, str], timeout_s: float
    ) -> WorkflowAnswer:
        """POST/PUT `body` (JSON), or GET with `params`, to the runtime with `headers`; the whole exchange within
        `timeout_s`. Raises a Workflow* error (fixed messages) unless the answer is 2xx JSON."""
        sent = {"content-type": "application/json", "accept": "application/json", "user-agent": USER_AGENT, **headers}
        if runtime.auth_name is not None and runtime.auth_value is not None:
            sent[runtime.auth_name] = runtime.auth_value
        t0 = time.perf_counter()
        try:
            async with self._client().request(
                runtime.method,
                runtime.url,
                data=None if runtime.method == "GET" else body,
                params=params if runtime.method == "GET" else None,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                content = await self._read(resp)
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors
            raise WorkflowTimeout(f"The workflow did not answer within {timeout_s:g} s.") from exc
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            log.warning("workflow call failed: %s: %s", type(exc).__name__, exc)
            raise WorkflowUnavailable("The workflow could not be reached.") from exc
        latency = (time.perf_counter() - t0) * 1000
        if not 200 <= status < 300:
            raise WorkflowFailed(status)
        if content is None:
            raise WorkflowBadResponse(f"The workflow's answer is larger than {self.max_answer_bytes} bytes.", status)
        try:
            orjson.loads(content)
        except orjson.JSONDecodeError:
            raise WorkflowBadResponse("The workflow's answer is not JSON.", status) from None
        return WorkflowAnswer(status, content, latency)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None past `max_answer_bytes` (counted as it arrives, decompressed)."""
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_answer_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
