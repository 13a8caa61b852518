"""One LLM call through the gateway: auth → validate → route → (replay?) → forward → price → emit.

The gateway depends on ports only (Store, Upstream, TracePipeline); `app.create_app` hands it the
concrete adapters. Nothing here waits on the database once a key's lookups are cached: records leave
through `pipeline.emit()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.datastructures import Headers

from agentledger.core import usage as usage_mod
from agentledger.core.errors import (
    AgentLedgerError,
    AgentMismatch,
    AuthenticationError,
    ClientClosed,
    IdempotencyKeyReused,
    InvalidRequest,
    ModelNotAllowed,
    StoreUnavailable,
    UnknownAgent,
    UnknownModel,
    UpstreamBadResponse,
    UpstreamError,
)
from agentledger.core.headers import TrackingContext, parse_tracking
from agentledger.core.ids import new_id
from agentledger.core.keys import hash_secret
from agentledger.core.model import (
    Attribution,
    Principal,
    ProviderRoute,
    RequestRecord,
    RunStart,
    StepKind,
    StepRecord,
    StepStatus,
    TraceEvent,
)
from agentledger.core.money import event_cost_nanos
from agentledger.core.pricing import Cost, CostSource, Price, bounded
from agentledger.core.routing import choose_route, model_allowed
from agentledger.core.usage import Usage
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.cache import TTLCache
from agentledger.gateway.responses import error_event
from agentledger.pipeline.queue import TracePipeline
from agentledger.prices.catalog import price_known, price_usage
from agentledger.providers.base import Upstream
from agentledger.store.base import Store, StoredResponse

CHAT_PATH = "/chat/completions"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Call:
    """A validated request, ready to forward."""

    request_id: str
    principal: Principal
    tracking: TrackingContext
    attribution: Attribution
    route: ProviderRoute
    model: str
    stream: bool
    client_wants_usage: bool
    upstream_body: bytes
    request_hash: str
    started_at: datetime
    t0: float
    client_request_id: bool
    price_overrides: dict[str, list[Price]]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: StepStatus
    http_status: int
    usage: Usage | None
    cost: Cost | None
    ttft_ms: float | None = None
    error: AgentLedgerError | None = None
    body: bytes | None = None
    content_type: str | None = None


@dataclass(slots=True, eq=False)
class _Claim:
    """This node's hold on a client-supplied x-request-id while its call is in flight."""

    call: Call
    done: asyncio.Future[None]  # resolved on release: local duplicates waiting on it look again
    in_store: bool = False  # the store's cross-process claim is held too (released on failure)


