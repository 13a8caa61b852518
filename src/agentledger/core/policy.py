"""Policies: versioned rule sets attached to a scope, compiled once per change, evaluated on every call.

A policy sits at one scope (workspace, department, agent, virtual_key) in `enforce` or `monitor` mode and holds
settings and rules (core/policy_config.py reads them from the API's JSON; docs there):

* Settings override: for each setting the most specific scope that sets it wins (virtual_key > agent >
  department > workspace; at one scope, the policy listed later to `compile_policies`). An empty list is a
  value: it lifts the restriction a broader scope set (`models_allow: []` allows every model again).
* Rules accumulate over every applicable scope and cannot be overridden below. Among the rules that match,
  block > escalate > throttle (the lowest `throttle_rpm` of them) > allow; `redact` and `alert` rules apply in
  addition to the winner. A setting that refuses the call blocks it like a rule.
* A condition about something the call does not have (a model for a tool call, a run outside any run) does
  not hold, negated or not, with one exception: `max_tokens_over` counts a model call without max_tokens as
  above (the provider's default may be the model's whole output).
* What a setting applies to: the model and provider lists to calls that name one; `max_tokens`,
  `prompt_ids_allow` and `max_run_model_calls` to model calls; the run guards inside a run; the rest to every
  kind. `ip_allow` refuses a call whose client IP is unknown: it exists to keep callers out. Run guards count
  what came before the call: `max_run_steps: 10` lets 10 steps through and refuses the 11th call;
  `max_run_cost_usd` refuses once the run's spend reached it; `loop_repeats: 3` refuses the third identical body.
  `requests_per_minute`, `tokens_per_minute`, `concurrent` and `approval_wait_s` are only merged and exposed
  (`Applied.settings`): the gateway enforces them.
* Monitor policies change nothing: the verdict is what the enforced policies decide, and `would` is what
  enforcing the monitor policies too would have decided, when that differs.

Pure: the gateway hands in the call (`CallContext`, with `now`) and, when `needs_run`/`needs_pii` say so, the
run's figures and the PII kinds it found.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

from agentledger.core.budgets import Decision, Scope, Subject
from agentledger.core.policy_checks import MODEL_CALL, Env, SettingCheck, condition_checks, setting_checks


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"


class RuleAction(enum.StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    THROTTLE = "throttle"
    ESCALATE = "escalate"
    REDACT = "redact"
    ALERT = "alert"


class MaxTokensAction(enum.StrEnum):
    CLAMP = "clamp"
    BLOCK = "block"


POLICY_SCOPES = (Scope.WORKSPACE, Scope.DEPARTMENT, Scope.AGENT, Scope.VIRTUAL_KEY)  # least to most specific
PII_KINDS = frozenset({"email", "phone", "payment_card", "iban", "us_ssn", "secret"})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Local wall-clock minutes on some days. `end <= start` is overnight: it ends on the next day, so a
    Friday 22:00-06:00 window holds Saturday 05:59. Wall clock, so 09:00 stays 09:00 across a DST change."""

    days: tuple[int, ...]  # 0 = Monday; sorted, distinct
    start: int  # minutes after local midnight, 0..1439
    end: int  # 0..1440 (24:00)
    tz: str


@dataclass(frozen=True, slots=True)
class Settings:
    """None: not set here (a broader scope's value, if any, holds)."""

    models_allow: tuple[str, ...] | None = None
    models_deny: tuple[str, ...] | None = None
    providers_allow: tuple[str, ...] | None = None
    providers_deny: tuple[str, ...] | None = None
    max_tokens: int | None = None
    max_tokens_action: MaxTokensAction | None = None  # with max_tokens only; None is clamp
    time_windows: tuple[TimeWindow, ...] | None = None
    ip_allow: tuple[str, ...] | None = None  # normalized CIDRs
    required_headers: tuple[str, ...] | None = None  # lowercase
    prompt_ids_allow: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None
    approval_wait_s: float | None = None
    max_run_steps: int | None = None
    max_run_model_calls: int | None = None
    max_run_duration_s: float | None = None
    max_run_cost_nanos: int | None = None
    loop_repeats: int | None = None


