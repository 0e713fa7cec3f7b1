"""Shared builders for the receipts tests: deterministic keys, payloads, envelopes, logs and bundles."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aitbc.receipts import (
    RECEIPT_PAYLOAD_TYPE,
    KeyEntry,
    KeySet,
    MerkleTree,
    Signer,
    build_envelope,
    build_receipt_payload,
    leaf_hash,
    sign_checkpoint,
    verifier_key_string,
)

# ../shared/vectors relative to the repository root (tests/receipts/ -> tests/ -> root).
VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ISSUED = datetime(2026, 11, 26, 22, 46, 59, 123456, tzinfo=UTC)
ORIGIN = "aitbc.coordinator/coord-test"

COORD = Signer(bytes([1]) * 32)
ATTEST = Signer(bytes([2]) * 32)
LOG = Signer(bytes([3]) * 32)
MINER = Signer(bytes([4]) * 32)
OTHER = Signer(bytes([5]) * 32)

PROVIDER = "miner-alpha"


def load_vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def payload_fields(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for build_receipt_payload, valid by default."""
    fields: dict[str, Any] = {
        "receipt_id": "019ac1e2-3f4a-7b5c-8d6e-0123456789ab",
        "job_id": "job-0001",
        "attempt": 1,
        "provider": PROVIDER,
        "client": "client-beta",
        "units": "1.9",
        "unit_type": "gpu_seconds",
        "price": "4.2",
        "cost": "7.98",
        "started_at": ISSUED - timedelta(seconds=5),
        "completed_at": ISSUED - timedelta(seconds=1),
        "issued_at": ISSUED,
        "result_sha256": "ab" * 32,
        "input_sha256": "cd" * 32,
        "coordinator_id": "coord-test",
        "nonce": "0f" * 16,
        "chain_id": "aitbc-devnet",
    }
    fields.update(overrides)
    return fields


def make_payload(**overrides: Any) -> bytes:
    return build_receipt_payload(**payload_fields(**overrides))


def make_envelope(payload: bytes | None = None, signers: tuple[Signer, ...] = (COORD,)) -> bytes:
    return build_envelope(payload if payload is not None else make_payload(), RECEIPT_PAYLOAD_TYPE, signers)


def entry(signer: Signer, role: str, **kw: Any) -> KeyEntry:
    if role == "log" and "note_verifier_key" not in kw:
        kw["note_verifier_key"] = verifier_key_string(ORIGIN, signer.public_key)
    return KeyEntry.for_signer(signer, role, kw.pop("valid_from", T0), **kw)


def default_keyset(*extra: KeyEntry) -> KeySet:
    return KeySet([entry(COORD, "coordinator"), entry(ATTEST, "attestation"), entry(LOG, "log"), *extra])


@dataclass
class Log:
    """A test log: a tree over envelopes plus the signer of its checkpoints."""

    tree: MerkleTree
    envelopes: list[bytes]
    signer: Signer = LOG
    origin: str = ORIGIN

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        return sign_checkpoint(self.origin, size, self.tree.root(size), self.signer)

    def bundle(self, index: int, size: int | None = None, **overrides: Any) -> bytes:
        size = self.tree.size if size is None else size
        obj: dict[str, Any] = {
            "envelope": base64.b64encode(self.envelopes[index]).decode(),
            "leaf_index": index,
            "inclusion_proof": {
                "tree_size": size,
                "hashes": [h.hex() for h in self.tree.inclusion_proof(index, size)],
            },
            "checkpoint": self.checkpoint(size),
        }
        obj.update(overrides)
        return json.dumps(obj).encode()


def make_log(n: int = 7, target: int = 3, target_envelope: bytes | None = None) -> Log:
    """A log of ``n`` receipts; the one at ``target`` is ``target_envelope`` (default: make_envelope())."""
    envelopes = []
    for i in range(n):
        if i == target:
            envelopes.append(target_envelope if target_envelope is not None else make_envelope())
        else:
            envelopes.append(make_envelope(make_payload(job_id=f"job-other-{i}")))
    tree = MerkleTree()
    for env in envelopes:
        tree.append(leaf_hash(env))
    return Log(tree, envelopes)
