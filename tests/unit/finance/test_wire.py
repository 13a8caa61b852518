"""x402 version 2 on the wire (finance/wire.py): requirements, the 402, PAYMENT-SIGNATURE and PAYMENT-RESPONSE,
each read back by x402's own client or codecs."""

from __future__ import annotations

import base64
import json

import pytest
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.schemas import PaymentRequired, SettleResponse

from agentledger.core.assets import USDC_BASE_SEPOLIA, AcceptedAsset, InexactAmount
from agentledger.finance import wire
from agentledger.finance.errors import MalformedPayment
from tests.unit.finance.buyers import address, buyer, new_account, offer, pay, requirements, signed


def test_requirements_are_x402_v2_exact_with_the_tokens_eip712_domain() -> None:
    pay_to = address().lower()
    req = wire.payment_requirements(USDC_BASE_SEPOLIA, amount_nanos=10_000_000, pay_to=pay_to, max_timeout_seconds=90)
    assert req.model_dump(by_alias=True) == {
        "scheme": "exact",
        "network": "eip155:84532",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "amount": "10000",
        "payTo": req.pay_to,
        "maxTimeoutSeconds": 90,
        "extra": {"name": "USDC", "version": "2"},
    }
    assert req.pay_to.lower() == pay_to and req.pay_to != pay_to  # EIP-55 checksummed, as clients echo it


def test_requirements_refuse_what_cannot_be_charged_exactly() -> None:
    with pytest.raises(InexactAmount):
        requirements(price_nanos=10_000_500)
    with pytest.raises(ValueError, match="positive"):
        requirements(price_nanos=0)
    with pytest.raises(ValueError, match="pay-to"):
        wire.payment_requirements(USDC_BASE_SEPOLIA, amount_nanos=1000, pay_to="alice", max_timeout_seconds=60)
    with pytest.raises(ValueError, match="maxTimeoutSeconds"):
        requirements(timeout_s=0)


def test_the_402_is_what_x402s_server_sends_and_its_client_reads() -> None:
    req = requirements()
    answer = wire.payment_required_answer(offer(req))
    assert answer.status == 402 and answer.body == {}
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    decoded = decode_payment_required_header(answer.headers["PAYMENT-REQUIRED"])
    assert isinstance(decoded, PaymentRequired) and decoded.x402_version == 2
    assert decoded.accepts == [req]
    assert decoded.resource is not None and decoded.resource.url.endswith("/x402/ws-test/summarize")
    read = buyer(new_account()).get_payment_required_response(lambda name: answer.headers.get(name))
    assert read == decoded


def test_a_refusal_402_names_x402s_reason() -> None:
    required = wire.payment_required([requirements()], resource_url="http://127.0.0.1/x", error="invalid_reason_x")
    decoded = decode_payment_required_header(wire.payment_required_answer(required).headers["PAYMENT-REQUIRED"])
    assert isinstance(decoded, PaymentRequired) and decoded.error == "invalid_reason_x"


async def test_the_clients_payment_decodes_matches_and_names_its_proof() -> None:
    account, req = new_account(), requirements()
    payload = await pay(account, req)
    assert payload.x402_version == 2 and payload.accepted == req
    assert wire.matching_requirements([requirements(), req], payload) == req
    proof = wire.proof_of(payload)
    assert (proof.network, proof.asset, proof.payer, proof.amount) == (req.network, req.asset, account.address, "10000")
    assert len(proof.nonce) == 66 and proof.valid_before > 0
    assert wire.decode_payment_signature(encode_payment_signature_header(payload)) == payload


async def test_a_payment_for_other_terms_matches_nothing() -> None:
    account, req = new_account(), requirements()
    payload = await pay(account, req)
    other_asset = AcceptedAsset("eip155:84532", address(), 6, "USDC", "2")
    for other in (
        requirements(pay_to=req.pay_to, price_nanos=20_000_000),
        requirements(),  # another recipient
        requirements(pay_to=req.pay_to, asset=other_asset),
        requirements(pay_to=req.pay_to, timeout_s=60),
        req.model_copy(update={"extra": {"name": "USD Coin", "version": "2"}}),
    ):
        assert wire.matching_requirements([other], payload) is None


def _b64(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "header, says",
    [
        ("not base64 at all!", "base64"),
        (base64.b64encode(b"\xff\xfe").decode(), "base64-encoded JSON"),
        (base64.b64encode(b"{not json").decode(), "base64-encoded JSON"),
        (_b64([1, 2]), "not an x402 payment payload"),
        (_b64({"x402Version": 2}), "invalid: accepted, payload"),
        (_b64({"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": {}}), "version 2"),
        ("A" * 20_000, "longer than"),
    ],
)
def test_a_malformed_payment_signature_is_a_clear_error(header: str, says: str) -> None:
    with pytest.raises(MalformedPayment, match=says) as caught:
        wire.decode_payment_signature(header)
    assert caught.value.status == 400 and caught.value.param == "PAYMENT-SIGNATURE"


def test_a_version_3_payload_is_refused() -> None:
    account, req = new_account(), requirements()
    payload = signed(account, req).model_copy(update={"x402_version": 3})
    with pytest.raises(MalformedPayment, match="version 2"):
        wire.decode_payment_signature(encode_payment_signature_header(payload))


def test_a_proof_needs_an_eip3009_authorization() -> None:
    payload = signed(new_account(), requirements())
    with pytest.raises(MalformedPayment, match="no EIP-3009 authorization"):
        wire.proof_of(payload.model_copy(update={"payload": {"permit2Authorization": {}}}))
    bad_nonce = {**payload.payload, "authorization": {**payload.payload["authorization"], "nonce": "0x1234"}}
    with pytest.raises(MalformedPayment, match="nonce"):
        wire.proof_of(payload.model_copy(update={"payload": bad_nonce}))
    bad_value = {**payload.payload, "authorization": {**payload.payload["authorization"], "value": "ten"}}
    with pytest.raises(MalformedPayment, match="integers"):
        wire.proof_of(payload.model_copy(update={"payload": bad_value}))


def test_the_settlement_header_is_what_x402s_client_reads() -> None:
    settled = SettleResponse(
        success=True, transaction="local:0x" + "ab" * 32, network="eip155:84532", payer=address(), amount="10000"
    )
    headers = wire.settlement_headers(settled)
    assert list(headers) == ["PAYMENT-RESPONSE"]
    assert buyer(new_account()).get_payment_settle_response(lambda name: headers.get(name)) == settled


def test_a_failed_settlement_is_a_402_with_the_failure_and_no_output() -> None:
    failed = SettleResponse(success=False, error_reason="transaction_failed", transaction="", network="eip155:84532")
    answer = wire.settlement_failed_answer(failed)
    assert answer.status == 402 and answer.body == {}
    assert answer.headers["Cache-Control"] == "no-store"
    read = buyer(new_account()).get_payment_settle_response(lambda name: answer.headers.get(name))
    assert read == failed
