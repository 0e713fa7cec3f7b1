"""Time as integer microseconds since the Unix epoch: UTC by definition, exact, and cheap on hot paths."""

from __future__ import annotations

import time
from datetime import UTC, datetime

MICROS = 1_000_000


def now_us() -> int:
    """The current UTC time in microseconds."""
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    """An aware UTC datetime for a microsecond timestamp."""
    return datetime.fromtimestamp(us / MICROS, tz=UTC)


def seconds(us: int) -> float:
    return us / MICROS
