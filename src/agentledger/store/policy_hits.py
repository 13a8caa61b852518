"""Policy hits in SQL (core/policy_hits.py says what a hit is): the rows the trace writer inserts, and the reads of
`GET /api/policies/{id}/hits` and the hit counts of `GET /api/policies`. Read through GovernanceStore.

The writer reads hits off the rows a batch inserted (`SQLStore._apply`), as the audit log reads decisions
(store/audit.py): the gateway's policy_check steps, and the requests outside a run (one in a run has its
policy_check step, which says the same). A replayed batch inserted no row, so it adds no hit; the client's retry of
an x-request-id is a new row, whose hits have the ids of the first try's and are not inserted again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, union_all

from agentledger.core.policy_hits import MODES, hit_id, policy_hits
from agentledger.store import schema as t
from agentledger.store.queries import newest_first

_ATTRIBUTION = ("session_id", "department_id", "virtual_key_id", "agent_id")
_SHOWN = [c for c in t.policy_hits.c if c.name != "workspace_id"]  # what GET /api/policies/{id}/hits answers


@dataclass(frozen=True, slots=True)
class HitFilter:
    mode: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    department_id: str | None = None  # a department admin's: only their department's calls
    cursor: tuple[datetime, str] | None = None  # (at, id) of the last hit of the previous page
    limit: int = 50


def hit_rows(
    steps: Iterable[Mapping[str, Any]], requests: Iterable[tuple[Mapping[str, Any] | None, Mapping[str, Any]]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The hits of rows a batch inserted, by (workspace_id, id). A step without a `request_id` is an agent's own
    (POST /v1/runs/{id}/steps takes any kind and attributes): only the gateway's checks are decisions."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for step in steps:
        if step["kind"] == "policy_check" and step["request_id"] is not None:
            _add(out, step, step["attributes"], step["request_id"], step["id"])
    for _, req in requests:
        if req["run_id"] is None and req["governance"] is not None:
            _add(out, req, req["governance"], req["id"], None)
    return out


def _add(
    out: dict[tuple[str, str], dict[str, Any]],
    row: Mapping[str, Any],
    report: Any,
    request_id: str,
    step_id: str | None,
) -> None:
    ws = row["workspace_id"]
    for hit in policy_hits(report):
        ident = hit_id(ws, request_id, hit.policy_id)
        out.setdefault(
            (ws, ident),
            {
                "workspace_id": ws,
                "id": ident,
                "at": row["started_at"],
                "policy_id": hit.policy_id,
                "policy_version": hit.policy_version,
                "rule_id": hit.rule_id,
                "mode": hit.mode,
                "decision": hit.decision,
                "reason": hit.reason,
                "request_id": request_id,
                "run_id": row["run_id"],
                "step_id": step_id,
                **{k: row[k] for k in _ATTRIBUTION},
            },
        )


def hits_query(workspace_id: str, policy_id: str, flt: HitFilter) -> Select[Any]:
    """A page of one policy's hits, newest first by (at, id). Each mode is one range of ix_policy_hits_policy in
    that order; without a mode the page is the newest `limit` of both ranges' first `limit`."""
    h = t.policy_hits.c

    def one(mode: str) -> Select[Any]:
        stmt = select(*_SHOWN).where(h.workspace_id == workspace_id, h.policy_id == policy_id, h.mode == mode)
        if flt.department_id is not None:
            stmt = stmt.where(h.department_id == flt.department_id)
        return newest_first(stmt, h.at, h.id, flt.cursor, flt.since, flt.until).limit(flt.limit)

    if flt.mode is not None:
        return one(flt.mode)
    both = union_all(*(one(m).subquery().select() for m in MODES)).subquery()
    return select(both).order_by(both.c.at.desc(), both.c.id.desc()).limit(flt.limit)


def counts_query(workspace_id: str, windows: Sequence[datetime], department_id: str | None) -> Select[Any]:
    """For each live policy of the workspace, its hits of each mode since each of `windows`: columns
    `<mode>_<i>`. Each count is one range of ix_policy_hits_policy, read from the index alone; a department
    admin's reads the range's rows too, to keep their department's."""
    p, h = t.policies.c, t.policy_hits.c
    counts = []
    for i, since in enumerate(windows):
        for mode in MODES:
            stmt = select(func.count()).where(
                h.workspace_id == workspace_id, h.policy_id == p.id, h.mode == mode, h.at >= since
            )
            if department_id is not None:
                stmt = stmt.where(h.department_id == department_id)
            counts.append(stmt.scalar_subquery().label(f"{mode}_{i}"))
    return select(p.id, *counts).where(p.workspace_id == workspace_id, p.deleted_at.is_(None))
