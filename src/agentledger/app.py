"""The composition root: `create_app` builds every part from settings; only here (and cli.py) are
concrete adapters named. State lives on the returned app, never in module globals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from agentledger.api.approvals import approval_routes
from agentledger.api.audit import audit_routes
from agentledger.api.auth import AdminAuth
from agentledger.api.budgets import budget_routes
from agentledger.api.finance import finance_routes
from agentledger.api.health import health_routes
from agentledger.api.manage import manage_routes
from agentledger.api.members import member_routes
from agentledger.api.openapi import openapi_routes
from agentledger.api.paid_endpoints import paid_endpoint_routes
from agentledger.api.policies import policy_routes
from agentledger.api.query import query_routes
from agentledger.api.retention import retention_routes
from agentledger.api.run_controls import run_control_routes
from agentledger.api.webhooks import webhook_routes
from agentledger.api.x402_fetch import outbound_routes
from agentledger.audit.changes import Change
from agentledger.audit_trail import AuditTrail
from agentledger.config import Settings, accepted_assets
from agentledger.core import alerts as core_alerts
from agentledger.core.errors import MethodNotAllowed, NotFound, StoreUnavailable
from agentledger.core.ids import new_id
from agentledger.core.model import Actor, TraceEvent
from agentledger.dashboard import dashboard_routes
from agentledger.finance.endpoints import BROADCAST_KIND, EndpointCatalog, PaidEndpointAdmin, endpoint_rules
from agentledger.finance.facilitator import Facilitator, HttpFacilitator
from agentledger.finance.local import LocalFacilitator
from agentledger.finance.selling import Seller
from agentledger.finance.workflows import WorkflowInvoker
from agentledger.gateway.approvals import Approvals
from agentledger.gateway.broadcast import Broadcast
from agentledger.gateway.budget_recovery import reconcile_expired, recover
from agentledger.gateway.budgets import BudgetGate
from agentledger.gateway.failsafe import ErrorMiddleware
from agentledger.gateway.flow import Gateway
from agentledger.gateway.limits import BodyLimitMiddleware
from agentledger.gateway.middleware import RequestIdMiddleware
from agentledger.gateway.policies import PolicyDesk
from agentledger.gateway.responses import error_for_path
from agentledger.gateway.routes import chat_routes
from agentledger.gateway.run_controls import RunControls
from agentledger.gateway.spend import SpendDesk
from agentledger.governance import Governance
from agentledger.ingest.steps import StepIngest
from agentledger.limits.base import Counters, CountersUnavailable
from agentledger.limits.memory import MemoryCounters
from agentledger.limits.redis import RedisCounters
from agentledger.pipeline.journal import Journal, journal_dir
from agentledger.pipeline.queue import TracePipeline
from agentledger.pipeline.spool import Spool
from agentledger.prices.catalog import catalog_knows
from agentledger.providers.base import Upstream, UpstreamTimeouts
from agentledger.providers.http import HTTPUpstream
from agentledger.providers.mock import MockUpstream
from agentledger.retention.job import RetentionJob
from agentledger.secrets_box import SecretBox
from agentledger.store.audit import AuditStore
from agentledger.store.base import Store
from agentledger.store.finance import PaymentProofs
from agentledger.store.members import MemberStore
from agentledger.store.paid_endpoints import PaidEndpointStore
from agentledger.store.retention import RetentionStore
from agentledger.store.sql import SQLStore
from agentledger.store.webhooks import WebhookStore
from agentledger.webhooks.guard import AllowList
from agentledger.webhooks.sweep import AlertSweep
from agentledger.webhooks.worker import DeliveryPolicy, DeliveryWorker

log = logging.getLogger("agentledger")
LOADED_MARKER = "counters-loaded-from-ledger"


@dataclass
class Components:
    settings: Settings
    store: Store
    pipeline: TracePipeline
    gateway: Gateway
    governance: Governance
    upstreams: Mapping[str, Upstream]
    counters: Counters
    gate: BudgetGate
    desk: SpendDesk
    approvals: Approvals
    audit: AuditTrail


def build_components(
    settings: Settings,
    *,
    store: Store | None = None,
    upstreams: Mapping[str, Upstream] | None = None,
    counters: Counters | None = None,
) -> Components:
    data_dir = Path(settings.data_dir)
    box = SecretBox.from_setting(settings.secret_key or None, data_dir / "secret.key")
    store = store or SQLStore(settings.database_url, durable_commits=settings.durability == "strict")
    timeouts = UpstreamTimeouts(settings.connect_timeout, settings.read_timeout, settings.first_token_timeout)
    if upstreams is None:
        http = HTTPUpstream(timeouts)  # one connection pool for every HTTP provider kind
        upstreams = {"openai": http, "azure": http, "anthropic": http, "mock": MockUpstream()}
    journal = _journal(settings, store)
    pipeline = TracePipeline(
        store,
        spool=Spool(data_dir / "spool" / "trace.spool"),
        max_batch=settings.batch_size,
        interval=settings.batch_interval_ms / 1000,
        durability=settings.durability,
        journal=journal,
        sync=store.sync_log if isinstance(store, SQLStore) else None,
        on_journal=lambda: setattr(store, "journaled", True),
    )
    counters = counters or (RedisCounters(settings.redis_url) if settings.redis_url else MemoryCounters())
    # The audit log: changes recorded through the pipeline, durable before the admin's answer (docs/audit.md).
    trail = AuditTrail(
        store,
        box,
        pipeline.submit,
        emit=pipeline.emit,
        checkpoint_events=settings.audit_checkpoint_events,
        checkpoint_interval=settings.audit_checkpoint_interval_s,
    )
    gate = BudgetGate(
        store.budgets.active,
        _workflow_lookup(store),
        counters,
        pipeline.commit,
        lambda: datetime.now(UTC),
        default_output_tokens=settings.budget_output_tokens,
        reservation_ttl=settings.reservation_ttl,
        cache_ttl=settings.cache_ttl,
        stale_if_error=settings.stale_if_error,
        reservation=store.budgets.reservation,
        write_within=pipeline.interval,
        disable_key=lambda ws, key_id: _disable_key(store, gateway, trail, ws, key_id),
    )
    gateway = Gateway(
        store,
        pipeline,
        upstreams,
        box.decrypt,
        cache_ttl=settings.cache_ttl,
        stale_if_error=settings.stale_if_error,
        gate=gate,
        controls=RunControls(
            store.governance.run_control,
            pause_wait=settings.run_pause_wait_s,
            cache_ttl=settings.cache_ttl,
            stale_if_error=settings.stale_if_error,
        ),
        policies=PolicyDesk(
            store.governance.list_policies,
            _settled_run(store, pipeline),
            counters,
            lambda: datetime.now(UTC),
            cache_ttl=settings.cache_ttl,
            stale_if_error=settings.stale_if_error,
            client_ip_header=settings.client_ip_header or None,
            emit=pipeline.commit,
        ),
    )
    desk = SpendDesk(gate)
    approvals = Approvals(
        store,
        lambda: datetime.now(UTC),
        wait_s=settings.approval_wait_s,
        ttl_s=settings.approval_ttl_s,
        publish=None,  # the broadcast's, once it runs (lifespan)
    )
    if gateway.policies is not None:
        gateway.policies.approvals = approvals  # an escalation waits on them
        approvals.on_open = gateway.policies.approval_opened
        # A run guard's refusal stops the run: cancelled (on every replica), `by` naming the policy.
        gateway.policies.stop_run = lambda ws, run_id, by, why: gateway.control_run(
            ws, run_id, "cancelled", why[:1024], by, f"stopped by {by}: {why}"
        )
    governance = Governance(store, box)
    return Components(settings, store, pipeline, gateway, governance, upstreams, counters, gate, desk, approvals, trail)


def _journal(settings: Settings, store: Store) -> Journal | None:
    """The trace journal of a SQLite store in strict mode (pipeline/journal.py), beside its database file."""
    if settings.durability != "strict" or not settings.trace_journal or not isinstance(store, SQLStore):
        return None
    path = journal_dir(store.url)
    if path is None:
        return None
    return Journal(path)


def _settled_run(store: Store, pipeline: TracePipeline) -> Callable[[str, str], Awaitable[dict[str, Any] | None]]:
    """A run's stored row with every record this process acknowledged of it: the run guards read its totals."""

    async def run_of(workspace_id: str, run_id: str) -> dict[str, Any] | None:
        await pipeline.settle_run(workspace_id, run_id)
        return await store.get_run(workspace_id, run_id)

    return run_of


