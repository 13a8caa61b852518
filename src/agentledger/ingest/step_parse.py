"""One step batch's JSON → StepRecords, cheaply: a 1000-step batch is parsed on the event loop, so every
microsecond per step is a millisecond no other request is served.

The rules are those of `core.fields` and `gateway.bodies` (one rule for every surface). What is added here are
fast paths for the common case: each field is first tested with one C-level check (a regex, a type test, one
`orjson.dumps`) that can only pass for a value the full rule accepts; anything else goes to the full rule,
which gives the exact 400 it always gave. So no error message or `param` depends on which path ran
(tests/unit/test_step_ingest_parse.py pins them), and what the batch shares (the attribution, the time
`now`, a session path met before) is worked out once per batch, not once per step.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

import orjson

from agentledger.core.bounds import (
    MAX_ATTEMPT,
    MAX_EVENT_COST_USD,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_LATENCY_MS,
    MAX_TOKENS,
)
from agentledger.core.errors import AgentLedgerError, InvalidRequest
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.finance import payment_cost, within_bounds
from agentledger.core.headers import ID_RE, MAX_ID_LEN, MAX_NAME_LEN, MAX_PATH_LEN, normalize_path
from agentledger.core.ids import new_id
from agentledger.core.model import (
    Attribution,
    Payment,
    PaymentDirection,
    PaymentProtocol,
    PaymentStatus,
    StepKind,
    StepRecord,
    StepStatus,
)
from agentledger.core.money import event_cost_nanos
from agentledger.core.pricing import Cost, CostSource, Price, bounded
from agentledger.core.usage import Usage
from agentledger.gateway.bodies import storable_json
from agentledger.prices.catalog import price_usage

_KINDS = {k.value: k for k in StepKind}
_KIND_CHOICES = ", ".join(k.value for k in StepKind)
_STATUSES = {s.value: s for s in StepStatus}
_USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
# Non-empty text without C0, DEL or C1 controls: exactly what `core.headers.has_control` refuses, as one
# C-level match instead of a Python loop over the characters (a test compares the two over every code point).
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")
# orjson writes one character as at most 6 bytes (a control as \u00XX); a string this short always fits.
_SHORT_STR = (MAX_JSON_BYTES - 2) // 6
_DIRECTIONS = {d.value: d for d in PaymentDirection}
_PAYMENT_STATUSES = {s.value: s for s in PaymentStatus}
_PROTOCOLS = {p.value: p for p in PaymentProtocol}
MAX_ASSET_DIGITS = 78  # a uint256 in decimal: the largest amount an EVM token can hold
_ATOMIC = re.compile(f"[0-9]{{1,{MAX_ASSET_DIGITS}}}")
# Lengths of a payment's labels: a CAIP-2 network id is at most 41 characters; addresses, names and transaction
# references fit 256.
MAX_NETWORK_LEN, MAX_PAYMENT_LABEL_LEN = 64, 256


def label(value: Any, key: str, limit: int = MAX_NAME_LEN) -> str:
    """`core.fields.text_field(value, key, limit=limit)`, with a fast path for the clean common case."""
    if value.__class__ is str and len(value) <= limit and _PRINTABLE.fullmatch(value):
        return value
    return text_field(value, key, limit=limit)


def ident(value: Any, key: str) -> str:
    """`core.fields.id_field(value, key)`: an id in format has no controls and is not empty, so one match says
    all the full rule would."""
    if value.__class__ is str and len(value) <= MAX_ID_LEN and ID_RE.fullmatch(value):
        return value
    return id_field(value, key)


def storable(value: Any, key: str) -> Any:
    """`gateway.bodies.storable_json(value, key)`. Its depth walk runs in Python over every value; here one
    `orjson.dumps` gives the size, and the count of '[' and '{' in it bounds the depth from above (every array
    or object opens with one, and brackets inside strings only raise the count), so only a value with more
    than 32 of them (or too large) is walked. The serialized text is dropped: the store serializes again."""
    cls = value.__class__
    if cls is dict or cls is list:
        try:
            text = orjson.dumps(value)
        except orjson.JSONEncodeError:
            return storable_json(value, key)  # past orjson's own depth limit: the full rule names the depth
        if len(text) <= MAX_JSON_BYTES and text.count(b"[") + text.count(b"{") <= MAX_JSON_DEPTH:
            return value
        return storable_json(value, key)
    if cls is str and len(value) <= _SHORT_STR:
        return value
    return storable_json(value, key)


class BatchParser:
    """Parses the steps of one batch for one run. What every step shares is given once: the run, its
    attribution (a step's own `session_path` makes a copy with that path, once per distinct path), the
    workspace's price overrides and `now`, the start of a step that does not say when it started."""

    def __init__(self, run_id: str, attribution: Attribution, prices: dict[str, list[Price]], now: datetime) -> None:
        self.run_id = run_id
        self.attribution = attribution
        self.prices = prices
        self.now = now
        self._paths: dict[str, Attribution] = {}  # a step's session_path as sent → the attribution with it

    def parse(self, items: list[Any]) -> list[StepRecord]:
        return [self.step(item, i) for i, item in enumerate(items)]

    def step(self, item: Any, i: int) -> StepRecord:
        """steps[i] → StepRecord; every error's param locates the field, e.g. 'steps[3].started_at'."""
        try:
            if item.__class__ is not dict:
                raise InvalidRequest(f"steps[{i}] must be a JSON object.")
            return self._parse(item, i)
        except InvalidRequest as exc:
            p = f"steps[{i}]"
            if exc.param is None or not exc.param.startswith(p):
                exc.param = f"{p}.{exc.param}" if exc.param else p
            raise

    def _parse(self, item: dict[str, Any], i: int) -> StepRecord:
        # The checks run in the order the fields were always checked in, so a step with several bad fields
        # names the same one as before.
        kind = _kind(item.get("kind", "tool_call"), i)
        status = _status(item.get("status", "ok"), i)
        raw = item.get("started_at")
        started = self.now if raw is None else time_field(raw, "started_at")
        raw = item.get("ended_at")
        ended = None if raw is None else time_field(raw, "ended_at")
        latency = _latency(item.get("latency_ms"), started, ended, i)
        attempt = item.get("attempt", 1)
        if attempt.__class__ is not int or not 1 <= attempt <= MAX_ATTEMPT:
            raise InvalidRequest(f"steps[{i}].attempt must be an integer from 1 to {MAX_ATTEMPT}.", param="attempt")
        raw = item.get("model")
        model = None if raw is None else label(raw, "model")
        raw = item.get("provider")
        provider = None if raw is None else label(raw, "provider", 64)
        usage = _usage(item.get("usage"))
        payment = None
        if kind is StepKind.PAYMENT:
            # A payment's cost is derived (core.finance.payment_cost), so a figure of the client's own could only
            # disagree with it.
            if item.get("cost_usd") is not None:
                raise InvalidRequest(
                    "'cost_usd' is not taken on a payment step: its cost is its payment's (an outbound payment's "
                    "amount and fee, an inbound one's fee).",
                    param="cost_usd",
                )
            payment = _payment(item.get("payment"), i)
            cost: Cost | None = Cost(payment_cost(payment), CostSource.REPORTED)
        else:
            cost = self._cost(item.get("cost_usd"), usage, model, provider, started)
        raw = item.get("session_path")
        attribution = self.attribution if raw is None else self._with_path(raw)
        raw = item.get("id")
        step_id = new_id("step") if raw is None else ident(raw, "id")
        raw = item.get("name")
        if raw is None:
            raise InvalidRequest("'name' is required.", param="name")
        name = label(raw, "name")
        raw = item.get("parent_id")
        parent_id = None if raw is None else ident(raw, "parent_id")
        raw = item.get("branch")
        branch = None if raw is None else label(raw, "branch")
        raw = item.get("error")
        error = None if raw is None else label(raw, "error", 10_000)
        raw = item.get("input")
        step_input = None if raw is None else storable(raw, "input")
        raw = item.get("output")
        step_output = None if raw is None else storable(raw, "output")
        if payment is None and item.get("payment") is not None:
            raise InvalidRequest(f"steps[{i}].payment is only taken on a step of kind 'payment'.", param="payment")
        return StepRecord(
            step_id=step_id,
            run_id=self.run_id,
            attribution=attribution,
            kind=kind,
            name=name,
            status=status,
            started_at=started,
            ended_at=ended,
            latency_ms=latency,
            parent_id=parent_id,
            model=model,
            provider=provider,
            usage=usage,
            cost_nanos=cost.nanos if cost else 0,
            cost_source=cost.source if cost else None,
            branch=branch,
            attempt=attempt,
            error=error,
            input=step_input,
            output=step_output,
            attributes=_attributes(item.get("attributes")),
            payment=payment,
        )

    def _cost(
        self, reported: Any, usage: Usage | None, model: str | None, provider: str | None, at: datetime
    ) -> Cost | None:
        """The client's own figure if it sent one, else usage × the price in force at the step's start."""
        if reported is not None:
            return _cost_usd(reported)
        if usage is None or model is None:
            return None
        cost = price_usage(usage, model, provider or "", at, self.prices)
        return bounded(cost) if cost is not None else None  # bounded usage × a dear price may pass $1M

    def _with_path(self, raw: Any) -> Attribution:
        """The batch attribution with this step's session path; a path met before in the batch costs a lookup."""
        held = self._paths.get(raw) if raw.__class__ is str else None
        if held is not None:
            return held
        path = label(raw, "session_path", MAX_PATH_LEN)
        try:
            path = normalize_path("session_path", path)
        except AgentLedgerError as exc:
            raise InvalidRequest(exc.message, param="session_path") from None
        held = self._paths[raw] = dataclasses.replace(self.attribution, session_path=path)
        return held


def _kind(raw: Any, i: int) -> StepKind:
    kind = _KINDS.get(raw) if raw.__class__ is str else None
    if kind is None:
        raise InvalidRequest(f"steps[{i}].kind must be one of {_KIND_CHOICES}.", param="kind")
    return kind


def _status(raw: Any, i: int) -> StepStatus:
    status = _STATUSES.get(raw) if raw.__class__ is str else None
    if status is None:
        raise InvalidRequest(f"steps[{i}].status must be 'ok' or 'error'.", param="status")
    return status


def _latency(raw: Any, started: datetime, ended: datetime | None, i: int) -> float | None:
    if raw is not None:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= MAX_LATENCY_MS:
            raise InvalidRequest(
                f"steps[{i}].latency_ms must be a number from 0 to {MAX_LATENCY_MS}.", param="latency_ms"
            )
        return float(raw)
    if ended is None:
        return None
    if ended < started:
        raise InvalidRequest(f"steps[{i}].ended_at is before started_at.", param="ended_at")
    return (ended - started).total_seconds() * 1000


def _usage(raw: Any) -> Usage | None:
    if raw is None:
        return None
    if raw.__class__ is not dict:
        raise InvalidRequest("'usage' must be an object.", param="usage")
    values = []
    for f in _USAGE_FIELDS:
        v = raw.get(f, 0)
        if v.__class__ is not int or not 0 <= v <= MAX_TOKENS:
            raise InvalidRequest(f"'usage.{f}' must be an integer from 0 to {MAX_TOKENS}.", param=f"usage.{f}")
        values.append(v)
    return Usage(*values)


def _cost_usd(raw: Any) -> Cost:
    try:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(raw)
        nanos, over = event_cost_nanos(raw)
        if over:
            raise ValueError(raw)  # a client's own figure is refused; only a provider's is clamped and kept
    except ValueError:
        raise InvalidRequest(
            f"'cost_usd' must be a decimal from 0 to {MAX_EVENT_COST_USD} dollars, such as \"0.0125\".",
            param="cost_usd",
        ) from None
    return Cost(nanos, CostSource.REPORTED)


def _usd(raw: Any, param: str) -> int:
    """Dollars (a decimal string or a number, 0 to the event bound) → nano-dollars, else a 400 naming `param`:
    what `cost_usd` takes, so one amount reads the same in either field."""
    try:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(raw)
        nanos, over = event_cost_nanos(raw)
        if over:
            raise ValueError(raw)
    except ValueError:
        raise InvalidRequest(
            f"'{param}' must be a decimal from 0 to {MAX_EVENT_COST_USD} dollars, such as \"0.0125\".", param=param
        ) from None
    return nanos


def _payment(raw: Any, i: int) -> Payment:
    """A payment step's `payment` object → Payment; each error names its field (`payment.amount_usd`)."""
    if raw is None:
        raise InvalidRequest(f"steps[{i}].payment is required on a step of kind 'payment'.", param="payment")
    if raw.__class__ is not dict:
        raise InvalidRequest("'payment' must be an object.", param="payment")
    value = raw.get("direction")
    direction = _DIRECTIONS.get(value) if value.__class__ is str else None
    if direction is None:
        raise InvalidRequest("'payment.direction' must be 'inbound' or 'outbound'.", param="payment.direction")
    value = raw.get("status")
    status = _PAYMENT_STATUSES.get(value) if value.__class__ is str else None
    if status is None:
        raise InvalidRequest(f"'payment.status' must be one of {', '.join(_PAYMENT_STATUSES)}.", param="payment.status")
    value = raw.get("amount_usd")
    if value is None:
        raise InvalidRequest("'payment.amount_usd' is required.", param="payment.amount_usd")
    amount = _usd(value, "payment.amount_usd")
    value = raw.get("fee_usd")
    fee = 0 if value is None else _usd(value, "payment.fee_usd")
    value = raw.get("protocol")
    protocol = PaymentProtocol.MANUAL if value is None else _PROTOCOLS.get(value) if value.__class__ is str else None
    if protocol is None:
        raise InvalidRequest(f"'payment.protocol' must be one of {', '.join(_PROTOCOLS)}.", param="payment.protocol")
    value = raw.get("asset_amount")
    if value is not None and (value.__class__ is not str or not _ATOMIC.fullmatch(value)):
        raise InvalidRequest(
            f"'payment.asset_amount' must be the amount in the asset's atomic units: a string of 1 to "
            f"{MAX_ASSET_DIGITS} digits.",
            param="payment.asset_amount",
        )
    payment = Payment(
        direction=direction,
        status=status,
        amount_nanos=amount,
        protocol=protocol,
        fee_nanos=fee,
        asset_amount=value,
        network=_optional_label(raw, "network", MAX_NETWORK_LEN),
        asset=_optional_label(raw, "asset", MAX_PAYMENT_LABEL_LEN),
        counterparty=_optional_label(raw, "counterparty", MAX_PAYMENT_LABEL_LEN),
        reference=_optional_label(raw, "reference", MAX_PAYMENT_LABEL_LEN),
        endpoint_id=None if raw.get("endpoint_id") is None else ident(raw["endpoint_id"], "payment.endpoint_id"),
    )
    if not within_bounds(payment):
        raise InvalidRequest(
            f"'payment.fee_usd': the amount and the fee together must be at most {MAX_EVENT_COST_USD} dollars "
            "(what one step may cost).",
            param="payment.fee_usd",
        )
    return payment


def _optional_label(raw: dict[str, Any], key: str, limit: int) -> str | None:
    value = raw.get(key)
    return None if value is None else label(value, f"payment.{key}", limit)


def _attributes(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if raw.__class__ is not dict:
        raise InvalidRequest("'attributes' must be an object.", param="attributes")
    storable(raw, "attributes")
    return raw


def refuse_parent_cycles(steps: list[StepRecord]) -> None:
    """A step that is its own ancestor through parents of this batch (itself, or a → b → a) is a 400 naming
    the first such step. Earlier batches cannot close a cycle: their steps' parents are already fixed (a
    resent step is ignored), so this batch's parent links are the only new ones. Linear: each step is walked
    once, so a 1000-step chain costs 1000 steps, not a million."""
    index = {s.step_id: i for i, s in enumerate(steps)}
    parent = {s.step_id: s.parent_id for s in steps if s.parent_id in index}
    acyclic: set[str] = set()
    for step in steps:
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = step.step_id
        while node is not None and node not in acyclic and node not in on_path:
            path.append(node)
            on_path.add(node)
            node = parent.get(node)
        if node is not None and node in on_path:
            cycle = path[path.index(node) :]
            first = min(cycle, key=index.__getitem__)
            loop = " → ".join([*cycle, node])
            raise InvalidRequest(
                f"Step {first!r} would be its own ancestor (parent_id cycle {loop}).",
                param=f"steps[{index[first]}].parent_id",
            )
        acyclic.update(path)
