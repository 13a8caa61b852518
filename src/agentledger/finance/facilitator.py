"""Facilitators: who checks a payment proof and settles it, behind one small protocol of ours.

Why a protocol of ours and not x402's `FacilitatorClient`: ours says what a failure means. A facilitator that
cannot be asked raises FacilitatorUnavailable (the route answers 503, nothing charged); one that answers with
something unusable raises FacilitatorError (502); a proof it refuses is a VerifyResponse / SettleResponse with
its reason (the route answers 402). Two implementations:

* `HttpFacilitator` (here): x402's HTTP facilitator client, to a URL that must always be given. x402's own
  default (its public facilitator) is never used: a gateway must not send its buyers' proofs to a third party
  nobody configured.
* `LocalFacilitator` (finance/local.py): x402's facilitator with a chain-free signer; moves no money.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from x402.http.facilitator_client import FacilitatorConfig, FacilitatorResponseError, HTTPFacilitatorClient
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse

from agentledger.finance.errors import FacilitatorError, FacilitatorUnavailable

DEFAULT_TIMEOUT_S = 10.0


class Facilitator(Protocol):
    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        """Is this proof good for these requirements? Moves nothing."""
        ...

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        """Move the money the proof authorizes (or, locally, record that it would have)."""
        ...

    async def aclose(self) -> None: ...


class _FacilitatorDown(Exception):
    """Raised from the response hook for a status that means "ask again later", before x402 reads the body."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _refuse_unavailable(response: httpx.Response) -> None:
    if response.status_code >= 500 or response.status_code == 429:
        raise _FacilitatorDown(response.status_code)


class HttpFacilitator:
    """A facilitator service at `url` (its `/verify` and `/settle`), through x402's HTTP facilitator client.

    The HTTP client is ours: a bounded timeout (x402's default is 90 s), no redirects (a facilitator that
    redirects a payment proof elsewhere is not the one configured), and a response hook that tells a facilitator
    that is down (5xx, 429) from one that refused the request (4xx): x402 reports both as a ValueError."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, headers: dict[str, str] | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"facilitator URL {url!r} must be an absolute http(s) URL")
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            headers=headers or {},
            event_hooks={"response": [_refuse_unavailable]},
        )
        self._client = HTTPFacilitatorClient(FacilitatorConfig(url=self.url, timeout=timeout_s, http_client=self._http))

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        result: VerifyResponse = await self._call("verify", self._client.verify, payload, requirements)
        return result

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        result: SettleResponse = await self._call("settle", self._client.settle, payload, requirements)
        return result

    async def _call(self, what: str, call: Any, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        # The messages name the operation, never the URL: a facilitator's address is configuration, not an answer.
        try:
            return await call(payload, requirements)
        except _FacilitatorDown as exc:
            raise FacilitatorUnavailable(f"The payment facilitator failed ({exc.status}) to {what}.") from exc
        except httpx.TimeoutException as exc:
            raise FacilitatorUnavailable(f"The payment facilitator did not answer in time to {what}.") from exc
        except httpx.TransportError as exc:
            raise FacilitatorUnavailable(f"The payment facilitator could not be reached to {what}.") from exc
        except FacilitatorResponseError as exc:
            raise FacilitatorError(f"The payment facilitator's {what} answer was not understood.") from exc
        except (httpx.HTTPError, ValueError) as exc:  # x402: "Facilitator verify failed (4xx): …"
            raise FacilitatorError(f"The payment facilitator refused the {what} request.") from exc

    async def aclose(self) -> None:
        await self._http.aclose()
