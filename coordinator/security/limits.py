"""Token buckets (per key and RPC group, per stream, per peer for failed authentications) and the replay
guard of signed requests."""

from __future__ import annotations

import heapq


class TokenBucket:
    """`rate` tokens per second up to `burst`. One float update per call, no allocation."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available (nothing taken)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def due(self, now: float) -> float:
        """The seconds until one token is available, 0.0 when one is; nothing taken (a peek, so a caller
        refused for being over budget does not push its own recovery further away)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def full(self, now: float) -> bool:
        """Refilled to the burst: such a bucket is indistinguishable from a new one."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst

    def owe(self, now: float, amount: float = 1.0) -> float:
        """Take amount tokens even when there are not enough (the balance goes negative); the seconds to
        wait it off."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        self.tokens = tokens - amount
        return 0.0 if self.tokens >= 0.0 else -self.tokens / self.rate


class StreamThrottle:
    """Per-stream message budget: a flooding peer is slowed to the rate, then cut off.

    Slowed: a message over budget is read only after the deficit is paid off (the stream stops reading, so
    HTTP/2 flow control pushes back on the sender). Cut off: when the peer stays over budget without a
    break for longer than `cutoff_s`, the stream ends with RESOURCE_EXHAUSTED.
    """

    __slots__ = ("bucket", "cutoff_s", "over_since")

    def __init__(self, rate: float, burst: float, cutoff_s: float, now: float) -> None:
        self.bucket = TokenBucket(rate, burst, now)
        self.cutoff_s = cutoff_s
        self.over_since = -1.0

    def on_message(self, now: float) -> float:
        """The seconds to wait before handling this message; -1.0 when the stream must be cut off."""
        wait = self.bucket.owe(now)
        if wait == 0.0:
            self.over_since = -1.0
            return 0.0
        if self.over_since < 0.0:
            self.over_since = now
        elif now - self.over_since > self.cutoff_s:
            return -1.0
        return wait


class ReplayGuard:
    """Nonces seen within the replay window; memory bounded by `capacity`.

    A signed request is accepted once per nonce while its timestamp is within `window_s` of now. When the
    guard is full it forgets the entry with the oldest timestamp and raises a floor: requests timestamped
    at or before the floor are refused from then on, so a forgotten nonce can never be replayed.
    """

    def __init__(self, window_s: float, capacity: int) -> None:
        self.window_s = window_s
        self.capacity = capacity
        self.seen: dict[str, float] = {}
        self.by_time: list[tuple[float, str]] = []
        self.floor = float("-inf")

    def check(self, nonce: str, timestamp: float, now: float) -> str:
        """'' when accepted (and remembered); otherwise the refusal reason."""
        if abs(now - timestamp) > self.window_s or timestamp <= self.floor:
            return "STALE_TIMESTAMP"
        if nonce in self.seen:
            return "REPLAYED_NONCE"
        horizon = now - self.window_s
        heap = self.by_time
        while heap and heap[0][0] < horizon:  # expired: their timestamps are refused anyway
            _, old = heapq.heappop(heap)
            del self.seen[old]
        if len(self.seen) >= self.capacity:
            oldest, old = heapq.heappop(heap)
            del self.seen[old]
            self.floor = max(self.floor, oldest)
            if timestamp <= self.floor:
                return "STALE_TIMESTAMP"
        self.seen[nonce] = timestamp
        heapq.heappush(heap, (timestamp, nonce))
        return ""
