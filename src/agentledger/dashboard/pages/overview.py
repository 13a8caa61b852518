"""Overview (`/`): spend today / 7 days / 30 days against the period before, revenue and margin, the top agents,
models and sessions by cost, budget bars, pending approvals and recent alerts; each panel links to its view.

Every figure is an /api route's answer (web.Ctx.api); a panel whose route the role may not read is left out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.responses import Response

from agentledger.dashboard.budgets import with_exhaustion
from agentledger.dashboard.web import Ctx, Page

COSTS = ("GET", "/api/analytics/costs")
TOP = 5
PERIODS = (("today", "Today"), ("7d", "7 days"), ("30d", "30 days"))


@dataclass(frozen=True, slots=True)
class Spend:
    key: str
    label: str
    cost_usd: str
    previous_usd: str
    change_pct: float | None  # against the previous period of the same length; None when that spent nothing


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def windows(now: datetime) -> dict[str, tuple[datetime, datetime, datetime]]:
    """Each period as (previous start, start, end): today so far against yesterday up to the same hour."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "today": (midnight - timedelta(days=1), midnight, now),
        "7d": (now - timedelta(days=14), now - timedelta(days=7), now),
        "30d": (now - timedelta(days=60), now - timedelta(days=30), now),
    }


async def _spent(ctx: Ctx, since: datetime, until: datetime) -> Decimal:
    rows = (await ctx.api(*COSTS, {"group_by": "workspace", "from": _iso(since), "to": _iso(until)}))["data"]
    return sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))


async def _spend(ctx: Ctx, now: datetime) -> list[Spend]:
    out = []
    for key, (before, start, end) in windows(now).items():
        current = await _spent(ctx, start, end)
        previous = await _spent(ctx, before, before + (end - start))
        change = None if previous == 0 else float((current - previous) / previous * 100)
        label = dict(PERIODS)[key]
        out.append(Spend(key, label, str(current), str(previous), change))
    return out


async def overview(ctx: Ctx) -> Response:
    now = datetime.now(UTC)
    month = {"from": _iso(now - timedelta(days=30)), "to": _iso(now)}
    values: dict[str, Any] = {"month": month}
    if ctx.can(*COSTS):
        values["spend"] = await _spend(ctx, now)
        for group in ("agent", "model", "session"):
            rows = (await ctx.api(*COSTS, {"group_by": group, **month}))["data"]
            values[f"top_{group}s"] = rows[:TOP]
    if ctx.can("GET", "/api/finance/summary"):
        values["finance"] = (await ctx.api("GET", "/api/finance/summary", month))["totals"]
    if ctx.can("GET", "/api/budgets"):
        values["budgets"] = with_exhaustion((await ctx.api("GET", "/api/budgets"))["data"], now)
    if ctx.can("GET", "/api/approvals"):
        values["approvals"] = (await ctx.api("GET", "/api/approvals", {"status": "pending", "limit": TOP}))["data"]
    if ctx.can("GET", "/api/alerts"):
        values["alerts"] = (await ctx.api("GET", "/api/alerts", {"limit": TOP}))["data"]
    values["can_runs"] = ctx.can("GET", "/api/runs")
    return ctx.render("overview.html", **values)


# Every role may open it (workspace.read); each panel asks for its own route's permission.
PAGES = [Page("/", overview, api=("GET", "/api/workspaces"), nav="Overview")]