SETTING_FIELDS = tuple(f.name for f in fields(Settings))


@dataclass(frozen=True, slots=True)
class Conditions:
    """Every condition present must hold; none present always holds."""

    kinds: frozenset[str] | None = None
    models: tuple[str, ...] | None = None
    models_not: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None
    providers_not: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    names_not: tuple[str, ...] | None = None
    max_tokens_over: int | None = None
    cost_over_nanos: int | None = None
    hours: tuple[TimeWindow, ...] | None = None
    outside_hours: tuple[TimeWindow, ...] | None = None
    ip_in: tuple[str, ...] | None = None
    ip_not_in: tuple[str, ...] | None = None
    missing_headers: tuple[str, ...] | None = None
    prompt_ids: frozenset[str] | None = None
    prompt_ids_not: frozenset[str] | None = None
    properties: tuple[tuple[str, str], ...] | None = None  # (property name, value glob), sorted by name
    run_steps_over: int | None = None
    run_model_calls_over: int | None = None
    run_duration_over_s: float | None = None
    run_cost_over_nanos: int | None = None
    repeated_over: int | None = None
    pii: frozenset[str] | None = None


CONDITION_FIELDS = tuple(f.name for f in fields(Conditions))
_RUN_CONDITIONS = ("run_steps_over", "run_model_calls_over", "run_duration_over_s", "run_cost_over_nanos")
_RUN_SETTINGS = ("max_run_steps", "max_run_model_calls", "max_run_duration_s", "max_run_cost_nanos")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    action: RuleAction
    when: Conditions = Conditions()
    name: str | None = None
    throttle_rpm: int | None = None  # action throttle only
    redact: frozenset[str] = frozenset()  # action redact only: PII kinds
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    version: int
    name: str
    scope: Scope
    scope_value: str | None  # the department, agent or virtual key id; None for the workspace
    mode: Mode = Mode.ENFORCE
    settings: Settings = Settings()
    rules: tuple[Rule, ...] = ()

    @property
    def label(self) -> str:
        return f"policy '{self.name}' ({self.id} v{self.version})"


@dataclass(frozen=True, slots=True)
class RunStats:
    steps: int = 0  # steps recorded in the run before this call
    model_calls: int = 0  # model calls in the run before this call
    started_at: datetime | None = None
    cost_nanos: int = 0  # spent in the run so far
    repeats: int = 1  # times this request body was seen in the run, this call included


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a call or a pre-check is, assembled by the gateway."""

    kind: str  # "model_call", or the kind a pre-check names: "tool_call", "api_call", "payment", ...
    now: datetime  # aware
    model: str | None = None
    provider: str | None = None  # the provider key's name
    name: str | None = None  # the tool's or API's name
    max_tokens: int | None = None
    cost_nanos: int | None = None  # the call's estimated cost, or the amount a spend check asks for
    client_ip: str | None = None
    headers: frozenset[str] = frozenset()  # lowercase names of the headers present
    prompt_id: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    run: RunStats | None = None
    pii: frozenset[str] = frozenset()  # PII kinds found in the request


class Hit(NamedTuple):
    """A setting or rule that decided, changed or alerted; `rule_id` is "setting:<name>" for a setting."""

    policy_id: str
    policy_version: int
    rule_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision = Decision.ALLOWED
    policy_id: str | None = None  # what decided; None when nothing refused, throttled or allowed by rule
    policy_version: int | None = None
    rule_id: str | None = None
    reason: str = "allowed"
    mode: Mode = Mode.ENFORCE  # the deciding policy's
    clamp_max_tokens: int | None = None  # lower the request's max_tokens to this (or set it)
    clamped_from: int | None = None  # what the request asked for; None: it named none
    redact: frozenset[str] = frozenset()
    throttle_rpm: int | None = None
    alerts: tuple[Hit, ...] = ()
    changes: tuple[Hit, ...] = ()  # the settings and rules behind the clamp and the redaction
    approval_wait_s: float | None = None  # the effective setting (None: the gateway's default)
    would: Verdict | None = None  # with the monitor policies enforced too, when that differs

    def _effect(self) -> tuple[object, ...]:
        return (self.decision, self.clamp_max_tokens, self.redact, self.throttle_rpm, self.alerts)

    def as_record(self) -> dict[str, Any]:
        """The policy_check step's view of the verdict."""
        changes: dict[str, Any] = {}
        if self.clamp_max_tokens is not None:
            changes["max_tokens"] = {"from": self.clamped_from, "to": self.clamp_max_tokens}
        if self.redact:
            changes["redacted"] = sorted(self.redact)
        return {
            "decision": self.decision.value,
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "mode": self.mode.value,
            "changes": changes,
            "changed_by": [h._asdict() for h in self.changes],
            "throttle_rpm": self.throttle_rpm,
            "alerts": [h._asdict() for h in self.alerts],
            "would": self.would.as_record() if self.would is not None else None,
        }


