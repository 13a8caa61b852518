"""GET /api/finance/summary: known margin by group (and by hour or day) from the books (docs/finance.md).

Each row is the P&L of a group over the window (core.finance.Pnl): revenue, refunds, cost by kind, margin, and
how much of the cost is estimated. The window is counted in whole hours, as the costs analytics count it
(core.books.hour_window), because the rollups are hourly. Reads flush the trace pipeline first.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentledger.api.auth import AdminAuth
from agentledger.api.query import TotalsResponse, group_by_param, int_param, time_param
from agentledger.core.books import hour_window
from agentledger.core.errors import InvalidRequest
from agentledger.core.finance import Pnl, success_rate
from agentledger.core.model import AdminPrincipal
from agentledger.pipeline.queue import TracePipeline
from agentledger.store.base import FinanceQuery, Store

BUCKETS = ("hour", "day")
DEFAULT_LIMIT, MAX_LIMIT = 100, 10_000


def view(row: dict[str, Any]) -> dict[str, Any]:
    """A summary row (or the totals) as the API shows it: counts, success rate, then the P&L."""
    calls, errors = row["calls"], row["errors"]
    return {"calls": calls, "errors": errors, "success_rate": success_rate(calls, errors), **Pnl.of(row).view()}


def finance_routes(auth: AdminAuth, store: Store, pipeline: TracePipeline) -> list[Route]:
    async def summary(request: Request, admin: AdminPrincipal) -> Response:
        group_by = group_by_param(request)
        bucket = request.query_params.get("bucket")
        if bucket is not None and bucket not in BUCKETS:
            raise InvalidRequest("'bucket' must be 'hour' or 'day'.", param="bucket")
        query = FinanceQuery(
            group_by=group_by,
            since=time_param(request, "from"),
            until=time_param(request, "to"),
            bucket=bucket,
            limit=int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        )
        await pipeline.flush()
        found = await store.finance_summary(admin.workspace_id, query)
        data = [
            {
                "key": r["key"],
                **({"bucket": r["bucket"]} if bucket is not None else {}),
                **({"member": r["member"]} if "member" in r else {}),
                **view(r),
            }
            for r in found.rows
        ]
        since, until = hour_window(query.since, query.until)
        return TotalsResponse(
            {
                "group_by": group_by,
                "bucket": bucket,
                "from": since.isoformat() if since else None,
                "to": until.isoformat() if until else None,
                "limit": query.limit,
                "has_more": found.more,
                "data": data,
                "totals": view(found.totals),
            }
        )

    return [Route("/api/finance/summary", auth.guard(summary), methods=["GET"])]
