"""The local facilitator: x402's own facilitator over a chain-free signer. IT MOVES NO MONEY.

Why: the embedded default and the tests need payments checked for real without a chain, an RPC node, a funded
facilitator account or any traffic past this process. So this is x402's `x402FacilitatorSync` with x402's
`exact` EVM facilitator scheme, one for each configured network, driven by finance/local_chain.py's
signer. x402 performs the checks (scheme and network, recipient, amount, the validity window, the EIP-712
signature over the token's own domain, the asset being a known contract); the signer answers the chain's
part from local state and recovers the signature once more, with eth_account, as the token contract would.

A settlement here is a record, not a transfer: its reference is `local:<synthetic hash>`, no token moves and
no chain is contacted. What a settled local payment proves is that the buyer signed a valid authorization
for the price; use an HTTP facilitator (finance/facilitator.py) for money.

Verification is CPU-heavy pure Python (secp256k1 recovery without a C backend costs milliseconds), so the
async API runs x402 on a small thread pool of its own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from x402.facilitator import x402FacilitatorSync
from x402.mechanisms.evm.constants import ERR_UNSUPPORTED_SCHEME
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme
from x402.mechanisms.evm.types import is_eip3009_payload, is_permit2_payload
from x402.schemas import PaymentPayload, PaymentRequirements, SchemeNotFoundError, SettleResponse, VerifyResponse

from agentledger.core.assets import AcceptedAsset
from agentledger.finance.local_chain import LocalChainSigner, MemoryNonceBook, NonceBook
from agentledger.threads import name_os_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL_REFERENCE_PREFIX = "local:"
INVALID_PAYLOAD = "invalid_payload"  # a payload x402 could not even read: not a reason code of its own
_NO_NETWORK = "the local facilitator has no asset configured on this network"
_ONLY_EIP3009 = "the local facilitator takes EIP-3009 authorizations (the exact EVM scheme) only"


class LocalFacilitator:
    """Verifies and "settles" `exact` EVM payments in the configured assets, chain-free (see the docstring)."""

    def __init__(
        self,
        assets: Sequence[AcceptedAsset],
        *,
        nonces: NonceBook | None = None,
        workers: int = 2,
    ) -> None:
        if not assets:
            raise ValueError("the local facilitator needs at least one accepted asset")
        self.nonces = nonces or MemoryNonceBook()
        by_network: dict[str, list[AcceptedAsset]] = {}
        for asset in assets:
            by_network.setdefault(asset.network, []).append(asset)
        # One x402 facilitator per network: x402 registers a scheme for a namespace pattern (`eip155:*` even when
        # given one network), so a second network's scheme would never be reached in a shared one.
        self._x402: dict[str, x402FacilitatorSync] = {}
        for network, group in by_network.items():
            facilitator = x402FacilitatorSync()
            facilitator.register([network], ExactEvmFacilitatorScheme(LocalChainSigner(group, self.nonces)))
            self._x402[network] = facilitator
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="x402-local", initializer=name_os_thread)

    @property
    def x402(self) -> Mapping[str, x402FacilitatorSync]:
        """x402's facilitators underneath, by network, for their hooks (on_after_settle and the like); the hooks
        run on the pool."""
        return self._x402

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        return await self._off_loop(self.verify_sync, payload, requirements)

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        return await self._off_loop(self.settle_sync, payload, requirements)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)  # waiting for a verification in flight, off the loop

    async def _off_loop(self, fn: Callable[[PaymentPayload, PaymentRequirements], T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)  # type: ignore[arg-type]

    # -- the synchronous core (on the pool) ----------------------------------------------------------------------
    def verify_sync(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        refused = _unsupported(payload)
        if refused is not None:
            return VerifyResponse(is_valid=False, invalid_reason=ERR_UNSUPPORTED_SCHEME, invalid_message=refused)
        facilitator = self._x402.get(requirements.network)
        if facilitator is None:
            return VerifyResponse(is_valid=False, invalid_reason=ERR_UNSUPPORTED_SCHEME, invalid_message=_NO_NETWORK)
        try:
            result: VerifyResponse = facilitator.verify(payload, requirements)
        except SchemeNotFoundError as exc:
            return VerifyResponse(is_valid=False, invalid_reason=ERR_UNSUPPORTED_SCHEME, invalid_message=str(exc))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.info("local facilitator: unreadable payment payload: %s", exc)
            return VerifyResponse(is_valid=False, invalid_reason=INVALID_PAYLOAD, invalid_message=str(exc))
        return result

    def settle_sync(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        network = requirements.network
        refused = _unsupported(payload)
        if refused is not None:
            return _failed(network, ERR_UNSUPPORTED_SCHEME, refused)
        facilitator = self._x402.get(network)
        if facilitator is None:
            return _failed(network, ERR_UNSUPPORTED_SCHEME, _NO_NETWORK)
        try:
            result: SettleResponse = facilitator.settle(payload, requirements)
        except SchemeNotFoundError as exc:
            return _failed(network, ERR_UNSUPPORTED_SCHEME, str(exc))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.info("local facilitator: unreadable payment payload: %s", exc)
            return _failed(network, INVALID_PAYLOAD, str(exc))
        if result.success:
            # Never a hash that looks like a chain's: whoever reads the books must see no money moved.
            return result.model_copy(update={"transaction": LOCAL_REFERENCE_PREFIX + result.transaction})
        return result


def _unsupported(payload: PaymentPayload) -> str | None:
    inner = payload.payload
    if is_permit2_payload(inner) or not is_eip3009_payload(inner):
        return _ONLY_EIP3009
    return None


def _failed(network: str, reason: str, message: str) -> SettleResponse:
    return SettleResponse(success=False, error_reason=reason, error_message=message, transaction="", network=network)
