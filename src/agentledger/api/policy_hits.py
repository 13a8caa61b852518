"""A policy's hits (docs/policies.md, "Hits"): the query of `GET /api/policies/{id}/hits` and the hit counts on the
rows of `GET /api/policies`. A department admin reads only their department's calls among them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request

from agentledger.api.query import _choice_param, _cursor_param, encode_cursor, int_param, time_param
from agentledger.core.model import AdminPrincipal
from agentledger.core.policy_hits import MODES
from agentledger.store.policy_hits import HitFilter

# The windows counted on each policy of GET /api/policies: `hits_24h`, `hits_7d`.
WINDOWS = {"hits_24h": timedelta(hours=24), "hits_7d": timedelta(days=7)}


def hit_filter(request: Request, admin: AdminPrincipal) -> HitFilter:
    """The query's filters and page, each checked (a 400 naming it)."""
    return HitFilter(
        mode=_choice_param(request, "mode", MODES),
        since=time_param(request, "from"),
        until=time_param(request, "to"),
        department_id=admin.department_id,
        cursor=_cursor_param(request, "at"),
        limit=int_param(request, "limit", 50, 1, 1000),
    )


def page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {"data": rows, "next_cursor": encode_cursor(rows[-1], "at") if len(rows) == limit else None}


def windows(now: datetime) -> list[datetime]:
    return [now - span for span in WINDOWS.values()]


def with_counts(view: dict[str, Any], counts: Mapping[tuple[int, str], int] | None) -> dict[str, Any]:
    """A policy's row with its hits per window and mode (none: it has no live row, so none were counted)."""
    for i, name in enumerate(WINDOWS):
        view[name] = {mode: (counts or {}).get((i, mode), 0) for mode in MODES}
    return view
