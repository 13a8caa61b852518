"""What makes an x402 payment proof one proof: its identity for the single-use claim (store/finance.py). Pure.

An EIP-3009 authorization can move its tokens once: the token contract records `(payer, nonce)` as used. The
claim mirrors that, per workspace: (network, asset, payer, nonce) names the proof whatever else the buyer sends
with it, so a replay with a different body, resource or header encoding is still the same proof. Addresses and
the nonce are hex, compared without regard to letter case (EIP-55 checksums only change the case).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PaymentProof:
    network: str  # CAIP-2
    asset: str  # token contract address
    payer: str  # the authorization's `from`
    nonce: str  # the authorization's 32-byte nonce, 0x-hex
    amount: str  # atomic units, as authorized (a decimal string: it may pass 2^63)
    valid_before: int  # unix seconds: past it the proof can never be settled

    @property
    def id(self) -> str:
        """sha256 of the identity, lower-cased: the claim's key within a workspace (64 hex)."""
        key = "|".join((self.network, self.asset.lower(), self.payer.lower(), self.nonce.lower()))
        return hashlib.sha256(key.encode()).hexdigest()
