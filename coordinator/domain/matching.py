"""Hard-constraint matching of a job's constraints against a miner's capabilities."""

from __future__ import annotations

import dataclasses
import functools
from decimal import Decimal, InvalidOperation

from .model import Capabilities, Constraints


def version_tuple(text: str) -> tuple[int, ...]:
    """'12.1' -> (12, 1); unparsable parts count as 0."""
    parts = []
    for part in text.strip().split("."):
        try:
            parts.append(int(part))
        except ValueError:
            parts.append(0)
    return tuple(parts)


def decimal(text: str, default: str = "0") -> Decimal:
    """text as a number; default if it is none (unparsable, or NaN: prices are compared, and a NaN raises)."""
    try:
        value = Decimal(text or default)
    except InvalidOperation:
        return Decimal(default)
    return Decimal(default) if value.is_nan() else value


def eligible(c: Constraints, caps: Capabilities) -> bool:
    """True when a miner with caps meets every hard constraint of c."""
    if c.region and c.region != caps.region:
        return False
    if c.gpu or c.min_vram_gb:
        wanted = c.gpu.lower()
        if not any(
            (not wanted or wanted in gpu.model.lower()) and gpu.memory_gb >= c.min_vram_gb
            for gpu in caps.gpus
        ):
            return False
    if c.cuda and (not caps.cuda_version or version_tuple(caps.cuda_version) < version_tuple(c.cuda)):
        return False
    if c.models and not caps.models.issuperset(c.models):
        return False
    if c.max_price and decimal(caps.price) > decimal(c.max_price):
        return False
    if c.labels:
        miner_labels = dict(caps.labels)
        if any(miner_labels.get(k) != v for k, v in c.labels):
            return False
    return True


@functools.lru_cache(maxsize=4096)
def split_price(c: Constraints) -> tuple[Constraints, Decimal | None]:
    """c without its price limit, and that limit (None: any price). A miner meets c when it meets the first
    (cached per constraint set) and its unit price is at most the limit: jobs that each carry their own price
    limit, otherwise alike, then share one queue and one cache entry."""
    if not c.max_price:
        return c, None
    return dataclasses.replace(c, max_price=""), decimal(c.max_price)
