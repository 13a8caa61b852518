"""Shape stored rows for reading: step trees and totals. Pure functions over plain rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from agentledger.core.finance import Pnl, payment_view
from agentledger.core.money import format_usd

TOKEN_FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


# Stored step columns a step document leaves out: the insertion order, and what a payment adds to the books.
_BOOK_COLUMNS = ("seq", "revenue_nanos", "refund_nanos", "fee_nanos", "payment_out_nanos")

# How many levels of steps a run document nests. orjson renders at most 254 levels of JSON; a step at tree
# level k sits at about 2k + 1 (the run, `steps`, then each ancestor and its `children`), and its stored JSON
# values may add 32 more (core.bounds.MAX_JSON_DEPTH): 64 levels keep a run at most ~161 deep.
MAX_TREE_DEPTH = 64


def step_tree(steps: Iterable[Mapping[str, Any]], max_depth: int = MAX_TREE_DEPTH) -> list[dict[str, Any]]:
    """Nest steps under their parents, keeping each level in the order given (start time, then arrival).

    A step whose parent is not in the run is kept at the top level rather than dropped. The tree is at most
    `max_depth` (≥ 2) levels deep: a step deeper than that is placed under its ancestor at level
    `max_depth - 1`, next to that ancestor's own children; its `parent_id` still names its real parent.
    Linear in the number of steps, however deep the chains.
    """
    if max_depth < 2:
        raise ValueError("max_depth must be at least 2")
    nodes: dict[str, dict[str, Any]] = {}
    order: list[dict[str, Any]] = []
    for s in steps:
        node = {**s, "children": []}
        for column in _BOOK_COLUMNS:  # the books' copy of a payment's figures: `payment` shows them
            node.pop(column, None)
        node["cost_usd"] = format_usd(int(node.get("cost_nanos") or 0))
        if node.get("payment") is not None:
            node["payment"] = payment_view(node["payment"])
        nodes[node["id"]] = node
        order.append(node)

    # Link each step under its parent unless the parent is already below it: a parent chain leading back to
    # this step (a → b → a, stored before ingest refused cycles) is cut here, or the whole cycle would vanish
    # from the tree and its nodes reference each other. Union-find over the trees linked so far: the step
    # is still the root of its own tree, so the link closes a cycle exactly when the parent is in that tree.
    parent_of: dict[str, str] = {}
    tree_of: dict[str, str] = {}

    def find(step_id: str) -> str:
        root = step_id
        while tree_of.get(root, root) != root:
            root = tree_of[root]
        while step_id != root:  # path compression keeps later finds short
            tree_of[step_id], step_id = root, tree_of[step_id]
        return root

    for node in order:
        pid = node.get("parent_id")
        if pid in nodes and find(pid) != find(node["id"]):
            parent_of[node["id"]] = pid
            tree_of[find(node["id"])] = find(pid)

    # Each step's level (roots are 1) and, past max_depth - 1, its ancestor at that level (its host).
    level: dict[str, int] = {}
    host: dict[str, str] = {}
    for node in order:
        chain: list[str] = []
        walk: str | None = node["id"]
        while walk is not None and walk not in level:
            chain.append(walk)
            walk = parent_of.get(walk)
        for step_id in reversed(chain):
            parent = parent_of.get(step_id)
            level[step_id] = level[parent] + 1 if parent is not None else 1
            if level[step_id] == max_depth - 1:
                host[step_id] = step_id
            elif parent is not None and level[step_id] >= max_depth:
                host[step_id] = host[parent]

    roots: list[dict[str, Any]] = []
    for node in order:
        parent = parent_of.get(node["id"])
        if parent is None:
            roots.append(node)
        else:
            nodes[host[node["id"]] if level[node["id"]] > max_depth else parent]["children"].append(node)
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
    if "revenue_nanos" in row:  # kept with the finance measures (run totals, session paths): the P&L
        out.update(Pnl.of(row).view())
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
