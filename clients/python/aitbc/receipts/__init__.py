"""Signed receipts: the format library the coordinator issues with and the SDK's offline verifier.

Normative spec: docs/receipts.md. Issuing (coordinator)::

    payload = build_receipt_payload(receipt_id=..., job_id=..., ...)          # canonical bytes
    envelope = build_envelope(payload, RECEIPT_PAYLOAD_TYPE, [coordinator_signer])
    # (the coordinator: issuing.ReceiptEncoder, the same bytes without re-checking its own values)
    index = tree.append(leaf_hash(envelope))                                  # MerkleTree
    note = sign_checkpoint(origin, tree.size, tree.root(), log_signer)

Verifying (SDK)::

    receipt = verify_any(data, KeySet.load(keys_json), Policy())
"""

from .canonical import CanonicalError, DuplicateKeyError, canonical_json, canonical_struct, decode_strict
from .dsse import Envelope, EnvelopeError, build_envelope, pae, parse_envelope
from .keys import KeyEntry, KeySet, KeySetError, Signer, jwk_thumbprint, verify_strict
from .legacy import LegacyError, verify_legacy
from .merkle import EMPTY_ROOT, MerkleTree, leaf_hash, node_hash, verify_consistency, verify_inclusion
from .note import (
    Checkpoint,
    NoteError,
    NoteVerifier,
    format_checkpoint,
    note_key_id,
    open_note,
    parse_checkpoint,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key_string,
)
from .payload import (
    MINER_REPORT_TYPE,
    RECEIPT_PAYLOAD_TYPE,
    MinerSignature,
    PayloadError,
    build_miner_report,
    build_receipt_payload,
    format_time,
    new_nonce,
    parse_receipt_payload,
    result_bytes,
    result_digest,
    sign_miner_report,
)
from .times import format_time_us
from .verify import (
    ConsistencyProof,
    Policy,
    VerificationError,
    VerifiedReceipt,
    parse_consistency_proof,
    verify_any,
    verify_bundle,
    verify_checkpoint,
    verify_envelope,
)

__all__ = [
    "EMPTY_ROOT",
    "MINER_REPORT_TYPE",
    "RECEIPT_PAYLOAD_TYPE",
    "CanonicalError",
    "Checkpoint",
    "ConsistencyProof",
    "DuplicateKeyError",
    "Envelope",
    "EnvelopeError",
    "KeyEntry",
    "KeySet",
    "KeySetError",
    "LegacyError",
    "MerkleTree",
    "MinerSignature",
    "NoteError",
    "NoteVerifier",
    "PayloadError",
    "Policy",
    "Signer",
    "VerificationError",
    "VerifiedReceipt",
    "build_envelope",
    "build_miner_report",
    "build_receipt_payload",
    "canonical_json",
    "canonical_struct",
    "decode_strict",
    "format_checkpoint",
    "format_time",
    "format_time_us",
    "jwk_thumbprint",
    "leaf_hash",
    "new_nonce",
    "node_hash",
    "note_key_id",
    "open_note",
    "pae",
    "parse_checkpoint",
    "parse_consistency_proof",
    "parse_envelope",
    "parse_receipt_payload",
    "parse_verifier_key",
    "result_bytes",
    "result_digest",
    "sign_checkpoint",
    "sign_miner_report",
    "sign_note",
    "verifier_key_string",
    "verify_any",
    "verify_bundle",
    "verify_checkpoint",
    "verify_consistency",
    "verify_envelope",
    "verify_inclusion",
    "verify_legacy",
    "verify_strict",
]
