"""The budget of failed authentications per peer: who calls without a valid API key, and how often.

A caller with no key, an unknown or disabled key, or a bad signature costs the server a SHA-256 (and an
HMAC) per call, and each such call is a guess at a key. Each peer gets a token bucket of failures; once it
is empty, the interceptor refuses the peer's calls before looking at their keys, until a token is due.

A peer is the caller's address without its port: a client IPv4 address, or the /64 network of an IPv6
address (one host usually owns a whole /64, so keying by full address would hand it 2^64 budgets and let it
churn the map). IPv4-mapped IPv6 addresses count as their IPv4 address, so a dual-stack listener does not
give a host two budgets. Unix-socket clients are unnamed: they are one peer, the local host.

Memory is bounded: the map holds at most `capacity` peers. A peer whose bucket has refilled is forgotten
first (a full bucket and no bucket behave the same, so nothing is lost); beyond that the peer whose last
failure is the oldest is forgotten and starts over with a full budget.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from functools import lru_cache

from .limits import TokenBucket

IPV6_PREFIX_BYTES = 8  # a /64
_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


@lru_cache(maxsize=4096)  # a connection's calls share its peer string: parsed once per connection
def peer_key(peer: str) -> str:
    """The budget a gRPC peer string (`context.peer()`) belongs to.

    gRPC writes `ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678` (the brackets percent-encoded by recent versions:
    `ipv6:%5B::1%5D:5678`) and `unix:PATH` (an empty PATH for an unnamed client socket). Parsed with
    inet_pton rather than the ipaddress module, which costs ten times as much per call.
    """
    scheme, _, rest = peer.partition(":")
    try:
        if scheme == "ipv4":
            raw = socket.inet_pton(socket.AF_INET, rest.rpartition(":")[0])
            return socket.inet_ntop(socket.AF_INET, raw)
        if scheme == "ipv6":
            bracketed = rest.replace("%5B", "[").replace("%5D", "]")  # the only escapes before the port
            host = bracketed.rpartition("]")[0].lstrip("[").partition("%")[0]  # %: a zone id, not the host
            raw = socket.inet_pton(socket.AF_INET6, host)
            if raw.startswith(_V4_MAPPED):
                return socket.inet_ntop(socket.AF_INET, raw[12:])
            network = raw[:IPV6_PREFIX_BYTES] + bytes(16 - IPV6_PREFIX_BYTES)
            return f"{socket.inet_ntop(socket.AF_INET6, network)}/{IPV6_PREFIX_BYTES * 8}"
    except (OSError, ValueError):
        return f"{scheme}:?"  # not an address we can read: one shared budget rather than an unbounded key
    return scheme or "unknown"  # unix, unix-abstract, in-process: unnamed clients share one budget


class AuthFailures:
    """Token buckets of failed authentications by peer key, at most `capacity` of them (see the module)."""

    def __init__(self, rate: float, burst: float, capacity: int) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently failed first

    def wait(self, peer: str, now: float) -> float:
        """0.0 when the peer may try to authenticate; else the seconds until its next failure is allowed."""
        bucket = self.buckets.get(peer)
        return 0.0 if bucket is None else bucket.due(now)

    def failed(self, peer: str, now: float) -> None:
        """Charge one failed authentication to the peer."""
        bucket = self.buckets.get(peer)
        if bucket is None:
            self._make_room(now)
            bucket = self.buckets[peer] = TokenBucket(self.rate, self.burst, now)
        else:
            self.buckets.move_to_end(peer)
        bucket.take(now)  # wait() was 0.0 just before, so a token is there

    def _make_room(self, now: float) -> None:
        buckets = self.buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if not (oldest.full(now) or len(buckets) >= self.capacity):
                return
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self.buckets)
