"""Run controls: `POST /api/runs/{run_id}/cancel`, `/pause` and `/resume` (admin or owner token).

A cancel refuses every later call of the run (403 `run_cancelled`), ends its open streams and ends the run as
`cancelled`; a pause holds the run's calls (gateway/run_controls.py) until a resume lets them through. A cancelled
run stays cancelled: pausing or resuming it is a 409. Each change reaches every replica at once (broadcast).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth, describe, path_id
from agentledger.audit.changes import Change
from agentledger.core.errors import NotFound
from agentledger.core.fields import text_field
from agentledger.core.model import AdminPrincipal
from agentledger.gateway.bodies import parse_json_object
from agentledger.gateway.flow import Gateway
from agentledger.gateway.responses import JSONResponse
from agentledger.gateway.run_controls import CANCELLED, PAUSED, RUNNING, RunControl
from agentledger.store.base import Store

MAX_REASON = 1024  # store/schema.py run_controls.reason
ACTIONS = {CANCELLED: "run.cancel", PAUSED: "run.pause", RUNNING: "run.resume"}


def _reason(body: bytes) -> str | None:
    """The optional `{"reason": "..."}`; no body at all is no reason."""
    if not body.strip():
        return None
    reason: Any = parse_json_object(body).get("reason")
    return None if reason is None else text_field(reason, "reason", limit=MAX_REASON)


def run_control_routes(auth: AdminAuth, store: Store, gateway: Gateway) -> list[Route]:
    async def change(request: Request, admin: AdminPrincipal, state: str) -> Response:
        ws = admin.workspace_id
        run_id = path_id(request, "run_id", "Run")
        reason = _reason(await request.body())
        await gateway.pipeline.flush()  # a run named by a call just answered is in the store
        if await store.run_identity(ws, run_id) is None:
            raise NotFound(f"Run {run_id!r} does not exist.", param="run_id")
        now = gateway.clock()
        ended = f"cancelled by {admin.token_id}" + (f": {reason}" if reason else "")
        prior = await store.governance.run_control(ws, run_id)
        await gateway.control_run(ws, run_id, state, reason, admin.token_id, ended)  # 409: cancelled
        row = await store.governance.run_control(ws, run_id)
        control = RunControl.of(row) if row is not None else RunControl(state, reason, admin.token_id, now)
        before = None if prior is None else RunControl.of(prior).view()
        describe(request, Change(ACTIONS[state], "run", run_id, before=before, after=control.view()))
        return JSONResponse({"run_id": run_id, **control.view()})

    async def cancel(request: Request, admin: AdminPrincipal) -> Response:
        return await change(request, admin, CANCELLED)

    async def pause(request: Request, admin: AdminPrincipal) -> Response:
        return await change(request, admin, PAUSED)

    async def resume(request: Request, admin: AdminPrincipal) -> Response:
        return await change(request, admin, RUNNING)

    g = auth.guard
    return [
        Route("/api/runs/{run_id}/cancel", g(cancel, write=True, audit=["run.cancel"]), methods=["POST"]),
        Route("/api/runs/{run_id}/pause", g(pause, write=True, audit=["run.pause"]), methods=["POST"]),
        Route("/api/runs/{run_id}/resume", g(resume, write=True, audit=["run.resume"]), methods=["POST"]),
    ]


def controlled(run: dict[str, Any], row: dict[str, Any] | None) -> dict[str, Any]:
    """A run as GET /api/runs/{id} shows it: its `control` (null: never controlled), and while cancelled or
    paused that as its status (a run cancelled here may still be ended otherwise by its agent)."""
    control = RunControl.of(row) if row is not None else None
    run["control"] = control.view() if control is not None else None
    if control is not None and control.state in (CANCELLED, PAUSED):
        run["status"] = control.state
    return run
