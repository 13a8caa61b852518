"""Payment steps through the step parser: the Payment each builds, its derived cost, and the exact 400 for each
bad field, named as the step API names it (`steps[3].payment.amount_usd`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agentledger.core.errors import InvalidRequest
from agentledger.core.model import Attribution, Payment, PaymentDirection, PaymentProtocol, PaymentStatus, StepKind
from agentledger.core.pricing import CostSource
from agentledger.ingest.step_parse import BatchParser

NOW = datetime(2025, 1, 1, tzinfo=UTC)
ATTRIBUTION = Attribution(workspace_id="ws", department_id="dep", virtual_key_id="vk", run_id="r")
USD = 'must be a decimal from 0 to 1000000 dollars, such as "0.0125".'
SALE = {"direction": "inbound", "status": "settled", "amount_usd": "2.50"}


def parse(step: dict[str, Any]) -> Any:
    return BatchParser("r", ATTRIBUTION, {}, NOW).step({"name": "pay", "kind": "payment", **step}, 3)


def test_a_full_payment_step_keeps_every_field_and_derives_its_cost() -> None:
    step = parse(
        {
            "payment": {
                "direction": "outbound",
                "status": "settled",
                "amount_usd": "0.010000000",
                "fee_usd": 0.0005,
                "protocol": "x402",
                "asset_amount": "10000",
                "network": "eip155:84532",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "counterparty": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "reference": "0xabc",
                "endpoint_id": "weather",
            }
        }
    )
    assert step.kind is StepKind.PAYMENT and step.cost_source is CostSource.REPORTED
    assert step.payment == Payment(
        direction=PaymentDirection.OUTBOUND,
        status=PaymentStatus.SETTLED,
        amount_nanos=10_000_000,
        protocol=PaymentProtocol.X402,
        fee_nanos=500_000,
        asset_amount="10000",
        network="eip155:84532",
        asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        counterparty="0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        reference="0xabc",
        endpoint_id="weather",
    )
    assert step.cost_nanos == 10_500_000  # an outbound payment costs its amount and its fee


@pytest.mark.parametrize(
    ("payment", "cost"),
    [
        ({**SALE, "fee_usd": "0.1"}, 100_000_000),  # a sale costs its fees; its amount is revenue
        ({**SALE, "status": "verified"}, 0),  # no money moved yet
        ({**SALE, "status": "failed", "fee_usd": "0.1"}, 0),
        ({**SALE, "status": "refunded"}, 0),  # a refund to a buyer is its own measure, not cost
        ({"direction": "outbound", "status": "refunded", "amount_usd": 3}, -3_000_000_000),  # money back
        ({**SALE, "protocol": None, "fee_usd": None, "network": None, "endpoint_id": None}, 0),  # null: absent
    ],
)
def test_each_payment_costs_what_core_finance_says(payment: dict[str, Any], cost: int) -> None:
    step = parse({"payment": payment})
    assert step.cost_nanos == cost and step.payment is not None and step.payment.protocol is PaymentProtocol.MANUAL


def pay(**fields: Any) -> dict[str, Any]:
    return {"payment": {**SALE, **fields}}


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({}, "steps[3].payment is required on a step of kind 'payment'.", "steps[3].payment"),
    ({"payment": None}, "steps[3].payment is required on a step of kind 'payment'.", "steps[3].payment"),
    *[({"payment": v}, "'payment' must be an object.", "steps[3].payment") for v in ("settled", [SALE], 5)],
    (
        {**pay(), "cost_usd": "0.01"},
        "'cost_usd' is not taken on a payment step: its cost is its payment's (an outbound payment's amount and "
        "fee, an inbound one's fee).",
        "steps[3].cost_usd",
    ),
    *[
        (pay(direction=v), "'payment.direction' must be 'inbound' or 'outbound'.", "steps[3].payment.direction")
        for v in (None, "sideways", 1, ["inbound"])
    ],
    *[
        (
            pay(status=v),
            "'payment.status' must be one of verified, settled, failed, refunded.",
            "steps[3].payment.status",
        )
        for v in (None, "paid", True)
    ],
    (pay(amount_usd=None), "'payment.amount_usd' is required.", "steps[3].payment.amount_usd"),
    *[
        (pay(amount_usd=v), f"'payment.amount_usd' {USD}", "steps[3].payment.amount_usd")
        for v in ("-1", -0.5, "1000000.01", 1_000_001, "1e7", "NaN", "Infinity", "one", True, [1], "")
    ],
    *[(pay(fee_usd=v), f"'payment.fee_usd' {USD}", "steps[3].payment.fee_usd") for v in ("x", -1, False)],
    (
        pay(amount_usd="999999.5", fee_usd="0.6"),
        "'payment.fee_usd': the amount and the fee together must be at most 1000000 dollars (what one step may cost).",
        "steps[3].payment.fee_usd",
    ),
    *[
        (pay(protocol=v), "'payment.protocol' must be one of x402, manual.", "steps[3].payment.protocol")
        for v in ("ach", 402)
    ],
    *[
        (
            pay(asset_amount=v),
            "'payment.asset_amount' must be the amount in the asset's atomic units: a string of 1 to 78 digits.",
            "steps[3].payment.asset_amount",
        )
        for v in (10000, "1.5", "-1", "", "1" * 79)
    ],
    (
        pay(network="n" * 65),
        "'payment.network' must be a non-empty string of at most 64 characters.",
        "steps[3].payment.network",
    ),
    (pay(asset="a\x00"), "'payment.asset' contains control characters.", "steps[3].payment.asset"),
    (
        pay(counterparty=""),
        "'payment.counterparty' must be a non-empty string of at most 256 characters.",
        "steps[3].payment.counterparty",
    ),
    (
        pay(reference="r" * 257),
        "'payment.reference' must be a non-empty string of at most 256 characters.",
        "steps[3].payment.reference",
    ),
    (
        pay(endpoint_id="no good"),
        "'payment.endpoint_id' must start with a letter or digit and hold only letters, digits, '.', '_', ':', '-'.",
        "steps[3].payment.endpoint_id",
    ),
]


@pytest.mark.parametrize(("step", "message", "param"), BAD, ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(BAD)])
def test_each_bad_payment_field_is_a_400_naming_it(step: dict[str, Any], message: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(step)
    assert (caught.value.message, caught.value.param) == (message, param)


@pytest.mark.parametrize("kind", ["tool_call", "model_call", "api_call"])
def test_a_payment_on_another_kind_is_a_400(kind: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        BatchParser("r", ATTRIBUTION, {}, NOW).step({"name": "t", "kind": kind, "payment": SALE}, 0)
    assert (caught.value.message, caught.value.param) == (
        "steps[0].payment is only taken on a step of kind 'payment'.",
        "steps[0].payment",
    )
    # null is absent, as for every optional field
    assert BatchParser("r", ATTRIBUTION, {}, NOW).step({"name": "t", "kind": kind, "payment": None}, 0).payment is None
