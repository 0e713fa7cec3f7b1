"""C2SP signed notes and tlog checkpoints (receipts spec section 6).

A note is ``text`` (ending in a newline), a blank line, then one line per signature:
``— <name> <base64(key id (4 bytes) || Ed25519 signature)>``. The 4-byte key id only routes a line to a
candidate key; the signature decides. As in Go's ``golang.org/x/mod/sumdb/note``, a signature line from a
known key that does not verify rejects the whole note, and lines from unknown keys are ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .keys import Signer, verify_strict

__all__ = [
    "Checkpoint",
    "InvalidNoteSignatureError",
    "NoteError",
    "NoteVerifier",
    "UnverifiedNoteError",
    "format_checkpoint",
    "note_key_id",
    "open_note",
    "open_note_signers",
    "parse_checkpoint",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_note",
    "verifier_key_string",
]

_ALG_ED25519 = 0x01
_SIG_PREFIX = "— "  # U+2014 EM DASH, then a space
_MAX_SIGNATURES = 100  # Go's limit: bounds work on hostile input
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")  # (at most 20 digits: then compared with the uint64 range)
_MAX_SIZE = 2**64 - 1  # a tree size is a uint64, as everywhere in the contract


class NoteError(ValueError):
    """A note is malformed, or no known key signed it validly, or a checkpoint text is malformed."""


class InvalidNoteSignatureError(NoteError):
    """A known key's signature line does not verify: the note is rejected outright."""


class UnverifiedNoteError(NoteError):
    """The note is well formed but carries no signature by a known key."""


def _is_utf8(text: str) -> bool:
    """Whether text can be UTF-8 (a JSON "\\ud800" escape decodes to a lone surrogate, which cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name) and _is_utf8(name)


def note_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([_ALG_ED25519]) + public_key).digest()[:4]


def verifier_key_string(name: str, public_key: bytes) -> str:
    """``<name>+<hex(key id)>+<base64(0x01 || public key)>``: how a note verifier key is published."""
    if not _valid_name(name):
        raise NoteError("invalid key name")
    if len(public_key) != 32:
        raise NoteError("an Ed25519 public key is 32 bytes")
    encoded = base64.b64encode(bytes([_ALG_ED25519]) + public_key).decode("ascii")
    return f"{name}+{note_key_id(name, public_key).hex()}+{encoded}"


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A key that may sign notes: its name, 4-byte key id and Ed25519 public key."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> NoteVerifier:
        return parse_verifier_key(verifier_key_string(name, public_key))


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a verifier key string; its key id must be the one computed from name and key."""
    # Split at the first two "+" only: the base64 key may itself contain "+" (names and hashes cannot).
    parts = vkey.split("+", 2) if isinstance(vkey, str) else []
    if len(parts) != 3:
        raise NoteError("verifier key is not name+hash+key")
    name, hash_hex, key_b64 = parts
    if not _valid_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
        raise NoteError("malformed verifier key")
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("verifier key is not base64") from exc
    if len(raw) != 33 or raw[0] != _ALG_ED25519:
        raise NoteError("verifier key is not an Ed25519 key")
    public_key = raw[1:]
    key_id = note_key_id(name, public_key)
    if key_id.hex() != hash_hex:
        raise NoteError("verifier key hash does not match its name and key")
    return NoteVerifier(name, key_id, public_key)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text does not end with a newline")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise NoteError("note text contains control characters")
    if not _is_utf8(text):
        raise NoteError("note text is not Unicode (lone surrogate)")


def sign_note(text: str, name: str, signer: Signer) -> str:
    """A note of ``text`` with one signature line by ``signer`` under ``name``."""
    _check_text(text)
    if not _valid_name(name):
        raise NoteError("invalid key name")
    sig = note_key_id(name, signer.public_key) + signer.sign(text.encode("utf-8"))
    return f"{text}\n{_SIG_PREFIX}{name} {base64.b64encode(sig).decode('ascii')}\n"


def open_note_signers(note: str, verifiers: Iterable[NoteVerifier | str]) -> tuple[str, list[NoteVerifier]]:
    """The note's text and the known verifiers whose signatures are valid.

    Raises NoteError when the note is malformed, a known key's signature is invalid, or no known key
    signed it.
    """
    if not isinstance(note, str):
        raise NoteError("note is not text")
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        parsed = parse_verifier_key(v) if isinstance(v, str) else v
        known[(parsed.name, parsed.key_id)] = parsed
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note")
    text, sig_block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    if not sig_block.endswith("\n") or any(ord(ch) < 0x20 and ch != "\n" for ch in sig_block):
        raise NoteError("malformed note")
    if not _is_utf8(sig_block):
        raise NoteError("malformed note")
    message = text.encode("utf-8")
    lines = sig_block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise NoteError("too many signatures")
    signed: dict[tuple[str, bytes], NoteVerifier] = {}
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("malformed note")
        name, _, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteError("malformed note") from exc
        if not _valid_name(name) or not sig_b64 or len(sig) < 5:
            raise NoteError("malformed note")
        verifier = known.get((name, sig[:4]))
        if verifier is None:
            continue  # someone else's signature: not ours to judge
        if not verify_strict(verifier.public_key, message, sig[4:]):
            raise InvalidNoteSignatureError(f"invalid note signature by {name}")
        signed[(name, verifier.key_id)] = verifier
    if not signed:
        raise UnverifiedNoteError("no signature by a known key")
    return text, list(signed.values())


def open_note(note: str, verifiers: Iterable[NoteVerifier | str]) -> str:
    """The text of a note validly signed by at least one of ``verifiers``; NoteError otherwise."""
    return open_note_signers(note, verifiers)[0]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log checkpoint: origin line, tree size and RFC 9162 root hash."""

    origin: str
    size: int
    root: bytes


def format_checkpoint(origin: str, size: int, root: bytes) -> str:
    """The checkpoint text ``<origin>\\n<size>\\n<base64(root)>\\n`` (before signing)."""
    if not origin or any(ord(ch) < 0x20 for ch in origin):
        raise NoteError("invalid origin")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_SIZE:
        raise NoteError("invalid tree size")
    if len(root) != 32:
        raise NoteError("a root hash is 32 bytes")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint text (exactly three lines, as the spec writes them)."""
    lines = text.split("\n")
    if len(lines) != 4 or lines[3] != "":
        raise NoteError("checkpoint is not three lines")
    origin, size_text, root_b64 = lines[:3]
    if not origin or not _SIZE.fullmatch(size_text) or int(size_text) > _MAX_SIZE:
        raise NoteError("malformed checkpoint")
    try:
        root = base64.b64decode(root_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("checkpoint root is not base64") from exc
    if len(root) != 32 or base64.b64encode(root).decode("ascii") != root_b64:
        raise NoteError("malformed checkpoint root")
    return Checkpoint(origin, int(size_text), root)


def sign_checkpoint(origin: str, size: int, root: bytes, signer: Signer) -> str:
    """The signed checkpoint note the log publishes; the key name is the origin (spec section 6)."""
    return sign_note(format_checkpoint(origin, size, root), origin, signer)
