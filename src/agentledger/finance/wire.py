"""x402 version 2 on the wire: what a paid endpoint asks for, the 402 that asks, the proof a buyer sends back,
and the settlement header of the answer (docs/paid-endpoints.md, "x402 version 2 on the wire").

Why a module of ours over x402's HTTP server: that server wants its routes, a facilitator fetched at start-up
(`/supported`) and its own request adapter; a paid endpoint is a row in our store with its own checks between
verification and settlement. So the steps are ours and every type, encoding and comparison is x402's: the
header codecs of `x402.http.utils`, its schemas, and its resource server's matching of a payload's `accepted`
against what was offered. The answers are the ones x402's HTTP server gives (status, headers, body).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from x402.http.constants import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, PAYMENT_SIGNATURE_HEADER
from x402.http.utils import (
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
)
from x402.http.x402_http_server_base import PAYMENT_REQUIRED_CACHE_CONTROL
from x402.mechanisms.evm.constants import SCHEME_EXACT
from x402.mechanisms.evm.exact import register_exact_evm_server
from x402.mechanisms.evm.types import ExactEIP3009Payload
from x402.mechanisms.evm.utils import normalize_address
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, SettleResponse
from x402.server import x402ResourceServerSync

from agentledger.core.assets import AcceptedAsset, is_evm_address
from agentledger.core.proofs import PaymentProof
from agentledger.finance.errors import MalformedPayment

__all__ = [
    "PAYMENT_REQUIRED_HEADER",
    "PAYMENT_RESPONSE_HEADER",
    "PAYMENT_SIGNATURE_HEADER",
    "Answer",
    "decode_payment_signature",
    "matching_requirements",
    "payment_required",
    "payment_required_answer",
    "payment_requirements",
    "proof_of",
    "settlement_failed_answer",
    "settlement_headers",
]

X402_VERSION = 2
MAX_TIMEOUT_SECONDS = 24 * 3600  # an authorization valid for longer is a standing IOU, not a payment for a call
# A version 2 payload is about 1 KB of base64; anything far larger is not one, and is refused before decoding.
MAX_SIGNATURE_HEADER = 16 * 1024
_HEX = frozenset("0123456789abcdefABCDEF")

# Only for `find_matching_requirements`: no facilitator, never initialized, never asked to verify or settle.
_MATCHER = register_exact_evm_server(x402ResourceServerSync())


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer of the x402 flow, framework-free: the route turns it into a response."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


def payment_requirements(
    asset: AcceptedAsset, *, amount_nanos: int, pay_to: str, max_timeout_seconds: int
) -> PaymentRequirements:
    """The `exact` scheme's requirements for a price in USD nano-dollars, paid in `asset` to `pay_to`, signed for
    at most `max_timeout_seconds`. Raises InexactAmount (core/assets.py) for a price that is not a whole number
    of the asset's atomic units, ValueError for the rest. The EIP-712 domain goes in `extra`, as x402's EVM
    server puts it there: clients sign under it, facilitators verify under it."""
    atomic = asset.to_atomic(amount_nanos)
    if atomic <= 0:
        raise ValueError("a price must be positive")
    if not is_evm_address(pay_to):
        raise ValueError(f"pay-to address {pay_to!r} is not 0x followed by 40 hex digits")
    if not 0 < max_timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"maxTimeoutSeconds must be between 1 and {MAX_TIMEOUT_SECONDS}")
    return PaymentRequirements(
        scheme=SCHEME_EXACT,
        network=asset.network,
        asset=normalize_address(asset.address),
        amount=str(atomic),
        pay_to=normalize_address(pay_to),
        max_timeout_seconds=max_timeout_seconds,
        extra={"name": asset.eip712_name, "version": asset.eip712_version},
    )


def payment_required(
    accepts: Sequence[PaymentRequirements],
    *,
    resource_url: str,
    description: str | None = None,
    mime_type: str | None = "application/json",
    error: str | None = None,
) -> PaymentRequired:
    """The PaymentRequired document of a 402: what is accepted, for which resource, and why the last attempt (if
    any) failed (`error`, x402's reason codes such as `invalid_exact_evm_payload_signature`)."""
    resource = ResourceInfo(url=resource_url, description=description, mime_type=mime_type)
    return PaymentRequired(x402_version=X402_VERSION, error=error, resource=resource, accepts=list(accepts))


def payment_required_answer(required: PaymentRequired, body: dict[str, Any] | None = None) -> Answer:
    """The 402 as x402's HTTP server sends it to an API client: the document base64-encoded in PAYMENT-REQUIRED,
    never cached, and a JSON body (x402's default is `{}`; a route may say more in it)."""
    headers = {
        "Content-Type": "application/json",
        PAYMENT_REQUIRED_HEADER: encode_payment_required_header(required),
        "Cache-Control": PAYMENT_REQUIRED_CACHE_CONTROL,
    }
    return Answer(402, headers, body or {})


def decode_payment_signature(value: str) -> PaymentPayload:
    """A PAYMENT-SIGNATURE header → x402's version 2 PaymentPayload; MalformedPayment for anything else."""
    if len(value) > MAX_SIGNATURE_HEADER:
        raise MalformedPayment(f"PAYMENT-SIGNATURE is longer than {MAX_SIGNATURE_HEADER} characters")
    try:
        payload = decode_payment_signature_header(value)
    except (binascii.Error, UnicodeError, json.JSONDecodeError) as exc:
        raise MalformedPayment("PAYMENT-SIGNATURE is not base64-encoded JSON") from exc
    except ValidationError as exc:
        fields = ", ".join(sorted({".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors()}))
        raise MalformedPayment(f"PAYMENT-SIGNATURE is not an x402 payment payload (invalid: {fields})") from exc
    except (AttributeError, TypeError, ValueError) as exc:  # JSON that is not an object, a version not a number
        raise MalformedPayment("PAYMENT-SIGNATURE is not an x402 payment payload") from exc
    if not isinstance(payload, PaymentPayload) or payload.x402_version != X402_VERSION:
        raise MalformedPayment("PAYMENT-SIGNATURE must be an x402 version 2 payment payload")
    return payload


def matching_requirements(
    accepts: Sequence[PaymentRequirements], payload: PaymentPayload
) -> PaymentRequirements | None:
    """The offered requirements the payload says it pays (scheme, network, asset, amount, recipient, timeout and
    the EIP-712 domain all equal, by x402's resource server's own rule), or None: then the payment is for
    something else, and the 402 says "No matching payment requirements" as x402's server does."""
    return _MATCHER.find_matching_requirements(list(accepts), payload)


def proof_of(payload: PaymentPayload) -> PaymentProof:
    """The proof's identity for the single-use claim (core/proofs.py): an `exact` EIP-3009 authorization's payer
    and nonce on the network and asset it says it pays. MalformedPayment when the inner payload is not one."""
    inner = payload.payload
    if not isinstance(inner.get("authorization"), dict):
        raise MalformedPayment("the payment payload carries no EIP-3009 authorization")
    auth = ExactEIP3009Payload.from_dict(inner).authorization
    nonce = auth.nonce if isinstance(auth.nonce, str) else ""
    if not (len(nonce) == 66 and nonce.startswith("0x") and set(nonce[2:]) <= _HEX):
        raise MalformedPayment("the authorization's nonce is not 32 bytes of 0x-hex")
    if not isinstance(auth.from_address, str) or not is_evm_address(auth.from_address):
        raise MalformedPayment("the authorization's `from` is not an address")
    try:
        valid_before = int(auth.valid_before)
        amount = int(auth.value)
    except (TypeError, ValueError) as exc:
        raise MalformedPayment("the authorization's value and validBefore must be integers") from exc
    accepted = payload.accepted
    return PaymentProof(
        network=accepted.network,
        asset=accepted.asset,
        payer=auth.from_address,
        nonce=nonce,
        amount=str(amount),
        valid_before=valid_before,
    )


def settlement_headers(settle: SettleResponse) -> dict[str, str]:
    """The PAYMENT-RESPONSE header of a paid answer, as x402's HTTP server adds it."""
    return {PAYMENT_RESPONSE_HEADER: encode_payment_response_header(settle)}


def settlement_failed_answer(settle: SettleResponse) -> Answer:
    """The 402 x402's HTTP server sends when settlement failed after the handler ran: the failed settlement in
    PAYMENT-RESPONSE, no output."""
    headers = {
        "Content-Type": "application/json",
        **settlement_headers(settle),
        "Cache-Control": PAYMENT_REQUIRED_CACHE_CONTROL,
    }
    return Answer(402, headers)
