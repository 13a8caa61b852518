"""Policies on the hot path: review a call (before its body is built), then enforce what was decided (after the
idempotency claim, before the budgets).

`review` evaluates the workspace's compiled policy set (core/policy.py; compiled once per change, cached like
the budgets) against what the call is: model and provider, output cap, estimated cost, client address, tracking
headers, prompt id, properties, its run's figures and repeats, and the PII kinds in its messages (scanned only
when a rule asks). It rewrites the body when the verdict clamps `max_tokens` or redacts PII. `enforce` then
acts on the decision: a block is a 403 `policy_blocked`, a throttle a 429 counted on the shared counters, an
escalation waits for a human (gateway/approvals.py). Either way the verdict lands on the call's `Governed`, so the
request row and the run's policy_check step show it with the budgets' figures: one decision model.

A workspace without policies costs one cache lookup per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from starlette.datastructures import Headers

from agentledger.core import alerts, pii
from agentledger.core.budgets import Decision, RateLimit, Subject
from agentledger.core.errors import ApprovalDenied, ApprovalRequired, PolicyBlocked, RateLimited
from agentledger.core.model import TraceEvent
from agentledger.core.policy import Applied, CallContext, Policy, PolicySet, RunStats, Verdict, compile_policies
from agentledger.core.policy_config import parse_policy
from agentledger.formats.base import OUTPUT_CAPS, output_cap, positive_int
from agentledger.gateway.approvals import Approvals, Ask, trace_of
from agentledger.gateway.budgets import Governed
from agentledger.gateway.cache import TTLCache
from agentledger.limits.base import Counters, CountersUnavailable, Rate

log = logging.getLogger(__name__)

POLICY_STOP = "policy:"  # how a run control set by a policy names who stopped the run: policy:<id>
ALERT_MEMORY = 10_000  # alerts this node remembers raising (their windows are an hour or a run)
LOOP_MEMORY = 100_000  # (run, body) pairs whose repeats are counted; the oldest are forgotten first
# Where each format caps a call's output: the field a clamp writes when the client set none.
OUTPUT_CAP = {"chat": "max_tokens", "messages": "max_tokens", "responses": "max_output_tokens"}


# What stops a run when it refuses a call: the run guards (settings) and the run conditions of rules.
RUN_SETTINGS = frozenset(
    f"setting:{n}"
    for n in ("max_run_steps", "max_run_model_calls", "max_run_duration_s", "max_run_cost_usd", "loop_repeats")
)
RATE_SETTINGS = ("requests_per_minute", "tokens_per_minute", "concurrent")
RUN_CONDITIONS = (
    "run_steps_over",
    "run_model_calls_over",
    "run_duration_over_s",
    "run_cost_over_nanos",
    "repeated_over",
)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A workspace's compiled policies, and which parts of a call their rules and settings read (what is not
    read is not computed per call)."""

    policies: PolicySet
    scans: bool  # a rule's conditions ask for PII
    headers: bool  # a setting or condition reads which headers a call carries
    addresses: bool  # a setting or condition reads the caller's address

    @classmethod
    def of(cls, policies: PolicySet) -> Loaded:
        rules = [r for p in policies.policies for r in p.rules]
        settings = [p.settings for p in policies.policies]
        return cls(
            policies,
            scans=any(r.when.pii is not None for r in rules),
            headers=any(s.required_headers is not None for s in settings) or any(r.when.missing_headers for r in rules),
            addresses=any(s.ip_allow is not None for s in settings)
            or any(r.when.ip_in or r.when.ip_not_in for r in rules),
        )


NO_POLICIES = Loaded.of(PolicySet.empty)


