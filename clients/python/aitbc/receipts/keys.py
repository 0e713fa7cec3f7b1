"""Ed25519 keys, RFC 7638 key ids and the key set (receipts spec section 4).

PyNaCl is the only Ed25519 implementation used: libsodium's verification is the strict policy the spec
names (non-canonical encodings and small-order points reject), and the CCTV edge-case vectors pin it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nacl.exceptions
import nacl.signing

from .canonical import CanonicalError, canonical_json, decode_strict
from .times import format_time, parse_time

__all__ = [
    "ROLES",
    "STATUSES",
    "KeyEntry",
    "KeySet",
    "KeySetError",
    "Signer",
    "b64url",
    "jwk_thumbprint",
    "verify_strict",
]

ROLES = frozenset({"coordinator", "attestation", "log", "miner"})
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
STATUSES = frozenset({"active", "retired"})


class KeySetError(ValueError):
    """A key set (JSON) is malformed."""


def b64url(data: bytes) -> str:
    """base64url without padding (JWK and key-id encoding)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(public_key: bytes) -> str:
    """RFC 7638 thumbprint of the OKP/Ed25519 JWK of ``public_key``: the spec's key id (KID).

    The JWK's required members in lexicographic order, no whitespace; hashed with SHA-256; base64url.
    """
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    jwk = '{"crv":"Ed25519","kty":"OKP","x":"' + b64url(public_key) + '"}'
    return b64url(hashlib.sha256(jwk.encode("ascii")).digest())


