"""The errors of taking a payment, in the one error tree (core/errors.py), so the gateway renders them as any other.

Why a facilitator's failures are their own errors: a buyer whose proof is fine must not be told it was refused
when the facilitator could not be asked (503, retry shortly), and neither of those is a bad proof (402).
"""

from __future__ import annotations

from agentledger.core.errors import AgentLedgerError, InvalidHeader

RETRY_AFTER_S = 5


class FacilitatorError(AgentLedgerError):
    """The facilitator answered, but not with a verdict we can use (a 4xx, malformed JSON, the wrong shape)."""

    status = 502
    type = "api_error"
    code = "facilitator_error"


class FacilitatorUnavailable(FacilitatorError):
    """The facilitator could not be asked (refused, reset, timed out) or failed (5xx, 429). 503: nothing was
    charged, and a retry shortly may succeed."""

    status = 503
    code = "facilitator_unavailable"
    retry_after = RETRY_AFTER_S


class MalformedPayment(InvalidHeader):
    """The PAYMENT-SIGNATURE header is not an x402 version 2 payment payload (bad base64, JSON or shape).
    x402's own servers answer this with a 402 and the requirements (a client that sent garbage pays anew);
    the route may do the same with this error's message as the 402's `error`."""

    code = "invalid_payment_signature"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="PAYMENT-SIGNATURE")
