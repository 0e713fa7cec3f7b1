"""quote_cost: price a job before it runs, from the prices of the miners that could take it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from .matching import decimal, eligible
from .model import Capabilities, Constraints


@dataclass(frozen=True, slots=True)
class Quote:
    eligible_miners: int
    min_unit_price: Decimal | None
    max_unit_price: Decimal | None
    units: Decimal

    @property
    def min_cost(self) -> Decimal | None:
        return None if self.min_unit_price is None else self.min_unit_price * self.units

    @property
    def max_cost(self) -> Decimal | None:
        return None if self.max_unit_price is None else self.max_unit_price * self.units


def quote_cost(constraints: Constraints, miners: Iterable[Capabilities], units: Decimal) -> Quote:
    prices = [decimal(c.price) for c in miners if eligible(constraints, c)]
    return Quote(len(prices), min(prices, default=None), max(prices, default=None), units)
