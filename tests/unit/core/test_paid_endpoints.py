"""core/paid_endpoints.py: an endpoint's settings read, written back and read again to the same thing; the timing
rule; the endpoint policy's checks on a call; a runtime's checks."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from agentledger.core.assets import USDC_BASE, USDC_BASE_SEPOLIA
from agentledger.core.errors import InvalidRequest
from agentledger.core.paid_endpoints import (
    SETTLE_RESERVE_S,
    SETTLEMENT_MARGIN_S,
    EndpointPolicy,
    EndpointRules,
    endpoint_input,
    lasts_long_enough,
    parse_endpoint,
    parse_runtime,
    patched,
    payer_allowed,
    runtime_view,
)

PAY_TO = "0x52908400098527886E0F7030069857D2E4169EE7"


def checksum(address: str) -> str:
    # The EIP-55 vector's own form stands for the checksum here (keccak is not in the standard library).
    return PAY_TO if address.lower() == PAY_TO.lower() else address


def no_check(schema: Any) -> None:
    if schema.get("type") == "bad":
        raise ValueError("bad type")


RULES = EndpointRules(
    assets=(USDC_BASE_SEPOLIA, USDC_BASE), timeout_cap_s=300, checksum=checksum, check_schema=no_check
)


def base(**changes: Any) -> dict[str, Any]:
    return {"slug": "s", "agent_id": "flow", "price_usd": "0.25", "pay_to": PAY_TO.lower(), **changes}


def test_defaults_and_a_round_trip_through_the_input_form() -> None:
    spec = parse_endpoint(base(), RULES)
    assert spec.asset == USDC_BASE_SEPOLIA and spec.pay_to == PAY_TO and spec.asset_amount == 250_000
    assert (spec.timeout_s, spec.max_timeout_s, spec.fee_percent, spec.fee_fixed_nanos) == (30.0, 120, 0, 0)
    assert spec.policy == EndpointPolicy()
    full = parse_endpoint(
        base(
            network="eip155:8453",
            fee={"percent": "2.5", "fixed_usd": "0.001"},
            timeout_s=100,
            policy={"max_price_usd": "1", "requests_per_minute": 5, "concurrent": 2, "allowed_payers": [PAY_TO]},
            input_schema={"type": "object"},
            description="d",
        ),
        RULES,
    )
    assert full.asset == USDC_BASE and full.max_timeout_s == 100 + SETTLEMENT_MARGIN_S  # the least it may be
    assert (full.fee_percent, full.fee_fixed_nanos) == (Decimal("2.5"), 1_000_000)
    assert parse_endpoint(endpoint_input(full), RULES) == full


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"timeout_s": 10, "max_timeout_s": 10 + SETTLEMENT_MARGIN_S - 1}, "max_timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"timeout_s": True}, "timeout_s"),
        ({"max_timeout_s": 86401}, "max_timeout_s"),
        ({"price_usd": 1.5}, "price_usd"),
        ({"price_usd": "0.0000001"}, "price_usd"),
        ({"fee": {"percent": "1.23456"}}, "fee.percent"),
        ({"fee": {"fixed_usd": "-1"}}, "fee.fixed_usd"),
        ({"policy": {"concurrent": 0}}, "policy.concurrent"),
        ({"policy": {"requests_per_minute": "5"}}, "policy.requests_per_minute"),
        ({"policy": {"allowed_payers": "any"}}, "policy.allowed_payers"),
        ({"input_schema": {"type": "bad"}}, "input_schema"),
        ({"input_schema": []}, "input_schema"),
        ({"asset": "0x" + "ab" * 20}, "asset"),
        ({"description": "x\x00"}, "description"),
        ({"agent_id": ""}, "agent_id"),
    ],
)
def test_each_rule_names_its_field(changes: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_endpoint(base(**changes), RULES)
    assert info.value.param == param


def test_a_patch_merges_fee_and_policy_and_checks_the_whole() -> None:
    spec = parse_endpoint(base(policy={"max_price_usd": "0.5", "concurrent": 2}, fee={"percent": "3"}), RULES)
    after = patched(spec, {"policy": {"concurrent": 4}, "fee": {"fixed_usd": "0.01"}}, RULES)
    assert after.policy.max_price_nanos == 500_000_000 and after.policy.concurrent == 4
    assert (after.fee_percent, after.fee_fixed_nanos) == (Decimal(3), 10_000_000)
    with pytest.raises(InvalidRequest) as info:
        patched(spec, {"policy": {"max_price_usd": "0.1"}}, RULES)  # now below the price
    assert info.value.param == "price_usd"
    moved = patched(spec, {"network": "eip155:8453"}, RULES)  # a new network takes its own USDC
    assert moved.asset == USDC_BASE


def test_a_proof_must_outlast_the_workflow_and_the_settlement() -> None:
    now = 1_000_000.0
    assert lasts_long_enough(int(now + 30 + SETTLE_RESERVE_S), now, 30)
    assert not lasts_long_enough(int(now + 30 + SETTLE_RESERVE_S) - 1, now, 30)
    # An honest x402 client signs for maxTimeoutSeconds, at least timeout + margin: it always passes.
    assert lasts_long_enough(int(now) + 30 + SETTLEMENT_MARGIN_S, now + 5, 30)


def test_the_payer_allow_list_ignores_letter_case() -> None:
    assert payer_allowed(EndpointPolicy(), "0xanything")
    listed = EndpointPolicy(allowed_payers=(PAY_TO,))
    assert payer_allowed(listed, PAY_TO.lower()) and not payer_allowed(listed, "0x" + "1" * 40)


def test_a_runtime_is_read_and_shown_without_its_secret() -> None:
    spec = parse_runtime(
        {"type": "n8n", "url": "https://n8n.example/webhook/x", "auth_header": {"name": "X-A", "value": "s"}}
    )
    assert (spec.method, spec.auth_name, spec.auth_value) == ("POST", "X-A", "s")
    assert "auth_value" not in repr(spec)  # a log line of a runtime never carries its secret
    assert runtime_view(spec) == {
        "type": "n8n",
        "url": "https://n8n.example/webhook/x",
        "method": "POST",
        "auth_header": {"name": "X-A", "set": True},
    }
    for bad, param in [
        ({"type": "zapier", "url": "https://x"}, "runtime.type"),
        ({"type": "n8n", "url": "ftp://x"}, "runtime.url"),
        ({"type": "n8n", "url": "https://x:notaport/"}, "runtime.url"),
        ({"type": "n8n", "url": "https://x", "method": "PATCH"}, "runtime.method"),
        (
            {"type": "n8n", "url": "https://x", "auth_header": {"name": "Host", "value": "v"}},
            "runtime.auth_header.name",
        ),
        ({"type": "n8n", "url": "https://x", "auth_header": {"name": "X", "value": "é"}}, "runtime.auth_header.value"),
        ({"type": "n8n", "url": "https://x", "auth_header": {"name": "X"}}, "runtime.auth_header.value"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            parse_runtime(bad)
        assert info.value.param == param, bad
