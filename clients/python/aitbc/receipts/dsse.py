"""DSSE v1 envelopes (receipts spec section 2): pre-authentication encoding, building and strict parsing.

Signatures cover PAE(type, payload), never the envelope JSON, so the JSON around them can be parsed
without re-serialising; the envelope bytes themselves are what the log hashes, which is why a verifier
works on the exact bytes it received and why the builder's output is fixed byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .canonical import CanonicalError, DuplicateKeyError, canonical_json, decode_strict

__all__ = [
    "Envelope",
    "EnvelopeError",
    "EnvelopeSignature",
    "EnvelopeSigner",
    "b64decode_strict",
    "b64encode",
    "build_envelope",
    "pae",
    "parse_envelope",
]


class EnvelopeError(ValueError):
    """The bytes are not a well-formed DSSE envelope."""


class EnvelopeSigner(Protocol):
    """What build_envelope needs from a key: its key id and a raw Ed25519 signature."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class EnvelopeSignature:
    """One entry of ``signatures``: the signer's key id and the raw signature bytes."""

    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope; ``payload`` is the decoded payload, exactly the bytes that were signed."""

    payload: bytes
    payload_type: str
    signatures: tuple[EnvelopeSignature, ...]

    def pae(self) -> bytes:
        """The message every signature of this envelope covers."""
        return pae(self.payload_type, self.payload)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 PAE: ``"DSSEv1" SP len(type) SP type SP len(payload) SP payload`` (byte lengths, decimal)."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as the envelope uses."""
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str) -> bytes:
    """Standard base64 with padding, rejecting any other alphabet, missing padding and non-zero pad bits.

    Only the canonical encoding is accepted so that one payload has exactly one envelope text per
    signature set (the log hashes envelope bytes).
    """
    if not isinstance(text, str):
        raise EnvelopeError("base64 value is not a string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise EnvelopeError("invalid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise EnvelopeError("non-canonical base64")
    return raw


def build_envelope(payload: bytes, payload_type: str, signers: Sequence[EnvelopeSigner]) -> bytes:
    """The exact envelope bytes: compact JSON, keys in the spec's order, one signature per signer.

    The spec's key order (payload, payloadType, signatures; keyid, sig) is also sorted order, so the
    canonical encoder produces it.
    """
    if not signers:
        raise ValueError("an envelope needs at least one signer")
    message = pae(payload_type, payload)
    signatures = [{"keyid": s.key_id, "sig": b64encode(s.sign(message))} for s in signers]
    return canonical_json(
        {"payload": b64encode(payload), "payloadType": payload_type, "signatures": signatures}
    )


def parse_envelope(data: bytes) -> Envelope:
    """Parse envelope bytes strictly: no duplicate or unknown keys, every field present and typed.

    Raises DuplicateKeyError (a CanonicalError) for repeated keys, EnvelopeError for everything else.
    """
    try:
        obj = decode_strict(data)
    except DuplicateKeyError:
        raise  # callers report this one by name
    except CanonicalError as exc:
        raise EnvelopeError(f"envelope is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise EnvelopeError("envelope is not a JSON object")
    if set(obj) != {"payload", "payloadType", "signatures"}:
        raise EnvelopeError("envelope fields are not payload, payloadType, signatures")
    payload_type = obj["payloadType"]
    if not isinstance(payload_type, str):
        raise EnvelopeError("payloadType is not a string")
    payload = b64decode_strict(obj["payload"])
    sigs = obj["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("signatures is not a non-empty list")
    parsed: list[EnvelopeSignature] = []
    for entry in sigs:
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise EnvelopeError("a signature is not {keyid, sig}")
        if not isinstance(entry["keyid"], str):
            raise EnvelopeError("keyid is not a string")
        parsed.append(EnvelopeSignature(entry["keyid"], b64decode_strict(entry["sig"])))
    return Envelope(payload, payload_type, tuple(parsed))
