"""Legacy AITBC v1 receipts (receipts spec section 8): verification only.

v1 signed the canonical JSON of a payload with JSON numbers (Python float repr) and nulls dropped, so the
signed bytes are recomputed from the parsed payload; that is inherent to the old format and the reason new
receipts are DSSE envelopes over exact bytes. v1 named the key by base64url(public key) (the sample's
``key_id`` decodes to its ``verify_key_hex``), not by a JWK thumbprint.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from .canonical import CanonicalError, legacy_canonical_json
from .keys import b64url, verify_strict

__all__ = ["LegacyError", "is_legacy_receipt", "legacy_key_id", "legacy_public_key", "verify_legacy"]


class LegacyError(ValueError):
    """A legacy receipt does not verify; ``str()`` is a short reason."""


def legacy_key_id(public_key: bytes) -> str:
    """A v1 key id: base64url (no padding) of the 32-byte public key."""
    return b64url(public_key)


def _b64url_decode_strict(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise LegacyError("malformed legacy receipt")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise LegacyError("malformed legacy receipt") from exc
    if b64url(raw) != text:  # reject other alphabets, stray characters and non-zero pad bits
        raise LegacyError("malformed legacy receipt")
    return raw


def is_legacy_receipt(obj: Any) -> bool:
    """Whether a decoded JSON value has the v1 shape ``{payload: {...}, signature: {...}}``."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("payload"), dict)
        and isinstance(obj.get("signature"), dict)
    )


def _signature_of(receipt: Mapping[str, Any]) -> tuple[str, bytes]:
    sig = receipt["signature"]
    if set(sig) != {"alg", "key_id", "sig"} or not isinstance(sig["key_id"], str):
        raise LegacyError("malformed legacy receipt")
    if sig["alg"] != "Ed25519":
        raise LegacyError("unsupported signature algorithm")
    return sig["key_id"], _b64url_decode_strict(sig["sig"])


def legacy_public_key(receipt: Mapping[str, Any]) -> bytes:
    """The public key a v1 receipt names (its key id decoded); LegacyError if that is not a 32-byte key."""
    if not is_legacy_receipt(receipt):
        raise LegacyError("malformed legacy receipt")
    key_id, _ = _signature_of(receipt)
    raw = _b64url_decode_strict(key_id)
    if len(raw) != 32:
        raise LegacyError("malformed legacy receipt")
    return raw


def verify_legacy(receipt: Mapping[str, Any], public_key: bytes) -> dict[str, Any]:
    """Verify a decoded v1 receipt against ``public_key``; returns its payload or raises LegacyError.

    Fields next to ``payload`` and ``signature`` are not signed and are ignored.
    """
    if not is_legacy_receipt(receipt):
        raise LegacyError("malformed legacy receipt")
    key_id, sig = _signature_of(receipt)
    if key_id != legacy_key_id(public_key):
        raise LegacyError("key id does not match key")
    try:
        message = legacy_canonical_json(receipt["payload"])
    except CanonicalError as exc:
        raise LegacyError("malformed legacy receipt") from exc
    if not verify_strict(public_key, message, sig):
        raise LegacyError("bad signature")
    return dict(receipt["payload"])
