"""The one error tree. Every error a client can see is one of these; `gateway.responses` renders them.

    AgentLedgerError                      500 internal_error
    ├── InvalidRequest                    400 invalid_request_error
    │   ├── InvalidHeader                 400 invalid_request_error / invalid_header
    │   ├── InvalidJSON                   400 invalid_request_error / invalid_json
    │   ├── UnknownModel                  404 invalid_request_error / model_not_found
    │   ├── UnknownAgent                  400 invalid_request_error / agent_not_found
    │   └── RequestTooLarge               413 invalid_request_error / request_too_large
    ├── AuthenticationError               401 authentication_error / invalid_api_key
    ├── BudgetExceeded                    402 budget_exceeded / budget_exceeded (names scope, limit, spent, reserved)
    ├── RateLimited                       429 rate_limit_error / rate_limited (+ Retry-After)
    ├── PermissionDenied                  403 permission_error
    │   ├── ModelNotAllowed               403 permission_error / model_not_allowed
    │   ├── AgentMismatch                 403 permission_error / agent_mismatch
    │   ├── ApprovalRequired              403 permission_error / approval_required (+ approval_id, Retry-After)
    │   ├── ApprovalDenied                403 permission_error / approval_denied (+ approval_id; the approver's reason)
    │   └── RunCancelled                  403 permission_error / run_cancelled
    ├── RunPaused                         423 run_paused / run_paused (+ Retry-After)
    ├── NotFound                          404 not_found_error
    ├── MethodNotAllowed                  405 invalid_request_error / method_not_allowed
    ├── ClientClosed                      499 client_closed / client_closed_request (recorded, never sent)
    ├── Conflict                          409 conflict_error
    │   └── IdempotencyKeyReused          409 conflict_error / idempotency_key_reused
    ├── ReplayUnavailable                 410 invalid_request_error / replay_unavailable
    ├── StoreUnavailable                  503 api_error / store_unavailable (+ Retry-After)
    └── UpstreamError                     502 upstream_error
        ├── UpstreamTimeout               504 upstream_error / upstream_timeout
        ├── UpstreamRateLimited           429 upstream_error / upstream_rate_limited
        ├── UpstreamUnavailable           502 upstream_error / upstream_unavailable  (refused, reset)
        ├── UpstreamBadResponse           502 upstream_error / upstream_bad_response (5xx, garbage)
        └── UpstreamRejected              upstream status / upstream_rejected (4xx passed through)

`status`, `type` and `code` are class attributes so one renderer can serve all of them; `retry_after`
(seconds), when set, becomes a `Retry-After` header; `details()` are fields a client needs besides the message
(an approval's id), rendered next to `code` in every wire format.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar


class AgentLedgerError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    code: ClassVar[str | None] = None
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str, *, param: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status  # type: ignore[misc]

    def details(self) -> dict[str, Any]:
        return {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        return {"error": {**error, **self.details()}}


class InvalidRequest(AgentLedgerError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidHeader(InvalidRequest):
    code = "invalid_header"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class UnknownModel(InvalidRequest):
    status = 404
    code = "model_not_found"


class UnknownAgent(InvalidRequest):
    code = "agent_not_found"


class RequestTooLarge(InvalidRequest):
    """The body passed `max_body_bytes`: refused before it is read in full (gateway/limits.py)."""

    status = 413
    code = "request_too_large"


class AuthenticationError(AgentLedgerError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class BudgetExceeded(AgentLedgerError):
    """A budget that blocks (`block_requests`, `pause_all`, `disable_key`) has too little left for this call.
    402, not 429: the SDKs retry a 429 by themselves, and waiting does not refill a budget before its window."""

    status = 402
    type = "budget_exceeded"
    code = "budget_exceeded"


class RateLimited(AgentLedgerError):
    """A rate, token or concurrency limit (or a `soft_throttle` budget past its limit): retry after `retry_after`."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = max(1, retry_after)  # type: ignore[misc]


