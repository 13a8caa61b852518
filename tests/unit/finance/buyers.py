"""Buyers for the x402 tests: x402's own client (`x402Client` + the exact EVM client scheme over an eth_account
local key), and, for what that client never makes (an authorization not valid yet, or expired), x402's EIP-712
typed data signed by the same key through x402's EthAccountSigner."""

from __future__ import annotations

import os
import time

from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.mechanisms.evm.eip712 import build_typed_data_for_signing
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.types import ExactEIP3009Authorization, ExactEIP3009Payload, TypedDataField
from x402.mechanisms.evm.utils import get_evm_chain_id
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from agentledger.core.assets import USDC_BASE_SEPOLIA, AcceptedAsset
from agentledger.finance import wire

PRICE_NANOS = 10_000_000  # $0.01: 10,000 atomic units of USDC


def new_account() -> LocalAccount:
    return Account.create()


def address() -> str:
    return str(Account.create().address)


def buyer(account: LocalAccount, *, any_asset: bool = False) -> x402HTTPClient:
    """x402's HTTP client over its core client. `any_asset`: pay in tokens x402 does not list as defaults (its spend
    controls refuse them, and anything above $1, unless told otherwise)."""
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account))
    if any_asset:
        client.set_spend_controls({"allowed_assets": True})
    return x402HTTPClient(client)


def requirements(
    *,
    asset: AcceptedAsset = USDC_BASE_SEPOLIA,
    price_nanos: int = PRICE_NANOS,
    pay_to: str | None = None,
    timeout_s: int = 120,
) -> PaymentRequirements:
    return wire.payment_requirements(
        asset, amount_nanos=price_nanos, pay_to=pay_to or address(), max_timeout_seconds=timeout_s
    )


def offer(*accepts: PaymentRequirements) -> PaymentRequired:
    return wire.payment_required(accepts, resource_url="http://127.0.0.1/x402/ws-test/summarize", description="test")


async def pay(account: LocalAccount, req: PaymentRequirements, *, any_asset: bool = False) -> PaymentPayload:
    """What x402's client pays when our 402 offers `req`: it reads the PAYMENT-REQUIRED header of the answer, signs,
    and sends PAYMENT-SIGNATURE, which is read back as the route reads it."""
    http = buyer(account, any_asset=any_asset)
    answer = wire.payment_required_answer(offer(req))
    required = http.get_payment_required_response(lambda name: answer.headers.get(name))
    payload = await http.create_payment_payload(required)
    (header,) = http.encode_payment_signature_header(payload).values()
    return wire.decode_payment_signature(header)


def signed(
    account: LocalAccount,
    req: PaymentRequirements,
    *,
    valid_after: int = 0,
    valid_before: int | None = None,
    value: str | None = None,
    nonce: str | None = None,
) -> PaymentPayload:
    """An EIP-3009 authorization for `req` with the window and amount given, signed by `account` under the token's
    EIP-712 domain (x402's typed data, x402's signer): what a client with its own clock or intentions sends."""
    auth = ExactEIP3009Authorization(
        from_address=account.address,
        to=req.pay_to,
        value=value or req.amount,
        valid_after=str(valid_after),
        valid_before=str(valid_before if valid_before is not None else int(time.time()) + req.max_timeout_seconds),
        nonce=nonce or "0x" + os.urandom(32).hex(),
    )
    domain, types, primary, message = build_typed_data_for_signing(
        auth, get_evm_chain_id(req.network), req.asset, req.extra["name"], req.extra["version"]
    )
    fields = {name: [TypedDataField(name=f["name"], type=f["type"]) for f in spec] for name, spec in types.items()}
    signature = EthAccountSigner(account).sign_typed_data(domain, fields, primary, message)
    inner = ExactEIP3009Payload(authorization=auth, signature="0x" + signature.hex()).to_dict()
    return PaymentPayload(x402_version=2, payload=inner, accepted=req)
