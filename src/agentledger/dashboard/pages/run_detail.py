"""Run detail: the step tree as a waterfall to scale in time, each step's detail, totals, P&L, audit events,
and the run's controls (cancel, pause, resume) for those the guard lets write them."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson
from starlette.responses import RedirectResponse, Response

from agentledger.dashboard.web import Ctx, Page, PageError

CONTROLS = ("cancel", "pause", "resume")
TOKEN_KEYS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
JSON_FIELDS = ("attributes", "input", "output")  # shown as indented JSON in a step's detail


def _json(value: Any) -> str | None:
    """Indented, keys sorted, as the detail panel shows it (orjson: a tenth of Jinja's tojson per step)."""
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def _at(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def waterfall(steps: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float, list[dict[str, Any]]]:
    """The step tree with each step placed on the run's time axis: `left` and `width` in percent of the span
    from the first start to the last end (a step without an end is drawn as a sliver at its start); and the
    steps flattened in tree order (the detail panels), each with its attributes, input and output as JSON."""
    flat: list[dict[str, Any]] = []

    def walk(nodes: list[dict[str, Any]]) -> None:
        for n in nodes:
            flat.append(n)
            walk(n.get("children") or [])

    walk(steps)
    for n in flat:
        for key in JSON_FIELDS:
            n[f"{key}_json"] = _json(n.get(key))
    starts = [s for s in (_at(n.get("started_at")) for n in flat) if s is not None]
    ends = [e for e in (_at(n.get("ended_at")) or _at(n.get("started_at")) for n in flat) if e is not None]
    if not starts:
        return steps, 0.0, flat
    t0, t1 = min(starts), max(ends)
    span_ms = max((t1 - t0).total_seconds() * 1000, 1.0)
    for n in flat:
        start, end = _at(n.get("started_at")), _at(n.get("ended_at"))
        offset = 0.0 if start is None else (start - t0).total_seconds() * 1000
        dur = 0.0 if start is None or end is None else max((end - start).total_seconds() * 1000, 0.0)
        n["offset_ms"], n["duration_ms"] = offset, dur if end is not None else n.get("latency_ms")
        n["left"] = round(100 * offset / span_ms, 3)
        n["width"] = round(max(100 * dur / span_ms, 0.2), 3)
    return steps, span_ms, flat


async def run_detail(ctx: Ctx) -> Response:
    run_id = ctx.request.path_params["run_id"]
    run = await ctx.api("GET", f"/api/runs/{quote(run_id, safe='')}")
    steps, span_ms, flat = waterfall(run["steps"])
    can_control = ctx.can("POST", "/api/runs/{run_id}/cancel")
    return ctx.render(
        "run.html", run=run, steps=steps, flat=flat, span_ms=span_ms, can_control=can_control, token_keys=TOKEN_KEYS
    )


async def control(ctx: Ctx) -> Response:
    run_id = ctx.request.path_params["run_id"]
    form = await ctx.request.form()
    action = form.get("action")
    if action not in CONTROLS:
        raise PageError(400, "Unknown run control.")
    reason = str(form.get("reason") or "").strip() or None
    await ctx.api("POST", f"/api/runs/{quote(run_id, safe='')}/{action}", body={"reason": reason} if reason else {})
    return RedirectResponse(f"/runs/{quote(run_id, safe='')}", status_code=303)


PAGES = [
    Page("/runs/{run_id}", run_detail, api=("GET", "/api/runs/{run_id}")),
    Page("/runs/{run_id}/control", control, api=("POST", "/api/runs/{run_id}/cancel"), methods=("POST",)),
]
