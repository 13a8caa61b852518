"""A workspace's payment signer: its key, what it may pay, and signing one x402 payment with x402's own client.

Why x402's client and not our own EIP-712 code: a buyer's payload must be exactly what x402 resource servers and
facilitators expect (its typed data, its nonce and validity window, its wire encoding), and the package is the
reference for that. So a payment is x402's `x402ClientSync` with the `exact` EVM client scheme over an eth_account
key, asked to pay the one requirement the gateway chose, with x402's spend controls set to that asset and that
amount: x402 itself refuses to sign anything else (another token, a larger amount), a second guard behind ours.

Signing is pure Python secp256k1 (no C backend is installed): milliseconds of CPU, so it runs off the event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

from eth_account import Account
from x402 import SpendControlAsset, SpendControls, x402ClientSync
from x402.http import x402HTTPClientSync
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from agentledger.core.assets import KNOWN_ASSETS

_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
KNOWN_NETWORKS = tuple(dict.fromkeys(a.network for a in KNOWN_ASSETS))


class BadKey(ValueError):
    """Not a secp256k1 private key (32 bytes of hex, within the curve's order)."""


def key_address(private_key: str) -> tuple[str, str]:
    """(the key as 0x + 64 lowercase hex, its EIP-55 address), or BadKey. The key never appears in the message."""
    if not isinstance(private_key, str) or not _KEY.fullmatch(private_key):
        raise BadKey("'private_key' must be 32 bytes of hex (64 hex digits, 0x optional).")
    key = "0x" + private_key.removeprefix("0x").lower()
    try:
        account = Account.from_key(key)
    except (ValueError, TypeError):  # zero, or not below the curve's order
        raise BadKey("'private_key' is not a valid secp256k1 private key.") from None
    return key, str(account.address)


def new_key() -> tuple[str, str]:
    """A fresh random key (eth_account reads the OS's randomness) and its address."""
    account = Account.create()
    return "0x" + bytes(account.key).hex(), str(account.address)


@dataclass(frozen=True, slots=True)
class Signer:
    """A signer as one payment uses it: `key` decrypted in memory for that payment only."""

    id: str
    name: str
    address: str
    networks: tuple[str, ...]
    max_payment_nanos: int | None
    key: str

    def __repr__(self) -> str:  # never the key, in a log or a traceback
        return f"Signer(id={self.id!r}, name={self.name!r}, address={self.address!r})"


def sign_sync(signer: Signer, required: PaymentRequired, chosen: PaymentRequirements) -> tuple[PaymentPayload, str]:
    """The PaymentPayload for `chosen` (one of `required.accepts`) and its PAYMENT-SIGNATURE header value.

    x402 is offered `chosen` alone, and its spend controls allow exactly its asset up to exactly its amount."""
    client = x402ClientSync()
    register_exact_evm_client(client, EthAccountSigner(Account.from_key(signer.key)), networks=[chosen.network])
    cap: SpendControlAsset = {"network": chosen.network, "asset": chosen.asset, "max_amount_per_payment": chosen.amount}
    client.set_spend_controls(SpendControls(allowed_assets=[cap], max_amount_per_payment=False))
    offer = required.model_copy(update={"accepts": [chosen]})
    payload = client.create_payment_payload(offer)
    if not isinstance(payload, PaymentPayload):  # a version 1 offer is refused before this (buying.py)
        raise TypeError("x402 made a version 1 payload for a version 2 offer")
    (header,) = x402HTTPClientSync(client).encode_payment_signature_header(payload).values()
    return payload, header


async def sign(signer: Signer, required: PaymentRequired, chosen: PaymentRequirements) -> tuple[PaymentPayload, str]:
    return await asyncio.to_thread(sign_sync, signer, required, chosen)


def networks_field(value: object) -> tuple[str, ...]:
    """A signer's `networks`: a non-empty list of the known networks (core/assets.py), or every one when None."""
    if value is None:
        return KNOWN_NETWORKS
    if (
        not isinstance(value, list)
        or not value
        or any(not isinstance(n, str) or n not in KNOWN_NETWORKS for n in value)
    ):
        raise ValueError(
            f"'networks' must be a non-empty list of the networks payments are made on ({', '.join(KNOWN_NETWORKS)}), "
            "or omitted for all of them."
        )
    return tuple(dict.fromkeys(value))


def usable(signers: Sequence[Signer], network: str) -> list[Signer]:
    return [s for s in signers if network in s.networks]