@dataclass(slots=True)
class Review:
    """What `review` decided for a call, carried to `enforce`."""

    verdict: Verdict
    payload: dict[str, Any]  # the body as it will be forwarded (clamped, redacted), or the client's own
    changed: bool = False
    changes: dict[str, Any] = field(default_factory=dict)  # clamped {field, from, to}; redacted [{kind, path, count}]
    applied: Applied | None = None
    context: CallContext | None = None
    subject: Subject | None = None

    @property
    def stops_run(self) -> bool:
        """A refusal by a run guard or a rule about the run: the run goes no further (alerted once)."""
        v = self.verdict
        if v.decision is not Decision.BLOCKED or v.rule_id is None or self.subject is None:
            return False
        if self.subject.run_id is None:
            return False
        if v.rule_id in RUN_SETTINGS:
            return True
        for p in self.applied.policies if self.applied is not None else ():
            if p.id == v.policy_id:
                rule = next((r for r in p.rules if r.id == v.rule_id), None)
                return rule is not None and any(getattr(rule.when, n) is not None for n in RUN_CONDITIONS)
        return False

    @property
    def limits(self) -> list[RateLimit]:
        """The rate settings in force for this caller as rate limits of the budget gate (one decision model):
        each counted at the scope of the policy that set it, so a department's `requests_per_minute` is its
        members' together, and a more specific scope's setting replaces a broader one for its callers."""
        if self.applied is None or self.subject is None:
            return []
        eff = self.applied.settings
        out: list[RateLimit] = []
        for name in RATE_SETTINGS:
            value = getattr(eff.settings, name)
            source = eff.sources.get(name)
            if value is None or source is None:
                continue
            out.append(
                RateLimit(
                    self.subject.workspace_id,
                    f"policy:{source.id}:{name}",
                    source.scope,
                    source.scope_value,
                    **{name: value},
                    policy_version=source.version,
                )
            )
        return out

    def allows(self, model: str, provider: str) -> bool:
        """Whether a fallback to `model` at `provider` would be allowed too (a fallback never goes where the
        policies would not let the call go)."""
        if self.applied is None or self.context is None:
            return True
        again = self.applied.evaluate(replace(self.context, model=model, provider=provider))
        return again.decision is not Decision.BLOCKED


