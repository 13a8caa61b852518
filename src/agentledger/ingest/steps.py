"""The run/step API: agents record tool calls, external API calls and workflow steps of a run.

    POST /v1/runs                      start a run (idempotent: an existing run id is returned as is)
    POST /v1/runs/{run_id}/steps       one step object, an array, or {"steps": [...], "run"?: {...}}; nested by
                                       parent_id; the first batch of a run creates it (no POST /v1/runs needed)
    POST /v1/runs/{run_id}/end         {"status": "succeeded"|"failed"|"cancelled", "error"?, "output"?}

Both run-creating routes take the tracking headers the chat route takes (core.headers), parsed by the same
code; a batch's `run` member and the headers describe the run, and its steps carry the headers' properties
and session path. Writes are awaited through the pipeline, so a 2xx means the steps are durable and readable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.core.errors import AgentLedgerError, InvalidHeader, InvalidRequest, NotFound
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.headers import (
    AGENT_ID,
    OMIT_RESPONSE,
    RUN_ID,
    TrackingContext,
    normalize_path,
    parse_flag,
    parse_tracking,
)
from agentledger.core.ids import new_id
from agentledger.core.model import Attribution, Principal, RunEnd, RunStart, RunStatus, StepRecord, TraceEvent
from agentledger.gateway.bodies import parse_json, storable_json
from agentledger.gateway.flow import Gateway
from agentledger.gateway.responses import JSONResponse, error_response
from agentledger.gateway.spend import SpendDesk
from agentledger.ingest.runs import (
    KnownRuns,
    RunFields,
    RunIdentity,
    check_same_run,
    merge_tracking,
    named_params,
    parse_run_fields,
    parse_run_member,
)
from agentledger.ingest.step_parse import BatchParser, refuse_parent_cycles

MAX_BATCH = 1000


def _obj(data: Any, what: str = "The request body") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object.")
    return data


def _run_id(request: Request) -> str:
    """The path's run id, checked before any lookup (PostgreSQL refuses NUL in a query: that was a 500).
    A 400 rather than a 404: the step API creates the run it names, so a malformed id is the client's error
    in the id, on `end` as on `steps`."""
    return id_field(request.path_params["run_id"], "run_id")


@dataclass(frozen=True, slots=True)
class _Batch:
    """A step batch, its body and headers checked, before its run is looked up."""

    principal: Principal
    run_id: str
    items: list[Any]
    run: RunFields  # the `run` member (empty when absent)
    tracking: TrackingContext  # headers and `run` member together
    named: dict[str, str]  # run fields the batch names → the param naming each (see runs.named_params)
    attribution: Attribution  # for a run this batch creates
    omit: tuple[bool, bool] = (False, False)  # alephant-omit-request / -response: inputs / outputs not stored


class StepIngest:
    def __init__(self, gateway: Gateway, desk: SpendDesk | None = None) -> None:
        self.gateway = gateway
        self.desk = desk  # charges steps that report a cost to their budgets (gateway/budgets.py)
        self.runs = KnownRuns()

    async def _attribute(self, principal: Principal, tracking: TrackingContext, named: dict[str, str]) -> Attribution:
        """The gateway's own check of the agent (it exists; a key bound to an agent may not claim another),
        with the error naming where the agent came from: the header, or the body's field."""
        try:
            return await self.gateway.attribute(principal, tracking)
        except AgentLedgerError as exc:
            if exc.param == AGENT_ID and "agent_id" in named:
                exc.param = named["agent_id"]
            raise

    async def _lookup(self, workspace_id: str, run_id: str) -> RunIdentity | None:
        """The stored run, once a RunStart of it that this node has queued is written (a gateway call may have
        just created the run), and remembered, so this is asked once a run. Other queued events are not waited
        for: under load the queue is never empty, and a new run's first batch would wait for all of it."""
        if self.gateway.pipeline.pending_run(workspace_id, run_id):
            await self.gateway.pipeline.flush()
        row = await self.gateway.store.run_identity(workspace_id, run_id)
        if row is None:
            return None
        run = RunIdentity.of_row(row)
        self.runs.remember(workspace_id, run_id, run)
        return run

    async def start_run(self, request: Request) -> Response:
        try:
            principal = await self.gateway.authenticate(request.headers)
            data = _obj(parse_json(await request.body()))
            headers = parse_tracking(request.headers.raw)
            run_id = _start_run_id(data, headers)
            fields = parse_run_fields(data)
            tracking = _with_session_path(merge_tracking(headers, fields, run_id), data)
            attribution = await self._attribute(principal, tracking, named_params(headers, fields))
            start = RunStart(
                run_id=run_id,
                attribution=attribution,
                started_at=fields.started_at or self.gateway.clock(),
                workflow=fields.workflow,
                name=fields.name,
                metadata=fields.metadata,
            )
            created = await self._start(start)
        except AgentLedgerError as exc:
            return error_response(exc)
        return JSONResponse({"run_id": run_id, "created": created}, status_code=201 if created else 200)

    async def _start(self, start: RunStart) -> bool:
        """Create the run unless it exists; True if this call created it. A known run costs no store call; an
        unknown one a lookup, under this node's claim on the run id (runs.KnownRuns)."""
        ws, run_id = start.attribution.workspace_id, start.run_id
        async with self.runs.claim(ws, run_id) as known:
            if known is not None or await self._lookup(ws, run_id) is not None:
                return False
            await self.gateway.pipeline.submit([start])
            self.runs.remember(ws, run_id, _identity(start))
            return True

    async def add_steps(self, request: Request) -> Response:
        try:
            batch = await self._batch(request)
            ws, run_id = batch.principal.workspace_id, batch.run_id
            run = self.runs.get(ws, run_id)
            if run is not None:
                steps = await self._append(batch, run)
            else:
                async with self.runs.claim(ws, run_id) as known:
                    run = known or await self._lookup(ws, run_id)
                    steps = await (self._append(batch, run) if run is not None else self._create(batch))
        except AgentLedgerError as exc:
            return error_response(exc)
        return JSONResponse({"run_id": run_id, "step_ids": [s.step_id for s in steps]}, status_code=201)

    async def _batch(self, request: Request) -> _Batch:
        principal = await self.gateway.authenticate(request.headers)
        run_id = _run_id(request)
        headers = parse_tracking(request.headers.raw)
        if headers.run_id is not None and headers.run_id != run_id:
            raise InvalidHeader(
                f"Header {RUN_ID!r} is {headers.run_id!r} but the path names run {run_id!r}; they must be the same.",
                param=RUN_ID,
            )
        items, run = _items(parse_json(await request.body()))
        tracking = merge_tracking(headers, run, run_id)
        named = named_params(headers, run)
        attribution = await self._attribute(principal, tracking, named)
        omit = (headers.omit_request, headers.omit_response)
        return _Batch(principal, run_id, items, run, tracking, named, attribution, omit)

    async def _append(self, batch: _Batch, run: RunIdentity) -> list[StepRecord]:
        """Steps for a run that exists: filed under its department, agent and session, whatever the key's."""
        t = batch.tracking
        check_same_run(
            batch.run_id,
            run,
            batch.named,
            {"agent_id": t.agent_id, "session_id": t.session_id, "workflow": batch.run.workflow},
        )
        attribution = Attribution(
            workspace_id=batch.principal.workspace_id,
            department_id=run.department_id,
            virtual_key_id=batch.principal.virtual_key_id,
            agent_id=run.agent_id,
            run_id=batch.run_id,
            session_id=run.session_id,
            session_path=t.session_path,
            session_name=t.session_name,
            prompt_id=t.prompt_id,
            prompt_version=t.prompt_version,
            properties=t.properties,
        )
        steps = await self._parse(batch, attribution)
        await self.gateway.pipeline.submit([*steps, *await self._charges(batch, steps, run.workflow)])
        return steps

    async def _create(self, batch: _Batch) -> list[StepRecord]:
        """The run's first batch: the run is written with its steps, in the same transaction."""
        steps = await self._parse(batch, batch.attribution)
        start = RunStart(
            run_id=batch.run_id,
            attribution=batch.attribution,
            started_at=batch.run.started_at or min(s.started_at for s in steps),
            workflow=batch.run.workflow,
            name=batch.run.name,
            metadata=batch.run.metadata,
        )
        await self.gateway.pipeline.submit([start, *steps, *await self._charges(batch, steps, batch.run.workflow)])
        self.runs.remember(batch.principal.workspace_id, batch.run_id, _identity(start))
        return steps

    async def _charges(self, batch: _Batch, steps: list[StepRecord], workflow: str | None) -> list[TraceEvent]:
        """Ledger entries for the batch's steps that cost something (or settle a spend authorization); they
        are written in the steps' transaction."""
        if self.desk is None:
            return []
        # A payment step's cost is its payment's (core.finance): an outbound payment's amount and fee are charged
        # like any cost, and a refund of one (a negative cost) gives them back. A refund settles no authorization.
        reservations = {
            step.step_id: item["reservation_id"]
            for step, item in zip(steps, batch.items, strict=True)
            if isinstance(item, dict) and isinstance(item.get("reservation_id"), str) and step.cost_nanos >= 0
        }
        if not reservations and not any(s.cost_nanos for s in steps):
            return []
        return await self.desk.charge_steps(steps, workflow, reservations)

    async def _parse(self, batch: _Batch, attribution: Attribution) -> list[StepRecord]:
        ws = batch.principal.workspace_id
        prices = await self.gateway.prices_for(ws)
        steps = BatchParser(batch.run_id, attribution, prices, self.gateway.clock()).parse(batch.items)
        await self._check_parents(ws, steps)
        return _omitted(steps, *batch.omit) if any(batch.omit) else steps

    async def _check_parents(self, workspace_id: str, steps: list[StepRecord]) -> None:
        ids = {s.step_id for s in steps}
        if len(ids) != len(steps):
            raise InvalidRequest("Step ids must be unique within a batch.", param="steps")
        refuse_parent_cycles(steps)
        missing = {s.parent_id for s in steps if s.parent_id is not None and s.parent_id not in ids}
        if missing:
            found = await self.gateway.store.step_exists(workspace_id, sorted(missing))
            if missing - found:  # maybe acknowledged but not written yet (the journal, batched mode): read again
                await self.gateway.pipeline.flush()
                found = await self.gateway.store.step_exists(workspace_id, sorted(missing))
            unknown = sorted(missing - found)
            if unknown:
                raise InvalidRequest(f"Unknown parent step(s): {', '.join(unknown)}.", param="parent_id")

    async def end_run(self, request: Request) -> Response:
        try:
            principal = await self.gateway.authenticate(request.headers)
            ws, run_id = principal.workspace_id, _run_id(request)
            data = _obj(parse_json(await request.body()))
            try:
                status = RunStatus(data.get("status", "succeeded"))
            except ValueError:
                raise InvalidRequest("'status' must be 'succeeded', 'failed' or 'cancelled'.", param="status") from None
            if status is RunStatus.RUNNING:
                raise InvalidRequest("'status' must be 'succeeded', 'failed' or 'cancelled'.", param="status")
            if self.runs.get(ws, run_id) is None and await self._lookup(ws, run_id) is None:
                raise NotFound(f"Run {run_id!r} does not exist.", param="run_id")
            # The run's output is its response: checked as always, then left out if the client asks.
            omitted = OMIT_RESPONSE in request.headers and parse_flag(OMIT_RESPONSE, request.headers[OMIT_RESPONSE])
            raw = data.get("ended_at")
            ended_at = self.gateway.clock() if raw is None else time_field(raw, "ended_at")
            error = data.get("error")
            await self.gateway.pipeline.submit(
                [
                    RunEnd(
                        ws,
                        run_id,
                        status,
                        ended_at,
                        None if error is None else text_field(error, "error", limit=10_000),
                        _unless(omitted, storable_json(data.get("output"), "output")),
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


def _items(data: Any) -> tuple[list[Any], RunFields]:
    """A batch body → its steps and its `run` member: one step object, an array, or the wrapper form."""
    if isinstance(data, dict) and "steps" in data:
        items = data["steps"]
        if not isinstance(items, list):  # else the wrapper's object would be taken for one step
            raise InvalidRequest("'steps' must be an array of step objects.", param="steps")
    elif isinstance(data, dict) and "run" in data:
        # A step has no `run` field: this is a wrapper without its steps, and its run must not be dropped.
        raise InvalidRequest("'run' is read only beside 'steps': send {\"steps\": [...], \"run\": {...}}.", param="run")
    else:
        items = data if isinstance(data, list) else [data]
    if not items or len(items) > MAX_BATCH:
        raise InvalidRequest(f"Send between 1 and {MAX_BATCH} steps.", param="steps")
    raw = data.get("run") if isinstance(data, dict) else None
    return items, RunFields(prefix="run.") if raw is None else parse_run_member(raw)


def _start_run_id(data: dict[str, Any], headers: TrackingContext) -> str:
    """POST /v1/runs: the body's `run_id`, else the `Alephant-Run-Id` header, else a new id; both given must agree."""
    raw = data.get("run_id")
    run_id = None if raw is None else id_field(raw, "run_id")
    if run_id is not None and headers.run_id is not None and run_id != headers.run_id:
        raise InvalidRequest(
            f"'run_id' is {run_id!r} but header {RUN_ID!r} is {headers.run_id!r}; send one, or the same in both.",
            param="run_id",
        )
    return run_id or headers.run_id or new_id("run")


def _with_session_path(tracking: TrackingContext, data: dict[str, Any]) -> TrackingContext:
    """POST /v1/runs still takes a `session_path` (checked as it always was; a run itself has no path)."""
    raw = data.get("session_path")
    if raw is None:
        return tracking
    path = normalize_path("session_path", text_field(raw, "session_path", limit=1024))
    return dataclasses.replace(tracking, session_path=path)


def _omitted(steps: list[StepRecord], request: bool, response: bool) -> list[StepRecord]:
    """The steps without what the client asked not to store (checked first, like every field: a bad input is still a
    400), metered and traced as sent."""
    return [
        dataclasses.replace(s, input=None if request else s.input, output=None if response else s.output) for s in steps
    ]


def _unless(omitted: bool, value: Any) -> Any:
    return None if omitted else value


def _identity(start: RunStart) -> RunIdentity:
    a = start.attribution
    return RunIdentity(a.department_id, a.agent_id, a.session_id, start.workflow)
