"""The refusals of a paid call (POST /x402/{workspace}/{slug}), in the one error tree (core/errors.py), so the
route renders them in its one JSON shape: `{"error": {"message", "type", "code", "param"[, "reason"]}}`
(docs/paid-endpoints.md, "Refusals").

A 402 asks for a payment: before the workflow ran it carries x402's PAYMENT-REQUIRED header with the endpoint's
requirements (the route adds it), and `reason` is x402's reason code when there is one (also the `error` of
PAYMENT-REQUIRED), so a client can pay anew; after it ran (settlement failed) it carries PAYMENT-RESPONSE with the
failed settlement, as x402's own server answers. What paying again cannot fix is not a 402: a payer the endpoint
does not sell to (403), a limit (429), a facilitator that cannot be asked (503, finance/errors.py).
"""

from __future__ import annotations

from typing import Any

from agentledger.core.errors import AgentLedgerError, InvalidRequest, PermissionDenied

# x402's own reason codes (x402.mechanisms.evm.constants), named here so core-free code can compare them.
NO_MATCHING_REQUIREMENTS = "No matching payment requirements"  # what x402's HTTP server says


class PaymentRequired(AgentLedgerError):
    """No payment, or one that does not pay for this call: pay (again) with the requirements of PAYMENT-REQUIRED."""

    status = 402
    type = "payment_required"
    code = "payment_required"

    def __init__(self, message: str, *, reason: str | None = None, param: str | None = "PAYMENT-SIGNATURE") -> None:
        super().__init__(message, param=param)
        self.reason = reason

    def details(self) -> dict[str, Any]:
        return {} if self.reason is None else {"reason": self.reason}


class InvalidPayment(PaymentRequired):
    """PAYMENT-SIGNATURE is not an x402 version 2 `exact` EVM payment (bad base64, JSON, shape)."""

    code = "invalid_payment"


class PaymentMismatch(PaymentRequired):
    """The payment is for other requirements: another amount, asset, network, recipient or timeout."""

    code = "payment_mismatch"


class PaymentExpiresTooSoon(PaymentRequired):
    """The authorization ends before the workflow's deadline plus the settlement's reserve (core/paid_endpoints.py)."""

    code = "payment_expires_too_soon"


class PaymentInvalid(PaymentRequired):
    """The facilitator refused the proof: `reason` says why (a bad signature, a wrong amount, expired, ...)."""

    code = "payment_invalid"


class PaymentAlreadyUsed(PaymentRequired):
    """A proof is single-use: this one was claimed before (on any replica), or the chain has its nonce."""

    code = "payment_already_used"


class SettlementFailed(PaymentRequired):
    """The workflow ran, and settling its payment failed: no output, nothing charged."""

    code = "settlement_failed"


class PayerNotAllowed(PermissionDenied):
    """The endpoint's policy names its payers, and this one is not among them."""

    code = "payer_not_allowed"


class InvalidInput(InvalidRequest):
    """The body does not match the endpoint's input schema; `param` is the JSON path of the offending member."""

    code = "invalid_input"
