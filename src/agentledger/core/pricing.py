"""Cost arithmetic over dated prices. No lookup here: the catalog adapter (`agentledger.prices`) finds prices."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from agentledger.core.bounds import MAX_EVENT_COST_USD
from agentledger.core.frozen import frozen
from agentledger.core.money import MAX_EVENT_COST_NANOS, to_nanos
from agentledger.core.usage import Usage

_MTOK = Decimal(1_000_000)


class CostSource(enum.StrEnum):
    REPORTED = "reported"  # the provider said what it charged
    COMPUTED = "computed"  # usage × a dated price
    ESTIMATED = "estimated"  # no usage came back (e.g. a stream dropped before its usage chunk)
    CLAMPED = "clamped"  # the provider's usage or cost was absurd; cut to the bounds (core.bounds) and kept


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million tokens. A missing cache rate means cached tokens cost the plain input rate. An
    override has one cache-write rate (1-hour writes pay it too) and no per-search price: the catalog prices
    those (prices/catalog.py)."""

    input_mtok: Decimal
    output_mtok: Decimal
    cached_input_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None
    effective_from: datetime | None = None
    origin: str = "override"


@frozen
class Cost:
    nanos: int
    source: CostSource


def cost(usage: Usage, price: Price) -> Cost:
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    plain = usage.input_tokens - cached - written
    dollars = (
        plain * price.input_mtok
        + cached * (price.cached_input_mtok if price.cached_input_mtok is not None else price.input_mtok)
        + written * (price.cache_write_mtok if price.cache_write_mtok is not None else price.input_mtok)
        + usage.output_tokens * price.output_mtok
    ) / _MTOK
    if dollars > MAX_EVENT_COST_USD:  # checked first: to_nanos cannot quantize a number past 28 digits
        return Cost(MAX_EVENT_COST_NANOS, CostSource.CLAMPED)
    return Cost(to_nanos(dollars), CostSource.COMPUTED)


def bounded(cost: Cost, clamped: bool = False) -> Cost:
    """`cost` within the per-event bound; flagged `clamped` when it was cut or built from clamped usage.

    A call the provider already answered is recorded whatever it reports: clamped and flagged, not dropped.
    """
    if cost.nanos > MAX_EVENT_COST_NANOS:
        return Cost(MAX_EVENT_COST_NANOS, CostSource.CLAMPED)
    return Cost(cost.nanos, CostSource.CLAMPED) if clamped else cost


def pick_price(prices: list[Price], at: datetime) -> Price | None:
    """The price in force at `at`: the latest `effective_from` not after it (None means always)."""
    in_force = [p for p in prices if p.effective_from is None or p.effective_from <= at]
    return max(in_force, key=_since, default=None)


def _since(price: Price) -> float:
    return price.effective_from.timestamp() if price.effective_from is not None else float("-inf")