class Gateway:
    def __init__(
        self,
        store: Store,
        pipeline: TracePipeline,
        upstreams: Mapping[str, Upstream],
        decrypt: Callable[[str], str],
        *,
        cache_ttl: float = 30.0,
        stale_if_error: float = 3600.0,
        inflight_timeout: float = 300.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.upstreams = upstreams
        self.decrypt = decrypt
        self.clock = clock
        self.inflight_timeout = inflight_timeout
        # Lookups outlive a store outage by `stale_if_error` seconds (gateway/cache.py), so chat keeps serving
        # the keys, routes, agents and prices this node has seen.
        self.principals: TTLCache[str, Principal] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.routes: TTLCache[str, list[ProviderRoute]] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.agents: TTLCache[tuple[str, str], dict[str, Any]] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.prices: TTLCache[str, dict[str, list[Price]]] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        # Idempotency on one node: calls in flight, recent failed attempts (to number retries), and recent
        # completed responses (a duplicate may arrive before the pipeline has written the original).
        self._inflight: dict[tuple[str, str], _Claim] = {}
        # Names this process in the store's cross-process claims (see `claim`).
        self.node_id = new_id("node")
        self._background: set[asyncio.Task[None]] = set()
        self._attempts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._completed: OrderedDict[tuple[str, str], StoredResponse] = OrderedDict()

    # -- lookups -------------------------------------------------------------------------------------------
    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """`headers` must look names up case-insensitively (Starlette's `Headers` does)."""
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
        if not key:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer vk-...' or 'x-api-key'.")
        key_hash = hash_secret(key)
        principal = await self.principals.get(key_hash, lambda: self.store.principal_for_key(key_hash))
        if principal is None:
            raise AuthenticationError("Invalid or revoked virtual key.")
        return principal

    async def routes_for(self, workspace_id: str) -> list[ProviderRoute]:
        routes = await self.routes.get(workspace_id, lambda: self.store.provider_routes(workspace_id, self.decrypt))
        return routes or []

    async def prices_for(self, workspace_id: str) -> dict[str, list[Price]]:
        return await self.prices.get(workspace_id, lambda: self.store.price_overrides(workspace_id)) or {}

    async def _agent(self, workspace_id: str, agent_id: str) -> dict[str, Any] | None:
        return await self.agents.get((workspace_id, agent_id), lambda: self.store.get_agent(workspace_id, agent_id))

    # -- validation ----------------------------------------------------------------------------------------
    async def prepare(self, request_id: str, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> Call:
        t0 = time.perf_counter()
        started_at = self.clock()
        principal = await self.authenticate(Headers(raw=raw_headers))
        base = Attribution(
            workspace_id=principal.workspace_id,
            department_id=principal.department_id,
            virtual_key_id=principal.virtual_key_id,
            agent_id=principal.agent_id,
        )
        # From here on, failures are recorded against the key (see `record_rejection`).
        try:
            tracking = parse_tracking(raw_headers)
            attribution = await self.attribute(principal, tracking)
            payload = parse_json_object(body)
            model, stream, wants_usage, upstream_body = _chat_request(payload, body)
            if not model_allowed(model, principal.allowed_models):
                raise ModelNotAllowed(f"This virtual key may not use model {model!r}.", param="model")
            route = choose_route(model, await self.routes_for(principal.workspace_id))
            if route is None or route.kind not in self.upstreams:
                raise UnknownModel(f"The model {model!r} does not exist or no provider serves it.", param="model")
            overrides = await self.prices_for(principal.workspace_id)
            if not price_known(model, route.provider, overrides):
                raise UnknownModel(
                    f"The model {model!r} has no known price; add a price override for it to use it.", param="model"
                )
        except AgentLedgerError as exc:
            await _durable(self.record_rejection(request_id, base, exc, started_at, t0, body))
            raise
        return Call(
            request_id=request_id,
            principal=principal,
            tracking=tracking,
            attribution=attribution,
            route=route,
            model=model,
            stream=stream,
            client_wants_usage=wants_usage,
            upstream_body=upstream_body,
            request_hash=hashlib.sha256(body).hexdigest(),
            started_at=started_at,
            t0=t0,
            client_request_id=tracking.request_id is not None,
            price_overrides=overrides,
        )

    async def attribute(self, principal: Principal, tracking: TrackingContext) -> Attribution:
        agent_id = principal.agent_id
        if tracking.agent_id is not None and tracking.agent_id != principal.agent_id:
            if principal.agent_id is not None:
                raise AgentMismatch(
                    f"This virtual key belongs to agent {principal.agent_id!r} and may not act as "
                    f"{tracking.agent_id!r}.",
                    param="alephant-agent-id",
                )
            if await self._agent(principal.workspace_id, tracking.agent_id) is None:
                raise UnknownAgent(
                    f"Agent {tracking.agent_id!r} does not exist in this workspace.", param="alephant-agent-id"
                )
            agent_id = tracking.agent_id
        return Attribution(
            workspace_id=principal.workspace_id,
            department_id=principal.department_id,
            virtual_key_id=principal.virtual_key_id,
            agent_id=agent_id,
            run_id=tracking.run_id,
            session_id=tracking.session_id,
            session_path=tracking.session_path,
            session_name=tracking.session_name,
            prompt_id=tracking.prompt_id,
            prompt_version=tracking.prompt_version,
            properties=tracking.properties,
        )

    # -- idempotency ---------------------------------------------------------------------------------------
    async def claim(self, call: Call) -> StoredResponse | None:
        """Returns the stored response if this x-request-id already completed, else claims it for this call,
        which must then `release` it. One x-request-id reaches the provider once:

        * On this node, the in-memory claim is taken before any await, so no duplicate can slip in between a
          lookup and the claim. (It used to be taken after the store lookup: a duplicate whose lookup was still
          queued while the first call completed and released found nothing, and forwarded again.) Duplicates
          wait for the holder, then replay its response from `_completed`.
        * Across processes sharing PostgreSQL, `Store.claim_request` finds a completed response or claims the id
          atomically, in the one round trip this lookup always cost. A duplicate on another node polls until
          the holder's record lands (replay), its failure releases the claim, or its lease (`inflight_timeout`)
          expires (a crashed holder).
        * While the store is unavailable, only this node's memory answers (docs/architecture.md).

        Only client-supplied ids can repeat, so generated ids skip all of this.
        """
        if not call.client_request_id:
            return None
        key = (call.principal.workspace_id, call.request_id)
        while (held := self._inflight.get(key)) is not None:
            try:
                await asyncio.wait_for(asyncio.shield(held.done), self.inflight_timeout)
            except TimeoutError:
                # The holder never released its claim (its client left before the stream began).
                if self._inflight.get(key) is held:
                    del self._inflight[key]
        stored = self._completed.get(key)
        if stored is None:
            # No await between the check above and this line: the claim is atomic on this node.
            held = self._inflight[key] = _Claim(call, asyncio.get_running_loop().create_future())
            try:
                stored = await self._claim_in_store(held)
            except BaseException:  # cancelled (client gone) or failed: give the claim up
                self._drop_claim(key, held)
                raise
            if stored is None:
                return None  # held: the caller forwards, then releases
            self._remember(key, stored)  # local duplicates waiting on us replay it from memory
            self._drop_claim(key, held)
        if stored.request_hash != call.request_hash:
            raise IdempotencyKeyReused(
                f"x-request-id {call.request_id!r} was already used for a different request body.",
                param="x-request-id",
            )
        return stored

    async def _claim_in_store(self, held: _Claim) -> StoredResponse | None:
        ws, rid = held.call.principal.workspace_id, held.call.request_id
        deadline = time.monotonic() + self.inflight_timeout + 10  # past the other holder's lease: a safety net
        delay = 0.02
        while True:
            try:
                found = await self.store.claim_request(ws, rid, self.node_id, self.inflight_timeout)
            except StoreUnavailable:
                return None  # an outage: this node's memory is all there is; forward under the local claim
            if found.stored is not None or found.claimed:
                held.in_store = found.claimed
                return found.stored
            if time.monotonic() > deadline:
                return None
            # Another node holds the id (or this node's own completed record has not landed yet): wait for it.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    def release(self, call: Call) -> None:
        """Give up `call`'s claim (idempotent). A completed call's record supersedes the store's claim; a failed
        one releases that too, so a retry, on any node, forwards again."""
        key = (call.principal.workspace_id, call.request_id)
        held = self._inflight.get(key)
        if held is None or held.call is not call:
            return
        self._drop_claim(key, held)
        if held.in_store and key not in self._completed:
            self._spawn(self.store.release_claim(key[0], key[1], self.node_id))

    def _drop_claim(self, key: tuple[str, str], held: _Claim) -> None:
        if self._inflight.get(key) is held:
            del self._inflight[key]
        if not held.done.done():
            held.done.set_result(None)

    def _remember(self, key: tuple[str, str], stored: StoredResponse) -> None:
        self._completed[key] = stored
        while len(self._completed) > 4096:
            self._completed.popitem(last=False)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Fire and forget (release runs where it cannot await); an unavailable store lets the lease expire."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop: shutting down; the claim's lease runs out by itself
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("releasing an idempotency claim failed (its lease will expire): %s", exc)

    def _next_attempt(self, call: Call, failed: bool) -> int:
        key = (call.principal.workspace_id, call.request_id)
        attempt = self._attempts.pop(key, 0) + 1
        if failed:
            self._attempts[key] = attempt
            while len(self._attempts) > 50_000:
                self._attempts.popitem(last=False)
        return attempt

    # -- forwarding ----------------------------------------------------------------------------------------
    async def complete(self, call: Call) -> Outcome:
        upstream = self.upstreams[call.route.kind]
        try:
            resp = await upstream.send(call.route, CHAT_PATH, call.upstream_body)
        except UpstreamError as exc:
            return Outcome(StepStatus.ERROR, exc.status, None, None, error=exc)
        data = _loads(resp.body)
        if not isinstance(data, dict):
            # A 2xx that is not a JSON object is no answer: fail it rather than pass garbage on unpriced.
            bad = UpstreamBadResponse(f"Provider {call.route.name!r} answered {resp.status} with a non-JSON body.")
            return Outcome(StepStatus.ERROR, bad.status, None, None, error=bad)
        usage, cost = self._settle(call, _usage_of(data))
        return Outcome(
            StepStatus.OK,
            resp.status,
            usage,
            cost,
            body=resp.body,
            content_type=resp.content_type,
        )

    async def stream(self, call: Call) -> AsyncIterator[bytes]:
        """Pass SSE events through as they arrive; price the stream from its usage chunk at the end.

        The stream's last frame (`[DONE]`, or the error event) is held until the call's record is durable
        (strict mode), so a client that saw the end of its stream can trust the books have it. A client that
        hangs up cancels this generator: recording then happens in `finally`, synchronously (no await may
        run there), so an abandoned stream is still on the books, its cost estimated.
        """
        upstream = self.upstreams[call.route.kind]
        sent: list[bytes] = []
        raw_usage: dict[str, Any] | None = None
        ttft: float | None = None
        done_frame: bytes | None = None
        recorded = False
        try:
            async with upstream.stream(call.route, CHAT_PATH, call.upstream_body) as events:
                async for data in events:
                    if data == b"[DONE]":
                        done_frame = b"data: [DONE]\n\n"
                        continue
                    # Only a chunk with a usage object needs parsing; the rest pass through as bytes.
                    chunk = _loads(data) if _may_hold_usage(data) else None
                    if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                        raw_usage = chunk["usage"]
                        if not chunk.get("choices") and not call.client_wants_usage:
                            continue  # the usage-only chunk we forced; this client did not ask for it
                    frame = b"data: " + data + b"\n\n"
                    if ttft is None:
                        ttft = (time.perf_counter() - call.t0) * 1000
                    sent.append(frame)
                    yield frame
            if done_frame is not None:
                sent.append(done_frame)
            usage, cost = self._settle(call, raw_usage)
            outcome = Outcome(
                StepStatus.OK,
                200,
                usage,
                cost,
                ttft_ms=ttft,
                body=b"".join(sent),
                content_type="text/event-stream",
            )
            recorded = True
            await self.finish(call, outcome)
            if done_frame is not None:
                yield done_frame
        except UpstreamError as exc:
            recorded = True
            await self.finish(call, self._stream_failure(call, exc, raw_usage, sent, ttft))
            if not sent:
                raise  # nothing sent yet: the route answers with the error's own status (see routes.py)
            yield error_event(exc)  # not in `sent`: that counts the provider's chunks for the estimate
        finally:
            if not recorded:
                closed = ClientClosed("The client closed the connection before the stream ended.")
                self.record(call, self._stream_failure(call, closed, raw_usage, sent, ttft))
                self.release(call)

    def _stream_failure(
        self,
        call: Call,
        err: AgentLedgerError,
        raw_usage: dict[str, Any] | None,
        sent: list[bytes],
        ttft: float | None,
    ) -> Outcome:
        if isinstance(err, UpstreamError) and not sent:  # the provider refused before answering: nothing to charge
            return Outcome(StepStatus.ERROR, err.status, None, None, error=err)
        usage, cost = self._settle(call, raw_usage)
        if not raw_usage:  # no usage chunk came: estimate what was sent
            usage = usage or self._estimate(call, len(sent))
            cost = self._estimated_cost(call, usage)
        return Outcome(StepStatus.ERROR, err.status, usage, cost, ttft_ms=ttft, error=err)

    def _estimate(self, call: Call, chunks: int) -> Usage:
        # No usage chunk arrived: ~4 bytes a token for the prompt, one token per content chunk sent.
        return Usage(input_tokens=len(call.upstream_body) // 4, output_tokens=max(chunks - 1, 0))

    def _estimated_cost(self, call: Call, usage: Usage) -> Cost | None:
        cost = price_usage(usage, call.model, call.route.provider, call.started_at, call.price_overrides)
        return Cost(cost.nanos, CostSource.ESTIMATED) if cost else None

    def _settle(self, call: Call, raw_usage: dict[str, Any] | None) -> tuple[Usage | None, Cost | None]:
        """The provider's usage, parsed once, and the call's cost: reported by the provider, else computed.

        The provider has answered (and charged) by now, so its numbers are recorded whatever they are:
        absurd ones (2^63 tokens, a $1e30 charge) are clamped to core.bounds and the cost flagged `clamped`.
        """
        parsed = usage_mod.parse_openai(raw_usage)
        if parsed is None:
            return None, None
        usage, clamped = parsed
        reported = usage_mod.reported_cost(raw_usage)
        if reported is not None:
            nanos, over = event_cost_nanos(reported)
            return usage, bounded(Cost(nanos, CostSource.REPORTED), clamped or over)
        cost = price_usage(usage, call.model, call.route.provider, call.started_at, call.price_overrides)
        return usage, (bounded(cost, clamped) if cost is not None else None)

    # -- recording -----------------------------------------------------------------------------------------
    async def finish(self, call: Call, outcome: Outcome) -> None:
        """Record the call, release its idempotency claim, and (strict mode) wait until the record is durable."""
        durable = self.record(call, outcome)
        self.release(call)
        await _durable(durable)

    def record(self, call: Call, outcome: Outcome) -> asyncio.Future[None] | None:
        """Queue the call's records; returns the future of their durability (strict mode) or None."""
        ended_at = self.clock()
        latency_ms = (time.perf_counter() - call.t0) * 1000
        failed = outcome.status is StepStatus.ERROR
        attempt = self._next_attempt(call, failed)
        cost_nanos = outcome.cost.nanos if outcome.cost else 0
        cost_source = outcome.cost.source if outcome.cost else None
        err = outcome.error
        a = call.attribution
        if not failed and call.client_request_id and outcome.body is not None:
            self._remember(
                (a.workspace_id, call.request_id),
                StoredResponse(
                    call.request_hash,
                    outcome.http_status,
                    outcome.body,
                    outcome.content_type or "",
                    a.run_id,
                    cost_nanos,
                ),
            )
        events: list[TraceEvent] = []
        if a.run_id is not None:
            events.append(RunStart(run_id=a.run_id, attribution=a, started_at=call.started_at))
        events.append(
            RequestRecord(
                request_id=call.request_id,
                attribution=a,
                endpoint=CHAT_PATH,
                provider=call.route.provider,
                model=call.model,
                stream=call.stream,
                status=outcome.status,
                http_status=outcome.http_status,
                started_at=call.started_at,
                ended_at=ended_at,
                latency_ms=latency_ms,
                request_hash=call.request_hash,
                attempt=attempt,
                ttft_ms=outcome.ttft_ms,
                usage=outcome.usage,
                cost_nanos=cost_nanos,
                cost_source=cost_source,
                error_code=err.code if err else None,
                error_message=err.message if err else None,
                response_body=outcome.body if not failed else None,
                response_content_type=outcome.content_type,
            )
        )
        if a.run_id is not None:
            events.append(
                StepRecord(
                    step_id=_model_step_id(a.workspace_id, call.request_id, attempt),
                    run_id=a.run_id,
                    attribution=a,
                    kind=StepKind.MODEL_CALL,
                    name=call.model,
                    status=outcome.status,
                    started_at=call.started_at,
                    ended_at=ended_at,
                    latency_ms=latency_ms,
                    request_id=call.request_id,
                    model=call.model,
                    provider=call.route.provider,
                    usage=outcome.usage,
                    cost_nanos=cost_nanos,
                    cost_source=cost_source,
                    attempt=attempt,
                    error=err.message if err else None,
                    attributes={"stream": call.stream, "ttft_ms": outcome.ttft_ms, "http_status": outcome.http_status},
                )
            )
        return self.pipeline.commit(events)

    def record_rejection(
        self, request_id: str, base: Attribution, exc: AgentLedgerError, started_at: datetime, t0: float, body: bytes
    ) -> asyncio.Future[None] | None:
        """A request refused after authentication is still on the books (zero cost), against its key."""
        model = "unknown"
        try:
            payload = orjson.loads(body)
            if isinstance(payload, dict) and isinstance(payload.get("model"), str):
                model = payload["model"][:256]
        except orjson.JSONDecodeError:
            pass
        return self.pipeline.commit(
            [
                RequestRecord(
                    request_id=request_id,
                    attribution=base,
                    endpoint=CHAT_PATH,
                    provider="none",
                    model=model,
                    stream=False,
                    status=StepStatus.ERROR,
                    http_status=exc.status,
                    started_at=started_at,
                    ended_at=self.clock(),
                    latency_ms=(time.perf_counter() - t0) * 1000,
                    request_hash=hashlib.sha256(body).hexdigest(),
                    error_code=exc.code,
                    error_message=exc.message,
                )
            ]
        )

    def invalidate_key(self, key_hash: str | None) -> None:
        if key_hash:
            # Cached as "no such key" rather than forgotten: through a store outage it stays refused.
            self.principals.put(key_hash, None)

    def invalidate_workspace(self, workspace_id: str) -> None:
        self.routes.invalidate(workspace_id)
        self.prices.invalidate(workspace_id)


async def _durable(fut: asyncio.Future[None] | None) -> None:
    """Wait for a record's durability (strict mode). If it can never be made durable (the store rejected it
    and said so in the log and metrics, or store and spool both failed), the answer is still released: the
    provider has been paid and the client must not be pushed to retry it."""
    if fut is None:
        return
    try:
        await fut
    except AgentLedgerError:
        log.error("a call's record could not be made durable; its response is released anyway")


def _model_step_id(workspace_id: str, request_id: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{workspace_id}\0{request_id}\0{attempt}".encode()).hexdigest()[:24]
    return f"mc_{digest}"


def _may_hold_usage(data: bytes) -> bool:
    return b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _usage_of(data: Any) -> dict[str, Any] | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    return usage if isinstance(usage, dict) else None


def _chat_request(payload: dict[str, Any], body: bytes) -> tuple[str, bool, bool, bytes]:
    """Validate the fields the gateway relies on; return (model, stream, client_wants_usage, upstream body)."""
    model = payload.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise InvalidRequest("'model' must be a non-empty string of at most 256 characters.", param="model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    wants_usage = bool(options and options.get("include_usage"))
    if stream and not wants_usage:
        # Streams are always priced: ask for the usage chunk, and hide it from this client later.
        payload = {**payload, "stream_options": {**(options or {}), "include_usage": True}}
        return model, stream, wants_usage, orjson.dumps(payload)
    return model, stream, wants_usage, body
