"""A paid endpoint and its workflow agent's runtime as the management API takes them, and the endpoint policy's
checks on a paid call. Pure (docs/paid-endpoints.md).

Each parser raises InvalidRequest naming the field. What needs something besides the standard library is passed
in: the EIP-55 checksum of an address (keccak-256, eth_utils) and the check that an input schema is a JSON Schema
(jsonschema). Whether the named agent exists, is a workflow agent and has a runtime is the caller's to check.

The timing rule, and why: the buyer signs an authorization valid until `validBefore` (x402's client makes it
`now + maxTimeoutSeconds`), and the gateway settles it only after the workflow has answered. So an endpoint's
`max_timeout_s` must cover its `timeout_s` plus SETTLEMENT_MARGIN_S, and a paid call is refused before anything
runs when the proof it carries would expire before the workflow's deadline plus SETTLE_RESERVE_S: else a buyer
could sign a short-lived proof, get the workflow run, and let settlement fail for want of time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from agentledger.core.assets import AcceptedAsset, InexactAmount, is_evm_address
from agentledger.core.bounds import MAX_EVENT_COST_USD
from agentledger.core.budget_config import dollars
from agentledger.core.errors import InvalidRequest
from agentledger.core.fields import id_field, text_field
from agentledger.core.headers import has_control
from agentledger.core.money import format_usd, to_nanos

RUNTIME_TYPES = ("n8n", "webhook")
METHODS = ("POST", "GET", "PUT")
MAX_URL_LEN = 2048
MAX_SECRET_LEN = 4096
MAX_DESCRIPTION_LEN = 1024
MAX_PAYERS = 1000
MAX_RPM = 1_000_000
MAX_CONCURRENT = 10_000
MAX_FEE_DECIMALS = 4
MAX_TIMEOUT_S = 24 * 3600  # x402's bound on maxTimeoutSeconds (finance/wire.py)
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_TIMEOUT_S = 120
# Seconds an authorization must outlive the workflow's timeout when an endpoint is saved: SETTLE_RESERVE_S for the
# settlement itself, and 20 more for the buyer's clock, the network and verification before the workflow starts.
SETTLEMENT_MARGIN_S = 30
# Seconds a proof must still be valid past the workflow's deadline when a call arrives: x402's facilitators refuse
# an authorization within 6 s of its end, and the settle request needs a few more.
SETTLE_RESERVE_S = 10

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SLUG_HELP = "1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
# RFC 9110 token characters: what a header name may hold.
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_VISIBLE_ASCII_RE = re.compile(r"^[\x20-\x7e]+$")
_PERCENT_RE = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,4})?$")
# Headers the gateway sets on a workflow call itself (docs/paid-endpoints.md): a runtime's auth header may not
# replace them, or a runtime could pose as another run or drop the scoped key.
_RESERVED_HEADERS = frozenset(
    {"host", "content-type", "content-length", "transfer-encoding", "connection", "user-agent", "x-request-id"}
)
_RESERVED_PREFIX = "alephant-"


# -- the workflow agent's runtime ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """How the gateway invokes a workflow agent. `auth_value` is the secret in plaintext: only in memory, on its
    way into the SecretBox or out of it to the workflow call."""

    type: str
    url: str
    method: str = "POST"
    auth_name: str | None = None
    auth_value: str | None = field(default=None, repr=False)


def parse_runtime(value: Any, param: str = "runtime") -> RuntimeSpec:
    """`{"type", "url", "method"?, "auth_header"?: {"name", "value"}}` → RuntimeSpec."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object: type, url, method, auth_header.", param=param)
    kind = value.get("type")
    if kind not in RUNTIME_TYPES:
        raise InvalidRequest(f"'{param}.type' must be one of {', '.join(RUNTIME_TYPES)}.", param=f"{param}.type")
    url = _runtime_url(value.get("url"), f"{param}.url")
    method = value.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise InvalidRequest(f"'{param}.method' must be one of {', '.join(METHODS)}.", param=f"{param}.method")
    auth = value.get("auth_header")
    name = secret = None
    if auth is not None:
        name, secret = _auth_header(auth, f"{param}.auth_header")
    return RuntimeSpec(kind, url, method.upper(), name, secret)


