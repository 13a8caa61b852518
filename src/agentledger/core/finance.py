"""The money model (docs/finance.md): how a payment step reaches the books, and a run's P&L. Pure.

A step's `cost_nanos` stays what it always was: everything the step cost the workspace. For a payment step
that is the amount of a settled outbound payment (the agent paid someone) or the fees on a settled inbound one
(the workspace sold something and paid its platform and settlement fees). What an inbound payment brought in is
revenue, kept apart from cost; a refund is a step of its own that takes its amount back out. A payment that
was only verified, or failed, moved no money: it is in the trace and not in the books.

    known margin = revenue − refunds − cost      (cost = model cost + tool spend + outbound payments + fees)
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from agentledger.core.model import Payment, PaymentDirection, PaymentStatus


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


def fee_nanos(amount_nanos: int, percent: Decimal, fixed_nanos: int) -> int:
    """Fees on a sale of `amount_nanos`: `percent` of it (rounded half up to the nano-dollar) plus a fixed part,
    never more than the sale."""
    variable = int((Decimal(amount_nanos) * percent / 100).to_integral_value(rounding=ROUND_HALF_UP))
    return min(amount_nanos, variable + fixed_nanos)
