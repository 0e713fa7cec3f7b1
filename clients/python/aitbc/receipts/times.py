"""RFC 3339 UTC timestamps as receipts write them: ``2026-11-26T22:46:59.123456Z``.

One fixed width (always six fraction digits, always ``Z``) so a timestamp has exactly one text form inside
signed bytes. Naive datetimes are refused everywhere: a naive value is a local-time bug waiting to happen.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime

__all__ = ["check_receipt_time", "format_time", "format_time_us", "parse_receipt_time", "parse_time"]

_RECEIPT_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", re.ASCII)  # (not "٢٠٢٦-...")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _require_aware(dt: datetime) -> datetime:
    if not isinstance(dt, datetime):
        raise TypeError("expected a datetime")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
    return dt.astimezone(UTC)


def format_time(dt: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` of an aware datetime (converted to UTC)."""
    u = _require_aware(dt)
    # Formatted field by field: strftime costs several times more, and receipts are issued per job.
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"


def format_time_us(us: int) -> str:
    """``format_time`` of a UTC time in integer microseconds since the epoch, without making a datetime:
    receipts are issued per job, and most of a second's receipts share its text. Always a valid receipt
    time (what check_receipt_time accepts); ValueError beyond the years 1-9999."""
    seconds, micros = divmod(us, 1_000_000)
    return f"{_second_text(seconds)}.{micros:06d}Z"


@functools.lru_cache(maxsize=64)
def _second_text(seconds: int) -> str:
    t = time.gmtime(seconds)
    # Four-digit years only (a real date: gmtime never gives a leap second): every text is a receipt time.
    if not 1 <= t.tm_year <= 9999:
        raise ValueError(f"time out of the receipt range (years 1-9999): {seconds} s")
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def check_receipt_time(text: str) -> None:
    """Raise ValueError unless text is the exact receipt form of a real time (as parse_receipt_time)."""
    if not isinstance(text, str) or not _RECEIPT_TIME.fullmatch(text) or not _real_second(text[:19]):
        raise ValueError(f"not a receipt timestamp: {text!r}")


@functools.lru_cache(maxsize=256)
def _real_second(text: str) -> bool:
    """Whether YYYY-MM-DDTHH:MM:SS (digits in place) names a real time: 2026-02-30 does not."""
    try:
        datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                 int(text[17:19]), tzinfo=UTC)  # fmt: skip
    except ValueError:
        return False
    return True


def parse_receipt_time(text: str) -> datetime:
    """Parse the exact receipt form (six fraction digits, ``Z``); anything else raises ValueError."""
    check_receipt_time(text)
    # The pattern fixed every field's position and digits; datetime() checks the ranges (as strptime did).
    return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                    int(text[17:19]), int(text[20:26]), tzinfo=UTC)  # fmt: skip


def parse_time(text: str) -> datetime:
    """Parse any RFC 3339 timestamp with an explicit offset (``Z`` or ``+hh:mm``) to an aware UTC datetime.

    Key sets may come from other tools (Go, protobuf JSON) that write nanoseconds; digits beyond
    microseconds are truncated.
    """
    if not isinstance(text, str):
        raise ValueError("timestamp is not a string")
    m = _RFC3339.fullmatch(text)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp with offset: {text!r}")
    date, clock, frac, offset = m.groups()
    frac = (frac or "")[:6].ljust(6, "0")
    offset = "+00:00" if offset in ("Z", "z") else offset
    # RFC 3339's time-hour and time-minute (fromisoformat would take "+00:60" as an hour)
    if int(offset[1:3]) > 23 or int(offset[4:6]) > 59:
        raise ValueError(f"not an RFC 3339 offset: {text!r}")
    try:
        return datetime.fromisoformat(f"{date}T{clock}.{frac}{offset}").astimezone(UTC)
    except OverflowError as exc:  # in UTC before year 1 or after 9999: a key set's time, not a crash
        raise ValueError(f"time out of range: {text!r}") from exc