ALLOWED = Verdict(reason="no policy applies")


@dataclass(frozen=True, slots=True)
class Effective:
    """The merged settings for a subject, and for each setting that is set the policy that set it (its scope
    says which counter a rate limit or run guard belongs to)."""

    settings: Settings
    sources: Mapping[str, Policy]


# -- compiling --------------------------------------------------------------------------------------------------


_RANK = {RuleAction.BLOCK: 4, RuleAction.ESCALATE: 3, RuleAction.THROTTLE: 2, RuleAction.ALLOW: 1}
_DECISION = {4: Decision.BLOCKED, 3: Decision.ESCALATED, 2: Decision.THROTTLED, 1: Decision.ALLOWED}
_SAYS = {
    RuleAction.ALLOW: "allows the call",
    RuleAction.BLOCK: "blocks the call",
    RuleAction.ESCALATE: "needs a human's approval",
    RuleAction.ALERT: "raises an alert",
}


class _Rule:
    __slots__ = ("rank", "checks", "hit", "mode", "rpm", "redact")

    def __init__(self, policy: Policy, rule: Rule) -> None:
        self.rank = _RANK.get(rule.action, 0)  # 0: redact and alert, which do not decide
        self.checks = condition_checks(rule.when)
        self.mode = policy.mode
        self.rpm = rule.throttle_rpm
        self.redact = rule.redact
        if rule.message:
            says = rule.message
        elif rule.action is RuleAction.THROTTLE:
            says = f"throttles to {rule.throttle_rpm} requests per minute"
        elif rule.action is RuleAction.REDACT:
            says = f"redacts {', '.join(sorted(rule.redact))}"
        else:
            says = _SAYS[rule.action]
        named = f" '{rule.name}'" if rule.name else ""
        self.hit = Hit(policy.id, policy.version, rule.id, f"{policy.label} rule {rule.id}{named}: {says}")


@dataclass(frozen=True, slots=True)
class _Compiled:
    policy: Policy
    level: int
    checks: dict[str, SettingCheck | None]
    rules: tuple[_Rule, ...]


def _compile(policy: Policy) -> _Compiled:
    return _Compiled(
        policy,
        POLICY_SCOPES.index(policy.scope),
        setting_checks(policy.settings),
        tuple(_Rule(policy, r) for r in policy.rules),
    )


# -- evaluating -------------------------------------------------------------------------------------------------


