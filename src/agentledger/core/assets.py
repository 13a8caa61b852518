"""The assets a paid endpoint accepts, and exact conversion between USD nano-dollars and their atomic units. Pure.

Why here and not in finance/: the books, the endpoint settings and the store all need an asset's identity and
the arithmetic of its amounts, and none of them should need the x402 package (web3, eth-account) to do sums.

An accepted asset is a USD stablecoin taken at par (1 token = 1 USD): x402's `exact` scheme charges a fixed
amount of a token, and the books count USD. Converting is exact or refused: a price of 1.5 atomic units cannot be
charged, and rounding it silently would sell below or above the price the admin set.

    USDC (6 decimals): 1 atomic unit = 10^-6 USD = 1000 nano-dollars
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NANO_DECIMALS = 9  # a nano-dollar is 10^-9 USD (core/money.py)
MAX_DECIMALS = 36  # far above any token (ETH-style tokens use 18); bounds 10**decimals

# CAIP-2 (https://chainagnostic.org/CAIPs/caip-2): namespace:reference. Only `eip155` (EVM chains) is spoken,
# since the `exact` EVM scheme (EIP-3009 transferWithAuthorization) is the one x402 scheme accepted.
_CAIP2 = re.compile(r"^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$")
_EIP155 = re.compile(r"^eip155:[1-9][0-9]{0,19}$")
_EVM_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class InexactAmount(ValueError):
    """An amount that is not a whole number of the unit it must be paid or booked in."""


def is_caip2(network: str) -> bool:
    return bool(_CAIP2.match(network))


def is_evm_address(address: str) -> bool:
    return bool(_EVM_ADDRESS.match(address))


@dataclass(frozen=True, slots=True)
class AcceptedAsset:
    """One token on one chain: CAIP-2 network, contract address, decimals, and the EIP-712 domain (name,
    version) its EIP-3009 authorizations are signed under. The domain must be the token contract's own, or
    every signature made for the real token fails to verify (and one made for ours fails on chain)."""

    network: str  # CAIP-2, e.g. eip155:84532 (Base Sepolia)
    address: str  # the token contract, 0x + 40 hex
    decimals: int
    eip712_name: str
    eip712_version: str
    symbol: str = "USDC"

    def __post_init__(self) -> None:
        if not _EIP155.match(self.network):
            raise ValueError(f"network {self.network!r} is not a CAIP-2 EVM chain id (eip155:<chain id>)")
        if not is_evm_address(self.address):
            raise ValueError(f"asset address {self.address!r} is not 0x followed by 40 hex digits")
        if not 0 <= self.decimals <= MAX_DECIMALS:
            raise ValueError(f"decimals must be between 0 and {MAX_DECIMALS}")
        if not self.eip712_name or not self.eip712_version:
            raise ValueError("the asset's EIP-712 domain needs a name and a version")

    @property
    def chain_id(self) -> int:
        return int(self.network.split(":", 1)[1])

    def matches(self, network: str, address: str) -> bool:
        """This asset, whatever the address's letter case (EIP-55 checksums only change the case)."""
        return network == self.network and address.lower() == self.address.lower()

    def to_atomic(self, nanos: int) -> int:
        return nanos_to_atomic(nanos, self.decimals)

    def to_nanos(self, atomic: int) -> int:
        return atomic_to_nanos(atomic, self.decimals)


# The EIP-712 domains are the tokens' own, as x402's default assets list them (a unit test compares them).
USDC_BASE_SEPOLIA = AcceptedAsset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", 6, "USDC", "2")
USDC_BASE = AcceptedAsset("eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", 6, "USD Coin", "2")
KNOWN_ASSETS = (USDC_BASE_SEPOLIA, USDC_BASE)


def _pow10(exponent: int) -> int:
    return int(10**exponent)  # int ** int is typed Any (a negative exponent makes a float); ours never is


def nanos_to_atomic(nanos: int, decimals: int) -> int:
    """USD nano-dollars → the asset's atomic units at par; InexactAmount unless it is a whole number of them."""
    if decimals >= NANO_DECIMALS:
        return nanos * _pow10(decimals - NANO_DECIMALS)
    atomic, rest = divmod(nanos, _pow10(NANO_DECIMALS - decimals))
    if rest:
        unit = _pow10(NANO_DECIMALS - decimals)
        raise InexactAmount(
            f"{nanos} nano-dollars is not a whole number of atomic units of a {decimals}-decimal asset "
            f"(one unit is {unit} nano-dollars)"
        )
    return atomic


def atomic_to_nanos(atomic: int, decimals: int) -> int:
    """The asset's atomic units → USD nano-dollars at par; InexactAmount for fractions of a nano-dollar (assets
    with more than 9 decimals)."""
    if decimals <= NANO_DECIMALS:
        return atomic * _pow10(NANO_DECIMALS - decimals)
    nanos, rest = divmod(atomic, _pow10(decimals - NANO_DECIMALS))
    if rest:
        raise InexactAmount(f"{atomic} atomic units of a {decimals}-decimal asset is not a whole nano-dollar")
    return nanos