class PermissionDenied(AgentLedgerError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class PolicyBlocked(PermissionDenied):
    """A policy's rule or setting refused the call; the message names the policy, its version and the rule."""

    code = "policy_blocked"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class AgentMismatch(PermissionDenied):
    code = "agent_mismatch"


class ApprovalRequired(PermissionDenied):
    """An escalated call waited `waited_ms` for a human and none decided: resend the same `x-request-id` after
    `retry_after` (it is held again, and proceeds once approved). 403, not 409/429: the SDKs must not retry it
    by themselves. `created`: this call opened the approval."""

    code = "approval_required"

    def __init__(
        self, message: str, *, approval_id: str, retry_after: int, created: bool = False, waited_ms: int = 0
    ) -> None:
        super().__init__(message)
        self.approval_id = approval_id
        self.retry_after = max(1, retry_after)  # type: ignore[misc]
        self.created = created
        self.waited_ms = waited_ms

    def details(self) -> dict[str, Any]:
        return {"approval_id": self.approval_id}


class ApprovalDenied(PermissionDenied):
    """A human denied this call (`reason`: the approver's comment); resending it is refused the same way."""

    code = "approval_denied"

    def __init__(
        self,
        message: str,
        *,
        approval_id: str,
        reason: str | None,
        decided_by: str | None,
        decided_at: datetime | None,
        created: bool = False,
        waited_ms: int = 0,
    ) -> None:
        super().__init__(message)
        self.approval_id = approval_id
        self.reason = reason
        self.decided_by = decided_by
        self.decided_at = decided_at
        self.created = created
        self.waited_ms = waited_ms

    def details(self) -> dict[str, Any]:
        return {"approval_id": self.approval_id}


class RunCancelled(PermissionDenied):
    """The call's run was cancelled (POST /api/runs/{id}/cancel): no call of it is forwarded again. 403, not a
    retried status: a retry cannot succeed."""

    code = "run_cancelled"


class RunPaused(AgentLedgerError):
    """The call's run is paused and was not resumed while the call waited (`run_pause_wait_s`)."""

    status = 423
    type = "run_paused"
    code = "run_paused"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)  # type: ignore[misc]


class NotFound(AgentLedgerError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class MethodNotAllowed(AgentLedgerError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ClientClosed(AgentLedgerError):
    """The client hung up before the answer was complete (nginx's 499). Only ever recorded."""

    status = 499
    type = "client_closed"
    code = "client_closed_request"


class Conflict(AgentLedgerError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class ReplayUnavailable(AgentLedgerError):
    """A repeat of an x-request-id whose call completed (and was charged) but whose response was not kept
    (alephant-omit-response, or pruned by retention): it cannot be replayed and is never forwarded again. 410, not
    409: the SDKs retry a 409 by themselves, and no retry of this id can succeed."""

    status = 410
    type = "invalid_request_error"
    code = "replay_unavailable"


class RunConflict(Conflict):
    """A step batch names a different agent, session or workflow than the run already has."""

    code = "run_conflict"


class StoreUnavailable(AgentLedgerError):
    """The database did not answer (down, unreachable, pool exhausted): the call cannot go on, but a retry
    shortly may succeed. 503 is one of the statuses the official SDKs retry by themselves."""

    status = 503
    type = "api_error"
    code = "store_unavailable"
    retry_after = 2


class StoreBusy(StoreUnavailable):
    """Every connection of the pool stayed in use past its timeout: this process is overloaded, the database is
    not known to be down. What fails open in an outage (an idempotency claim) waits instead."""


class UpstreamError(AgentLedgerError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    # Worth another try, here or at a fallback: 429, 5xx, timeouts, refused and dropped connections.
    retryable: ClassVar[bool] = True
    # What the provider said, when it answered: its status, and the wait it asked for (Retry-After), in seconds.
    provider_status: int | None = None
    wait: float | None = None


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    status = 429
    code = "upstream_rate_limited"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamBadResponse(UpstreamError):
    code = "upstream_bad_response"


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself (4xx); its status is passed through."""

    retryable = False

    code = "upstream_rejected"