def verify_strict(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """libsodium-strict Ed25519 verification; False (never an exception) for anything that does not verify.

    Wrong lengths, non-canonical or small-order encodings, and non-bytes input all give False.
    """
    if not isinstance(public_key, bytes | bytearray) or not isinstance(signature, bytes | bytearray):
        return False
    if not isinstance(message, bytes | bytearray) or len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(bytes(public_key)).verify(bytes(message), bytes(signature))
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


class Signer:
    """An Ed25519 private key: made from a 32-byte seed (bytes or 64 hex characters)."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, seed: bytes | str) -> None:
        if isinstance(seed, str):
            try:
                seed = bytes.fromhex(seed)
            except ValueError as exc:
                raise ValueError("seed hex is not hex") from exc
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(bytes(seed))
        self.public_key: bytes = bytes(self._key.verify_key)
        self.key_id: str = jwk_thumbprint(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        """A new random key (libsodium's CSPRNG)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        """The 32-byte seed, for storing the key; treat as secret."""
        return bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``message``."""
        return self._key.sign(bytes(message)).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Signer(key_id={self.key_id!r})"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key of a key set. Times are aware UTC datetimes; optional fields are None when absent."""

    key_id: str
    role: str
    status: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None = None
    note_verifier_key: str | None = None
    owner: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise KeySetError(f"unknown key role {self.role!r}")
        if self.status not in STATUSES:
            raise KeySetError(f"unknown key status {self.status!r}")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise KeySetError("public_key is not 32 bytes")
        for name in ("valid_from", "valid_until"):
            value = getattr(self, name)
            if value is None and name == "valid_until":
                continue
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise KeySetError(f"{name} is not a timezone-aware datetime")
            object.__setattr__(self, name, value.astimezone(UTC))  # one zone everywhere: UTC

    @classmethod
    def for_signer(
        cls,
        signer: Signer,
        role: str,
        valid_from: datetime,
        *,
        status: str = "active",
        valid_until: datetime | None = None,
        note_verifier_key: str | None = None,
        owner: str | None = None,
    ) -> KeyEntry:
        """The public entry of a signer (its key id computed, never typed in)."""
        return cls(
            signer.key_id, role, status, signer.public_key, valid_from, valid_until, note_verifier_key, owner
        )

    @property
    def key_id_matches(self) -> bool:
        """Whether ``key_id`` is the thumbprint of ``public_key`` (a verifier refuses the key otherwise)."""
        return jwk_thumbprint(self.public_key) == self.key_id

    def valid_at(self, when: datetime) -> bool:
        """Whether ``when`` lies in [valid_from, valid_until] (both ends inclusive)."""
        if when < self.valid_from:
            return False
        return self.valid_until is None or when <= self.valid_until

    def to_json(self) -> dict[str, Any]:
        """The key set's JSON object for this entry (absent optional fields omitted)."""
        out: dict[str, Any] = {
            "key_id": self.key_id,
            "role": self.role,
            "status": self.status,
            "public_key": self.public_key.hex(),
            "valid_from": format_time(self.valid_from),
        }
        if self.valid_until is not None:
            out["valid_until"] = format_time(self.valid_until)
        if self.note_verifier_key is not None:
            out["note_verifier_key"] = self.note_verifier_key
        if self.owner is not None:
            out["owner"] = self.owner
        return out

    @classmethod
    def from_json(cls, obj: Any) -> KeyEntry:
        """Parse one key object; raises KeySetError on missing, unknown or mistyped fields."""
        if not isinstance(obj, dict):
            raise KeySetError("a key is not a JSON object")
        required = {"key_id", "role", "status", "public_key", "valid_from"}
        optional = {"valid_until", "note_verifier_key", "owner"}
        if missing := required - obj.keys():
            raise KeySetError(f"key is missing {sorted(missing)}")
        if unknown := obj.keys() - required - optional:
            raise KeySetError(f"key has unknown fields {sorted(unknown)}")
        for name, value in obj.items():
            if not isinstance(value, str):
                raise KeySetError(f"key field {name} is not a string")
        if not _HEX.fullmatch(obj["public_key"]):  # (bytes.fromhex would also take spaces between bytes)
            raise KeySetError(f"key {obj['key_id']!r}: public_key is not hex")
        try:
            public_key = bytes.fromhex(obj["public_key"])
            valid_from = parse_time(obj["valid_from"])
            valid_until = parse_time(obj["valid_until"]) if "valid_until" in obj else None
        except ValueError as exc:
            raise KeySetError(f"key {obj['key_id']!r}: {exc}") from exc
        if valid_until is not None and valid_until < valid_from:
            raise KeySetError(f"key {obj['key_id']!r}: valid_until is before valid_from")
        return cls(
            obj["key_id"],
            obj["role"],
            obj["status"],
            public_key,
            valid_from,
            valid_until,
            obj.get("note_verifier_key"),
            obj.get("owner"),
        )


class KeySet:
    """The keys a verifier trusts (immutable). One key id may appear with several roles, one entry each."""

    __slots__ = ("_by_id", "keys")

    def __init__(self, keys: Iterable[KeyEntry] = ()) -> None:
        self.keys: tuple[KeyEntry, ...] = tuple(keys)
        index: dict[str, list[KeyEntry]] = {}
        for entry in self.keys:
            index.setdefault(entry.key_id, []).append(entry)
        self._by_id = {k: tuple(v) for k, v in index.items()}

    def __repr__(self) -> str:
        return f"KeySet({list(self.keys)!r})"

    def __iter__(self) -> Iterator[KeyEntry]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def by_key_id(self, key_id: str) -> tuple[KeyEntry, ...]:
        """Every entry with this key id (empty when unknown)."""
        return self._by_id.get(key_id, ())

    def with_role(self, role: str) -> tuple[KeyEntry, ...]:
        """Every entry of one role."""
        return tuple(e for e in self.keys if e.role == role)

    def by_public_key(self, public_key: bytes) -> tuple[KeyEntry, ...]:
        """Every entry holding this public key (legacy receipts name keys by the key bytes)."""
        return tuple(e for e in self.keys if e.public_key == public_key)

    @classmethod
    def load(cls, data: bytes | str) -> KeySet:
        """Parse the key set JSON ``{"keys": [...]}`` (strict: duplicate keys reject)."""
        try:
            obj = decode_strict(data)
        except CanonicalError as exc:
            raise KeySetError(f"key set is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("keys"), list):
            raise KeySetError('key set is not {"keys": [...]}')
        return cls(KeyEntry.from_json(item) for item in obj["keys"])

    def dump(self) -> bytes:
        """The key set as canonical JSON bytes."""
        return canonical_json({"keys": [e.to_json() for e in self.keys]})
