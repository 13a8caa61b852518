"""Shape stored rows for reading: step trees and totals. Pure functions over plain rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from agentledger.core.money import format_usd

TOKEN_FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


def step_tree(steps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Nest steps under their parents, keeping each level in the order given (start time, then arrival).

    A step whose parent is not in the run is kept at the top level rather than dropped.
    """
    nodes: dict[str, dict[str, Any]] = {}
    order: list[dict[str, Any]] = []
    for s in steps:
        node = {**s, "children": []}
        node.pop("seq", None)
        node["cost_usd"] = format_usd(int(node.get("cost_nanos") or 0))
        nodes[node["id"]] = node
        order.append(node)
    roots: list[dict[str, Any]] = []
    for node in order:
        parent = nodes.get(node["parent_id"]) if node.get("parent_id") else None
        (parent["children"] if parent is not None and parent is not node else roots).append(node)
    return roots


def totals(row: Mapping[str, Any]) -> dict[str, Any]:
    """The totals block of a run (or any aggregate row) with money as exact strings."""
    cost = int(row.get("cost_nanos") or 0)
    out: dict[str, Any] = {"cost_nanos": cost, "cost_usd": format_usd(cost)}
    for f in TOKEN_FIELDS:
        out[f] = int(row.get(f) or 0)
    out["total_tokens"] = out["input_tokens"] + out["output_tokens"]
    for f in ("steps", "model_calls", "errors", "retries", "requests", "events"):
        if f in row:
            out[f] = int(row[f] or 0)
    if "model_latency_ms" in row:
        out["model_latency_ms"] = round(float(row["model_latency_ms"] or 0.0), 3)
    return out


def duration_ms(started: datetime | None, ended: datetime | None) -> float | None:
    if started is None or ended is None:
        return None
    return round((ended - started).total_seconds() * 1000, 3)
