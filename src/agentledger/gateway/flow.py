"""One model call through the gateway, whatever its wire format: auth → validate → route → (replay?) →
forward, falling back on failure → price → emit.

Every route (chat completions, Messages, Responses, embeddings) takes this one flow; what differs per API shape
lives in its format (formats/: parse the request, read usage, shape errors and streams) and, when the client and
the provider speak different shapes, in the bridge between them (formats/registry.py).

The gateway depends on ports only (Store, Upstream, TracePipeline); `app.create_app` hands it the concrete
adapters. Nothing here waits on the database once a key's lookups are cached: records leave through
`pipeline.commit()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from starlette.datastructures import Headers

from agentledger.core.budgets import Decision, Subject
from agentledger.core.errors import (
    AgentLedgerError,
    AgentMismatch,
    AuthenticationError,
    ClientClosed,
    InvalidRequest,
    ModelNotAllowed,
    UnknownAgent,
    UnknownModel,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamUnavailable,
)
from agentledger.core.headers import TrackingContext, parse_tracking
from agentledger.core.ids import new_id
from agentledger.core.keys import hash_secret
from agentledger.core.model import (
    Attribution,
    Principal,
    ProviderRoute,
    RetryPolicy,
    RunEnd,
    RunStart,
    RunStatus,
    StepStatus,
)
from agentledger.core.money import event_cost_nanos
from agentledger.core.pricing import Cost, CostSource, Price, bounded
from agentledger.core.routing import Hop, chain, model_allowed, resolve
from agentledger.core.usage import Usage, reported_cost
from agentledger.formats.base import Format, Parsed, StreamAdapter, loads, output_cap, positive_int
from agentledger.formats.registry import Bridge, bridge
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.budgets import BudgetGate, Governed, prepare_headline
from agentledger.gateway.cache import TTLCache
from agentledger.gateway.claims import Claims
from agentledger.gateway.policies import PolicyDesk, Review
from agentledger.gateway.records import Attempt, Call, Outcome, rejection, trace_events
from agentledger.gateway.run_controls import CANCELLED, RunControls, change_value
from agentledger.pipeline.queue import TracePipeline
from agentledger.prices.catalog import price_known, price_usage
from agentledger.providers.base import Event, Target, Upstream
from agentledger.store.base import Store, StoredResponse

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        gate: BudgetGate | None = None,
        controls: RunControls | None = None,
        policies: PolicyDesk | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.upstreams = upstreams
        self.decrypt = decrypt
        self.clock = clock
        self.sleep = sleep
        # Lookups outlive a store outage by `stale_if_error` seconds (gateway/cache.py), so calls keep serving
        # the keys, routes, agents and prices this node has seen.
        self.principals: TTLCache[str, Principal] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.routes: TTLCache[str, list[ProviderRoute]] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.agents: TTLCache[tuple[str, str], dict[str, Any]] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.prices: TTLCache[str, dict[str, list[Price]]] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        self.claims = Claims(store, inflight_timeout)
        self.gate = gate
        self.controls = controls
        self.policies = policies
        # Tells the other replicas what this one invalidated (set when redis_url is; gateway/broadcast.py).
        self.broadcast: Callable[[str, str], None] | None = None

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
    async def prepare(
        self,
        fmt: Format,
        request_id: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: str | None = None,
    ) -> Call:
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
            parsed = fmt.parse(parse_json_object(body), body)
            routes = await self.routes_for(principal.workspace_id)
            primary = resolve(parsed.model, routes, tracking.forced_route)
            allowed = principal.allowed_models
            if allowed and not (model_allowed(parsed.model, allowed) or model_allowed(primary.model, allowed)):
                raise ModelNotAllowed(f"This virtual key may not use model {parsed.model!r}.", param="model")
            overrides = await self.prices_for(principal.workspace_id)
            hops, bridges = self._usable(fmt, chain(primary, routes, allowed), overrides)
            request_hash = hashlib.sha256(body).hexdigest()
            subject = Subject.of(attribution)
            review = await self._review(
                fmt, parsed, attribution, subject, hops[0], overrides, raw_headers, body, peer, request_hash, request_id
            )
            if review is not None:
                if review.changed:  # clamped or redacted: that is the body forwarded
                    parsed = fmt.parse(review.payload, orjson.dumps(review.payload))
                if len(hops) > 1:  # no fallback where the policies would not let the call go
                    kept = [0, *(i for i in range(1, len(hops)) if review.allows(hops[i].model, hops[i].route.name))]
                    hops, bridges = tuple(hops[i] for i in kept), tuple(bridges[i] for i in kept)
            # Built now: a translation that refuses the request is the client's 400, before any claim is taken.
            body_out = self._body(parsed, hops[0], bridges[0])
            return Call(
                request_id=request_id,
                principal=principal,
                tracking=tracking,
                attribution=attribution,
                fmt=fmt,
                parsed=parsed,
                hops=hops,
                bridges=bridges,
                primary_body=body_out,
                request_hash=request_hash,
                started_at=started_at,
                t0=t0,
                client_request_id=tracking.request_id is not None,
                price_overrides=overrides,
                subject=subject,
                review=review,
            )
        except AgentLedgerError as exc:
            await _durable(self.record_rejection(request_id, base, fmt, exc, started_at, t0, body))
            raise

    async def _review(
        self,
        fmt: Format,
        parsed: Parsed,
        attribution: Attribution,
        subject: Subject,
        hop: Hop,
        overrides: dict[str, list[Price]],
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: str | None,
        body_hash: str,
        request_id: str,
    ) -> Review | None:
        """The policies' verdict on this call (gateway/policies.py), before its body is built: a clamp or a
        redaction changes what is forwarded."""
        if self.policies is None:
            return None
        gate, now = self.gate, self.clock()
        payload = parsed.payload

        def estimate(max_output: int | None) -> int | None:
            if gate is None:
                return None
            return gate.estimate(
                attribution.workspace_id,
                hop.model,
                hop.route.provider,
                now,
                overrides,
                body_bytes=len(body),
                max_output=max_output,
                embeddings=fmt.name == "embeddings",
                choices=positive_int(payload.get("n")) or 1,
            )

        return await self.policies.review(
            subject,
            fmt.name,
            payload,
            model=hop.model,
            provider=hop.route.name,
            cost_nanos=estimate,
            client_ip=peer,
            raw_headers=raw_headers,
            prompt_id=attribution.prompt_id,
            body_hash=body_hash,
            request_id=request_id,
        )

    def _usable(
        self, fmt: Format, hops: list[Hop], overrides: dict[str, list[Price]]
    ) -> tuple[tuple[Hop, ...], tuple[Bridge, ...]]:
        """The hops some upstream can serve in this format at a known price. The client's own route must be one
        (else a 404 or 400 saying why); a fallback that is not is left out."""
        usable: list[tuple[Hop, Bridge]] = []
        for hop in hops:
            route = hop.route
            found = bridge(fmt.name, route.kind) if route.kind in self.upstreams else None
            if found is None:
                if hop.fallback:
                    continue
                if route.kind not in self.upstreams:
                    raise UnknownModel(
                        f"The model {hop.model!r} does not exist or no provider serves it.", param="model"
                    )
                raise InvalidRequest(
                    f"Provider key {route.name!r} ({route.kind}) serves {hop.model!r} but cannot answer the "
                    f"{fmt.name} format.",
                    param="model",
                )
            if not price_known(hop.model, route.provider, overrides):
                if hop.fallback:
                    continue
                raise UnknownModel(
                    f"The model {hop.model!r} has no known price; add a price override for it to use it.", param="model"
                )
            usable.append((hop, found))
        return tuple(h for h, _ in usable), tuple(b for _, b in usable)

    @staticmethod
    def _body(parsed: Parsed, hop: Hop, link: Bridge) -> bytes:
        """What one hop sends: the client's body, its model swapped for the hop's, or translated."""
        if link.request is not None:
            return orjson.dumps({**link.request(parsed.payload), "model": hop.model})
        if hop.model == parsed.model:
            return parsed.upstream_body
        return orjson.dumps({**parsed.payload, "model": hop.model})

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
        """The stored response if this x-request-id already completed, else claim it (see gateway/claims.py)."""
        return await self.claims.claim(call)

    def release(self, call: Call) -> None:
        self.claims.release(call)

    # -- budgets and rate limits ---------------------------------------------------------------------------
    async def admit(self, call: Call) -> None:
        """Reserve the call's most possible cost against its budgets and count its rate limits (after the
        claim: a replay reserves nothing), or raise BudgetExceeded / RateLimited, the refusal recorded.
        The policies' verdict is enforced first (a block, a throttle, an escalation waiting for a human)."""
        subject = call.subject
        try:
            if self.controls is not None:  # a cancelled or paused run's call goes no further (gateway/run_controls.py)
                await self.controls.admit(call.workspace_id, call.attribution.run_id, call.governed)
            if call.review is not None and self.policies is not None:
                await self.policies.enforce(call.governed, call.review, call.workspace_id, call.request_id)
                if call.governed.decision is Decision.ESCALATED:
                    await self.policies.escalate(
                        call.governed,
                        call.review,
                        subject,
                        request_id=call.request_id if call.client_request_id else None,
                        body_hash=call.request_hash,
                        summary={"kind": "model_call", "model": call.hops[0].model, "stream": call.stream},
                    )
            extra_limits = call.review.limits if call.review is not None else ()
            if self.gate is None or (not extra_limits and self.gate.idle(call.workspace_id)):
                return
            payload = call.parsed.payload
            await self.gate.admit(
                call.governed,
                subject,
                request_id=call.request_id,
                model=call.hops[0].model,
                provider=call.hops[0].route.provider,
                body_bytes=len(call.primary_body),
                max_output=output_cap(payload),
                overrides=call.price_overrides,
                embeddings=call.fmt.name == "embeddings",
                choices=positive_int(payload.get("n")) or 1,
                extra_limits=extra_limits,
            )
        except AgentLedgerError as exc:  # every refusal is recorded, whoever decided it
            await self.finish(call, Outcome(StepStatus.ERROR, exc.status, (), error=exc))
            raise

    # -- forwarding ----------------------------------------------------------------------------------------
    def _target(self, call: Call, hop: Hop, link: Bridge) -> Target:
        return Target(hop.route, link.provider.endpoint, hop.model, call.tracking.provider_headers)

    async def _forward(
        self, call: Call, attempts: list[Attempt], once: Callable[[Hop, Bridge, bytes], Awaitable[T]]
    ) -> tuple[T, Hop, Bridge, datetime, float, float]:
        """Try each hop in turn, each as often as its key's retry policy says, until one answers.

        Failed attempts are appended to `attempts`; a failure nothing should retry (a 4xx, the client gone)
        ends the call at once. Returns the answer, its hop and bridge, when it started, and the backoff before it.
        """
        last: UpstreamError | None = None
        for hop, link in zip(call.hops, call.bridges, strict=True):
            policy = hop.route.retry
            if hop.fallback and self.gate is not None and hop.model != call.hops[0].model:
                # Each fallback reserves again at its own model's price (a refusal ends the call: 402).
                await self.gate.rehold(
                    call.governed,
                    model=hop.model,
                    provider=hop.route.provider,
                    overrides=call.price_overrides,
                    request_id=call.request_id,
                    run_id=call.attribution.run_id,
                )
            for n in range(policy.attempts):
                backoff = _backoff(policy, n, last) if n else 0.0
                if backoff:
                    await self.sleep(backoff)
                started, t = self.clock(), time.perf_counter()
                try:
                    body = call.primary_body if hop is call.hops[0] else self._body(call.parsed, hop, link)
                except InvalidRequest as exc:  # this fallback's translation refuses the request: not a hop for it
                    log.info("fallback %s skipped: %s", hop.route.name, exc.message)
                    break
                try:
                    return await once(hop, link, body), hop, link, started, t, backoff * 1000
                except UpstreamError as exc:
                    attempts.append(self._failed(hop, link, started, t, backoff, exc))
                    if not exc.retryable:
                        raise
                    last = exc
        # Every hop was tried and failed (each failure recorded); the primary always is, so `last` is set.
        raise last or UpstreamUnavailable("No provider could be tried for this call.")

    def _failed(
        self, hop: Hop, link: Bridge, started: datetime, t: float, backoff: float, exc: AgentLedgerError
    ) -> Attempt:
        return Attempt(
            hop,
            link,
            StepStatus.ERROR,
            # What the provider answered (its 500, 503, 529), not the status the gateway would send for it.
            (exc.provider_status if isinstance(exc, UpstreamError) else None) or exc.status,
            started,
            self.clock(),
            (time.perf_counter() - t) * 1000,
            backoff * 1000,
            error=exc,
        )

    async def complete(self, call: Call) -> Outcome:
        attempts: list[Attempt] = []

        async def once(hop: Hop, link: Bridge, body: bytes) -> tuple[Any, bytes, str]:
            resp = await self.upstreams[hop.route.kind].send(self._target(call, hop, link), body)
            data = loads(resp.body)
            if not isinstance(data, dict):
                # A 2xx that is not a JSON object is no answer: fail it rather than pass garbage on unpriced.
                raise UpstreamBadResponse(f"Provider {hop.route.name!r} answered {resp.status} with a non-JSON body.")
            if link.response is not None:
                return data, orjson.dumps(link.response(data, call.model)), "application/json"
            return data, resp.body, resp.content_type

        try:
            (data, body, content_type), hop, link, started, t, backoff = await self._forward(call, attempts, once)
        except AgentLedgerError as exc:
            return Outcome(StepStatus.ERROR, exc.status, tuple(attempts), error=exc)
        usage, cost = self._settle(call, hop, link.provider.usage(data), reported_cost(data.get("usage")))
        latency = (time.perf_counter() - t) * 1000
        attempts.append(
            Attempt(hop, link, StepStatus.OK, 200, started, self.clock(), latency, backoff, usage=usage, cost=cost)
        )
        return Outcome(StepStatus.OK, 200, tuple(attempts), body=body, content_type=content_type)

    async def stream(self, call: Call) -> AsyncIterator[bytes]:
        """Pass SSE events through as they arrive (translated when the provider speaks another format); price
        the stream from its usage at the end.

        Fallbacks happen only before the stream begins: once a provider has sent an event, the client has it.
        The stream's last frames (`[DONE]`, `message_stop`, `response.completed`, or the error event) are held
        until the call's record is durable (strict mode), so a client that saw the end of its stream can trust
        the books have it. A client that hangs up cancels this generator: recording then happens in `finally`,
        synchronously (no await may run there), so an abandoned stream is still on the books, its cost estimated.
        """
        attempts: list[Attempt] = []
        sent: list[bytes] = []
        adapter: StreamAdapter | None = None
        hop, link, started, t, backoff = call.hops[0], call.bridges[0], call.started_at, call.t0, 0.0
        ttft: float | None = None
        recorded = False
        try:
            async with contextlib.AsyncExitStack() as stack:

                async def once(h: Hop, b: Bridge, body: bytes) -> AsyncIterator[Event]:
                    return await stack.enter_async_context(
                        self.upstreams[h.route.kind].stream(self._target(call, h, b), body)
                    )

                if call.governed.governed:  # its headers go out with the first event: made while the provider is asked
                    asyncio.get_running_loop().call_soon(prepare_headline, call.governed)
                events, hop, link, started, t, backoff = await self._forward(call, attempts, once)
                adapter = link.stream(call.parsed, call.model)
                if self.controls is not None:  # the run's cancel ends the stream: RunCancelled, below
                    events = self.controls.watch(call.workspace_id, call.attribution.run_id, events)
                async for event, data in events:
                    for frame in adapter.feed(event, data):
                        if ttft is None:
                            ttft = (time.perf_counter() - call.t0) * 1000
                        sent.append(frame)
                        yield frame
            if not adapter.complete:
                raise UpstreamUnavailable(f"Provider {hop.route.name!r} ended the stream before its last event.")
            closing = adapter.close()
            sent.extend(closing)
            usage, cost = self._settle(call, hop, adapter.usage(), adapter.reported_cost())
            failure = (
                UpstreamBadResponse(f"Provider {hop.route.name!r}: {adapter.failure}") if adapter.failure else None
            )
            status = StepStatus.ERROR if failure else StepStatus.OK
            http_status = failure.status if failure else 200
            ended = self.clock()
            latency = (time.perf_counter() - t) * 1000
            attempts.append(
                Attempt(hop, link, status, http_status, started, ended, latency, backoff, usage, cost, failure)
            )
            outcome = Outcome(
                status,
                http_status,
                tuple(attempts),
                ttft_ms=ttft,
                error=failure,
                body=b"".join(sent),
                content_type="text/event-stream",
            )
            recorded = True
            await self.finish(call, outcome)
            for frame in closing:
                yield frame
        except AgentLedgerError as exc:  # a provider failure, or a fallback's budget refusal before the stream began
            recorded = True
            if adapter is None:  # no provider answered: the route responds with the error's own status
                await self.finish(call, Outcome(StepStatus.ERROR, exc.status, tuple(attempts), error=exc))
                raise
            attempts.append(self._broken(call, hop, link, started, t, backoff, exc, adapter, len(sent)))
            await self.finish(call, Outcome(StepStatus.ERROR, exc.status, tuple(attempts), ttft_ms=ttft, error=exc))
            yield call.fmt.error_frame(exc)  # not in `sent`: that counts the provider's events for the estimate
        finally:
            if not recorded:
                closed = ClientClosed("The client closed the connection before the stream ended.")
                if adapter is not None:
                    attempts.append(self._broken(call, hop, link, started, t, backoff, closed, adapter, len(sent)))
                self.record(call, Outcome(StepStatus.ERROR, closed.status, tuple(attempts), ttft_ms=ttft, error=closed))
                self.release(call)

    def _broken(
        self,
        call: Call,
        hop: Hop,
        link: Bridge,
        started: datetime,
        t: float,
        backoff: float,
        err: AgentLedgerError,
        adapter: StreamAdapter,
        frames: int,
    ) -> Attempt:
        """A stream that began and did not end: charged what the provider reported, else an estimate."""
        usage, cost = self._settle(call, hop, adapter.usage(), adapter.reported_cost())
        if usage is None:  # no usage came: ~4 bytes a token for the prompt, one token per event sent
            usage = Usage(input_tokens=len(call.primary_body) // 4, output_tokens=max(frames - 1, 0))
            priced = price_usage(usage, hop.model, hop.route.provider, call.started_at, call.price_overrides)
            cost = Cost(priced.nanos, CostSource.ESTIMATED) if priced else None
        ended = self.clock()
        latency = (time.perf_counter() - t) * 1000
        return Attempt(hop, link, StepStatus.ERROR, err.status, started, ended, latency, backoff, usage, cost, err)

    def _settle(
        self, call: Call, hop: Hop, parsed: tuple[Usage, bool] | None, reported: str | None
    ) -> tuple[Usage | None, Cost | None]:
        """The provider's usage and the attempt's cost: reported by the provider, else computed.

        The provider has answered (and charged) by now, so its numbers are recorded whatever they are:
        absurd ones (2^63 tokens, a $1e30 charge) are clamped to core.bounds and the cost flagged `clamped`.
        """
        if parsed is None:
            return None, None
        usage, clamped = parsed
        if reported is not None:
            nanos, over = event_cost_nanos(reported)
            return usage, bounded(Cost(nanos, CostSource.REPORTED), clamped or over)
        cost = price_usage(usage, hop.model, hop.route.provider, call.started_at, call.price_overrides)
        return usage, (bounded(cost, clamped) if cost is not None else None)

    # -- recording -----------------------------------------------------------------------------------------
    async def finish(self, call: Call, outcome: Outcome) -> None:
        """Record the call, release its idempotency claim, give back what it holds of the rate limits, and (strict
        mode) wait until the record is durable: all before its answer goes out."""
        durable = self.record(call, outcome)
        self.release(call)
        governed = call.governed
        if (governed.slots or governed.token_rates) and self.gate is not None:
            await self.gate.give_back_limits(governed)
        await _durable(durable)

    def record(self, call: Call, outcome: Outcome) -> asyncio.Future[None] | None:
        """Queue the call's records; returns the future of their durability (strict mode) or None."""
        ended_at = self.clock()
        latency_ms = (time.perf_counter() - call.t0) * 1000
        failed = outcome.status is StepStatus.ERROR
        attempt = self.claims.next_attempt(call, failed)
        if not failed and call.client_request_id and outcome.body is not None:
            cost = outcome.cost
            self.claims.remember(
                (call.workspace_id, call.request_id),
                StoredResponse(
                    call.request_hash,
                    outcome.http_status,
                    # An omitted response is remembered without its body: a duplicate is refused, not forwarded.
                    None if call.tracking.omit_response else outcome.body,
                    outcome.content_type or "",
                    call.attribution.run_id,
                    cost.nanos if cost else 0,
                ),
            )
        governed = call.governed
        if self.gate is None or not governed.governed:
            return self.pipeline.commit(trace_events(call, outcome, attempt, ended_at, latency_ms))
        cost, usage = outcome.cost, outcome.usage
        a = call.attribution
        booked = self.gate.settle(
            governed,
            cost.nanos if cost else 0,
            usage.total_tokens if usage else 0,
            request_id=call.request_id,
            run_id=a.run_id,
            refused=not outcome.attempts,
            carry=True,  # its ledger entries go in its request record (the writer expands them)
            later=True,  # its counters settle once its answer is out (below)
        )
        summary = self.gate.summary(governed)  # the request row's dict is built by the store's writer
        events = trace_events(call, outcome, attempt, ended_at, latency_ms, summary)
        check = None
        if a.run_id is not None:
            check = self.gate.policy_step(
                governed,
                summary,  # (its dict made by the store's writer)
                request_id=call.request_id,
                base=a,
                started_at=call.started_at,
                attempt=attempt,
            )
        durable = self.pipeline.commit([*events, *booked, *([check] if check else [])])
        self.gate.settle_later(governed, durable)
        return durable

    async def record_check(
        self, governed: Governed, subject: Subject, extra: dict[str, Any], *, name: str, prefix: str
    ) -> None:
        """A check outside a model call (a tool's pre-check, a spend authorization) in a run: a policy_check step of
        that run with what was asked (`extra`) beside the decision, durable before the answer."""
        if subject.run_id is None or self.gate is None or not governed.governed:
            return
        base = Attribution(
            workspace_id=subject.workspace_id,
            department_id=subject.department_id,
            virtual_key_id=subject.virtual_key_id,
            agent_id=subject.agent_id,
            run_id=subject.run_id,
            properties=dict(subject.properties),
        )
        now = self.clock()
        report = {**self.gate.report(governed), **extra}
        step = self.gate.policy_step(governed, report, request_id=new_id(prefix), base=base, started_at=now, name=name)
        if step is not None:
            await self.pipeline.submit([RunStart(run_id=subject.run_id, attribution=base, started_at=now), step])

    def record_rejection(
        self,
        request_id: str,
        base: Attribution,
        fmt: Format,
        exc: AgentLedgerError,
        started_at: datetime,
        t0: float,
        body: bytes,
    ) -> asyncio.Future[None] | None:
        model = "unknown"
        payload = loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("model"), str):
            model = payload["model"][:256]
        ended = self.clock()
        latency = (time.perf_counter() - t0) * 1000
        digest = hashlib.sha256(body).hexdigest()
        return self.pipeline.commit([rejection(request_id, base, fmt, exc, model, started_at, ended, latency, digest)])

    def invalidate_key(self, key_hash: str | None) -> None:
        if key_hash:
            self.apply_invalidation("key", key_hash)
            if self.broadcast is not None:
                self.broadcast("key", key_hash)

    def invalidate_workspace(self, workspace_id: str) -> None:
        self.apply_invalidation("workspace", workspace_id)
        if self.broadcast is not None:
            self.broadcast("workspace", workspace_id)

    async def control_run(
        self, workspace_id: str, run_id: str, state: str, reason: str | None, by: str, ended: str
    ) -> None:
        """Cancel, pause or resume a run (the API's, or a policy's run guard): stored (a cancelled run stays
        cancelled: 409 for a pause or resume), seen on every replica at once, and a run cancelled now ends as
        cancelled (`ended`: why, on its RunEnd), durable before this returns."""
        before = await self.store.governance.run_control(workspace_id, run_id)
        await self.store.governance.set_run_control(workspace_id, run_id, state, reason, by, self.clock())
        self.invalidate_run(workspace_id, run_id, state)
        if state == CANCELLED and (before is None or before["state"] != CANCELLED):
            durable = self.pipeline.commit(
                [RunEnd(workspace_id, run_id, RunStatus.CANCELLED, self.clock(), error=ended)]
            )
            if durable is not None:
                await durable

    def invalidate_run(self, workspace_id: str, run_id: str, state: str) -> None:
        """A run was cancelled, paused or resumed: its control is dropped here and on every replica at once."""
        value = change_value(workspace_id, run_id, state)
        self.apply_invalidation("run", value)
        if self.broadcast is not None:
            self.broadcast("run", value)

    def apply_invalidation(self, kind: str, value: str) -> None:
        """Drop a key or a workspace's routes, prices and budgets from this node's caches (also what another
        replica broadcast: gateway/broadcast.py)."""
        if kind == "key":
            # Cached as "no such key" rather than forgotten: through a store outage it stays refused.
            self.principals.put(value, None)
        elif kind == "run":
            if self.controls is not None:
                self.controls.invalidate(value)
        elif kind == "workspace":
            self.routes.invalidate(value)
            self.prices.invalidate(value)
            if self.gate is not None:
                self.gate.invalidate(value)
            if self.policies is not None:
                self.policies.invalidate(value)


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


def _backoff(policy: RetryPolicy, retry: int, last: UpstreamError | None) -> float:
    """Seconds before retry number `retry` (1, 2, ...) on the same key: the policy's doubling backoff, or the
    provider's Retry-After when it asks for longer, capped by the policy."""
    wait: float = policy.backoff_ms / 1000 * (1 << (retry - 1))
    if last is not None and last.wait is not None:
        wait = max(wait, last.wait)
    return min(wait, policy.max_backoff_ms / 1000)
