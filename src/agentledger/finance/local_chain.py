"""A chain-free stand-in for an EVM chain, behind x402's `FacilitatorEvmSigner` protocol. MOVES NO MONEY.

Why: x402's facilitator for the `exact` EVM scheme does the checks that matter (recipient, amount, validity
window, EIP-712 signature over the token's own domain) and then asks a chain: is the asset a contract, would
`transferWithAuthorization` succeed, send it, wait for its receipt. This signer answers those questions from
local state instead, so x402 itself verifies every proof and the local facilitator (finance/local.py) needs no
RPC node, no funded account and no network:

* the configured assets are contracts (`get_code`); every other address is an externally owned account, so
  a payer's signature is checked by ECDSA recovery, never by a contract (EIP-1271);
* every payer is funded: balances are not known without a chain, and the point is to test the flow;
* `transferWithAuthorization` is simulated as the token contract would run it: validity window, the
  authorization's nonce unused (the NonceBook, this "chain's" state), and the EIP-712 signature recovered with
  eth_account to the payer; "sending" it marks the nonce used and yields a receipt with the Transfer event x402
  checks for. The transaction hash is synthetic; finance/local.py reports it as `local:<hash>`.

Nothing here contacts anything. A NonceBook is per process: the single-use guarantee across replicas is the
store's claim (store/finance.py), taken before anything runs; this state only makes the local chain behave
like one (a nonce settled once cannot be settled again).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from eth_account import Account
from eth_account.messages import encode_typed_data
from x402.mechanisms.evm.constants import FUNCTION_TRANSFER_WITH_AUTHORIZATION
from x402.mechanisms.evm.eip712 import build_typed_data_for_signing
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC
from x402.mechanisms.evm.types import (
    ExactEIP3009Authorization,
    TransactionReceipt,
    TypedDataDomain,
    TypedDataField,
)
from x402.mechanisms.evm.utils import normalize_address

from agentledger.core.assets import AcceptedAsset

FUNDED = 10**30  # every payer's balance: more than any price, far below uint256's bound
CODE = b"\x60\x80\x60\x40"  # what `get_code` answers for a configured asset: any non-empty bytecode is a contract
# The address the local facilitator "sends" from: a hash of a label, so a valid address nobody holds a key to.
FACILITATOR_ADDRESS = normalize_address(hashlib.sha256(b"agentledger local facilitator").hexdigest()[-40:])
_REVERT = "execution reverted: FiatTokenV2: "  # USDC's revert strings, which x402 maps to its reason codes


class LocalChainRevert(RuntimeError):
    """What a call to the local chain reverts with (x402 reads the reason from the message)."""


class NonceBook(Protocol):
    """The local chain's `authorizationState`: which (chain, token, payer, nonce) were used. Thread-safe."""

    def used(self, chain_id: int, token: str, payer: str, nonce: bytes) -> bool: ...

    def use(self, chain_id: int, token: str, payer: str, nonce: bytes, valid_before: int) -> bool:
        """Mark it used; False when it already was (the second of two concurrent settlements loses)."""
        ...


class MemoryNonceBook:
    """Nonces used in this process. An authorization past its `validBefore` can never be settled again (the window
    check refuses it first), so its nonce is forgotten then: the book holds the live window, not all history."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._used: dict[tuple[int, str, str, bytes], int] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._next_purge = 0.0

    def used(self, chain_id: int, token: str, payer: str, nonce: bytes) -> bool:
        with self._lock:
            return (chain_id, token.lower(), payer.lower(), nonce) in self._used

    def use(self, chain_id: int, token: str, payer: str, nonce: bytes, valid_before: int) -> bool:
        key = (chain_id, token.lower(), payer.lower(), nonce)
        now = self._clock()
        with self._lock:
            if now >= self._next_purge:
                self._next_purge = now + 60
                for k in [k for k, until in self._used.items() if until < now]:
                    del self._used[k]
            if key in self._used:
                return False
            self._used[key] = valid_before
            return True


def recover_typed_data(
    domain: TypedDataDomain,
    types: dict[str, list[TypedDataField]] | dict[str, list[dict[str, str]]],
    primary_type: str,
    message: dict[str, Any],
    signature: bytes,
) -> str:
    """The address whose key signed this EIP-712 message (eth_account's recovery); raises for a malformed one."""
    fields = {
        name: [f if isinstance(f, dict) else {"name": f.name, "type": f.type} for f in entries]
        for name, entries in types.items()
    }
    domain_fields = [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ]
    typed = {
        "types": {"EIP712Domain": domain_fields, **fields},
        "primaryType": primary_type,
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        },
        "message": {k: "0x" + v.hex() if isinstance(v, bytes) else v for k, v in message.items()},
    }
    recovered: str = Account.recover_message(encode_typed_data(full_message=typed), signature=signature)
    return recovered