class _View:
    """The compiled slice one verdict is taken from: the enforced policies, or all of them."""

    __slots__ = ("checks", "max_tokens", "rules", "effective", "allow")

    def __init__(self, compiled: Sequence[_Compiled]) -> None:
        values: dict[str, Any] = {}
        sources: dict[str, Policy] = {}
        checks: dict[str, tuple[Policy, SettingCheck | None]] = {}
        for c in compiled:  # least specific first: later ones override
            s = c.policy.settings
            for name in SETTING_FIELDS:
                if name != "max_tokens_action" and (value := getattr(s, name)) is not None:
                    values[name] = value
                    sources[name] = c.policy
                    if name == "max_tokens":  # the cap and its action are one setting
                        values["max_tokens_action"] = s.max_tokens_action
            for name, check in c.checks.items():
                checks[name] = (c.policy, check)
        self.effective = Effective(Settings(**values), sources)
        order = [*(f for f in _CHECK_ORDER if f in checks)]
        self.checks = tuple((name, p, check) for name in order for p, check in [checks[name]] if check is not None)
        cap = values.get("max_tokens")
        self.max_tokens = (
            (cap, values.get("max_tokens_action") is MaxTokensAction.BLOCK, sources["max_tokens"])
            if cap is not None
            else None
        )
        self.rules = tuple(r for c in compiled for r in c.rules)
        self.allow = Verdict(reason="allowed", approval_wait_s=values.get("approval_wait_s"))

    def decide(self, ctx: CallContext, env: Env) -> Verdict:
        rank = 0
        hit: Hit | None = None
        mode = Mode.ENFORCE
        for name, policy, check in self.checks:
            why = check(ctx, env)
            if why is not None:
                rank, mode = 4, policy.mode
                hit = Hit(policy.id, policy.version, f"setting:{name}", f"{policy.label} setting {name}: {why}")
                break
        clamp = asked = None
        changes: list[Hit] = []
        if self.max_tokens is not None and rank < 4 and ctx.kind == MODEL_CALL:
            cap, block, policy = self.max_tokens
            asked = ctx.max_tokens
            if asked is not None and asked > cap and block:
                rank, mode = 4, policy.mode
                why = f"max_tokens {asked} is above the cap of {cap}"
                hit = Hit(policy.id, policy.version, "setting:max_tokens", f"{policy.label} setting max_tokens: {why}")
            elif asked is None or asked > cap:
                clamp = cap
                why = f"max_tokens {asked if asked is not None else '(none)'} lowered to {cap}"
                changes.append(
                    Hit(policy.id, policy.version, "setting:max_tokens", f"{policy.label} setting max_tokens: {why}")
                )
        rpm: int | None = None
        redact: frozenset[str] = frozenset()
        alerts: list[Hit] = []
        for rule in self.rules:
            for cond in rule.checks:
                if not cond(ctx, env):
                    break
            else:
                r = rule.rank
                if r == 0:
                    if rule.redact:
                        redact |= rule.redact
                        changes.append(rule.hit)
                    else:
                        alerts.append(rule.hit)
                elif r > rank or (r == rank == 2 and rule.rpm is not None and rpm is not None and rule.rpm < rpm):
                    rank, hit, mode = r, rule.hit, rule.mode
                    rpm = rule.rpm if r == 2 else None
        if hit is None and clamp is None and not changes and not alerts:
            return self.allow
        if rank == 4:  # a refused call is not forwarded: nothing to change in it
            clamp = asked = None
            redact = frozenset()
            changes = []
        return Verdict(
            decision=_DECISION.get(rank, Decision.ALLOWED),
            policy_id=hit.policy_id if hit else None,
            policy_version=hit.policy_version if hit else None,
            rule_id=hit.rule_id if hit else None,
            reason=hit.reason if hit else "allowed",
            mode=mode,
            clamp_max_tokens=clamp,
            clamped_from=asked if clamp is not None else None,
            redact=redact,
            throttle_rpm=rpm,
            alerts=tuple(alerts),
            changes=tuple(changes),
            approval_wait_s=self.allow.approval_wait_s,
        )


_CHECK_ORDER = (
    "models_allow",
    "models_deny",
    "providers_allow",
    "providers_deny",
    "prompt_ids_allow",
    "required_headers",
    "ip_allow",
    "time_windows",
    "max_run_steps",
    "max_run_model_calls",
    "max_run_duration_s",
    "max_run_cost_usd",
    "loop_repeats",
)


