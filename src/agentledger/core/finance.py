"""The money model (docs/finance.md): how a payment step reaches the books, and a P&L from the books. Pure.

A step's `cost_nanos` stays what it always was: everything the step cost the workspace. For a payment step
that is the amount of a settled outbound payment (the agent paid someone) plus the fees paid on it, or the fees
on a settled inbound one (the workspace sold something and paid its platform and settlement fees). What an
inbound payment brought in is revenue, kept apart from cost; a refund is a step of its own that takes its amount
back out. A payment that was only verified, or failed, moved no money: it is in the trace and not in the books.

    known margin = revenue − refunds − cost      (cost = model cost + tool spend + outbound payments + fees)

The books keep cost, revenue, refunds, fees, outbound payments, tool spend and estimated cost as measures of
their own (core.books); model cost is what is left of cost once the others are taken out, so the parts always
add up to the whole, whatever a client reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from agentledger.core.model import Payment, PaymentDirection, PaymentStatus
from agentledger.core.money import MAX_EVENT_COST_NANOS, format_usd


@dataclass(frozen=True, slots=True)
class PaymentBooks:
    """What one payment step adds to the books' finance measures (signed nano-dollars)."""

    cost: int = 0  # the step's cost_nanos
    revenue: int = 0
    refund: int = 0
    fee: int = 0
    payment_out: int = 0


NOTHING = PaymentBooks()


def payment_books(p: Payment) -> PaymentBooks:
    inbound = p.direction is PaymentDirection.INBOUND
    if p.status is PaymentStatus.SETTLED:
        if inbound:
            return PaymentBooks(cost=p.fee_nanos, revenue=p.amount_nanos, fee=p.fee_nanos)
        return PaymentBooks(cost=p.amount_nanos + p.fee_nanos, fee=p.fee_nanos, payment_out=p.amount_nanos)
    if p.status is PaymentStatus.REFUNDED:
        if inbound:  # the workspace paid a buyer back
            return PaymentBooks(refund=p.amount_nanos)
        # a seller paid the agent back: the outbound payment is undone
        return PaymentBooks(cost=-p.amount_nanos, payment_out=-p.amount_nanos)
    return NOTHING


def payment_cost(p: Payment) -> int:
    """The `cost_nanos` of a payment step."""
    return payment_books(p).cost


def within_bounds(p: Payment) -> bool:
    """Amount and fee together within one event's bound (core.bounds: $10^6), the most a step may cost: the
    columns, the budgets' counters and the books' sums are all sized by it."""
    return 0 <= p.amount_nanos and 0 <= p.fee_nanos and p.amount_nanos + p.fee_nanos <= MAX_EVENT_COST_NANOS


def fee_nanos(amount_nanos: int, percent: Decimal, fixed_nanos: int) -> int:
    """Fees on a sale of `amount_nanos`: `percent` of it (rounded half up to the nano-dollar) plus a fixed part,
    never more than the sale."""
    variable = int((Decimal(amount_nanos) * percent / 100).to_integral_value(rounding=ROUND_HALF_UP))
    return min(amount_nanos, variable + fixed_nanos)


# -- a payment as stored and as shown ------------------------------------------------------------------------------


def payment_values(p: Payment) -> dict[str, Any]:
    """The stored JSON of a payment (the step's `payment` column): every field, amounts in nano-dollars."""
    return {
        "direction": p.direction.value,
        "status": p.status.value,
        "amount_nanos": p.amount_nanos,
        "fee_nanos": p.fee_nanos,
        "protocol": p.protocol.value,
        "asset_amount": p.asset_amount,
        "network": p.network,
        "asset": p.asset,
        "counterparty": p.counterparty,
        "reference": p.reference,
        "endpoint_id": p.endpoint_id,
    }


def payment_view(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored payment as the API shows it: amounts as exact USD strings, like a step's `cost_usd`."""
    out = {k: v for k, v in stored.items() if k not in ("amount_nanos", "fee_nanos")}
    out["amount_usd"] = format_usd(int(stored.get("amount_nanos") or 0))
    out["fee_usd"] = format_usd(int(stored.get("fee_nanos") or 0))
    return out


# -- P&L -----------------------------------------------------------------------------------------------------------

# The books' money measures behind a P&L (core.books keeps each, with its carry).
PNL_MEASURES = (
    "cost_nanos",
    "revenue_nanos",
    "refund_nanos",
    "fee_nanos",
    "payment_out_nanos",
    "tool_spend_nanos",
    "estimated_cost_nanos",
)


@dataclass(frozen=True, slots=True)
class Pnl:
    """Known margin from the books' measures (nano-dollars). `estimated` is the part of `cost` whose provenance
    is `estimated` or `clamped` (a stream cut before its usage, a provider's figure past the bounds): the margin
    is known only as well as that share of its cost is."""

    cost: int = 0
    revenue: int = 0
    refunds: int = 0
    fees: int = 0
    payments_out: int = 0
    tool_spend: int = 0
    estimated: int = 0

    @classmethod
    def of(cls, m: Mapping[str, Any]) -> Pnl:
        """From a row of kept totals (its money measures already joined with their carries)."""
        return cls(*(int(m.get(k) or 0) for k in PNL_MEASURES))

    def __add__(self, other: Pnl) -> Pnl:
        return Pnl(
            self.cost + other.cost,
            self.revenue + other.revenue,
            self.refunds + other.refunds,
            self.fees + other.fees,
            self.payments_out + other.payments_out,
            self.tool_spend + other.tool_spend,
            self.estimated + other.estimated,
        )

    @property
    def model_cost(self) -> int:
        """Cost that is neither tool spend, nor a payment, nor a fee: what models cost."""
        return self.cost - self.tool_spend - self.payments_out - self.fees

    @property
    def margin(self) -> int:
        return self.revenue - self.refunds - self.cost

    @property
    def margin_pct(self) -> float | None:
        """Margin as a percentage of revenue (4 decimals); None without revenue, where a percentage means nothing."""
        if self.revenue <= 0:
            return None
        return round(self.margin * 100 / self.revenue, 4)

    @property
    def estimated_share(self) -> float | None:
        """The share of cost that is estimated (6 decimals); None while there is no cost to share."""
        if self.cost <= 0:
            return None
        return round(self.estimated / self.cost, 6)

    def view(self) -> dict[str, Any]:
        """The P&L as the API shows it: exact USD strings, the ratios as numbers."""
        return {
            "revenue_usd": format_usd(self.revenue),
            "refunds_usd": format_usd(self.refunds),
            "model_cost_usd": format_usd(self.model_cost),
            "tool_spend_usd": format_usd(self.tool_spend),
            "outbound_payments_usd": format_usd(self.payments_out),
            "fees_usd": format_usd(self.fees),
            "cost_usd": format_usd(self.cost),
            "margin_usd": format_usd(self.margin),
            "margin_pct": self.margin_pct,
            "estimated_cost_usd": format_usd(self.estimated),
            "estimated_share": self.estimated_share,
        }


def success_rate(calls: int, errors: int) -> float | None:
    """The share of calls that did not fail (6 decimals); None without calls."""
    return None if calls <= 0 else round((calls - errors) / calls, 6)