class LocalChainSigner:
    """x402's FacilitatorEvmSigner for one chain, answered from local state (see the module's docstring)."""

    def __init__(
        self, assets: Sequence[AcceptedAsset], nonces: NonceBook, clock: Callable[[], float] = time.time
    ) -> None:
        chains = {a.chain_id for a in assets}
        if len(chains) != 1:
            raise ValueError("a local chain signer serves the assets of exactly one chain")
        self.chain_id = chains.pop()
        self._assets = {a.address.lower(): a for a in assets}
        self._nonces = nonces
        self._clock = clock
        self._receipts: dict[str, TransactionReceipt] = {}
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------------------------------
    def get_addresses(self) -> list[str]:
        return [FACILITATOR_ADDRESS]

    def get_chain_id(self) -> int:
        return self.chain_id

    def get_code(self, address: str) -> bytes:
        return CODE if address.lower() in self._assets else b""

    def get_balance(self, address: str, token_address: str) -> int:
        self._asset(token_address)
        return FUNDED

    def read_contract(self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any) -> Any:
        asset = self._asset(address)
        if function_name == FUNCTION_TRANSFER_WITH_AUTHORIZATION:
            self._check_transfer(asset, args)
            return None
        if function_name == "authorizationState":
            authorizer, nonce = args
            return self._nonces.used(self.chain_id, asset.address, authorizer, bytes(nonce))
        if function_name == "balanceOf":
            return FUNDED
        if function_name == "name":
            return asset.eip712_name
        if function_name == "version":
            return asset.eip712_version
        if function_name == "decimals":
            return asset.decimals
        raise LocalChainRevert(f"the local chain does not implement {function_name} on {address}")

    def verify_typed_data(
        self,
        address: str,
        domain: TypedDataDomain,
        types: dict[str, list[TypedDataField]],
        primary_type: str,
        message: dict[str, Any],
        signature: bytes,
    ) -> bool:
        # Every address but an asset is an EOA here: a signature is good when it recovers to the address.
        try:
            return recover_typed_data(domain, types, primary_type, message, signature).lower() == address.lower()
        except Exception:
            return False

    # -- writes ----------------------------------------------------------------------------------------------------
    def write_contract(
        self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any, data_suffix: str | None = None
    ) -> str:
        asset = self._asset(address)
        if function_name != FUNCTION_TRANSFER_WITH_AUTHORIZATION:
            raise LocalChainRevert(f"the local chain does not implement {function_name} on {address}")
        auth = self._check_transfer(asset, args)
        nonce = bytes(args[5])
        if not self._nonces.use(self.chain_id, asset.address, auth.from_address, nonce, int(auth.valid_before)):
            raise LocalChainRevert(_REVERT + "authorization is used or canceled")
        # Synthetic and deterministic: one authorization, one "transaction"; no chain has it.
        key = b"|".join([str(self.chain_id).encode(), asset.address.lower().encode(), nonce])
        tx_hash = "0x" + hashlib.sha256(key).hexdigest()
        receipt = TransactionReceipt(status=1, block_number=0, tx_hash=tx_hash, logs=[_transfer_log(asset, auth)])
        with self._lock:
            self._receipts[tx_hash] = receipt
        return tx_hash

    def send_transaction(self, to: str, data: bytes) -> str:
        # Only ERC-6492 smart-wallet deployments send raw transactions; the local chain has no factories.
        raise LocalChainRevert("the local chain deploys no contracts")

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        with self._lock:
            receipt = self._receipts.pop(tx_hash, None)
        if receipt is None:
            raise LocalChainRevert(f"no transaction {tx_hash} on the local chain")
        return receipt

    # -- the token contract's checks ---------------------------------------------------------------------------------
    def _asset(self, address: str) -> AcceptedAsset:
        asset = self._assets.get(address.lower())
        if asset is None:
            raise LocalChainRevert(f"execution reverted: no contract at {address} on the local chain")
        return asset

    def _check_transfer(self, asset: AcceptedAsset, args: Sequence[Any]) -> ExactEIP3009Authorization:
        """What FiatTokenV2's transferWithAuthorization checks before it moves anything, in its order."""
        if len(args) == 9:  # (from, to, value, validAfter, validBefore, nonce, v, r, s)
            v, r, s = args[6], bytes(args[7]), bytes(args[8])
            signature = r + s + bytes([v])
        elif len(args) == 7:  # (…, nonce, bytes signature): a smart wallet's, which the local chain has none of
            signature = bytes(args[6])
        else:
            raise LocalChainRevert("execution reverted: bad transferWithAuthorization arguments")
        payer, to, value, valid_after, valid_before, nonce = args[:6]
        now = self._clock()
        if now <= int(valid_after):
            raise LocalChainRevert(_REVERT + "authorization is not yet valid")
        if now >= int(valid_before):
            raise LocalChainRevert(_REVERT + "authorization is expired")
        if self._nonces.used(self.chain_id, asset.address, payer, bytes(nonce)):
            raise LocalChainRevert(_REVERT + "authorization is used or canceled")
        auth = ExactEIP3009Authorization(
            from_address=payer,
            to=to,
            value=str(int(value)),
            valid_after=str(int(valid_after)),
            valid_before=str(int(valid_before)),
            nonce="0x" + bytes(nonce).hex(),
        )
        domain, types, primary, message = build_typed_data_for_signing(
            auth, self.chain_id, normalize_address(asset.address), asset.eip712_name, asset.eip712_version
        )
        try:
            signer = recover_typed_data(domain, types, primary, message, signature)
        except Exception as exc:
            raise LocalChainRevert(_REVERT + "invalid signature") from exc
        if signer.lower() != str(payer).lower():
            raise LocalChainRevert(_REVERT + "invalid signature")
        return auth


def _transfer_log(asset: AcceptedAsset, auth: ExactEIP3009Authorization) -> dict[str, Any]:
    """The ERC-20 Transfer event a settled authorization emits: x402 looks for it in the receipt."""

    def topic(address: str) -> str:
        return "0x" + "0" * 24 + address.lower().removeprefix("0x")

    return {
        "address": normalize_address(asset.address),
        "topics": [ERC20_TRANSFER_EVENT_TOPIC, topic(auth.from_address), topic(auth.to)],
        "data": "0x" + int(auth.value).to_bytes(32, "big").hex(),
    }