async def _disable_key(store: Store, gateway: Gateway, trail: AuditTrail, workspace_id: str, key_id: str) -> None:
    """A `disable_key` budget exhausted: its virtual key is revoked, here and (broadcast) on every replica; the
    audit log records the system as having revoked it."""
    now = datetime.now(UTC)
    key_hash = await store.revoke_virtual_key(workspace_id, key_id, now)
    gateway.invalidate_key(key_hash)
    change = Change("virtual_key.revoke", "virtual_key", key_id, after={"revoked_at": now, "by": "disable_key budget"})
    await trail.record(workspace_id, Actor("system", "budget"), [change])


def _workflow_lookup(store: Store) -> Callable[[str, str], Awaitable[str | None]]:
    async def workflow_of(workspace_id: str, run_id: str) -> str | None:
        found = await store.run_identity(workspace_id, run_id)
        return found["workflow"] if found else None

    return workflow_of


async def _load_counters(c: Components, *, at_start: bool = False) -> None:
    """The counters from the ledger (gateway/budget_recovery.py): always in-process, and for Redis when it holds
    no counters yet (it outlives gateways; a new or flushed one is rebuilt by the first gateway to start)."""
    if isinstance(c.counters, RedisCounters):
        try:
            # The first gateway to find no marker loads (the marker lasts as long as Redis keeps its data). A fresh
            # holder each time: a claim by its own holder succeeds again, which reloaded the counters every sweep.
            if await c.counters.claim(LOADED_MARKER, new_id("load"), 10 * 365 * 86400) is not None:
                return
        except CountersUnavailable:
            if at_start:
                log.error("budget counters (Redis) unavailable at start: budgets that block refuse calls meanwhile")
            return

    async def request_cost(workspace_id: str, request_id: str) -> int | None:
        row = await c.store.get_request(workspace_id, request_id)
        return int(row["cost_nanos"]) if row and row.get("status") == "ok" else None

    async def commit(events: list[TraceEvent]) -> None:
        await c.pipeline.submit(events)  # in the store: the counters are read from it next

    try:
        await recover(c.store.budgets, request_cost, c.counters, commit, datetime.now(UTC))
    except CountersUnavailable:
        log.error("budget counters unavailable at start: budgets that block refuse calls until they answer")


