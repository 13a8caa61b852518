"""The OpenAPI path and rows of the finance summary (api/finance.py; docs/finance.md) and of a payment step."""

from __future__ import annotations

from agentledger.api.finance import BUCKETS, DEFAULT_LIMIT, MAX_LIMIT
from agentledger.api.openapi.paths import ADMIN, API_READ, op
from agentledger.api.openapi.schemas import ANY, ID, MEMBER_LABEL, PNL, TIMESTAMP, USD
from agentledger.api.openapi.shapes import Schema, array, enum, integer, nullable, obj, ok_json, param, ref
from agentledger.core.headers import PROPERTY_NAME_RE
from agentledger.core.model import PaymentDirection, PaymentProtocol, PaymentStatus
from agentledger.store.base import FINANCE_GROUPS

STR: Schema = {"type": "string"}
OPT_STR = nullable(STR)
COUNT: Schema = {"type": "integer", "minimum": 0}
_PROPERTY_NAME = PROPERTY_NAME_RE.pattern.removeprefix("^").removesuffix("$").replace("\\-", "-")
_GROUP_BY = {
    "type": "string",
    "pattern": f"^({'|'.join(FINANCE_GROUPS)}|property\\.{_PROPERTY_NAME})$",
    "default": "workspace",
}

# api.finance.view: counts, success rate and the P&L (core.finance.Pnl.view).
_FIGURES = {
    "calls": {**COUNT, "description": "Ledger events: gateway calls and steps outside the gateway (a run: steps)."},
    "errors": {**COUNT, "description": "Those that failed."},
    "success_rate": {
        **nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "description": "(calls - errors) / calls, 6 decimals; null without calls.",
    },
    **PNL,
}
FIGURES = obj(_FIGURES, list(_FIGURES), closed=True)
SUMMARY_ROW = obj(
    {
        "key": {**ANY, "description": "The group's value; null for events without it."},
        "bucket": STR,
        "member": MEMBER_LABEL,
        **_FIGURES,
    },
    ["key", *_FIGURES],
    closed=True,
)

FINANCE_ROWS: dict[str, Schema] = {
    "FinanceSummary": obj(
        {
            "group_by": STR,
            "bucket": nullable(enum(BUCKETS)),
            "from": nullable(TIMESTAMP),
            "to": nullable(TIMESTAMP),
            "limit": COUNT,
            "has_more": {"type": "boolean", "description": "More groups than `limit`: `totals` still counts them."},
            "data": array(ref("FinanceSummaryRow")),
            "totals": ref("FinanceFigures"),
        },
        ["group_by", "bucket", "from", "to", "limit", "has_more", "data", "totals"],
        closed=True,
    ),
    "FinanceSummaryRow": SUMMARY_ROW,
    "FinanceFigures": FIGURES,
    # core.finance.payment_view: a payment step's payment.
    "Payment": obj(
        {
            "direction": enum([d.value for d in PaymentDirection]),
            "status": enum([s.value for s in PaymentStatus]),
            "amount_usd": USD,
            "fee_usd": USD,
            "protocol": enum([p.value for p in PaymentProtocol]),
            "asset_amount": OPT_STR,
            "network": OPT_STR,
            "asset": OPT_STR,
            "counterparty": OPT_STR,
            "reference": OPT_STR,
            "endpoint_id": nullable(ID),
        },
        ["direction", "status", "amount_usd", "fee_usd", "protocol"],
    ),
}

FINANCE_PATHS: dict[str, Schema] = {
    "/api/finance/summary": {
        "get": op(
            "Known margin by group: revenue, refunds, cost by kind, margin and its estimated share.",
            "query",
            ADMIN,
            {200: ok_json("Summary rows (revenue first, then cost) and their totals.", ref("FinanceSummary"))},
            (400, *API_READ),
            parameters=[
                param(
                    "group_by",
                    "query",
                    _GROUP_BY,
                    "workspace, department, agent, member (the owner of the calls' virtual keys), workflow, "
                    "endpoint, session, run or property.<name> (indexed).",
                ),
                param("from", "query", TIMESTAMP, "Events (runs: starts) at or after the start of this hour."),
                param("to", "query", TIMESTAMP, "Events (runs: starts) before this time rounded up to the hour."),
                param("bucket", "query", enum(BUCKETS), "Bucket the rows by time."),
                param("limit", "query", integer(1, MAX_LIMIT, default=DEFAULT_LIMIT), "Rows at most."),
            ],
        )
    },
}
