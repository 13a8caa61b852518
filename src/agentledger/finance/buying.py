"""Buying over x402: what a seller's 402 asks for, which of its offers the gateway pays, and what the seller's answer
to the payment says (docs/paid-endpoints.md, "Outbound payments").

Reading the 402 and the settlement is x402's client code (`x402HTTPClientSync`'s header decoding); the choice is
ours, since it is the workspace's money: an offer is payable only in a known asset (core/assets.py) on a network a
signer of the workspace pays on, over the `exact` scheme with an EIP-3009 authorization signed under the token's own
EIP-712 domain, for a validity window no longer than a day; of those, the cheapest within the agent's maximum (and
the signer's own limit) is paid. A refusal here is before anything is signed or reserved.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from x402.http import x402HTTPClientSync
from x402.mechanisms.evm.constants import SCHEME_EXACT
from x402.schemas import PaymentRequired, PaymentRequirements, SettleResponse

from agentledger.core.assets import KNOWN_ASSETS, AcceptedAsset, InexactAmount, is_evm_address
from agentledger.core.errors import AgentLedgerError, PermissionDenied
from agentledger.core.money import MAX_EVENT_COST_NANOS, format_usd
from agentledger.finance.signers import Signer, usable
from agentledger.finance.wire import MAX_TIMEOUT_SECONDS, X402_VERSION

GetHeader = Callable[[str], str | None]
_DECODING = (binascii.Error, UnicodeError, json.JSONDecodeError, ValidationError, ValueError, TypeError, AttributeError)
# The header decoders only: a fresh client per payment does the signing (finance/signers.py).
_READER = x402HTTPClientSync(None)  # type: ignore[arg-type]


class AddressRefused(PermissionDenied):
    """The URL resolves to an address the gateway does not fetch from (private, loopback, link-local, metadata...)."""

    code = "address_refused"


class PaymentRefused(AgentLedgerError):
    """The seller asks for a payment the gateway does not make. 402, as a budget's refusal: nothing was signed,
    reserved or paid, and no retry changes the offer (the SDKs do not retry a 402)."""

    status = 402
    type = "invalid_request_error"
    code = "payment_refused"

    def __init__(self, message: str, *, param: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, param=param)
        self.extra = details or {}

    def details(self) -> dict[str, Any]:
        return self.extra


class PaymentOverMax(PaymentRefused):
    code = "payment_over_max"


class PaymentUnsupported(PaymentRefused):
    code = "payment_unsupported"


class NoPaymentSigner(PaymentRefused):
    code = "no_payment_signer"


@dataclass(frozen=True, slots=True)
class Offer:
    """One payable requirement: its asset and its price in USD nano-dollars."""

    requirements: PaymentRequirements
    asset: AcceptedAsset
    amount_nanos: int


@dataclass(frozen=True, slots=True)
class Choice:
    required: PaymentRequired
    offer: Offer
    signer: Signer

    @property
    def requirements(self) -> PaymentRequirements:
        return self.offer.requirements


def payment_required(get_header: GetHeader) -> PaymentRequired:
    """The seller's PAYMENT-REQUIRED, read by x402's client; PaymentUnsupported unless it is x402 version 2."""
    try:
        required = _READER.get_payment_required_response(get_header)
    except _DECODING:
        raise PaymentUnsupported(
            "The seller answered 402 without an x402 version 2 PAYMENT-REQUIRED header the gateway can read; "
            "nothing was paid."
        ) from None
    if not isinstance(required, PaymentRequired) or required.x402_version != X402_VERSION:
        raise PaymentUnsupported("The seller speaks x402 version 1; the gateway pays version 2 only. Nothing was paid.")
    return required


def why_not(req: PaymentRequirements) -> str | AcceptedAsset:
    """The known asset `req` is payable in, or why it is not payable at all."""
    if req.scheme != SCHEME_EXACT:
        return f"scheme {req.scheme!r} (only 'exact' is paid)"
    asset = next((a for a in KNOWN_ASSETS if a.matches(req.network, req.asset)), None)
    if asset is None:
        return f"asset {req.asset} on {req.network} is not a known asset"
    extra = req.extra or {}
    if extra.get("assetTransferMethod", "eip3009") != "eip3009":
        return f"transfer method {extra.get('assetTransferMethod')!r} (only EIP-3009 authorizations are signed)"
    if (extra.get("name"), extra.get("version")) != (asset.eip712_name, asset.eip712_version):
        return f"EIP-712 domain {extra.get('name')!r}/{extra.get('version')!r} is not the token's own"
    if not 0 < req.max_timeout_seconds <= MAX_TIMEOUT_SECONDS:
        return f"maxTimeoutSeconds {req.max_timeout_seconds} (at most {MAX_TIMEOUT_SECONDS} is signed)"
    if not is_evm_address(req.pay_to):
        return f"payTo {req.pay_to!r} is not an address"
    if not req.amount.isascii() or not req.amount.isdigit() or int(req.amount) <= 0:
        return f"amount {req.amount!r} is not a positive whole number of atomic units"
    return asset


def offers(required: PaymentRequired) -> tuple[list[Offer], list[str]]:
    """The payable offers, and why each other one is not."""
    payable: list[Offer] = []
    refused: list[str] = []
    for req in required.accepts:
        found = why_not(req)
        if isinstance(found, str):
            refused.append(found)
            continue
        try:
            nanos = found.to_nanos(int(req.amount))
        except InexactAmount:
            refused.append(f"amount {req.amount} is not a whole nano-dollar")
            continue
        if nanos > MAX_EVENT_COST_NANOS:
            refused.append(f"amount ${format_usd(nanos)} is past the per-event bound of $1,000,000")
            continue
        payable.append(Offer(req, found, nanos))
    return payable, refused


def choose(required: PaymentRequired, signers: Sequence[Signer], max_nanos: int) -> Choice:
    """The offer to pay and the signer to pay it with: the cheapest payable offer within `max_nanos` and the
    signer's own limit (the first signer, oldest first, that may pay it); else the refusal that says why."""
    payable, refused = offers(required)
    offered = [_summary(r) for r in required.accepts]
    if not payable:
        why = "; ".join(refused) or "it offers nothing"
        raise PaymentUnsupported(
            f"The seller asks for no payment the gateway makes ({why}); nothing was paid.",
            details={"accepts": offered},
        )
    signed = [(o, usable(signers, o.requirements.network)) for o in payable]
    signed = [(o, s) for o, s in signed if s]
    if not signed:
        networks = sorted({o.requirements.network for o in payable})
        raise NoPaymentSigner(
            f"The workspace has no active payment signer for {', '.join(networks)} (POST /api/payment-signers); "
            "nothing was paid.",
            details={"accepts": offered},
        )
    best: tuple[Offer, Signer] | None = None
    cheapest = min(o.amount_nanos for o, _ in signed)
    for offer, candidates in sorted(signed, key=lambda pair: pair[0].amount_nanos):
        if offer.amount_nanos > max_nanos:
            break
        signer = next(
            (s for s in candidates if s.max_payment_nanos is None or offer.amount_nanos <= s.max_payment_nanos), None
        )
        if signer is not None:
            best = (offer, signer)
            break
    if best is None:
        limits = [s.max_payment_nanos for _, c in signed for s in c if s.max_payment_nanos is not None]
        signer_note = ""
        if cheapest <= max_nanos and limits:
            signer_note = f" and over the signers' own limit (${format_usd(max(limits))} a payment)"
        raise PaymentOverMax(
            f"The seller's price is ${format_usd(cheapest)}, over max_amount_usd ${format_usd(max_nanos)}"
            f"{signer_note}; nothing was paid.",
            param="max_amount_usd",
            details={"price_usd": format_usd(cheapest), "max_amount_usd": format_usd(max_nanos), "accepts": offered},
        )
    return Choice(required, best[0], best[1])


def settlement(get_header: GetHeader) -> SettleResponse | None:
    """The seller's PAYMENT-RESPONSE, read by x402's client; None when absent or unreadable."""
    try:
        return _READER.get_payment_settle_response(get_header)
    except _DECODING:
        return None


def refusal_reason(get_header: GetHeader) -> str | None:
    """Why a seller refused a payment, from the `error` of its new PAYMENT-REQUIRED, when it says."""
    try:
        required = _READER.get_payment_required_response(get_header)
    except _DECODING:
        return None
    return getattr(required, "error", None)


def _summary(req: PaymentRequirements) -> dict[str, Any]:
    return {
        "scheme": req.scheme,
        "network": req.network,
        "asset": req.asset,
        "amount": req.amount,
        "pay_to": req.pay_to,
    }