async def _expire_reservations(c: Components, every: float = 5.0) -> None:
    """Every few seconds: reservations whose call vanished (no settle within reservation_ttl) are charged their
    estimate, as the ledger decides (gateway/budget_recovery.py); and a Redis that lost its counters (restarted
    empty, flushed) is loaded again from the ledger."""
    while True:
        await asyncio.sleep(every)
        try:
            if isinstance(c.counters, RedisCounters):
                await _load_counters(c)
            expired = await c.counters.expire(datetime.now(UTC).timestamp())
            if expired:
                events = await reconcile_expired(expired, c.store.budgets, c.counters, datetime.now(UTC))
                if events:
                    c.pipeline.commit(events)
        except (CountersUnavailable, StoreUnavailable):
            continue
        except Exception:  # a sweep must never stop sweeping
            log.exception("budget reservation sweep failed; retrying")


def _alerting(settings: Settings, c: Components) -> tuple[WebhookStore, DeliveryWorker, AlertSweep]:
    """The webhook store over the SQL store, its delivery worker and the alert detectors' sweep."""
    if not isinstance(c.store, SQLStore):
        raise TypeError("alerts and webhooks need an SQLStore")
    hooks = WebhookStore(c.store)
    policy = DeliveryPolicy(
        max_attempts=settings.webhook_max_attempts,
        backoff=settings.webhook_backoff,
        max_backoff=settings.webhook_max_backoff,
        timeout=settings.webhook_timeout,
        interval=settings.webhook_poll_interval,
    )
    allow = AllowList.parse(settings.webhook_allow_hosts.split(","))
    worker = DeliveryWorker(hooks, c.governance.box.decrypt, allow, policy)

    async def commit(events: list[TraceEvent]) -> None:
        fut = c.pipeline.commit(events)
        if fut is not None:
            await fut

    anomaly = core_alerts.AnomalyRule(
        factor=settings.anomaly_factor, floor_nanos=round(settings.anomaly_floor_usd * core_alerts.NANOS_PER_USD)
    )
    spike = core_alerts.SpikeRule(rate=settings.error_spike_rate, min_calls=settings.error_spike_min_calls)
    margin = core_alerts.MarginRule(floor_nanos=round(settings.margin_floor_usd * core_alerts.NANOS_PER_USD))
    return hooks, worker, AlertSweep(hooks, commit, anomaly, spike, margin)


