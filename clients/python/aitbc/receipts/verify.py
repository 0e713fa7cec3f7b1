"""Offline verification of receipts, checkpoints and bundles (receipts spec sections 4, 5 and 7).

Every failure is a :class:`VerificationError` whose ``reason`` is a short, stable string, because the CLI
prints it and scripts match on it. Verification works on the exact bytes it is given and never
re-serialises an envelope.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .canonical import CanonicalError, DuplicateKeyError, decode_strict
from .dsse import EnvelopeError, b64decode_strict, parse_envelope
from .keys import KeyEntry, KeySet, b64url, verify_strict
from .legacy import LegacyError, is_legacy_receipt, legacy_public_key, verify_legacy
from .merkle import leaf_hash, verify_consistency, verify_inclusion
from .note import (
    Checkpoint,
    InvalidNoteSignatureError,
    NoteError,
    NoteVerifier,
    UnverifiedNoteError,
    open_note_signers,
    parse_checkpoint,
    parse_verifier_key,
)
from .payload import (
    RECEIPT_PAYLOAD_TYPE,
    PayloadError,
    miner_report_and_signature,
    miner_report_message,
    parse_receipt_payload,
)
from .times import parse_receipt_time

__all__ = [
    "ConsistencyProof",
    "Policy",
    "VerificationError",
    "VerifiedReceipt",
    "parse_consistency_proof",
    "verify_any",
    "verify_bundle",
    "verify_checkpoint",
    "verify_envelope",
]

ENVELOPE_ROLES = frozenset({"coordinator", "attestation"})  # roles that sign the envelope itself
POLICY_ROLES = ENVELOPE_ROLES | {"miner"}
_BUNDLE_FIELDS = frozenset({"envelope", "leaf_index", "inclusion_proof", "checkpoint"})


class VerificationError(Exception):
    """Verification failed; ``reason`` is short and stable (e.g. "bad signature")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Policy:
    """The roles whose valid signature a receipt must carry (spec section 5)."""

    required_roles: frozenset[str] = frozenset({"coordinator"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "required_roles", frozenset(self.required_roles))
        if unknown := self.required_roles - POLICY_ROLES:
            raise ValueError(f"a policy cannot require {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """An RFC 9162 consistency proof between two tree sizes (as the contract's ConsistencyProof)."""

    first_size: int
    second_size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What verification established. ``roles`` are the satisfied roles, ``key_ids`` the keys whose
    signatures verified. Log fields are set only for a bundle; ``format`` is "dsse" or "aitbc-v1"."""

    payload: dict[str, Any]
    receipt_id: str
    roles: frozenset[str]
    key_ids: tuple[str, ...]
    format: str = "dsse"
    envelope: bytes | None = None
    leaf_index: int | None = None
    checkpoint: Checkpoint | None = None
    consistent_with: Checkpoint | None = field(default=None)


def _check_key(entry: KeyEntry, issued_at: datetime) -> None:
    if not entry.key_id_matches:
        raise VerificationError("key id does not match key")
    if issued_at < entry.valid_from:
        raise VerificationError("signed before key valid")
    if entry.valid_until is not None and issued_at > entry.valid_until:
        raise VerificationError("signed after key retired")


def _assign_roles(required: frozenset[str], candidates: dict[str, set[bytes]]) -> bool:
    """Whether each required role can be given its own distinct key (bipartite matching).

    "The same key twice counts once": a key listed under two roles must not satisfy both, or one key
    could stand in for the independent co-signature the policy asks for.
    """
    owner: dict[bytes, str] = {}

    def place(role: str, seen: set[bytes]) -> bool:
        for key in sorted(candidates.get(role, ())):
            if key in seen:
                continue
            seen.add(key)
            if key not in owner or place(owner[key], seen):
                owner[key] = role
                return True
        return False

    return all(place(role, set()) for role in sorted(required))


def verify_envelope(envelope: bytes, keyset: KeySet, policy: Policy | None = None) -> VerifiedReceipt:
    """Verify envelope bytes: payload type, canonical payload, signatures under ``policy`` and ``keyset``.

    Signatures by unknown key ids are ignored; a known key's bad signature, a key outside its validity at
    ``issued_at``, or a key id that is not its key's thumbprint reject the receipt.
    """
    policy = policy or Policy()
    try:
        env = parse_envelope(envelope)
    except DuplicateKeyError as exc:
        raise VerificationError("duplicate JSON key") from exc
    except (EnvelopeError, CanonicalError) as exc:
        raise VerificationError("malformed envelope") from exc
    if env.payload_type != RECEIPT_PAYLOAD_TYPE:
        raise VerificationError("wrong payload type")
    try:
        payload = parse_receipt_payload(env.payload)
    except DuplicateKeyError as exc:
        raise VerificationError("duplicate JSON key") from exc
    except PayloadError as exc:
        raise VerificationError(str(exc)) from exc
    issued_at = parse_receipt_time(payload["issued_at"])

    candidates: dict[str, set[bytes]] = {}
    key_ids: list[str] = []
    message = env.pae()
    checked: set[tuple[str, bytes]] = set()
    for sig in env.signatures:
        entries = keyset.by_key_id(sig.keyid)
        if not entries or (sig.keyid, sig.sig) in checked:
            continue  # unknown key: ignored, satisfies nothing; a repeated signature: verified once
        checked.add((sig.keyid, sig.sig))
        for entry in entries:
            _check_key(entry, issued_at)
            if not verify_strict(entry.public_key, message, sig.sig):
                raise VerificationError("bad signature")
            if entry.role in ENVELOPE_ROLES:
                candidates.setdefault(entry.role, set()).add(entry.public_key)
        if sig.keyid not in key_ids:
            key_ids.append(sig.keyid)

    miner_owner_mismatch = False
    carried = miner_report_and_signature(payload)
    if carried is not None:
        report, miner_sig = carried
        for entry in keyset.by_key_id(miner_sig.keyid):
            if entry.role != "miner":
                continue
            _check_key(entry, issued_at)
            if not verify_strict(entry.public_key, miner_report_message(report), miner_sig.sig):
                raise VerificationError("bad miner signature")
            if entry.owner == payload["provider"]:
                candidates.setdefault("miner", set()).add(entry.public_key)
                if miner_sig.keyid not in key_ids:
                    key_ids.append(miner_sig.keyid)
            else:
                miner_owner_mismatch = True

    for role in sorted(policy.required_roles):
        if not candidates.get(role):
            if role == "miner" and miner_owner_mismatch:
                raise VerificationError("miner key owner does not match provider")
            raise VerificationError(f"missing {role} signature")
    if not _assign_roles(policy.required_roles, candidates):
        raise VerificationError("one key cannot sign for two roles")
    return VerifiedReceipt(
        payload=payload,
        receipt_id=payload["receipt_id"],
        roles=frozenset(candidates),
        key_ids=tuple(key_ids),
        envelope=bytes(envelope),
    )


def _log_verifiers(keyset: KeySet, origin_hint: str | None) -> list[NoteVerifier]:
    verifiers: list[NoteVerifier] = []
    for entry in keyset.with_role("log"):
        if not entry.key_id_matches:
            continue  # a rejected key verifies nothing
        if entry.note_verifier_key:
            try:
                v = parse_verifier_key(entry.note_verifier_key)
            except NoteError:
                continue
            if v.public_key == entry.public_key:
                verifiers.append(v)
        elif origin_hint:  # the key name is the origin (section 6)
            try:
                verifiers.append(NoteVerifier.from_public_key(origin_hint, entry.public_key))
            except NoteError:
                continue
    return verifiers


def verify_checkpoint(note: str, keyset: KeySet) -> Checkpoint:
    """Verify a checkpoint note's signature by a log key of ``keyset`` and parse it.

    The signing key's name must be the checkpoint's origin.
    """
    if not isinstance(note, str):
        raise VerificationError("malformed checkpoint")
    hint = note.split("\n", 1)[0] or None
    try:
        text, signers = open_note_signers(note, _log_verifiers(keyset, hint))
    except InvalidNoteSignatureError as exc:
        raise VerificationError("bad checkpoint signature") from exc
    except UnverifiedNoteError as exc:
        raise VerificationError("checkpoint not signed by a known log key") from exc
    except NoteError as exc:
        raise VerificationError("malformed checkpoint") from exc
    try:
        checkpoint = parse_checkpoint(text)
    except NoteError as exc:
        raise VerificationError("malformed checkpoint") from exc
    if not any(v.name == checkpoint.origin for v in signers):
        raise VerificationError("checkpoint origin does not match log key name")
    return checkpoint


def _hex_hashes(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise ValueError("hashes is not a list")
    out = []
    for item in value:
        if not isinstance(item, str) or len(item) != 64 or item != item.lower():
            raise ValueError("a hash is not 64 lowercase hex characters")
        out.append(bytes.fromhex(item))
    return tuple(out)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_PROTO_PROOF_FIELDS = {"first_size": "first_size", "firstSize": "first_size", "second_size": "second_size",
                       "secondSize": "second_size", "hashes": "hashes"}  # fmt: skip


def _proto_count(value: Any) -> int:
    """A uint64 of protobuf's JSON mapping: a decimal string (as printed) or a JSON integer."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if _is_count(value):
        return value
    raise ValueError("size")


def _proto_proof(obj: Any) -> ConsistencyProof:
    """The contract's ConsistencyProof in protobuf's JSON mapping, as grpcurl prints GetConsistencyProof's
    answer: sizes as decimal strings, hashes as base64, zero and empty fields omitted, optionally wrapped
    in ``{"proof": ...}`` (the response)."""
    if isinstance(obj, dict) and set(obj) == {"proof"}:
        obj = obj["proof"]
    if not isinstance(obj, dict) or not set(obj) <= set(_PROTO_PROOF_FIELDS):
        raise ValueError("fields")
    fields = {_PROTO_PROOF_FIELDS[name]: value for name, value in obj.items()}
    if len(fields) != len(obj):
        raise ValueError("a field given twice")  # (first_size and firstSize)
    hashes = fields.get("hashes", [])
    if not isinstance(hashes, list):
        raise ValueError("hashes is not a list")
    raw = []
    for item in hashes:
        try:
            digest = b64decode_strict(item)
        except EnvelopeError as exc:
            raise ValueError("a hash is not base64") from exc
        if len(digest) != 32:
            raise ValueError("a hash is not 32 bytes")
        raw.append(digest)
    first, second = (_proto_count(fields.get(name, "0")) for name in ("first_size", "second_size"))
    return ConsistencyProof(first, second, tuple(raw))


def parse_consistency_proof(data: bytes | str) -> ConsistencyProof:
    """Parse a consistency proof file: ``{"first_size": M, "second_size": N, "hashes": ["<hex>", ...]}``, or
    the coordinator's GetConsistencyProof answer as grpcurl prints it (protobuf's JSON mapping: sizes as
    strings, base64 hashes), so that the proof a user fetches can be given as it is."""
    try:
        obj = decode_strict(data)
        if isinstance(obj, dict) and set(obj) == {"first_size", "second_size", "hashes"}:
            if _is_count(obj["first_size"]) and _is_count(obj["second_size"]):
                with contextlib.suppress(ValueError):  # (base64 hashes: the JSON mapping, read below)
                    return ConsistencyProof(obj["first_size"], obj["second_size"], _hex_hashes(obj["hashes"]))
        return _proto_proof(obj)
    except DuplicateKeyError as exc:
        raise VerificationError("duplicate JSON key") from exc
    except ValueError as exc:
        raise VerificationError("malformed consistency proof") from exc


def _check_consistency(
    older: Checkpoint, newer: Checkpoint, proof: ConsistencyProof | Sequence[bytes] | None
) -> None:
    if older.origin != newer.origin:
        raise VerificationError("checkpoint origins differ")
    if older.size > newer.size:
        raise VerificationError("older checkpoint is larger (rollback)")
    if proof is None:
        if older.size == newer.size:
            proof = ()
        else:
            raise VerificationError("consistency proof missing")
    if isinstance(proof, ConsistencyProof):
        if (proof.first_size, proof.second_size) != (older.size, newer.size):
            raise VerificationError("consistency proof does not match checkpoints")
        proof = proof.hashes
    if not verify_consistency(older.size, newer.size, older.root, newer.root, list(proof)):
        raise VerificationError("consistency proof does not match checkpoints")


def verify_bundle(
    bundle: bytes,
    keyset: KeySet,
    policy: Policy | None = None,
    older_checkpoint: str | None = None,
    consistency_proof: ConsistencyProof | Sequence[bytes] | None = None,
) -> VerifiedReceipt:
    """Verify a bundle (section 7): envelope under the policy, checkpoint signature, inclusion of the
    envelope's leaf at ``leaf_index``; and, given ``older_checkpoint``, that the bundle's checkpoint
    extends it by ``consistency_proof``."""
    try:
        obj = decode_strict(bundle)
    except DuplicateKeyError as exc:
        raise VerificationError("duplicate JSON key") from exc
    except CanonicalError as exc:
        raise VerificationError("malformed bundle") from exc
    return _verify_bundle_obj(obj, keyset, policy, older_checkpoint, consistency_proof)


def _verify_bundle_obj(
    obj: Any,
    keyset: KeySet,
    policy: Policy | None,
    older_checkpoint: str | None,
    consistency_proof: ConsistencyProof | Sequence[bytes] | None,
) -> VerifiedReceipt:
    try:
        if not isinstance(obj, dict) or set(obj) != _BUNDLE_FIELDS:
            raise ValueError("fields")
        envelope = b64decode_strict(obj["envelope"])
        proof = obj["inclusion_proof"]
        if not isinstance(proof, dict) or set(proof) != {"tree_size", "hashes"}:
            raise ValueError("inclusion_proof")
        tree_size, index = proof["tree_size"], obj["leaf_index"]
        if not (_is_count(tree_size) and _is_count(index)) or not isinstance(obj["checkpoint"], str):
            raise ValueError("types")
        hashes = _hex_hashes(proof["hashes"])
    except (ValueError, EnvelopeError) as exc:
        raise VerificationError("malformed bundle") from exc

    receipt = verify_envelope(envelope, keyset, policy)
    checkpoint = verify_checkpoint(obj["checkpoint"], keyset)
    if tree_size != checkpoint.size or not verify_inclusion(
        leaf_hash(envelope), index, tree_size, hashes, checkpoint.root
    ):
        raise VerificationError("inclusion proof does not match checkpoint")
    older = None
    if older_checkpoint is not None:
        older = verify_checkpoint(older_checkpoint, keyset)
        _check_consistency(older, checkpoint, consistency_proof)
    elif consistency_proof is not None:
        raise VerificationError("consistency proof without older checkpoint")
    return VerifiedReceipt(
        payload=receipt.payload,
        receipt_id=receipt.receipt_id,
        roles=receipt.roles,
        key_ids=receipt.key_ids,
        envelope=envelope,
        leaf_index=index,
        checkpoint=checkpoint,
        consistent_with=older,
    )


def _verify_legacy_obj(obj: dict[str, Any], keyset: KeySet, policy: Policy) -> VerifiedReceipt:
    # v1 carried one signature, the coordinator's; it cannot satisfy any other role.
    try:
        public_key = legacy_public_key(obj)
    except LegacyError as exc:
        raise VerificationError(str(exc)) from exc
    entries = [e for e in keyset.by_public_key(public_key) if e.role == "coordinator"]
    if not entries:
        raise VerificationError("missing coordinator signature")
    entry = entries[0]
    if not entry.key_id_matches:
        raise VerificationError("key id does not match key")
    try:
        payload = verify_legacy(obj, public_key)
    except LegacyError as exc:
        raise VerificationError(str(exc)) from exc
    if extra := sorted(policy.required_roles - {"coordinator"}):
        raise VerificationError(f"missing {extra[0]} signature")
    receipt_id = payload.get("receipt_id")
    return VerifiedReceipt(
        payload=payload,
        receipt_id=receipt_id if isinstance(receipt_id, str) else "",
        roles=frozenset({"coordinator"}),
        key_ids=(b64url(public_key),),
        format="aitbc-v1",
    )


def verify_any(
    data: bytes,
    keyset: KeySet,
    policy: Policy | None = None,
    older_checkpoint: str | None = None,
    consistency_proof: ConsistencyProof | Sequence[bytes] | None = None,
) -> VerifiedReceipt:
    """Verify a bundle, a bare DSSE envelope or a legacy v1 receipt, told apart by shape.

    A consistency check (``older_checkpoint``) needs a bundle, which carries the newer checkpoint.
    """
    policy = policy or Policy()
    try:
        obj = decode_strict(data)
    except DuplicateKeyError as exc:
        raise VerificationError("duplicate JSON key") from exc
    except CanonicalError as exc:
        raise VerificationError("not JSON") from exc
    if isinstance(obj, dict) and "envelope" in obj:
        return _verify_bundle_obj(obj, keyset, policy, older_checkpoint, consistency_proof)
    if older_checkpoint is not None or consistency_proof is not None:
        raise VerificationError("consistency check needs a bundle")
    if isinstance(obj, dict) and "payloadType" in obj:
        return verify_envelope(data, keyset, policy)
    if is_legacy_receipt(obj):
        return _verify_legacy_obj(obj, keyset, policy)
    raise VerificationError("unrecognised receipt format")
