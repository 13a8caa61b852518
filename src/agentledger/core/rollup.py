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
    linked: dict[str, str] = {}  # child id → parent id, for the links made so far
    for node in order:
        parent = nodes.get(node["parent_id"]) if node.get("parent_id") else None
        # A parent chain leading back to this step (a → b → a, sent in one batch) is cut here: else the
        # whole cycle would vanish from the tree and the nodes would reference each other.
        ancestor = parent["id"] if parent is not None else None
        while ancestor is not None and ancestor != node["id"]:
            ancestor = linked.get(ancestor)
        if parent is not None and ancestor is None:
            linked[node["id"]] = parent["id"]
            parent["children"].append(node)
        else:
            roots.append(node)
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


def path_tree(paths: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Session paths ('/plan/search' with its count and cost) → a tree whose nodes sum their subtree.

    Each node: {"segment", "path", "count", "cost_nanos", "cost_usd", "children"}; `count` and cost are
    the node's own events plus all below it, so the root of '/plan' shows what planning cost in all.
    Rows without a path are left out (they are the session's unrouted calls).
    """
    root: dict[str, Any] = {"children": {}}
    for row in paths:
        path = row.get("path")
        if not path:
            continue
        node = root
        walked = ""
        for segment in str(path).strip("/").split("/"):
            walked += "/" + segment
            node = node["children"].setdefault(
                segment, {"segment": segment, "path": walked, "count": 0, "cost_nanos": 0, "children": {}}
            )
            node["count"] += int(row.get("count") or 0)
            node["cost_nanos"] += int(row.get("cost_nanos") or 0)

    def finish(children: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for key in sorted(children):
            node = children[key]
            out.append({**node, "cost_usd": format_usd(node["cost_nanos"]), "children": finish(node["children"])})
        return out

    return finish(root["children"])