@dataclass
class PaidEndpoints:
    """Paid endpoints over x402 (docs/paid-endpoints.md): the admin side, the cached lookup, the public route, and
    what the lifespan closes (the workflows' HTTP session, the facilitator)."""

    admin: PaidEndpointAdmin
    catalog: EndpointCatalog
    seller: Seller
    workflows: WorkflowInvoker
    facilitator: Facilitator

    async def aclose(self) -> None:
        await self.seller.aclose()
        await self.workflows.aclose()
        await self.facilitator.aclose()


def _paid_endpoints(settings: Settings, c: Components) -> PaidEndpoints:
    if not isinstance(c.store, SQLStore):
        raise TypeError("paid endpoints need an SQLStore")
    assets = accepted_assets(settings.x402_networks)
    facilitator: Facilitator = (
        LocalFacilitator(assets) if settings.x402_facilitator == "local" else HttpFacilitator(settings.x402_facilitator)
    )
    endpoints = PaidEndpointStore(c.store)
    box = c.governance.box
    catalog = EndpointCatalog(
        endpoints, box.decrypt, assets, ttl=settings.cache_ttl, stale_if_error=settings.stale_if_error
    )
    rules = endpoint_rules(assets, settings.workflow_timeout_cap_s)
    admin = PaidEndpointAdmin(c.store, endpoints, box, c.gateway, catalog, rules)
    c.governance.runtimes = admin  # POST /api/agents with a runtime
    workflows = WorkflowInvoker()
    seller = Seller(
        catalog,
        PaymentProofs(c.store),
        facilitator,
        workflows,
        c.pipeline,
        c.counters,
        max_body_bytes=settings.paid_endpoint_max_body_bytes,
        desk=c.desk,
        ordered_start=bool(settings.redis_url) or settings.workers > 1,  # replicas (docs/paid-endpoints.md)
    )
    return PaidEndpoints(admin, catalog, seller, workflows, facilitator)


async def _expire_approvals(c: Components, every: float = 10.0) -> None:
    """Every few seconds: approvals still pending past their expiry are marked `expired` (deciding or using one
    is refused past its expiry anyway; this keeps the list honest)."""
    while True:
        await asyncio.sleep(every)
        try:
            await c.approvals.expire()
        except StoreUnavailable:
            continue
        except Exception:  # a sweep must never stop sweeping
            log.exception("approval expiry sweep failed; retrying")