class PolicyDesk:
    def __init__(
        self,
        policies: Callable[[str], Awaitable[list[dict[str, Any]]]],
        run_of: Callable[[str, str], Awaitable[dict[str, Any] | None]],
        counters: Counters,
        clock: Callable[[], datetime],
        *,
        cache_ttl: float = 30.0,
        stale_if_error: float = 3600.0,
        client_ip_header: str | None = None,
        approvals: Approvals | None = None,
        emit: Callable[[list[TraceEvent]], object] | None = None,
    ) -> None:
        self.approvals = approvals
        # Stops a run a guard refused (set by the app: a run control, cancelled, on every replica).
        self.stop_run: Callable[[str, str, str, str], Coroutine[Any, Any, None]] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.emit = emit  # alerts leave through the trace pipeline (durable, exactly once)
        self._policies_of = policies
        self._run_of = run_of
        self.counters = counters
        self.clock = clock
        self.client_ip_header = client_ip_header.lower() if client_ip_header else None
        self.sets: TTLCache[str, Loaded] = TTLCache(cache_ttl, stale_if_error=stale_if_error)
        # (workspace, run, body hash) → (times seen, the last request id): a resend of one request (an SDK's
        # retry under the same x-request-id) is not the agent repeating itself.
        self._repeats: OrderedDict[tuple[str, str, str], tuple[int, str | None]] = OrderedDict()
        self._alerted: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    async def policy_set(self, workspace_id: str) -> PolicySet:
        return (await self._loaded(workspace_id)).policies

    async def _loaded(self, workspace_id: str) -> Loaded:
        async def load() -> Loaded:
            rows = await self._policies_of(workspace_id)
            return Loaded.of(compile_policies([policy_from_row(r) for r in rows]))

        found = await self.sets.get(workspace_id, load)
        return found if found is not None else NO_POLICIES

    def invalidate(self, workspace_id: str) -> None:
        self.sets.invalidate(workspace_id)

    async def applicable_to(self, subject: Subject) -> tuple[Any, ...]:
        """The policies over `subject`, most general first."""
        return (await self.policy_set(subject.workspace_id)).applicable(subject).policies

    def client_ip(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        """The caller's address: the peer's, or, behind a trusted proxy (setting `client_ip_header`), the last
        address that proxy appended (the ones before it are the client's own claims)."""
        if self.client_ip_header is None:
            return peer
        value = headers.get(self.client_ip_header)
        if not value:
            return peer
        last = value.rsplit(",", 1)[-1].strip()
        return last or peer

    # -- review --------------------------------------------------------------------------------------------------
    async def review(
        self,
        subject: Subject,
        fmt_name: str,
        payload: dict[str, Any],
        *,
        kind: str = "model_call",
        model: str | None = None,
        provider: str | None = None,
        name: str | None = None,
        cost_nanos: Callable[[int | None], int | None] | int | None = None,
        client_ip: str | None = None,
        header_names: frozenset[str] = frozenset(),
        prompt_id: str | None = None,
        body_hash: str | None = None,
        scan: bool = True,
        raw_headers: Sequence[tuple[bytes, bytes]] | None = None,
        request_id: str | None = None,
    ) -> Review | None:
        """The verdict for a call (None: no policy applies). `cost_nanos` may be a function of the output cap.
        With `raw_headers` (a model call), `client_ip` is the peer's address: the caller's is read from the
        trusted proxy's header, and the header names are listed, only when some policy needs them."""
        loaded = await self._loaded(subject.workspace_id)
        ps = loaded.policies
        if not ps.policies:
            return None
        applied = ps.applicable(subject)
        if not applied.policies:
            return None
        max_tokens = output_cap(payload)
        found: list[pii.Found] = []
        if scan and loaded.scans and applied.needs_pii:  # a `pii` condition; a redaction alone scans as it redacts
            found = pii.scan_body(payload, pii.KINDS)
        run = None
        if applied.needs_run and subject.run_id is not None:
            run = await self._run_stats(subject, body_hash if applied.needs_repeats else None, request_id)
        cost = cost_nanos(max_tokens) if callable(cost_nanos) else cost_nanos
        if raw_headers is not None:
            if self.client_ip_header is not None and loaded.addresses:
                client_ip = self.client_ip(client_ip, Headers(raw=list(raw_headers)))
            if loaded.headers:
                header_names = names_of(raw_headers)
        ctx = CallContext(
            kind=kind,
            now=self.clock(),
            model=model,
            provider=provider,
            name=name,
            max_tokens=max_tokens,
            cost_nanos=cost,
            client_ip=client_ip,
            headers=header_names,
            prompt_id=prompt_id,
            properties=subject.properties,
            run=run,
            pii=frozenset(f.kind for f in found),
        )
        verdict = applied.evaluate(ctx)
        out = Review(verdict, payload, applied=applied, context=ctx, subject=subject)
        if verdict.decision is not Decision.ALLOWED and verdict.decision is not Decision.THROTTLED:
            return out  # refused or held: nothing is forwarded yet, nothing to rewrite
        if verdict.clamp_max_tokens is not None and fmt_name in OUTPUT_CAP:
            field_name = next((k for k in OUTPUT_CAPS if k in payload), OUTPUT_CAP[fmt_name])
            before = positive_int(payload.get(field_name))
            if before is None or before > verdict.clamp_max_tokens:
                out.payload = {**out.payload, field_name: verdict.clamp_max_tokens}
                out.changes["max_tokens"] = {"field": field_name, "from": before, "to": verdict.clamp_max_tokens}
                out.changed = True
        if verdict.redact:
            redacted, where = pii.redact_body(out.payload, verdict.redact)
            if where:  # the kinds and where they were, never the values
                out.payload = redacted
                out.changes["redacted"] = [{"kind": w.kind, "path": w.path, "count": w.count} for w in where]
                out.changed = True
        return out

    async def _run_stats(self, subject: Subject, body_hash: str | None, request_id: str | None) -> RunStats:
        assert subject.run_id is not None
        repeats = 0
        if body_hash is not None:
            key = (subject.workspace_id, subject.run_id, body_hash)
            seen, last = self._repeats.pop(key, (0, None))
            repeats = seen if request_id is not None and request_id == last else seen + 1
            self._repeats[key] = (repeats, request_id)
            if len(self._repeats) > LOOP_MEMORY:
                self._repeats.popitem(last=False)
        row = await self._run_of(subject.workspace_id, subject.run_id)
        if row is None:
            return RunStats(steps=0, model_calls=0, started_at=None, cost_nanos=0, repeats=repeats)
        return RunStats(
            steps=int(row.get("steps") or 0),
            model_calls=int(row.get("model_calls") or 0),
            started_at=row.get("started_at"),
            cost_nanos=int(row.get("cost_nanos") or 0),
            repeats=repeats,
        )

    async def check_action(
        self,
        governed: Governed,
        subject: Subject,
        *,
        kind: str,
        name: str,
        amount_nanos: int | None,
        client_ip: str | None,
        header_names: frozenset[str],
        prompt_id: str | None,
        body: dict[str, Any],
        request_id: str | None = None,
    ) -> None:
        """A tool or API action an agent asks about (`POST /v1/policy/check`, `/v1/spend/authorize`): reviewed
        and enforced as a model call is, escalation included; `governed` carries the verdict either way."""
        review = await self.review(
            subject,
            "",
            {},
            kind=kind,
            name=name,
            cost_nanos=amount_nanos,
            client_ip=client_ip,
            header_names=header_names,
            prompt_id=prompt_id,
            scan=False,
        )
        if review is None:
            return
        await self.enforce(governed, review, subject.workspace_id, request_id)
        if governed.decision is Decision.ESCALATED:
            digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
            summary = {"kind": kind, "name": name, "amount_usd": body.get("amount_usd")}
            await self.escalate(governed, review, subject, request_id=request_id, body_hash=digest, summary=summary)

    async def escalate(
        self,
        governed: Governed,
        review: Review,
        subject: Subject,
        *,
        request_id: str | None,
        body_hash: str,
        summary: dict[str, Any],
    ) -> None:
        """An escalated call or action waits for a human (gateway/approvals.py): approved, it goes on (allowed,
        the approval on its record); denied or not decided in time, the refusal is raised."""
        verdict = review.verdict
        record = governed.policy if governed.policy is not None else {}
        if self.approvals is None:  # nobody to ask: an escalation refuses
            raise PolicyBlocked(f"{verdict.reason} (escalation needs approvals, which this gateway does not run)")
        ask = Ask(
            workspace_id=subject.workspace_id,
            virtual_key_id=subject.virtual_key_id,
            agent_id=subject.agent_id,
            run_id=subject.run_id,
            request_id=request_id,
            body_hash=body_hash,
            reason=verdict.reason,
            kind=summary.get("kind", "model_call"),
            summary=summary,
            policy_id=verdict.policy_id,
            policy_version=verdict.policy_version,
            rule_id=verdict.rule_id,
            wait_s=verdict.approval_wait_s,
        )
        try:
            granted = await self.approvals.escalate(ask)
        except (ApprovalRequired, ApprovalDenied) as exc:
            record["approval"] = trace_of(exc)
            raise
        record["approval"] = trace_of(granted)
        governed.decision = Decision.ALLOWED  # approved: the call goes on, escalated → approved on its record
        governed.decided_by = None

    def _raise_alerts(self, review: Review, request_id: str | None) -> None:
        """The `alert` rules that matched (once per rule and hour), and a run stopped by a guard (once per run)."""
        subject, verdict = review.subject, review.verdict
        if self.emit is None or subject is None:
            return
        stops = review.stops_run
        if not verdict.alerts and not stops:
            return
        now = self.clock()
        common = {
            "run_id": subject.run_id,
            "request_id": request_id,
            "agent_id": subject.agent_id,
            "department_id": subject.department_id,
        }
        kind, ws = alerts.AlertKind.POLICY_ALERT.value, subject.workspace_id
        out: list[TraceEvent] = [
            alerts.policy_alert(ws, h.policy_id, h.policy_version, h.rule_id, h.reason, at=now, **common)
            for h in verdict.alerts
            if (ws, kind, alerts.policy_alert_key(h.policy_id, h.rule_id, now)) not in self._alerted
        ]
        if stops and subject.run_id is not None and self.stop_run is not None:
            self._spawn(
                self.stop_run(subject.workspace_id, subject.run_id, f"{POLICY_STOP}{verdict.policy_id}", verdict.reason)
            )
        if stops and subject.run_id is not None:
            out.append(
                alerts.run_stopped(
                    subject.workspace_id,
                    subject.run_id,
                    verdict.reason,
                    at=now,
                    policy_id=verdict.policy_id,
                    agent_id=subject.agent_id,
                    department_id=subject.department_id,
                    request_id=request_id,
                )
            )
        fresh = [a for a in out if self._first(a)]
        if fresh:
            self.emit(fresh)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception:  # the refusal stands; the run is stopped by its next call's guard anyway
                log.exception("stopping a run a policy refused failed")

        task = asyncio.get_running_loop().create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _first(self, alert: Any) -> bool:
        """Whether this node has not raised this alert yet: an alert rule matching every call of a busy agent
        would otherwise write one (deduplicated) alert row per call. The store still keeps each once across
        replicas and restarts; this only spares the writes."""
        key = (alert.workspace_id, alert.kind, alert.dedupe_key)
        if key in self._alerted:
            return False
        self._alerted[key] = None
        if len(self._alerted) > ALERT_MEMORY:
            self._alerted.popitem(last=False)
        return True

    def approval_opened(self, ask: Ask, approval_id: str) -> None:
        """`approval_pending`, raised as the approval opens (Approvals.on_open), while its call is held."""
        if self.emit is None:
            return
        alert = alerts.approval_pending(
            ask.workspace_id,
            approval_id,
            ask.reason,
            at=self.clock(),
            policy_id=ask.policy_id,
            run_id=ask.run_id,
            request_id=ask.request_id,
            agent_id=ask.agent_id,
        )
        self.emit([alert])

    # -- enforcement ---------------------------------------------------------------------------------------------
    async def enforce(
        self, governed: Governed, review: Review, workspace_id: str, request_id: str | None = None
    ) -> None:
        """Put the verdict on the call's record and act on it: raise for a block or a throttle past its rate.
        An escalation is the caller's (it needs the call's identity to bind an approval to)."""
        verdict = review.verdict
        record = verdict.as_record()
        record["changes"] = {k: v for k, v in record["changes"].items() if k not in review.changes} | review.changes
        governed.policy = record
        self._raise_alerts(review, request_id)
        if verdict.decision is Decision.ALLOWED:
            return
        governed.decision = verdict.decision
        governed.decided_by = {
            "kind": "policy",
            "id": verdict.policy_id,
            "version": verdict.policy_version,
            "rule": verdict.rule_id,
        }
        if verdict.decision is Decision.BLOCKED:
            raise PolicyBlocked(verdict.reason)
        if verdict.decision is Decision.THROTTLED:
            rpm = verdict.throttle_rpm or 1
            rate = Rate(f"p:{workspace_id}:{verdict.policy_id}:{verdict.rule_id}", rpm, 60.0, 1)
            try:
                wait = await self.counters.hit([rate], self.clock().timestamp())
            except CountersUnavailable:
                log.warning("counters unavailable: policy throttle %s not counted", verdict.rule_id)
                wait = None
            if wait is not None:
                raise RateLimited(f"{verdict.reason} (at most {rpm} a minute).", retry_after=max(math.ceil(wait), 1))
            # Under its rate the call goes on: allowed, and the record says which throttle it passed.
            governed.decision = Decision.ALLOWED
            governed.decided_by = None
            record["throttle"] = {"requests_per_minute": rpm, "within": True}


def policy_from_row(row: Mapping[str, Any]) -> Policy:
    """A stored policy (store/governance.py: its scope, mode and name in columns, settings and rules in `body`)."""
    data = {"name": row["name"], "scope": row["scope"], "scope_value": row["scope_value"], "mode": row["mode"]}
    return parse_policy({**data, **row["body"]}, id=row["id"], version=row["version"])


def names_of(raw: Sequence[tuple[bytes, bytes]]) -> frozenset[str]:
    return frozenset(k.decode("latin-1").lower() for k, _ in raw)
