"""The run/step API: agents record tool calls, external API calls and workflow steps of a run.

    POST /v1/runs                      start a run (idempotent: an existing run id is returned as is)
    POST /v1/runs/{run_id}/steps       one step object, an array, or {"steps": [...]}; nested by parent_id
    POST /v1/runs/{run_id}/end         {"status": "succeeded"|"failed"|"cancelled", "error"?, "output"?}

Writes are awaited through the pipeline, so a 2xx means the steps are durable and readable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.core.bounds import MAX_ATTEMPT, MAX_EVENT_COST_USD, MAX_LATENCY_MS, MAX_TOKENS
from agentledger.core.errors import AgentLedgerError, InvalidRequest, NotFound
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.headers import AGENT_ID, MAX_NAME_LEN, TrackingContext, normalize_path
from agentledger.core.ids import new_id
from agentledger.core.model import Attribution, RunEnd, RunStart, RunStatus, StepKind, StepRecord, StepStatus
from agentledger.core.money import event_cost_nanos
from agentledger.core.pricing import Cost, CostSource, bounded
from agentledger.core.usage import Usage
from agentledger.gateway.bodies import parse_json, storable_json
from agentledger.gateway.flow import Gateway
from agentledger.gateway.responses import JSONResponse, error_response
from agentledger.prices.catalog import price_usage

MAX_BATCH = 1000
_USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


def _obj(data: Any, what: str = "The request body") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object.")
    return data


def _str(data: dict[str, Any], key: str, *, limit: int = MAX_NAME_LEN, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"'{key}' is required.", param=key)
        return None
    return text_field(value, key, limit=limit)


def _ident(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else id_field(value, key)


def _run_id(request: Request) -> str:
    """The path's run id, checked before any lookup (PostgreSQL refuses NUL in a query: that was a 500).
    A 400 rather than a 404: the step API creates the run it names, so a malformed id is the client's error
    in the id, on `end` as on `steps`."""
    return id_field(request.path_params["run_id"], "run_id")


def _time(data: dict[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    return None if value is None else time_field(value, key)


def _dict(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{key}' must be an object.", param=key)
    storable_json(value, key)
    return value


def _usage(data: dict[str, Any], param: str) -> Usage | None:
    raw = data.get("usage")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest("'usage' must be an object.", param=f"{param}.usage")
    values = {}
    for f in _USAGE_FIELDS:
        v = raw.get(f, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_TOKENS:
            raise InvalidRequest(f"'usage.{f}' must be an integer from 0 to {MAX_TOKENS}.", param=f"{param}.usage.{f}")
        values[f] = v
    return Usage(**values)


def _cost_usd(data: dict[str, Any], param: str) -> Cost | None:
    raw = data.get("cost_usd")
    if raw is None:
        return None
    try:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(raw)
        nanos, over = event_cost_nanos(raw)
        if over:
            raise ValueError(raw)  # a client's own figure is refused; only a provider's is clamped and kept
    except ValueError:
        raise InvalidRequest(
            f"'cost_usd' must be a decimal from 0 to {MAX_EVENT_COST_USD} dollars, such as \"0.0125\".", param=param
        ) from None
    return Cost(nanos, CostSource.REPORTED)


class StepIngest:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _auth(self, request: Request) -> tuple[Attribution, Any]:
        principal = await self.gateway.authenticate(request.headers)
        base = Attribution(
            workspace_id=principal.workspace_id,
            department_id=principal.department_id,
            virtual_key_id=principal.virtual_key_id,
            agent_id=principal.agent_id,
        )
        return base, principal

    async def start_run(self, request: Request) -> Response:
        try:
            base, principal = await self._auth(request)
            data = _obj(parse_json(await request.body()))
            run_id = _ident(data, "run_id") or new_id("run")
            agent_id = _ident(data, "agent_id")
            try:
                attribution = await self.gateway.attribute(principal, _tracking(data, agent_id, run_id))
            except AgentLedgerError as exc:
                if exc.param == AGENT_ID:  # the agent came from the body's field, not the header it stands for
                    exc.param = "agent_id"
                raise
            start = RunStart(
                run_id=run_id,
                attribution=attribution,
                started_at=_time(data, "started_at") or self.gateway.clock(),
                workflow=_str(data, "workflow"),
                name=_str(data, "name"),
                metadata=_dict(data, "metadata"),
            )
            await self.gateway.pipeline.flush()
            existing = await self.gateway.store.get_run(base.workspace_id, run_id)
            if existing is None:
                await self.gateway.pipeline.submit([start])
        except AgentLedgerError as exc:
            return error_response(exc)
        return JSONResponse(
            {"run_id": run_id, "created": existing is None}, status_code=201 if existing is None else 200
        )

    async def add_steps(self, request: Request) -> Response:
        try:
            base, principal = await self._auth(request)
            run_id = _run_id(request)
            data = parse_json(await request.body())
            if isinstance(data, dict) and "steps" in data:
                items = data["steps"]
                if not isinstance(items, list):  # else the wrapper's object would be taken for one step
                    raise InvalidRequest("'steps' must be an array of step objects.", param="steps")
            else:
                items = data if isinstance(data, list) else [data]
            if not items or len(items) > MAX_BATCH:
                raise InvalidRequest(f"Send between 1 and {MAX_BATCH} steps.", param="steps")
            await self.gateway.pipeline.flush()
            run = await self.gateway.store.get_run(base.workspace_id, run_id)
            attribution = await self.gateway.attribute(principal, _tracking({}, None, run_id))
            if run is not None:
                attribution = Attribution(
                    workspace_id=base.workspace_id,
                    department_id=run["department_id"],
                    virtual_key_id=base.virtual_key_id,
                    agent_id=run["agent_id"],
                    run_id=run_id,
                    session_id=run["session_id"],
                )
            prices = await self.gateway.prices_for(base.workspace_id)
            steps = [self._step(item, i, run_id, attribution, prices) for i, item in enumerate(items)]
            await self._check_parents(base.workspace_id, steps)
            events: list[Any] = []
            if run is None:
                events.append(RunStart(run_id=run_id, attribution=attribution, started_at=steps[0].started_at))
            await self.gateway.pipeline.submit([*events, *steps])
        except AgentLedgerError as exc:
            return error_response(exc)
        return JSONResponse({"run_id": run_id, "step_ids": [s.step_id for s in steps]}, status_code=201)

    def _step(self, item: Any, i: int, run_id: str, attribution: Attribution, prices: dict[str, Any]) -> StepRecord:
        """steps[i] → StepRecord; every error's param locates the field, e.g. 'steps[3].started_at'."""
        p = f"steps[{i}]"
        try:
            return self._parse_step(_obj(item, p), i, run_id, attribution, prices)
        except InvalidRequest as exc:
            if exc.param is None or not exc.param.startswith(p):
                exc.param = f"{p}.{exc.param}" if exc.param else p
            raise

    def _parse_step(
        self, item: dict[str, Any], i: int, run_id: str, attribution: Attribution, prices: dict[str, Any]
    ) -> StepRecord:
        p = f"steps[{i}]"
        kind_raw = item.get("kind", "tool_call")
        try:
            kind = StepKind(kind_raw)
        except ValueError:
            choices = ", ".join(k.value for k in StepKind)
            raise InvalidRequest(f"{p}.kind must be one of {choices}.", param=f"{p}.kind") from None
        status_raw = item.get("status", "ok")
        if status_raw not in ("ok", "error"):
            raise InvalidRequest(f"{p}.status must be 'ok' or 'error'.", param=f"{p}.status")
        now = self.gateway.clock()
        started = _time(item, "started_at") or now
        ended = _time(item, "ended_at")
        latency = item.get("latency_ms")
        if latency is not None and (
            isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency <= MAX_LATENCY_MS
        ):
            raise InvalidRequest(
                f"{p}.latency_ms must be a number from 0 to {MAX_LATENCY_MS}.", param=f"{p}.latency_ms"
            )
        if latency is None and ended is not None:
            if ended < started:
                raise InvalidRequest(f"{p}.ended_at is before started_at.", param=f"{p}.ended_at")
            latency = (ended - started).total_seconds() * 1000
        attempt = item.get("attempt", 1)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPT:
            raise InvalidRequest(f"{p}.attempt must be an integer from 1 to {MAX_ATTEMPT}.", param=f"{p}.attempt")
        model = _str(item, "model")
        provider = _str(item, "provider", limit=64)
        usage = _usage(item, p)
        cost = _cost_usd(item, f"{p}.cost_usd")
        if cost is None and usage is not None and model is not None:
            cost = price_usage(usage, model, provider or "", started, prices)
            cost = bounded(cost) if cost is not None else None  # bounded usage × a dear price may pass $1M
        session_path = _str(item, "session_path", limit=1024)
        step_attr = attribution
        if session_path is not None:
            try:
                session_path = normalize_path("session_path", session_path)
            except AgentLedgerError as exc:
                raise InvalidRequest(exc.message, param=f"{p}.session_path") from None
            step_attr = Attribution(**{**_fields(attribution), "session_path": session_path})
        return StepRecord(
            step_id=_ident(item, "id") or new_id("step"),
            run_id=run_id,
            attribution=step_attr,
            kind=kind,
            name=_str(item, "name", required=True) or "",
            status=StepStatus(status_raw),
            started_at=started,
            ended_at=ended,
            latency_ms=float(latency) if latency is not None else None,
            parent_id=_ident(item, "parent_id"),
            model=model,
            provider=provider,
            usage=usage,
            cost_nanos=cost.nanos if cost else 0,
            cost_source=cost.source if cost else None,
            branch=_str(item, "branch"),
            attempt=attempt,
            error=_str(item, "error", limit=10_000),
            input=storable_json(item.get("input"), "input"),
            output=storable_json(item.get("output"), "output"),
            attributes=_dict(item, "attributes"),
        )

    async def _check_parents(self, workspace_id: str, steps: list[StepRecord]) -> None:
        ids = [s.step_id for s in steps]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("Step ids must be unique within a batch.", param="steps")
        _refuse_parent_cycles(steps)
        missing = {s.parent_id for s in steps if s.parent_id is not None and s.parent_id not in ids}
        if missing:
            found = await self.gateway.store.step_exists(workspace_id, sorted(missing))
            unknown = sorted(missing - found)
            if unknown:
                raise InvalidRequest(f"Unknown parent step(s): {', '.join(unknown)}.", param="parent_id")

    async def end_run(self, request: Request) -> Response:
        try:
            base, _ = await self._auth(request)
            run_id = _run_id(request)
            data = _obj(parse_json(await request.body()))
            try:
                status = RunStatus(data.get("status", "succeeded"))
            except ValueError:
                raise InvalidRequest("'status' must be 'succeeded', 'failed' or 'cancelled'.", param="status") from None
            if status is RunStatus.RUNNING:
                raise InvalidRequest("'status' must be 'succeeded', 'failed' or 'cancelled'.", param="status")
            await self.gateway.pipeline.flush()
            if await self.gateway.store.get_run(base.workspace_id, run_id) is None:
                raise NotFound(f"Run {run_id!r} does not exist.", param="run_id")
            ended_at = _time(data, "ended_at") or self.gateway.clock()
            await self.gateway.pipeline.submit(
                [
                    RunEnd(
                        base.workspace_id,
                        run_id,
                        status,
                        ended_at,
                        _str(data, "error", limit=10_000),
                        storable_json(data.get("output"), "output"),
                    )
                ]
            )
        except AgentLedgerError as exc:
            return error_response(exc)
        return JSONResponse({"run_id": run_id, "status": status.value, "ended_at": ended_at.isoformat()})

    def routes(self) -> list[Route]:
        return [
            Route("/v1/runs", self.start_run, methods=["POST"]),
            Route("/v1/runs/{run_id}/steps", self.add_steps, methods=["POST"]),
            Route("/v1/runs/{run_id}/end", self.end_run, methods=["POST"]),
        ]


def _refuse_parent_cycles(steps: list[StepRecord]) -> None:
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


def _fields(a: Attribution) -> dict[str, Any]:
    return {f: getattr(a, f) for f in a.__dataclass_fields__}


def _tracking(data: dict[str, Any], agent_id: str | None, run_id: str) -> TrackingContext:
    path = _str(data, "session_path", limit=1024)
    return TrackingContext(
        agent_id=agent_id,
        run_id=run_id,
        session_id=_ident(data, "session_id"),
        session_path=normalize_path("session_path", path) if path else None,
        session_name=_str(data, "session_name"),
    )