def _on_broadcast(c: Components, catalog: EndpointCatalog, auth: AdminAuth) -> Callable[[str, str], None]:
    """What another replica broadcast: an approval decided there wakes the calls held here; the rest are cache
    invalidations."""

    def apply(kind: str, value: str) -> None:
        if kind == "approval":
            c.approvals.on_broadcast(value)
        elif kind == BROADCAST_KIND:
            catalog.apply_invalidation(value)
        elif kind == "pat":  # a PAT revoked on another replica
            auth.forget([value], everywhere=False)
        else:
            c.gateway.apply_invalidation(kind, value)

    return apply


@dataclass
class Retention:
    store: RetentionStore
    job: RetentionJob


def _retention(settings: Settings, c: Components) -> Retention:
    if not isinstance(c.store, SQLStore):
        raise TypeError("retention needs an SQLStore")
    store = RetentionStore(c.store)
    audit = AuditStore(c.store)

    async def prune_audit(workspace_id: str, before: datetime) -> int:
        # The audit log prunes itself (up to a signed checkpoint, recorded in its chain); the job says when.
        return int((await audit.prune(workspace_id, before))["deleted"])

    job = RetentionJob(store, lambda: datetime.now(UTC), batch=settings.retention_batch, prune_audit=prune_audit)
    return Retention(store, job)


def _members(c: Components, auth: AdminAuth) -> MemberStore:
    """Members and their PATs (docs/security.md): the admin auth reads PATs through them."""
    if not isinstance(c.store, SQLStore):
        raise TypeError("members need an SQLStore")
    members = MemberStore(c.store)
    auth.members = members
    c.governance.members = members  # a virtual key's owner (POST /api/virtual-keys member_id)
    return members


def app_from_env() -> Starlette:
    """The app of one worker process when `workers` > 1 (uvicorn imports it by name in each): the parent passed
    its settings through AGENTLEDGER_* environment variables."""
    from agentledger.config import load_settings

    return create_app(load_settings())