def _runtime_url(value: Any, param: str) -> str:
    why = f"'{param}' must be an absolute http(s) URL of at most {MAX_URL_LEN} characters, without credentials"
    if not isinstance(value, str) or not value or len(value) > MAX_URL_LEN or has_control(value) or " " in value:
        raise InvalidRequest(why + ".", param=param)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # a port that is not a number raises here
    except ValueError:
        raise InvalidRequest(why + ".", param=param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(why + ".", param=param)
    # Credentials belong in the auth header, whose secret is encrypted and never shown back; a URL is shown.
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(why + " (put a secret in auth_header).", param=param)
    return value


def _auth_header(value: Any, param: str) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object: name and value.", param=param)
    name, secret = value.get("name"), value.get("value")
    if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"'{param}.name' must be an HTTP header name (1-64 token characters).", param=f"{param}.name"
        )
    lower = name.lower()
    if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIX):
        raise InvalidRequest(
            f"'{param}.name' may not be {name!r}: the gateway sets that header on a workflow call itself.",
            param=f"{param}.name",
        )
    if not isinstance(secret, str) or not 0 < len(secret) <= MAX_SECRET_LEN or not _VISIBLE_ASCII_RE.fullmatch(secret):
        raise InvalidRequest(
            f"'{param}.value' must be 1-{MAX_SECRET_LEN} printable ASCII characters.", param=f"{param}.value"
        )
    return name, secret


def runtime_view(spec: RuntimeSpec) -> dict[str, Any]:
    """A runtime as the API shows it: never its secret, only that one is set."""
    auth = None if spec.auth_name is None else {"name": spec.auth_name, "set": True}
    return {"type": spec.type, "url": spec.url, "method": spec.method, "auth_header": auth}


# -- the paid endpoint ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    max_price_nanos: int | None = None
    requests_per_minute: int | None = None
    concurrent: int | None = None
    allowed_payers: tuple[str, ...] | None = None  # None: any payer; else checksummed addresses


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """A paid endpoint's settings, checked against each other. Money in nano-dollars; the asset is one of the
    accepted ones and the price a whole number of its atomic units."""

    slug: str
    agent_id: str
    price_nanos: int
    asset: AcceptedAsset
    pay_to: str  # EIP-55 checksummed
    fee_percent: Decimal = Decimal(0)
    fee_fixed_nanos: int = 0
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_timeout_s: int = DEFAULT_MAX_TIMEOUT_S
    policy: EndpointPolicy = EndpointPolicy()

    @property
    def asset_amount(self) -> int:
        return self.asset.to_atomic(self.price_nanos)


@dataclass(frozen=True, slots=True)
class EndpointRules:
    """What the deployment allows (config.py): the assets it accepts (the first one's network is the default), how
    long a workflow may take, and how an address is checksummed (eth_utils.to_checksum_address) and an input schema
    checked (raises ValueError with the reason)."""

    assets: Sequence[AcceptedAsset]
    timeout_cap_s: float
    checksum: Callable[[str], str]
    check_schema: Callable[[Any], None]


