"""The local facilitator (finance/local.py): x402's own facilitator, chain-free, verifying what x402's client
signs and refusing what it should; settlement records a synthetic `local:` reference and moves nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from x402.mechanisms.evm.constants import (
    ERR_ASSET_NOT_DEPLOYED_CONTRACT,
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_INVALID_SIGNATURE,
    ERR_NETWORK_MISMATCH,
    ERR_NONCE_ALREADY_USED,
    ERR_RECIPIENT_MISMATCH,
    ERR_UNSUPPORTED_SCHEME,
    ERR_VALID_AFTER_FUTURE,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.schemas import PaymentPayload

from agentledger.core.assets import USDC_BASE, USDC_BASE_SEPOLIA, AcceptedAsset
from agentledger.finance.local import LocalFacilitator
from agentledger.finance.local_chain import FACILITATOR_ADDRESS, LocalChainRevert, LocalChainSigner, MemoryNonceBook
from tests.unit.finance.buyers import address, new_account, pay, requirements, signed

# A token of our own on Base Sepolia: a fresh address per run, so x402's process-wide cache of "this asset is a
# contract" cannot carry an answer from one test to another.
TEST_TOKEN = AcceptedAsset("eip155:84532", address(), 6, "Test Dollar", "1", symbol="TUSD")


@pytest.fixture
async def local() -> AsyncIterator[LocalFacilitator]:
    facilitator = LocalFacilitator([USDC_BASE_SEPOLIA, USDC_BASE, TEST_TOKEN])
    yield facilitator
    await facilitator.aclose()


async def test_a_good_payment_verifies_and_settles_with_a_synthetic_reference(local: LocalFacilitator) -> None:
    account, req = new_account(), requirements()
    payload = await pay(account, req)
    verified = await local.verify(payload, req)
    assert verified.is_valid and verified.payer == account.address
    settled = await local.settle(payload, req)
    assert settled.success and settled.payer == account.address and settled.network == "eip155:84532"
    assert settled.transaction.startswith("local:0x") and len(settled.transaction) == len("local:0x") + 64
    # One authorization, one settlement, as on a chain: the nonce is used now.
    again = await local.settle(payload, req)
    assert not again.success and again.error_reason == ERR_NONCE_ALREADY_USED
    replay = await local.verify(payload, req)
    assert not replay.is_valid and replay.invalid_reason == ERR_NONCE_ALREADY_USED


async def test_every_configured_network_and_asset_is_served(local: LocalFacilitator) -> None:
    for asset in (USDC_BASE, TEST_TOKEN):
        req = requirements(asset=asset)
        payload = await pay(new_account(), req, any_asset=True)
        assert (await local.verify(payload, req)).is_valid
        assert (await local.settle(payload, req)).success


async def test_a_forged_or_damaged_signature_is_refused(local: LocalFacilitator) -> None:
    account, req = new_account(), requirements()
    good = signed(account, req)
    # Signed by someone else in the payer's name.
    forged = signed(new_account(), req, nonce=good.payload["authorization"]["nonce"])
    forged_inner = {**forged.payload, "authorization": good.payload["authorization"]}
    sig = good.payload["signature"]
    damaged_inner = {**good.payload, "signature": sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]}
    for inner in (forged_inner, damaged_inner):
        payload = good.model_copy(update={"payload": inner})
        verified = await local.verify(payload, req)
        assert not verified.is_valid and verified.invalid_reason == ERR_INVALID_SIGNATURE
        settled = await local.settle(payload, req)
        assert not settled.success and settled.transaction == ""
    assert (await local.verify(good, req)).is_valid  # the refusals used nothing up


async def test_a_payment_for_another_amount_recipient_or_asset_is_refused(local: LocalFacilitator) -> None:
    account, req = new_account(), requirements()
    payload = await pay(account, req)
    dearer = requirements(pay_to=req.pay_to, price_nanos=20_000_000)
    elsewhere = requirements()
    other_token = requirements(pay_to=req.pay_to, asset=TEST_TOKEN)
    cases = [
        (dearer, ERR_AUTHORIZATION_VALUE_MISMATCH),
        (elsewhere, ERR_RECIPIENT_MISMATCH),
        # Signed under USDC's domain: under another token's, the signature recovers to someone else.
        (other_token, ERR_INVALID_SIGNATURE),
        (requirements(pay_to=req.pay_to, asset=USDC_BASE), ERR_NETWORK_MISMATCH),
    ]
    for asked, reason in cases:
        verified = await local.verify(payload, asked)
        assert (verified.is_valid, verified.invalid_reason) == (False, reason)
        assert not (await local.settle(payload, asked)).success
    # The amount is the authorization's own: a payload claiming the dearer price in `accepted` is still short.
    relabelled = payload.model_copy(update={"accepted": dearer})
    assert (await local.verify(relabelled, dearer)).invalid_reason == ERR_AUTHORIZATION_VALUE_MISMATCH
    assert (await local.verify(payload, req)).is_valid


async def test_an_unknown_token_is_not_a_contract_on_the_local_chain(local: LocalFacilitator) -> None:
    unknown = AcceptedAsset("eip155:84532", address(), 6, "Nobody's Dollar", "1")
    req = requirements(asset=unknown)
    payload = await pay(new_account(), req, any_asset=True)
    verified = await local.verify(payload, req)
    assert not verified.is_valid and verified.invalid_reason == ERR_ASSET_NOT_DEPLOYED_CONTRACT


async def test_expired_and_not_yet_valid_authorizations_are_refused(local: LocalFacilitator) -> None:
    account, req = new_account(), requirements()
    now = int(time.time())
    cases = [
        (signed(account, req, valid_before=now - 10), ERR_VALID_BEFORE_EXPIRED),
        (signed(account, req, valid_before=now + 3), ERR_VALID_BEFORE_EXPIRED),  # inside x402's 6 s margin
        (signed(account, req, valid_after=now + 600), ERR_VALID_AFTER_FUTURE),
    ]
    for payload, reason in cases:
        verified = await local.verify(payload, req)
        assert (verified.is_valid, verified.invalid_reason) == (False, reason)
        settled = await local.settle(payload, req)
        assert (settled.success, settled.error_reason) == (False, reason)
    assert (await local.verify(signed(account, req, valid_after=now - 600), req)).is_valid


async def test_what_is_not_an_eip3009_authorization_is_refused_not_raised(local: LocalFacilitator) -> None:
    req = requirements()
    good = signed(new_account(), req)
    permit2 = good.model_copy(update={"payload": {"permit2Authorization": {"witness": {}}, "signature": "0x00"}})
    verified = await local.verify(permit2, req)
    assert not verified.is_valid and verified.invalid_reason == ERR_UNSUPPORTED_SCHEME
    solana = good.model_copy(update={"accepted": good.accepted.model_copy(update={"network": "solana:mainnet"})})
    assert (await local.verify(solana, req)).invalid_reason == ERR_UNSUPPORTED_SCHEME
    garbage = {**good.payload, "authorization": {**good.payload["authorization"], "value": "lots"}}
    refused = await local.verify(good.model_copy(update={"payload": garbage}), req)
    assert not refused.is_valid and refused.invalid_reason
    assert not (await local.settle(good.model_copy(update={"payload": garbage}), req)).success


async def test_two_concurrent_settlements_of_one_proof_settle_it_once(local: LocalFacilitator) -> None:
    req = requirements()
    payload = await pay(new_account(), req)
    results = await asyncio.gather(*(local.settle(payload, req) for _ in range(4)))
    assert sorted(r.success for r in results) == [False, False, False, True]
    assert {r.error_reason for r in results if not r.success} == {ERR_NONCE_ALREADY_USED}


async def test_verification_runs_on_the_pool_not_the_event_loop(local: LocalFacilitator) -> None:
    threads: list[str] = []

    def record(_context: Any) -> None:
        threads.append(threading.current_thread().name)

    for facilitator in local.x402.values():
        facilitator.on_before_verify(record).on_before_settle(record)
    req = requirements()
    payload: PaymentPayload = await pay(new_account(), req)
    assert (await local.verify(payload, req)).is_valid
    assert (await local.settle(payload, req)).success
    assert len(threads) == 2 and all(name.startswith("x402-local") for name in threads)
    assert threading.current_thread().name not in threads


def test_the_local_chain_answers_as_a_token_contract_would() -> None:
    nonces = MemoryNonceBook()
    chain = LocalChainSigner([USDC_BASE_SEPOLIA, TEST_TOKEN], nonces)
    assert chain.get_chain_id() == 84532 and chain.get_addresses() == [FACILITATOR_ADDRESS]
    assert chain.get_code(USDC_BASE_SEPOLIA.address.lower()) and not chain.get_code(address())
    assert chain.read_contract(TEST_TOKEN.address, [], "name") == "Test Dollar"
    assert chain.read_contract(TEST_TOKEN.address, [], "version") == "1"
    payer, nonce = address(), bytes(32)
    assert chain.read_contract(USDC_BASE_SEPOLIA.address, [], "authorizationState", payer, nonce) is False
    assert nonces.use(84532, USDC_BASE_SEPOLIA.address, payer, nonce, int(time.time()) + 60)
    assert chain.read_contract(USDC_BASE_SEPOLIA.address, [], "authorizationState", payer.lower(), nonce) is True
    assert not nonces.use(84532, USDC_BASE_SEPOLIA.address.lower(), payer, nonce, int(time.time()) + 60)
    with pytest.raises(LocalChainRevert):
        chain.read_contract(address(), [], "balanceOf", payer)  # no contract there
    with pytest.raises(LocalChainRevert):
        chain.send_transaction(address(), b"")  # no deployments
    with pytest.raises(ValueError):
        LocalChainSigner([USDC_BASE_SEPOLIA, USDC_BASE], nonces)  # one chain per signer


def test_the_nonce_book_forgets_only_what_can_never_settle_again() -> None:
    now = [1000.0]
    book = MemoryNonceBook(clock=lambda: now[0])
    assert book.use(1, "0xT", "0xP", b"a", valid_before=1010)
    assert book.use(1, "0xT", "0xP", b"b", valid_before=5000)
    now[0] = 2000.0
    assert book.use(1, "0xT", "0xP", b"c", valid_before=9000)  # purges `a`, whose window closed
    assert not book.used(1, "0xT", "0xP", b"a")
    assert book.used(1, "0xT", "0xP", b"b") and book.used(1, "0xt", "0xp", b"c")


def test_the_local_facilitator_needs_an_asset() -> None:
    with pytest.raises(ValueError):
        LocalFacilitator([])


def test_the_simulated_transfer_recovers_the_signature_itself() -> None:
    """The local token contract checks the EIP-712 signature again (eth_account), as FiatTokenV2 does on chain."""
    chain = LocalChainSigner([USDC_BASE_SEPOLIA], MemoryNonceBook())
    account, req = new_account(), requirements()
    auth = signed(account, req).payload
    forged = signed(new_account(), req, nonce=auth["authorization"]["nonce"]).payload

    def call(signature_hex: str) -> object:
        a = auth["authorization"]
        sig = bytes.fromhex(signature_hex.removeprefix("0x"))
        args = (a["from"], a["to"], int(a["value"]), int(a["validAfter"]), int(a["validBefore"]))
        vrs = (sig[64], sig[:32], sig[32:64])
        nonce = bytes.fromhex(a["nonce"].removeprefix("0x"))
        return chain.read_contract(req.asset, [], "transferWithAuthorization", *args, nonce, *vrs)

    assert call(auth["signature"]) is None
    with pytest.raises(LocalChainRevert, match="invalid signature"):
        call(forged["signature"])
