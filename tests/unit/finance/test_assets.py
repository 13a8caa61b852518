"""Accepted assets and the exact conversion of USD nano-dollars to atomic units (core/assets.py)."""

from __future__ import annotations

import pytest
from x402.mechanisms.evm.default_assets import DEFAULT_ASSETS

from agentledger.core.assets import (
    KNOWN_ASSETS,
    USDC_BASE_SEPOLIA,
    AcceptedAsset,
    InexactAmount,
    atomic_to_nanos,
    nanos_to_atomic,
)
from agentledger.core.proofs import PaymentProof


def test_usdc_is_1000_nanos_per_atomic_unit_both_ways() -> None:
    assert USDC_BASE_SEPOLIA.to_atomic(10_000_000) == 10_000  # $0.01
    assert USDC_BASE_SEPOLIA.to_nanos(10_000) == 10_000_000
    assert USDC_BASE_SEPOLIA.to_atomic(1000) == 1
    assert USDC_BASE_SEPOLIA.to_atomic(1_000_000_000) == 1_000_000  # $1


@pytest.mark.parametrize("nanos", [1, 999, 1001, 10_000_500])
def test_a_price_that_is_not_whole_atomic_units_is_refused_not_rounded(nanos: int) -> None:
    with pytest.raises(InexactAmount, match="1000 nano-dollars"):
        USDC_BASE_SEPOLIA.to_atomic(nanos)


def test_assets_with_more_decimals_than_nanos_convert_exactly_one_way() -> None:
    assert nanos_to_atomic(1, 18) == 10**9
    assert atomic_to_nanos(10**9, 18) == 1
    with pytest.raises(InexactAmount):
        atomic_to_nanos(10**9 + 1, 18)
    assert nanos_to_atomic(2_000_000_000, 0) == 2  # a zero-decimal token: whole dollars only
    with pytest.raises(InexactAmount):
        nanos_to_atomic(1_500_000_000, 0)
    assert nanos_to_atomic(5, 9) == atomic_to_nanos(5, 9) == 5


def test_known_assets_carry_the_tokens_own_eip712_domain_as_x402_lists_it() -> None:
    for asset in KNOWN_ASSETS:
        (listed,) = [a for a in DEFAULT_ASSETS[asset.network] if a["asset"].lower() == asset.address.lower()]
        assert (asset.eip712_name, asset.eip712_version, asset.decimals) == (
            listed["name"],
            listed["version"],
            listed["decimals"],
        )
    assert USDC_BASE_SEPOLIA.network == "eip155:84532" and USDC_BASE_SEPOLIA.chain_id == 84532


@pytest.mark.parametrize(
    "network, address, decimals, name",
    [
        ("base-sepolia", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", 6, "USDC"),  # an x402 v1 name, not CAIP-2
        ("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", 6, "USDC"),
        ("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7", 6, "USDC"),  # 39 hex digits
        ("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", -1, "USDC"),
        ("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", 6, ""),
    ],
)
def test_an_asset_is_checked_when_configured(network: str, address: str, decimals: int, name: str) -> None:
    with pytest.raises(ValueError):
        AcceptedAsset(network, address, decimals, name, "2")


def test_an_asset_matches_its_address_in_any_letter_case() -> None:
    assert USDC_BASE_SEPOLIA.matches("eip155:84532", USDC_BASE_SEPOLIA.address.lower())
    assert not USDC_BASE_SEPOLIA.matches("eip155:8453", USDC_BASE_SEPOLIA.address)


def test_a_proof_is_named_by_network_asset_payer_and_nonce_whatever_their_case() -> None:
    nonce = "0x" + "ab" * 32
    payer = "0x" + "Cd" * 20
    one = PaymentProof("eip155:84532", USDC_BASE_SEPOLIA.address, payer, nonce, "10000", 1)
    same = PaymentProof("eip155:84532", USDC_BASE_SEPOLIA.address.lower(), payer.upper(), nonce.upper(), "5", 2)
    assert one.id == same.id and len(one.id) == 64
    assert PaymentProof("eip155:8453", USDC_BASE_SEPOLIA.address, payer, nonce, "10000", 1).id != one.id
    assert PaymentProof("eip155:84532", USDC_BASE_SEPOLIA.address, payer, "0x" + "ac" * 32, "1", 1).id != one.id