def parse_endpoint(data: Mapping[str, Any], rules: EndpointRules) -> EndpointSpec:
    """The body of `POST /api/paid-endpoints` (also a PATCH merged over the stored settings: endpoint_input)."""
    slug = data.get("slug")
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise InvalidRequest(f"'slug' must be {SLUG_HELP}.", param="slug")
    agent_id = id_field(data.get("agent_id"), "agent_id")
    description = data.get("description")
    if description is not None:
        description = text_field(description, "description", limit=MAX_DESCRIPTION_LEN)
    asset = _asset(data.get("network"), data.get("asset"), rules.assets)
    price = _price(data.get("price_usd"), asset)
    pay_to = _address(data.get("pay_to"), "pay_to", rules.checksum)
    percent, fixed = _fee(data.get("fee"))
    schema = data.get("input_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise InvalidRequest("'input_schema' must be a JSON Schema object (or null).", param="input_schema")
        try:
            rules.check_schema(schema)
        except ValueError as exc:
            raise InvalidRequest(f"'input_schema' is not a valid JSON Schema: {exc}", param="input_schema") from None
    timeout = _timeout(data.get("timeout_s"), rules.timeout_cap_s)
    max_timeout = _max_timeout(data.get("max_timeout_s"), timeout)
    policy = _policy(data.get("policy"), rules.checksum)
    if policy.max_price_nanos is not None and price > policy.max_price_nanos:
        raise InvalidRequest(
            f"'price_usd' ({format_usd(price)}) is above the policy's max_price_usd "
            f"({format_usd(policy.max_price_nanos)}).",
            param="price_usd",
        )
    return EndpointSpec(
        slug=slug,
        agent_id=agent_id,
        price_nanos=price,
        asset=asset,
        pay_to=pay_to,
        fee_percent=percent,
        fee_fixed_nanos=fixed,
        description=description,
        input_schema=schema,
        timeout_s=timeout,
        max_timeout_s=max_timeout,
        policy=policy,
    )


def endpoint_input(spec: EndpointSpec) -> dict[str, Any]:
    """An endpoint's settings in the API's own input form: what `parse_endpoint` reads back to the same spec."""
    p = spec.policy
    return {
        "slug": spec.slug,
        "description": spec.description,
        "agent_id": spec.agent_id,
        "price_usd": format_usd(spec.price_nanos),
        "network": spec.asset.network,
        "asset": spec.asset.address,
        "pay_to": spec.pay_to,
        "fee": {"percent": _percent_text(spec.fee_percent), "fixed_usd": format_usd(spec.fee_fixed_nanos)},
        "input_schema": spec.input_schema,
        "timeout_s": spec.timeout_s,
        "max_timeout_s": spec.max_timeout_s,
        "policy": {
            "max_price_usd": None if p.max_price_nanos is None else format_usd(p.max_price_nanos),
            "requests_per_minute": p.requests_per_minute,
            "concurrent": p.concurrent,
            "allowed_payers": None if p.allowed_payers is None else list(p.allowed_payers),
        },
    }


def patched(current: EndpointSpec, changes: Mapping[str, Any], rules: EndpointRules) -> EndpointSpec:
    """`PATCH`: the fields given replace the stored ones (`fee` and `policy` member by member), and the whole is
    checked again, so no change can break a rule between two fields (a price past the max price, a timeout past
    the validity window). The slug stays: it is the endpoint's public address."""
    if "slug" in changes and changes["slug"] != current.slug:
        raise InvalidRequest("'slug' cannot change: it is the endpoint's public URL.", param="slug")
    merged = endpoint_input(current)
    if "network" in changes and "asset" not in changes:
        merged["asset"] = None  # a new network takes its own default asset
    for name, value in changes.items():
        if name in ("fee", "policy") and isinstance(value, dict):
            merged[name] = {**merged[name], **value}
        elif name in merged:
            merged[name] = value
    return parse_endpoint(merged, rules)


def _asset(network: Any, address: Any, accepted: Sequence[AcceptedAsset]) -> AcceptedAsset:
    networks = list(dict.fromkeys(a.network for a in accepted))
    chosen = networks[0] if network is None else network
    if chosen not in networks:
        raise InvalidRequest(f"'network' must be one of the accepted networks: {', '.join(networks)}.", param="network")
    on_network = [a for a in accepted if a.network == chosen]
    if address is None:
        return on_network[0]
    if isinstance(address, str):
        for asset in on_network:
            if asset.matches(chosen, address):
                return asset
    known = ", ".join(f"{a.address} ({a.symbol})" for a in on_network)
    raise InvalidRequest(f"'asset' must be an accepted asset on {chosen}: {known}.", param="asset")


def _price(value: Any, asset: AcceptedAsset) -> int:
    amount = dollars(value)
    if amount is None or amount <= 0 or amount > MAX_EVENT_COST_USD:
        raise InvalidRequest(
            f"'price_usd' must be a positive decimal string of dollars up to {MAX_EVENT_COST_USD}, such as \"0.01\".",
            param="price_usd",
        )
    nanos = to_nanos(amount)
    try:
        asset.to_atomic(nanos)
    except InexactAmount:
        unit = format_usd(asset.to_nanos(1)).rstrip("0")
        raise InvalidRequest(
            f"'price_usd' must be a whole number of {asset.symbol}'s atomic units (multiples of ${unit}): "
            "a price is charged exactly, never rounded.",
            param="price_usd",
        ) from None
    return nanos


def _address(value: Any, param: str, checksum: Callable[[str], str]) -> str:
    if not isinstance(value, str) or not is_evm_address(value):
        raise InvalidRequest(f"'{param}' must be an EVM address: 0x followed by 40 hex digits.", param=param)
    checked = checksum(value)
    digits = value[2:]
    # EIP-55: an address in one letter case carries no checksum; in mixed case it must be the checksummed form.
    if digits != digits.lower() and digits != digits.upper() and value != checked:
        raise InvalidRequest(f"'{param}' fails its EIP-55 checksum (a mistyped address?).", param=param)
    if int(digits, 16) == 0:
        raise InvalidRequest(f"'{param}' may not be the zero address.", param=param)
    return checked


def _fee(value: Any) -> tuple[Decimal, int]:
    if value is None:
        return Decimal(0), 0
    if not isinstance(value, dict):
        raise InvalidRequest("'fee' must be an object: percent and fixed_usd.", param="fee")
    raw = value.get("percent", "0")
    percent = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if isinstance(raw, str) and _PERCENT_RE.fullmatch(raw):
        percent = Decimal(raw)
    if percent is None or percent > 100:
        raise InvalidRequest(
            f"'fee.percent' must be a decimal string from 0 to 100 with at most {MAX_FEE_DECIMALS} decimals, such "
            'as "2.5".',
            param="fee.percent",
        )
    fixed = dollars(value.get("fixed_usd", "0"))
    if fixed is None or fixed > MAX_EVENT_COST_USD:
        raise InvalidRequest(
            "'fee.fixed_usd' must be a decimal string of dollars (at most 9 decimals), such as \"0.001\".",
            param="fee.fixed_usd",
        )
    return percent, to_nanos(fixed)


def _percent_text(percent: Decimal) -> str:
    text = f"{percent:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _timeout(value: Any, cap: float) -> float:
    if value is None:
        return min(DEFAULT_TIMEOUT_S, cap)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        value = -1
    if not 0 < value <= cap:
        raise InvalidRequest(f"'timeout_s' must be a number of seconds above 0 and at most {cap:g}.", param="timeout_s")
    return float(value)


def _max_timeout(value: Any, timeout: float) -> int:
    least = math.ceil(timeout) + SETTLEMENT_MARGIN_S
    if value is None:
        return max(DEFAULT_MAX_TIMEOUT_S, least)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TIMEOUT_S:
        raise InvalidRequest(
            f"'max_timeout_s' must be an integer number of seconds from 1 to {MAX_TIMEOUT_S}.", param="max_timeout_s"
        )
    if value < least:
        raise InvalidRequest(
            f"'max_timeout_s' ({value}) must be at least timeout_s + {SETTLEMENT_MARGIN_S} ({least}): the payment "
            "must stay valid until the workflow has answered and the payment is settled.",
            param="max_timeout_s",
        )
    return value


def _positive(value: Any, param: str, top: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= top:
        raise InvalidRequest(f"'{param}' must be an integer from 1 to {top} (or null).", param=param)
    return value


def _policy(value: Any, checksum: Callable[[str], str]) -> EndpointPolicy:
    if value is None:
        return EndpointPolicy()
    if not isinstance(value, dict):
        raise InvalidRequest(
            "'policy' must be an object: max_price_usd, requests_per_minute, concurrent, allowed_payers.",
            param="policy",
        )
    max_price = None
    if value.get("max_price_usd") is not None:
        amount = dollars(value["max_price_usd"])
        if amount is None or amount <= 0 or amount > MAX_EVENT_COST_USD:
            raise InvalidRequest(
                "'policy.max_price_usd' must be a positive decimal string of dollars (or null).",
                param="policy.max_price_usd",
            )
        max_price = to_nanos(amount)
    payers = value.get("allowed_payers")
    allowed = None
    if payers is not None:
        if not isinstance(payers, list) or len(payers) > MAX_PAYERS:
            raise InvalidRequest(
                f"'policy.allowed_payers' must be an array of at most {MAX_PAYERS} addresses (or null: any payer).",
                param="policy.allowed_payers",
            )
        allowed = tuple(dict.fromkeys(_address(p, "policy.allowed_payers", checksum) for p in payers))
    return EndpointPolicy(
        max_price_nanos=max_price,
        requests_per_minute=_positive(value.get("requests_per_minute"), "policy.requests_per_minute", MAX_RPM),
        concurrent=_positive(value.get("concurrent"), "policy.concurrent", MAX_CONCURRENT),
        allowed_payers=allowed,
    )


def stored_percent(text: str) -> Decimal:
    """A stored fee percent back to its Decimal (the column keeps the exact string)."""
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"stored fee percent {text!r} is not a decimal") from None


# -- the endpoint policy on a paid call ----------------------------------------------------------------------------


def payer_allowed(policy: EndpointPolicy, payer: str) -> bool:
    if policy.allowed_payers is None:
        return True
    wanted = payer.lower()
    return any(p.lower() == wanted for p in policy.allowed_payers)


def lasts_long_enough(valid_before: int, now: float, timeout_s: float) -> bool:
    """Whether a proof valid until `valid_before` (unix seconds) can still be settled once the workflow has run its
    full timeout (module docstring)."""
    return valid_before >= now + timeout_s + SETTLE_RESERVE_S
