"""Checkpoints, bundles and log consistency (spec sections 6 and 7), plus verify_any's shape detection."""

from __future__ import annotations

import base64
import json

import pytest
from aitbc.receipts import (
    Checkpoint,
    ConsistencyProof,
    KeyEntry,
    KeySet,
    MerkleTree,
    Policy,
    Signer,
    VerificationError,
    format_checkpoint,
    leaf_hash,
    note_key_id,
    parse_checkpoint,
    sign_checkpoint,
    sign_note,
    verifier_key_string,
    verify_any,
    verify_bundle,
    verify_checkpoint,
)
from aitbc.receipts.legacy import legacy_key_id
from receipts_helpers import (
    COORD,
    LOG,
    ORIGIN,
    OTHER,
    Log,
    default_keyset,
    entry,
    load_vector,
    make_envelope,
    make_log,
    make_payload,
)

KEYS = default_keyset()


def reason(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(VerificationError) as info:
        fn(*args, **kwargs)
    return info.value.reason


def test_checkpoint_format_sign_and_verify() -> None:
    root = bytes(range(32))
    text = format_checkpoint(ORIGIN, 5, root)
    assert text == f"{ORIGIN}\n5\n{base64.b64encode(root).decode()}\n"
    assert parse_checkpoint(text) == Checkpoint(ORIGIN, 5, root)
    note = sign_checkpoint(ORIGIN, 5, root, LOG)
    head, sig_line = note.split("\n\n")
    assert head + "\n" == text
    name, sig = sig_line.removeprefix("— ").rstrip("\n").split(" ")
    assert name == ORIGIN
    assert base64.b64decode(sig)[:4] == note_key_id(ORIGIN, LOG.public_key)
    assert verify_checkpoint(note, KEYS) == Checkpoint(ORIGIN, 5, root)


@pytest.mark.parametrize(
    "bad", ["o\n05\nAAAA\n", "o\n5\n", "o\n5\nAAAA\n", "o\n-1\n" + "A" * 43 + "=\n", "\n1\n"]
)
def test_parse_checkpoint_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_checkpoint(bad)


def test_checkpoint_rejections() -> None:
    note = sign_checkpoint(ORIGIN, 5, b"\x01" * 32, LOG)
    tampered = note.replace("\n5\n", "\n6\n", 1)
    assert reason(verify_checkpoint, tampered, KEYS) == "bad checkpoint signature"
    stranger = sign_checkpoint(ORIGIN, 5, b"\x01" * 32, OTHER)
    assert reason(verify_checkpoint, stranger, KEYS) == "checkpoint not signed by a known log key"
    # The coordinator key is in the key set, but not as a log key.
    coord_signed = sign_checkpoint(ORIGIN, 5, b"\x01" * 32, COORD)
    coord_as_log_name = KeySet([*KEYS, entry(COORD, "coordinator")])
    assert (
        reason(verify_checkpoint, coord_signed, coord_as_log_name)
        == "checkpoint not signed by a known log key"
    )
    # A log key signing under a name other than the checkpoint's origin.
    other_name = sign_note(format_checkpoint("another/origin", 5, b"\x01" * 32), ORIGIN, LOG)
    assert reason(verify_checkpoint, other_name, KEYS) == "checkpoint origin does not match log key name"
    assert reason(verify_checkpoint, "no signatures\n", KEYS) == "malformed checkpoint"
    # A log entry whose key id is not its key's thumbprint verifies nothing.
    lying = KeySet([KeyEntry(COORD.key_id, "log", "active", LOG.public_key, KEYS.keys[0].valid_from,
                             note_verifier_key=verifier_key_string(ORIGIN, LOG.public_key))])  # fmt: skip
    assert reason(verify_checkpoint, note, lying) == "checkpoint not signed by a known log key"


def test_checkpoint_log_key_without_note_verifier_key_uses_origin() -> None:
    bare = KeySet([KeyEntry.for_signer(LOG, "log", KEYS.keys[0].valid_from)])
    note = sign_checkpoint(ORIGIN, 3, b"\x02" * 32, LOG)
    assert verify_checkpoint(note, bare).size == 3


def test_good_bundle_verifies() -> None:
    log = make_log()
    receipt = verify_bundle(log.bundle(3), KEYS)
    assert receipt.leaf_index == 3
    assert receipt.checkpoint == Checkpoint(ORIGIN, 7, log.tree.root())
    assert receipt.envelope == log.envelopes[3]
    assert receipt.roles == {"coordinator"}
    for i in range(7):
        assert verify_bundle(log.bundle(i), KEYS).leaf_index == i
    # Against an older checkpoint too, as long as the leaf is in it.
    assert verify_bundle(log.bundle(3, size=4), KEYS).checkpoint.size == 4


def _mutate(bundle: bytes, fn) -> bytes:  # type: ignore[no-untyped-def]
    obj = json.loads(bundle)
    fn(obj)
    return json.dumps(obj).encode()


def test_bundle_tampering_rejects() -> None:
    log = make_log()
    good = log.bundle(3)
    proof = json.loads(good)["inclusion_proof"]["hashes"]
    cases = {
        "truncated": lambda o: o["inclusion_proof"].update(hashes=proof[:-1]),
        "extended": lambda o: o["inclusion_proof"].update(hashes=[*proof, proof[-1]]),
        "wrong index": lambda o: o.update(leaf_index=2),
        "index past size": lambda o: o.update(leaf_index=7),
        "wrong size": lambda o: o["inclusion_proof"].update(tree_size=8),
        "other leaf's proof": lambda o: o["inclusion_proof"].update(
            hashes=[h.hex() for h in log.tree.inclusion_proof(2)]
        ),
        "flipped hash": lambda o: o["inclusion_proof"].update(hashes=["00" * 32, *proof[1:]]),
    }
    for name, fn in cases.items():
        assert (
            reason(verify_bundle, _mutate(good, fn), KEYS) == "inclusion proof does not match checkpoint"
        ), name
    # A validly signed receipt that is not the logged one.
    other = base64.b64encode(make_envelope(make_payload(job_id="job-not-logged"))).decode()
    assert reason(verify_bundle, _mutate(good, lambda o: o.update(envelope=other)), KEYS) == (
        "inclusion proof does not match checkpoint"
    )
    # The logged envelope with a changed byte: the signature catches it first.
    env = bytearray(log.envelopes[3])
    env[env.index(b'"payloadType":"') + 20] ^= 0x01
    changed = base64.b64encode(bytes(env)).decode()
    assert (
        reason(verify_bundle, _mutate(good, lambda o: o.update(envelope=changed)), KEYS)
        == "wrong payload type"
    )
    # The checkpoint of a different log (same key, other contents).
    forked = make_log(target_envelope=log.envelopes[3])
    forked.envelopes[0] = make_envelope(make_payload(job_id="job-evil"))
    forked.tree = MerkleTree([leaf_hash(e) for e in forked.envelopes])
    forged = _mutate(good, lambda o: o.update(checkpoint=forked.checkpoint()))
    assert reason(verify_bundle, forged, KEYS) == "inclusion proof does not match checkpoint"
    # Policy still applies inside a bundle.
    assert (
        reason(verify_bundle, good, KEYS, Policy(frozenset({"attestation"})))
        == "missing attestation signature"
    )


@pytest.mark.parametrize(
    "bundle",
    [
        b"[]",
        b'{"envelope":"AAAA"}',
        b"not json",
        b'{"envelope":"!!","leaf_index":0,"inclusion_proof":{"tree_size":1,"hashes":[]},"checkpoint":""}',
    ],
)
def test_malformed_bundles(bundle: bytes) -> None:
    assert reason(verify_bundle, bundle, KEYS) == "malformed bundle"


def test_bundle_duplicate_keys() -> None:
    good = make_log().bundle(3)
    dup = good.replace(b'"leaf_index": 3', b'"leaf_index": 3, "leaf_index": 4')
    assert dup != good
    assert reason(verify_bundle, dup, KEYS) == "duplicate JSON key"


def test_consistency_with_older_checkpoint() -> None:
    log = make_log(n=7)
    for m in range(1, 8):
        older = log.checkpoint(m)
        proof = ConsistencyProof(m, 7, tuple(log.tree.consistency_proof(m, 7)))
        receipt = verify_bundle(log.bundle(3), KEYS, older_checkpoint=older, consistency_proof=proof)
        assert receipt.consistent_with == Checkpoint(ORIGIN, m, log.tree.root(m))
        # A bare hash list works too.
        verify_bundle(log.bundle(3), KEYS, older_checkpoint=older, consistency_proof=proof.hashes)
    same = verify_bundle(log.bundle(3), KEYS, older_checkpoint=log.checkpoint(), consistency_proof=None)
    assert same.consistent_with is not None and same.consistent_with.size == 7


def test_consistency_rejects_fork_rollback_and_bad_proofs() -> None:
    log = make_log(n=7)
    # A fork: same key, same sizes, different history (entry 1 replaced).
    fork_envs = list(log.envelopes)
    fork_envs[1] = make_envelope(make_payload(job_id="job-rewritten"))
    fork = Log(MerkleTree([leaf_hash(e) for e in fork_envs]), fork_envs)
    for m in range(2, 7):
        honest_proof = ConsistencyProof(m, 7, tuple(log.tree.consistency_proof(m, 7)))
        fork_proof = ConsistencyProof(m, 7, tuple(fork.tree.consistency_proof(m, 7)))
        for proof in (honest_proof, fork_proof):
            got = reason(
                verify_bundle,
                log.bundle(3),
                KEYS,
                older_checkpoint=fork.checkpoint(m),
                consistency_proof=proof,
            )
            assert got == "consistency proof does not match checkpoints", m
    forked_same_size = reason(verify_bundle, log.bundle(3), KEYS, older_checkpoint=fork.checkpoint())
    assert forked_same_size == "consistency proof does not match checkpoints"
    # Rollback: the "older" checkpoint is bigger than the bundle's.
    bigger = make_log(n=9)
    bigger.envelopes[:7] = log.envelopes
    bigger.tree = MerkleTree([leaf_hash(e) for e in bigger.envelopes])
    assert reason(verify_bundle, log.bundle(3), KEYS, older_checkpoint=bigger.checkpoint()) == (
        "older checkpoint is larger (rollback)"
    )
    # Proof for other sizes, truncated proof, missing proof.
    wrong_sizes = ConsistencyProof(3, 6, tuple(log.tree.consistency_proof(3, 6)))
    kwargs = {"older_checkpoint": log.checkpoint(3)}
    assert reason(verify_bundle, log.bundle(3), KEYS, consistency_proof=wrong_sizes, **kwargs) == (
        "consistency proof does not match checkpoints"
    )
    truncated = tuple(log.tree.consistency_proof(3, 7))[:-1]
    assert reason(verify_bundle, log.bundle(3), KEYS, consistency_proof=truncated, **kwargs) == (
        "consistency proof does not match checkpoints"
    )
    assert reason(verify_bundle, log.bundle(3), KEYS, **kwargs) == "consistency proof missing"
    # An older checkpoint of another origin.
    other_origin = sign_checkpoint("other/log", 3, log.tree.root(3), Signer(b"\x0a" * 32))
    other_log = Signer(b"\x0a" * 32)
    other_vkey = verifier_key_string("other/log", other_log.public_key)
    assert "+" in other_vkey.split("+", 2)[2]  # a key whose base64 contains "+": parsing must cope
    other_keys = KeySet([*KEYS, entry(other_log, "log", note_verifier_key=other_vkey)])
    assert (
        reason(verify_bundle, log.bundle(3), other_keys, older_checkpoint=other_origin)
        == "checkpoint origins differ"
    )


def test_verify_any_detects_shapes() -> None:
    log = make_log()
    assert verify_any(log.bundle(3), KEYS).checkpoint is not None
    bare = verify_any(log.envelopes[3], KEYS)
    assert bare.checkpoint is None and bare.format == "dsse"
    assert reason(verify_any, b'{"hello": 1}', KEYS) == "unrecognised receipt format"
    assert reason(verify_any, b"\x00", KEYS) == "not JSON"
    assert reason(verify_any, log.envelopes[3], KEYS, older_checkpoint=log.checkpoint()) == (
        "consistency check needs a bundle"
    )


def test_verify_any_legacy_v1_with_key_from_key_set() -> None:
    data = load_vector("aitbc_v1_receipt_sample.json")
    legacy = Signer(data["private_key_hex"])
    assert legacy_key_id(legacy.public_key) == data["signature"]["key_id"]
    keys = KeySet([*KEYS, entry(legacy, "coordinator", status="retired")])
    raw = json.dumps({"payload": data["payload"], "signature": data["signature"]}).encode()
    receipt = verify_any(raw, keys)
    assert receipt.format == "aitbc-v1"
    assert receipt.receipt_id == "rcpt-20250926-000123"
    assert receipt.roles == {"coordinator"}
    # The whole vector file (extra, unsigned fields next to payload/signature) is accepted the same way.
    assert verify_any(json.dumps(data).encode(), keys).receipt_id == "rcpt-20250926-000123"
    assert reason(verify_any, raw, KEYS) == "missing coordinator signature"
    assert reason(verify_any, raw, keys, Policy(frozenset({"coordinator", "attestation"}))) == (
        "missing attestation signature"
    )
    changed = json.dumps({"payload": {**data["payload"], "price": 4.3}, "signature": data["signature"]})
    assert reason(verify_any, changed.encode(), keys) == "bad signature"
    as_miner = KeySet([*KEYS, entry(legacy, "miner", owner="x")])
    assert reason(verify_any, raw, as_miner) == "missing coordinator signature"
    dup = raw.replace(b'"nonce": "b7f3d10b"', b'"nonce": "b7f3d10b", "nonce": "other"')
    assert dup != raw
    assert reason(verify_any, dup, keys) == "duplicate JSON key"
