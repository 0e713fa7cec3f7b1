"""API keys by role. Keys are held only as SHA-256 hashes; a presented key is hashed and looked up.

Lookup is by the hash of the presented key, so timing depends on a hash the caller cannot steer toward a
stored key, never on how many leading characters of a real key it guessed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..config import ApiKeyEntry


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str  # client | miner | admin


def key_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class KeyRing:
    def __init__(self, entries: tuple[ApiKeyEntry, ...]) -> None:
        self._by_hash: dict[bytes, Identity] = {key_hash(e.secret): Identity(e.name, e.role) for e in entries}
        self.disabled: set[tuple[str, str]] = set()

    def identify(self, secret: str) -> Identity | None:
        digest = key_hash(secret)
        identity = self._by_hash.get(digest)
        if identity is None:
            return None
        if (identity.role, identity.name) in self.disabled:
            return None
        return identity

    def set_enabled(self, role: str, name: str, enabled: bool) -> bool:
        """Returns False when no key of that role and name exists."""
        if not any(i.role == role and i.name == name for i in self._by_hash.values()):
            return False
        if enabled:
            self.disabled.discard((role, name))
        else:
            self.disabled.add((role, name))
        return True
