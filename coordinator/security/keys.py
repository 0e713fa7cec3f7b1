"""API keys by role. Keys are held only as SHA-256 hashes; a presented key is hashed and looked up.

Lookup is by the hash of the presented key, so timing depends on a hash the caller cannot steer toward a
stored key, never on how many leading characters of a real key it guessed; the final comparison of the
digests is constant-time as well.

Each identity (role, name) has one key and a KeyState: its signing secret, its rate-limit buckets (one per
RPC group) and its counts of calls and streams in flight. Reloading the keys (SIGHUP) keeps the state of
identities that stay with the same key, so a reload neither resets a caller's budget nor forgets its calls in
flight. An identity whose key was replaced gets a new state (its budget carried over), and the old one is
disabled: the streams opened with the old key end at their next message, as those of a removed key do.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from ..config import RATE_GROUPS, ApiKeyEntry
from .limits import TokenBucket

REQUEST_GROUPS = RATE_GROUPS[:4]  # submit, read, miner, admin: per key; "stream", "auth_failures" are not


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str  # client | miner | admin


def key_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Usage:
    """An identity's calls and streams in flight, whichever of its keys (the current one, a replaced one whose
    streams have not ended yet) they came with: the per-identity limits count them all."""

    __slots__ = ("inflight", "streams")

    def __init__(self) -> None:
        self.inflight = 0
        self.streams = 0


class KeyState:
    __slots__ = ("buckets", "disabled", "hmac_secret", "identity", "key_hash", "usage")

    def __init__(self, identity: Identity, digest: bytes, hmac_secret: bytes, buckets: list,
                 usage: Usage | None = None) -> None:  # fmt: skip
        self.identity = identity
        self.key_hash = digest
        self.hmac_secret = hmac_secret  # b"" when calls need no signature
        self.buckets: list[TokenBucket | None] = buckets  # indexed like REQUEST_GROUPS
        self.usage = usage or Usage()
        self.disabled = False


class KeyRing:
    def __init__(
        self,
        entries: tuple[ApiKeyEntry, ...],
        hmac_secret: str = "",
        rates: dict[str, tuple[float, float] | None] | None = None,
    ) -> None:
        self.rates = rates or {}
        self.disabled: set[tuple[str, str]] = set()  # by the admin RPC; survives reloads
        self._by_hash: dict[bytes, KeyState] = {}
        self._by_identity: dict[tuple[str, str], KeyState] = {}
        self.load(entries, hmac_secret)

    def load(self, entries: tuple[ApiKeyEntry, ...], hmac_secret: str = "") -> None:
        """Replace the keys (start-up and reload). Removed keys stop working at once."""
        now = time.monotonic()
        by_hash: dict[bytes, KeyState] = {}
        by_identity: dict[tuple[str, str], KeyState] = {}
        for e in entries:
            ident = (e.role, e.name)
            secret = (e.hmac_secret or hmac_secret).encode()
            old = self._by_identity.get(ident)
            if old is not None and old.key_hash == e.key_hash:
                state = old
                state.hmac_secret = secret
            else:
                state = KeyState(Identity(e.name, e.role), e.key_hash, secret,
                                 self._buckets(now) if old is None else old.buckets,
                                 None if old is None else old.usage)  # fmt: skip
                if old is not None:  # its key replaced (a leaked key rotated): what the old key opened ends
                    old.disabled = True  # at its next message; the identity's budget and counts carry over
            state.disabled = ident in self.disabled
            by_hash[e.key_hash] = state
            by_identity[ident] = state
        for ident, state in self._by_identity.items():
            if ident not in by_identity:
                state.disabled = True  # removed: its open streams end at their next message
        self._by_hash, self._by_identity = by_hash, by_identity

    def _buckets(self, now: float) -> list[TokenBucket | None]:
        out: list[TokenBucket | None] = []
        for group in REQUEST_GROUPS:
            limit = self.rates.get(group)
            out.append(None if limit is None else TokenBucket(limit[0], limit[1], now))
        return out

    def lookup(self, secret: str) -> KeyState | None:
        """The enabled key presented, or None."""
        digest = hashlib.sha256(secret.encode()).digest()
        state = self._by_hash.get(digest)
        if state is None or state.disabled or not hmac.compare_digest(state.key_hash, digest):
            return None
        return state

    def identify(self, secret: str) -> Identity | None:
        state = self.lookup(secret)
        return None if state is None else state.identity

    def state(self, role: str, name: str) -> KeyState | None:
        return self._by_identity.get((role, name))

    def set_enabled(self, role: str, name: str, enabled: bool) -> bool:
        """Returns False when no key of that role and name exists."""
        state = self._by_identity.get((role, name))
        if state is None:
            return False
        if enabled:
            self.disabled.discard((role, name))
        else:
            self.disabled.add((role, name))
        state.disabled = not enabled
        return True

    def __len__(self) -> int:
        return len(self._by_hash)
