"""Runs as the step API sees them: the fields that describe a run, where they may come from, and this node's
memory of the runs it knows.

A run's identity (department, agent, session, workflow) is written once, by whichever sighting comes first
(`POST /v1/runs`, a step batch, a gateway call carrying its `Alephant-Run-Id`), and never changed after
(the store inserts runs with ON CONFLICT DO NOTHING and deletes none). So once this node has seen a run it
can answer from memory; a run it has not seen is looked up in the store once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentledger.core.errors import InvalidRequest, RunConflict
from agentledger.core.fields import id_field, text_field, time_field
from agentledger.core.headers import AGENT_ID, MAX_NAME_LEN, SESSION_ID, SESSION_NAME, TrackingContext
from agentledger.gateway.bodies import storable_json

# The members a step batch's `run` object may carry: those of POST /v1/runs that describe a run. `run_id` is
# the path's, and `session_path` belongs to steps, not runs.
RUN_MEMBERS = ("agent_id", "session_id", "session_name", "workflow", "name", "metadata", "started_at")


@dataclass(frozen=True, slots=True)
class RunFields:
    """What a client may say about a run, validated. `prefix` locates the fields in errors: '' or 'run.'."""

    agent_id: str | None = None
    session_id: str | None = None
    session_name: str | None = None
    workflow: str | None = None
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """The part of a stored run that later sightings must agree with (and that its steps are filed under)."""

    department_id: str | None
    agent_id: str | None
    session_id: str | None
    workflow: str | None

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> RunIdentity:
        return cls(row["department_id"], row["agent_id"], row["session_id"], row["workflow"])


def parse_run_fields(data: dict[str, Any], prefix: str = "") -> RunFields:
    """The run fields of `data`, each checked as POST /v1/runs checks it; errors name `prefix` + the field."""

    def label(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else text_field(value, prefix + key, limit=MAX_NAME_LEN)

    def ident(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else id_field(value, prefix + key)

    started = data.get("started_at")
    return RunFields(
        agent_id=ident("agent_id"),
        session_id=ident("session_id"),
        session_name=label("session_name"),
        workflow=label("workflow"),
        name=label("name"),
        metadata=_metadata(data.get("metadata"), prefix + "metadata"),
        started_at=None if started is None else time_field(started, prefix + "started_at"),
        prefix=prefix,
    )


def parse_run_member(value: Any) -> RunFields:
    """A step batch's `run` object. Unknown members are refused, not ignored: a misspelt `workflw` would
    otherwise file the run under no workflow, and nothing in a ledger should be dropped silently."""
    if not isinstance(value, dict):
        raise InvalidRequest("'run' must be an object.", param="run")
    unknown = sorted(k for k in value if k not in RUN_MEMBERS)
    if unknown:
        raise InvalidRequest(
            f"'run.{unknown[0]}' is not a run field; a run takes {', '.join(RUN_MEMBERS)}.", param=f"run.{unknown[0]}"
        )
    return parse_run_fields(value, "run.")


def _metadata(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    storable_json(value, param)
    return value


def merge_tracking(headers: TrackingContext, body: RunFields, run_id: str) -> TrackingContext:
    """The batch's tracking context: the headers', with the body's agent and session. A value given both ways
    must be the same: the ledger cannot pick one of two agents, so that is a 400 naming the body's field."""
    p = body.prefix
    return TrackingContext(
        request_id=headers.request_id,
        agent_id=_agree(headers.agent_id, body.agent_id, AGENT_ID, p + "agent_id"),
        run_id=run_id,
        session_id=_agree(headers.session_id, body.session_id, SESSION_ID, p + "session_id"),
        session_path=headers.session_path,
        session_name=_agree(headers.session_name, body.session_name, SESSION_NAME, p + "session_name"),
        prompt_id=headers.prompt_id,
        prompt_version=headers.prompt_version,
        properties=headers.properties,
    )


def _agree(from_header: str | None, from_body: str | None, header: str, param: str) -> str | None:
    if from_header is not None and from_body is not None and from_header != from_body:
        raise InvalidRequest(
            f"'{param}' is {from_body!r} but header {header!r} is {from_header!r}; send one, or the same in both.",
            param=param,
        )
    return from_body if from_body is not None else from_header


def named_params(headers: TrackingContext, body: RunFields) -> dict[str, str]:
    """The run fields a batch names, each with where it came from: the body's field if given there, else the
    header. An error about the value names that, so the client sees which of its inputs is at fault."""
    named = {}
    for key, header in (("agent_id", AGENT_ID), ("session_id", SESSION_ID)):
        if getattr(body, key) is not None:
            named[key] = body.prefix + key
        elif getattr(headers, key) is not None:
            named[key] = header
    if body.workflow is not None:
        named["workflow"] = body.prefix + "workflow"
    return named


_WHAT = {"agent_id": "agent", "session_id": "session", "workflow": "workflow"}


def check_same_run(run_id: str, run: RunIdentity, named: dict[str, str], wanted: dict[str, str | None]) -> None:
    """A batch for an existing run may repeat its agent, session and workflow, or leave them out; naming
    others is a 409 naming the field. The run keeps what it has either way, so accepting such a batch would
    file its steps under an agent (or session) other than the one its sender named."""
    for key, param in named.items():
        held = getattr(run, key)
        if wanted[key] != held:
            has = f"{_WHAT[key]} {held!r}" if held is not None else f"no {_WHAT[key]}"
            raise RunConflict(f"Run {run_id!r} has {has}; this batch names {_WHAT[key]} {wanted[key]!r}.", param=param)


class KnownRuns:
    """This node's memory of runs: the identity of each run known to exist (bounded, least recently used out),
    and at most one creation in flight per run.

    Why the in-flight claim: two calls that both look a new run up and both find nothing would both create it
    and both answer `created: true` (the store keeps the first row and ignores the second). The claim is taken
    before any await, so on this node the second waits for the first and then finds the run known.

    Across nodes sharing PostgreSQL nothing serializes creation: two nodes starting one new id within a few
    milliseconds may both answer `created: true`, and the one whose row lost remembers its own identity rather
    than the stored one (the store's insert does not say which row won; a `RETURNING` there would).
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._known: OrderedDict[tuple[str, str], RunIdentity] = OrderedDict()
        self._creating: dict[tuple[str, str], asyncio.Future[None]] = {}

    def get(self, workspace_id: str, run_id: str) -> RunIdentity | None:
        key = (workspace_id, run_id)
        run = self._known.get(key)
        if run is not None:
            self._known.move_to_end(key)
        return run

    def remember(self, workspace_id: str, run_id: str, run: RunIdentity) -> None:
        self._known[(workspace_id, run_id)] = run
        self._known.move_to_end((workspace_id, run_id))
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)

    @asynccontextmanager
    async def claim(self, workspace_id: str, run_id: str) -> AsyncIterator[RunIdentity | None]:
        """Yields the run's identity if it is known; else holds this run's claim until the block ends, during
        which the holder looks the run up and creates it if need be (and `remember`s it). A holder that fails
        leaves the run unknown, and the next waiter takes the claim."""
        key = (workspace_id, run_id)
        while (pending := self._creating.get(key)) is not None:
            await asyncio.shield(pending)
        known = self.get(workspace_id, run_id)
        if known is not None:
            yield known
            return
        done = self._creating[key] = asyncio.get_running_loop().create_future()
        try:
            yield None
        finally:
            del self._creating[key]
            done.set_result(None)
