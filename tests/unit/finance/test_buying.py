"""Which x402 offer the gateway pays (finance/buying.py) and what x402's client signs for it (finance/signers.py):
only the `exact` scheme in a known asset under the token's own domain, the cheapest within the maximum and the
signer's limit; the signature verified by x402's own facilitator (LocalFacilitator), for exactly the offer chosen."""

from __future__ import annotations

import asyncio

import pytest
from x402.schemas import PaymentRequired, PaymentRequirements

from agentledger.core.assets import USDC_BASE, USDC_BASE_SEPOLIA, AcceptedAsset
from agentledger.finance import buying, wire
from agentledger.finance.local import LocalFacilitator
from agentledger.finance.signers import BadKey, Signer, key_address, new_key, sign_sync
from tests.unit.finance.buyers import address

KEY, ADDRESS = new_key()
PAY_TO = address()


def signer(
    name: str = "main", networks: tuple[str, ...] = ("eip155:84532", "eip155:8453"), cap: int | None = None
) -> Signer:
    return Signer(f"psg_{name}", name, ADDRESS, networks, cap, KEY)


def offer(price: int = 10_000_000, token: AcceptedAsset = USDC_BASE_SEPOLIA, **changes: object) -> PaymentRequirements:
    req = wire.payment_requirements(token, amount_nanos=price, pay_to=PAY_TO, max_timeout_seconds=120)
    return req.model_copy(update=changes)


def required(*accepts: PaymentRequirements) -> PaymentRequired:
    return wire.payment_required(accepts, resource_url="http://127.0.0.1/goods")


def test_the_cheapest_payable_offer_within_the_maximum_is_chosen() -> None:
    cheap, dear = offer(10_000_000), offer(20_000_000, USDC_BASE)
    choice = buying.choose(required(dear, cheap), [signer()], 50_000_000)
    assert (choice.requirements, choice.offer.amount_nanos, choice.signer.name) == (cheap, 10_000_000, "main")
    # A signer that does not pay on Base Sepolia leaves only the dearer offer.
    choice = buying.choose(required(dear, cheap), [signer(networks=("eip155:8453",))], 50_000_000)
    assert choice.requirements == dear


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"scheme": "upto"}, "scheme 'upto' (only 'exact' is paid)"),
        ({"asset": address()}, "is not a known asset"),
        ({"extra": {"name": "USDC", "version": "2", "assetTransferMethod": "permit2"}}, "transfer method 'permit2'"),
        ({"extra": {"name": "Fake Dollar", "version": "2"}}, "EIP-712 domain 'Fake Dollar'/'2' is not the token's own"),
        ({"max_timeout_seconds": 86401}, "maxTimeoutSeconds 86401 (at most 86400 is signed)"),
        ({"amount": "0"}, "amount '0' is not a positive whole number of atomic units"),
        ({"pay_to": "nobody"}, "payTo 'nobody' is not an address"),
    ],
)
def test_an_offer_the_gateway_does_not_make_is_refused_saying_why(changes: dict[str, object], why: str) -> None:
    with pytest.raises(buying.PaymentUnsupported) as refused:
        buying.choose(required(offer(**changes)), [signer()], 50_000_000)
    assert why in refused.value.message
    assert refused.value.status == 402 and refused.value.details()["accepts"][0]["pay_to"] == offer(**changes).pay_to


def test_over_the_maximum_or_the_signers_limit_is_refused_with_the_price() -> None:
    with pytest.raises(buying.PaymentOverMax) as over:
        buying.choose(required(offer(10_000_000)), [signer()], 9_999_999)
    assert (over.value.details()["price_usd"], over.value.details()["max_amount_usd"]) == ("0.010000000", "0.009999999")
    with pytest.raises(buying.PaymentOverMax) as capped:
        buying.choose(required(offer(10_000_000)), [signer(cap=5_000_000)], 50_000_000)
    assert "over the signers' own limit ($0.005000000 a payment)" in capped.value.message
    # A second signer without the limit pays.
    assert buying.choose(required(offer()), [signer(cap=5_000_000), signer("big")], 50_000_000).signer.name == "big"


def test_no_signer_for_the_network_is_its_own_refusal() -> None:
    with pytest.raises(buying.NoPaymentSigner):
        buying.choose(required(offer()), [], 50_000_000)


def test_x402_signs_exactly_the_offer_chosen_and_its_own_facilitator_verifies_it() -> None:
    chosen = offer(10_000_000)
    offered = required(offer(20_000_000, USDC_BASE), chosen)
    payload, header = sign_sync(signer(), offered, chosen)
    assert payload.accepted == chosen and wire.decode_payment_signature(header) == payload
    assert payload.payload["authorization"]["from"] == ADDRESS and payload.payload["authorization"]["value"] == "10000"
    local = LocalFacilitator([USDC_BASE_SEPOLIA])
    try:
        assert local.verify_sync(payload, chosen).is_valid
    finally:
        asyncio.run(local.aclose())


def test_keys_are_checked_and_never_shown() -> None:
    key, addr = key_address("AB" * 32)
    assert key == "0x" + "ab" * 32 and addr.startswith("0x") and len(addr) == 42
    for bad in ("0x12", "zz" * 32, "00" * 32, "ff" * 32):
        with pytest.raises(BadKey) as refused:
            key_address(bad)
        assert bad not in str(refused.value)
    assert KEY not in repr(signer()) and KEY not in str(signer())