class Applied:
    """The policies that govern one subject, merged and ready to evaluate."""

    __slots__ = ("policies", "settings", "would_settings", "needs_pii", "needs_run", "needs_repeats", "_on", "_all")

    def __init__(self, compiled: Sequence[_Compiled]) -> None:
        self.policies = tuple(c.policy for c in compiled)
        enforced = [c for c in compiled if c.policy.mode is Mode.ENFORCE]
        self._on = _View(enforced)
        self._all = _View(compiled) if len(enforced) < len(compiled) else None
        self.settings = self._on.effective  # what is enforced: the rate limits, run guards and approval wait
        self.would_settings = (self._all or self._on).effective
        self.needs_pii, self.needs_run, self.needs_repeats = _needs(self.policies)

    def evaluate(self, ctx: CallContext) -> Verdict:
        if not self.policies:
            return ALLOWED
        env = Env(ctx)
        verdict = self._on.decide(ctx, env)
        if self._all is None:
            return verdict
        would = self._all.decide(ctx, env)
        if would._effect() == verdict._effect():
            return verdict
        return replace(verdict, would=would)


def _needs(policies: Sequence[Policy]) -> tuple[bool, bool, bool]:
    """(needs_pii, needs_run, needs_repeats): what the gateway must find out before evaluating, so that a
    workspace whose policies never ask pays nothing for it. Monitor policies count: `would` needs it too."""
    pii = run = repeats = False
    for p in policies:
        repeats = repeats or p.settings.loop_repeats is not None
        run = run or any(getattr(p.settings, name) is not None for name in _RUN_SETTINGS)
        for r in p.rules:
            pii = pii or r.action is RuleAction.REDACT or r.when.pii is not None
            repeats = repeats or r.when.repeated_over is not None
            run = run or any(getattr(r.when, name) is not None for name in _RUN_CONDITIONS)
    return pii, run or repeats, repeats


_NO_POLICIES = Applied(())
MAX_CACHED_SUBJECTS = 10_000


class PolicySet:
    """One workspace's policies, compiled: made once per change of them, shared by every call."""

    __slots__ = ("policies", "needs_pii", "needs_run", "needs_repeats", "_compiled", "_cache")
    empty: ClassVar[PolicySet]

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self.policies = tuple(policies)
        compiled = [_compile(p) for p in self.policies]
        # Stable: at one scope, the order given is the order of precedence (settings: the later wins).
        self._compiled = tuple(sorted(compiled, key=lambda c: c.level))
        self._cache: dict[tuple[str | None, str | None, str | None], Applied] = {}
        self.needs_pii, self.needs_run, self.needs_repeats = _needs(self.policies)

    def applicable(self, subject: Subject) -> Applied:
        """The policies over `subject` (its workspace is taken to be this set's); the same object for the same
        department, agent and key while the set lives."""
        if not self._compiled:
            return _NO_POLICIES
        key = (subject.department_id, subject.agent_id, subject.virtual_key_id)
        found = self._cache.get(key)
        if found is None:
            found = Applied([c for c in self._compiled if _over(c.policy, key)])
            if len(self._cache) >= MAX_CACHED_SUBJECTS:
                self._cache.pop(next(iter(self._cache)), None)  # the oldest: a bound, not an LRU
            self._cache[key] = found
        return found

    def evaluate(self, subject: Subject, ctx: CallContext) -> Verdict:
        return self.applicable(subject).evaluate(ctx)


PolicySet.empty = PolicySet()


def _over(policy: Policy, key: tuple[str | None, str | None, str | None]) -> bool:
    if policy.scope is Scope.WORKSPACE:
        return True
    return key[POLICY_SCOPES.index(policy.scope) - 1] == policy.scope_value


def compile_policies(policies: Iterable[Policy]) -> PolicySet:
    """A workspace's policies, in the order that breaks ties at one scope (e.g. by creation: the newer wins)."""
    listed = tuple(policies)
    return PolicySet(listed) if listed else PolicySet.empty