def settle_heap() -> None:
    """Load the price catalog now and move everything alive at startup out of the collector's sight.

    A full (generation 2) collection walks every object in the process; with the price catalog loaded that
    took 20-50 ms here, a stall of every request in flight, and it came back every few thousand requests: it
    was the p99 spike under load (docs/benchmark.md). Startup objects live as long as the process, so they
    are frozen (`gc.freeze`); a full collection then walks only what requests left behind.
    """
    catalog_knows("gpt-4o-mini", "openai")  # genai-prices loads its data on first use
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings, *, store: Store | None = None, upstreams: Mapping[str, Upstream] | None = None
) -> Starlette:
    c = build_components(settings, store=store, upstreams=upstreams)
    auth = AdminAuth(c.store, ttl=settings.cache_ttl, stale_if_error=settings.stale_if_error)
    auth.trail = c.audit
    if c.gateway.policies is not None:  # the caller's address as the gateway reads it (client_ip_header)
        auth.client_ip = c.gateway.policies.client_ip
    hooks, worker, sweep = _alerting(settings, c)
    paid = _paid_endpoints(settings, c)
    retention = _retention(settings, c)
    members = _members(c, auth)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await c.store.migrate()
        await c.pipeline.recover()  # what a crash left in the journal, before the counters read the ledger
        c.pipeline.start()
        await _load_counters(c, at_start=True)
        expiry = asyncio.get_running_loop().create_task(_expire_reservations(c))
        approval_expiry = asyncio.get_running_loop().create_task(_expire_approvals(c))
        # Alerts: the outbox's delivery worker and the detectors' sweep (docs/alerts.md), never on a request's path.
        delivering = asyncio.get_running_loop().create_task(worker.run())
        clock = lambda: datetime.now(UTC)  # noqa: E731
        sweeping = asyncio.get_running_loop().create_task(sweep.run(clock, settings.alert_sweep_interval))
        # Retention (docs/retention.md): expired rows and bodies pruned in small batches, off every request's path.
        pruning = None
        if settings.retention_interval > 0:
            pruning = asyncio.get_running_loop().create_task(retention.job.run(settings.retention_interval))
        broadcast = None
        if settings.redis_url:
            broadcast = Broadcast(settings.redis_url, c.gateway.claims.node_id, _on_broadcast(c, paid.catalog, auth))
            broadcast.start()
            c.gateway.broadcast = broadcast.publish
            paid.catalog.broadcast = broadcast.publish
            c.approvals.publish = broadcast.publish
            auth.broadcast = broadcast.publish
        checkpointing = asyncio.get_running_loop().create_task(c.audit.run())
        settle_heap()
        try:
            yield
        finally:
            expiry.cancel()
            approval_expiry.cancel()
            delivering.cancel()
            sweeping.cancel()
            checkpointing.cancel()
            if pruning is not None:
                pruning.cancel()
            if broadcast is not None:
                c.gateway.broadcast = None
                paid.catalog.broadcast = None
                c.approvals.publish = None
                auth.broadcast = None
                await broadcast.aclose()
            await paid.aclose()  # paid calls whose buyer hung up finish first: their records go out below
            # Graceful shutdown: every acknowledged trace event is written (or spooled) before exit.
            await c.pipeline.aclose()
            with contextlib.suppress(Exception):  # a clean stop leaves every chain's head signed, if it can
                await c.audit.checkpoint()
            await c.counters.aclose()
            for upstream in c.upstreams.values():
                await upstream.aclose()
            await c.store.aclose()

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_for_path(NotFound(f"No route for {request.method} {request.url.path}."), request.url.path)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        # Starlette's own Allow names only the first route of the path, but GET and POST of one path are
        # separate routes here (e.g. /api/departments): Allow lists the methods of every route of the path.
        allow = sorted(
            {
                m
                for r in routes
                if isinstance(r, Route) and r.matches(request.scope)[0] is not Match.NONE
                for m in r.methods or ()
            }
        )
        err = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
        return error_for_path(err, request.url.path, {"allow": ", ".join(allow)} if allow else {})

    routes = [
        *chat_routes(c.gateway),
        *StepIngest(c.gateway, c.desk).routes(),
        *manage_routes(auth, c.governance, c.gateway),
        *paid_endpoint_routes(auth, paid.admin),
        *paid.seller.routes(),
        *webhook_routes(auth, hooks, c.governance.box, c.pipeline, worker.allow, wake=worker.wake.set),
        *budget_routes(auth, c.store, c.gateway, c.desk),
        *approval_routes(auth, c.approvals),
        *policy_routes(auth, c.store, c.gateway),
        *run_control_routes(auth, c.store, c.gateway),
        *query_routes(auth, c.store, c.pipeline),
        *outbound_routes(settings, auth, c.store, c.gateway, c.desk, c.governance.box),
        *finance_routes(auth, c.store, c.pipeline),
        *audit_routes(auth, c.audit, c.pipeline),
        *retention_routes(auth, retention.store, lambda: datetime.now(UTC)),
        *member_routes(auth, c.store, members, c.gateway.invalidate_key, c.governance.clock),
        *health_routes(c.store, c.pipeline),
        *openapi_routes(),
        *dashboard_routes(auth, c.governance.box),  # last: a page never shadows /v1, /api, /x402 or health
    ]
    # Outermost first. ErrorMiddleware sits inside RequestIdMiddleware so even a last-resort error carries the id.
    middleware = [Middleware(RequestIdMiddleware), Middleware(ErrorMiddleware)]
    # Innermost: its 413 is rendered like any error, carries the request id, and stops a body before a handler.
    middleware.append(Middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
    app.state.components = c
    app.state.paid = paid  # paid endpoints (their facilitator, sessions): for the benchmark and the tests
    return app
