"""core.finance and the books' finance measures (core.books), pure: what each payment adds, the P&L, and how a
step's measures fold into its run and its ledger rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agentledger.core.books import COST_UNIT, LEDGER_MEASURES, NO_RUN, RUN_MEASURES, Books, split_money
from agentledger.core.finance import (
    PaymentBooks,
    Pnl,
    fee_nanos,
    payment_books,
    payment_cost,
    payment_values,
    payment_view,
    success_rate,
    within_bounds,
)
from agentledger.core.model import Payment, PaymentDirection as D, PaymentProtocol, PaymentStatus as S

IN, OUT = D.INBOUND, D.OUTBOUND


@pytest.mark.parametrize(
    ("direction", "status", "books"),
    [
        (IN, S.SETTLED, PaymentBooks(cost=7, revenue=100, fee=7)),
        (OUT, S.SETTLED, PaymentBooks(cost=107, fee=7, payment_out=100)),
        (IN, S.REFUNDED, PaymentBooks(refund=100)),
        (OUT, S.REFUNDED, PaymentBooks(cost=-100, payment_out=-100)),
        (IN, S.VERIFIED, PaymentBooks()),
        (OUT, S.VERIFIED, PaymentBooks()),
        (IN, S.FAILED, PaymentBooks()),
        (OUT, S.FAILED, PaymentBooks()),
    ],
)
def test_what_each_payment_adds_to_the_books(direction: D, status: S, books: PaymentBooks) -> None:
    p = Payment(direction, status, amount_nanos=100, fee_nanos=7)
    assert payment_books(p) == books and payment_cost(p) == books.cost


def test_fees_round_half_up_and_never_pass_the_sale() -> None:
    from decimal import Decimal

    assert fee_nanos(1_000, Decimal("2.9"), 300) == 29 + 300
    assert fee_nanos(15, Decimal("10"), 0) == 2  # 1.5 rounds up
    assert fee_nanos(100, Decimal("50"), 1_000) == 100


def test_a_payment_within_one_events_bound() -> None:
    unit = COST_UNIT
    assert within_bounds(Payment(OUT, S.SETTLED, unit - 5, fee_nanos=5))
    assert not within_bounds(Payment(OUT, S.SETTLED, unit - 5, fee_nanos=6))
    assert not within_bounds(Payment(IN, S.SETTLED, -1))


def test_a_payment_is_stored_in_nanos_and_shown_in_exact_dollars() -> None:
    p = Payment(
        IN, S.SETTLED, 2_500_000_000, PaymentProtocol.X402, 75_000_000, "2500000", "eip155:8453", endpoint_id="e"
    )
    stored = payment_values(p)
    assert stored["amount_nanos"] == 2_500_000_000 and stored["protocol"] == "x402"
    assert payment_view(stored) == {
        "direction": "inbound",
        "status": "settled",
        "amount_usd": "2.500000000",
        "fee_usd": "0.075000000",
        "protocol": "x402",
        "asset_amount": "2500000",
        "network": "eip155:8453",
        "asset": None,
        "counterparty": None,
        "reference": None,
        "endpoint_id": "e",
    }


def test_pnl_margin_model_cost_and_shares() -> None:
    pnl = Pnl(cost=1_000, revenue=4_000, refunds=500, fees=100, payments_out=300, tool_spend=200, estimated=250)
    assert pnl.model_cost == 400
    assert pnl.margin == 2_500
    assert pnl.margin_pct == 62.5
    assert pnl.estimated_share == 0.25
    assert pnl + pnl == Pnl(2_000, 8_000, 1_000, 200, 600, 400, 500)
    assert Pnl(cost=3).margin_pct is None and Pnl(revenue=3).estimated_share is None
    assert Pnl(cost=-5, revenue=1).estimated_share is None  # refunds received past what was paid: no share
    assert Pnl(cost=3, revenue=1).view()["margin_pct"] == -200.0
    big = Pnl.of({"revenue_nanos": 10**19, "cost_nanos": 3 * 10**18})
    assert big.view()["margin_usd"] == "7000000000.000000000" and big.view()["margin_pct"] == 70.0


def test_success_rate() -> None:
    assert success_rate(0, 0) is None
    assert success_rate(3, 1) == 0.666667


def test_money_splits_into_a_remainder_and_a_carry_of_any_sign() -> None:
    for n in (0, 5, COST_UNIT, COST_UNIT + 1, -1, -COST_UNIT, -3 * COST_UNIT - 7, 10**19):
        rest, carry = split_money(n)
        assert 0 <= rest < COST_UNIT and carry * COST_UNIT + rest == n


def _step(kind: str, cost: int, **extra: Any) -> dict[str, Any]:
    row = {
        "workspace_id": "ws",
        "run_id": "r",
        "request_id": None,
        "kind": kind,
        "status": "ok",
        "attempt": 1,
        "latency_ms": None,
        "cost_nanos": cost,
        "cost_source": "reported",
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "revenue_nanos": 0,
        "refund_nanos": 0,
        "fee_nanos": 0,
        "payment_out_nanos": 0,
        "department_id": None,
        "agent_id": None,
        "virtual_key_id": None,
        "model": None,
        "provider": None,
        "prompt_id": None,
        "session_id": None,
        "session_path": None,
        "properties": {},
        "started_at": datetime(2026, 3, 1, 10, 30, tzinfo=UTC),
    }
    row.update(extra)
    return row


def test_a_step_folds_the_same_finance_measures_into_its_run_and_its_ledger() -> None:
    books = Books()
    sale = payment_books(Payment(IN, S.SETTLED, 1_000, fee_nanos=30))
    books.step(
        _step("payment", sale.cost, revenue_nanos=sale.revenue, fee_nanos=sale.fee, status="error"), NO_RUN, frozenset()
    )
    books.step(_step("tool_call", 200), NO_RUN, frozenset())
    books.step(_step("model_call", 50, cost_source="estimated"), NO_RUN, frozenset())
    books.step(_step("model_attempt", 50, cost_source="estimated", status="error", attempt=2), NO_RUN, frozenset())
    # A payment's columns count on a payment step only, whatever else a row says.
    books.step(_step("workflow_step", 0, revenue_nanos=999), NO_RUN, frozenset())
    tables = books.tables()
    (run,) = tables["runs"].values()
    totals = dict(zip(RUN_MEASURES, run, strict=True))
    assert totals | {"model_latency_ms": 0} == {
        "steps": 5,
        "model_calls": 1,
        "retries": 1,
        "model_latency_ms": 0,
        "errors": 2,
        "cost_nanos": 30 + 200 + 50,
        **{f: 0 for f in ("input_tokens", "cached_input_tokens", "cache_write_tokens")},
        **{f: 0 for f in ("output_tokens", "reasoning_tokens")},
        "revenue_nanos": 1_000,
        "refund_nanos": 0,
        "fee_nanos": 30,
        "payment_out_nanos": 0,
        "tool_spend_nanos": 200,
        "estimated_cost_nanos": 50,  # the attempt's is its call's
    }
    (hour,) = tables["hourly"].values()
    assert dict(zip(LEDGER_MEASURES, hour, strict=True)) == {
        "events": 5,
        "requests": 0,
        **{k: totals[k] for k in LEDGER_MEASURES[2:]},
    }
    assert Pnl.of(totals).model_cost == 50 and Pnl.of(totals).margin == 1_000 - 280
