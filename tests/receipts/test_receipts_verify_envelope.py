"""verify_envelope: spec sections 1-5 (payload, signatures, keys, validity, policy, miner report)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from aitbc.receipts import (
    MINER_REPORT_TYPE,
    RECEIPT_PAYLOAD_TYPE,
    KeyEntry,
    KeySet,
    MinerSignature,
    PayloadError,
    Policy,
    Signer,
    VerificationError,
    build_envelope,
    build_miner_report,
    build_receipt_payload,
    canonical_json,
    pae,
    parse_receipt_payload,
    result_digest,
    sign_miner_report,
    verify_envelope,
)
from aitbc.receipts.dsse import b64encode
from receipts_helpers import (
    ATTEST,
    COORD,
    ISSUED,
    MINER,
    OTHER,
    PROVIDER,
    T0,
    default_keyset,
    entry,
    make_envelope,
    make_payload,
    payload_fields,
)

KEYS = default_keyset()


def reason(envelope: bytes, keyset: KeySet = KEYS, policy: Policy | None = None) -> str:
    with pytest.raises(VerificationError) as info:
        verify_envelope(envelope, keyset, policy)
    return info.value.reason


def test_good_receipt_verifies() -> None:
    receipt = verify_envelope(make_envelope(), KEYS)
    assert receipt.receipt_id == payload_fields()["receipt_id"]
    assert receipt.payload["cost"] == "7.98"
    assert receipt.roles == {"coordinator"}
    assert receipt.key_ids == (COORD.key_id,)


def test_payload_bytes_are_canonical_and_exact() -> None:
    payload = make_payload()
    obj = json.loads(payload)
    assert payload == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert obj["issued_at"] == "2026-11-26T22:46:59.123456Z"
    assert obj["artifact_hash"] == "sha256:" + "ab" * 32
    assert obj["attempt"] == 1 and obj["version"] == "1.0"
    assert "miner_report" not in obj


# A different, still well-formed value for every field: rejection must come from the signature.
ALTERNATIVES: dict[str, Any] = {
    "version": "1.1",
    "receipt_id": "019ac1e2-3f4a-7b5c-8d6e-0123456789ac",
    "job_id": "job-0002",
    "attempt": 2,
    "provider": "miner-gamma",
    "client": "client-delta",
    "units": "1.91",
    "unit_type": "cpu_seconds",
    "price": "4.3",
    "cost": "7.99",
    "started_at": "2026-11-26T22:46:54.123457Z",
    "completed_at": "2026-11-26T22:46:58.123457Z",
    "issued_at": "2026-11-26T22:46:59.123457Z",
    "input_sha256": "ce" * 32,
    "coordinator_id": "coord-evil",
    "nonce": "0e" * 16,
    "chain_id": "aitbc-mainnet",
}


def _swap_payload(envelope: bytes, payload: bytes) -> bytes:
    obj = json.loads(envelope)
    obj["payload"] = b64encode(payload)
    return json.dumps(obj, separators=(",", ":")).encode()


@pytest.mark.parametrize("field", [*sorted(payload_fields()), "artifact_hash"])
def test_changing_any_payload_field_rejects(field: str) -> None:
    envelope = make_envelope()
    obj = json.loads(make_payload())
    if field in ("result_sha256", "artifact_hash"):
        obj["result_sha256"] = "ac" * 32
        obj["artifact_hash"] = "sha256:" + "ac" * 32
        expected = "bad signature"
    else:
        obj[field] = ALTERNATIVES[field]
        expected = "unsupported version" if field == "version" else "bad signature"
    tampered = canonical_json(obj)
    if expected == "bad signature":
        parse_receipt_payload(tampered)  # still a well-formed payload: only the signature can catch it
    assert reason(_swap_payload(envelope, tampered)) == expected


def test_changing_payload_type_rejects() -> None:
    envelope = json.loads(make_envelope())
    envelope["payloadType"] = MINER_REPORT_TYPE
    assert reason(json.dumps(envelope).encode()) == "wrong payload type"
    # Signed correctly but for another type: the type is bound by PAE and checked.
    other = build_envelope(make_payload(), "application/json", [COORD])
    assert reason(other) == "wrong payload type"


def test_signature_over_other_type_does_not_transfer() -> None:
    payload = make_payload()
    sig = COORD.sign(pae("application/json", payload))
    env = canonical_json(
        {
            "payload": b64encode(payload),
            "payloadType": RECEIPT_PAYLOAD_TYPE,
            "signatures": [{"keyid": COORD.key_id, "sig": b64encode(sig)}],
        }
    )
    assert reason(env) == "bad signature"


@pytest.mark.parametrize("position", [0, 10, 31, 32, 63])
def test_changing_signature_rejects(position: int) -> None:
    obj = json.loads(make_envelope())
    sig = bytearray(base64.b64decode(obj["signatures"][0]["sig"]))
    sig[position] ^= 0x01
    obj["signatures"][0]["sig"] = b64encode(bytes(sig))
    assert reason(json.dumps(obj).encode()) == "bad signature"


def test_wrong_key_unknown_key_id_and_key_id_pointing_elsewhere() -> None:
    # Signed by a key the key set does not hold: its key id is unknown, so nothing is satisfied.
    assert reason(make_envelope(signers=(OTHER,))) == "missing coordinator signature"
    # The key set names another coordinator key only.
    only_other = KeySet([entry(OTHER, "coordinator")])
    assert reason(make_envelope(), only_other) == "missing coordinator signature"
    # An unknown key id next to a valid one is ignored.
    obj = json.loads(make_envelope(signers=(COORD, OTHER)))
    obj["signatures"][1]["keyid"] = "unknown-key-id"
    assert verify_envelope(json.dumps(obj).encode(), KEYS).roles == {"coordinator"}
    # The key set maps the coordinator's key id to a different public key.
    lying = KeySet([KeyEntry(COORD.key_id, "coordinator", "active", OTHER.public_key, T0)])
    assert reason(make_envelope(), lying) == "key id does not match key"
    # The envelope claims the coordinator's key id but another key signed.
    obj = json.loads(make_envelope(signers=(OTHER,)))
    obj["signatures"][0]["keyid"] = COORD.key_id
    assert reason(json.dumps(obj).encode()) == "bad signature"
    # ... and a key set whose entry for that id holds the signer's key is still refused.
    assert reason(json.dumps(obj).encode(), lying) == "key id does not match key"


def test_policy_with_two_roles() -> None:
    both = Policy(frozenset({"coordinator", "attestation"}))
    assert reason(make_envelope(), policy=both) == "missing attestation signature"
    assert reason(make_envelope(signers=(ATTEST,)), policy=both) == "missing coordinator signature"
    ok = verify_envelope(make_envelope(signers=(COORD, ATTEST)), KEYS, both)
    assert ok.roles == {"coordinator", "attestation"}
    assert ok.key_ids == (COORD.key_id, ATTEST.key_id)


def test_same_key_twice_counts_once() -> None:
    both = Policy(frozenset({"coordinator", "attestation"}))
    twice = make_envelope(signers=(COORD, COORD))
    assert verify_envelope(twice, KEYS).key_ids == (COORD.key_id,)
    assert reason(twice, policy=both) == "missing attestation signature"
    # One key listed under both roles cannot stand in for two independent signatures.
    doubled = KeySet([entry(COORD, "coordinator"), entry(COORD, "attestation")])
    assert reason(make_envelope(), doubled, both) == "one key cannot sign for two roles"
    assert reason(twice, doubled, both) == "one key cannot sign for two roles"


def test_retired_key_verifies_old_receipts_and_rejects_later_ones() -> None:
    retired_at = ISSUED + timedelta(days=1)
    new_coord = Signer(b"\x08" * 32)
    rotated = KeySet(
        [
            entry(COORD, "coordinator", status="retired", valid_until=retired_at),
            entry(new_coord, "coordinator", valid_from=retired_at),
        ]
    )
    assert verify_envelope(make_envelope(), rotated).roles == {"coordinator"}
    late = make_envelope(make_payload(issued_at=retired_at + timedelta(microseconds=1)))
    assert reason(late, rotated) == "signed after key retired"
    at_edge = make_envelope(make_payload(issued_at=retired_at))
    assert verify_envelope(at_edge, rotated).roles == {"coordinator"}
    # The new key before its validity starts.
    early = make_envelope(make_payload(), signers=(new_coord,))
    assert reason(early, rotated) == "signed before key valid"
    later = make_envelope(make_payload(issued_at=retired_at + timedelta(hours=1)), signers=(new_coord,))
    assert verify_envelope(later, rotated).key_ids == (new_coord.key_id,)


def test_duplicate_json_keys_reject() -> None:
    envelope = make_envelope()
    dup_top = envelope.replace(b'"payloadType":', b'"payloadType":"x","payloadType":', 1)
    assert reason(dup_top) == "duplicate JSON key"
    dup_sig = envelope.replace(b'{"keyid":', b'{"keyid":"x","keyid":', 1)
    assert reason(dup_sig) == "duplicate JSON key"
    # A validly signed payload whose JSON repeats a key (which one wins differs between parsers).
    payload = make_payload()
    dup_payload = payload.replace(b'"cost":"7.98"', b'"cost":"0.01","cost":"7.98"')
    assert dup_payload != payload
    assert reason(make_envelope(dup_payload)) == "duplicate JSON key"


def test_signed_but_non_canonical_or_incomplete_payload_rejects() -> None:
    obj = json.loads(make_payload())
    spaced = json.dumps(obj, sort_keys=True).encode()
    assert reason(make_envelope(spaced)) == "payload is not canonical JSON"
    with_float = make_payload().replace(b'"attempt":1', b'"attempt":1.0')
    assert reason(make_envelope(with_float)) == "payload is not canonical JSON"
    with_null = canonical_json({**obj, "cost": "1"}).replace(b'"cost":"1"', b'"cost":null')
    assert reason(make_envelope(with_null)) == "payload is not canonical JSON"
    del obj["nonce"]
    assert reason(make_envelope(canonical_json(obj))) == "missing field nonce"
    assert reason(make_envelope(b"[]")) == "payload is not a JSON object"


def test_unknown_extra_payload_fields_are_signed_and_allowed() -> None:
    obj = json.loads(make_payload())
    obj["region"] = "eu-west"
    receipt = verify_envelope(make_envelope(canonical_json(obj)), KEYS)
    assert receipt.payload["region"] == "eu-west"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"attempt": True}, "attempt"),
        ({"attempt": -1}, "attempt"),
        ({"units": 1.9}, "units"),
        ({"units": "1e3"}, "units"),
        ({"price": "-1"}, "price"),
        ({"receipt_id": "rcpt-1"}, "receipt_id"),
        ({"receipt_id": "019AC1E2-3F4A-7B5C-8D6E-0123456789AB"}, "receipt_id"),
        ({"nonce": "abc"}, "nonce"),
        ({"result_sha256": "AB" * 32}, "result_sha256"),
        ({"artifact_hash": "sha256:" + "00" * 32}, "artifact_hash"),
        ({"issued_at": "2026-11-26T22:46:59Z"}, "issued_at"),
        ({"job_id": ""}, "job_id"),
    ],
)
def test_builder_refuses_what_the_verifier_would_reject(override: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        make_payload(**override)


def test_builder_refuses_naive_datetime() -> None:
    with pytest.raises(PayloadError, match="naive"):
        make_payload(issued_at=ISSUED.replace(tzinfo=None))


def _miner_payload(signer: Signer = MINER, **overrides: Any) -> bytes:
    fields = payload_fields(**overrides)
    report = build_miner_report(
        fields["job_id"], fields["attempt"], fields["result_sha256"], fields["units"], fields["unit_type"]
    )
    sig = MinerSignature(signer.key_id, sign_miner_report(signer, report))
    return build_receipt_payload(**fields, miner_report=report, miner_signature=sig)


MINER_KEYS = default_keyset(entry(MINER, "miner", owner=PROVIDER))
NEEDS_MINER = Policy(frozenset({"coordinator", "miner"}))


def test_miner_report_satisfies_miner_role() -> None:
    payload = _miner_payload()
    report = json.loads(base64.b64decode(json.loads(payload)["miner_report"]))
    assert report == {
        "attempt": 1,
        "job_id": "job-0001",
        "result_sha256": "ab" * 32,
        "unit_type": "gpu_seconds",
        "units": "1.9",
    }
    receipt = verify_envelope(make_envelope(payload), MINER_KEYS, NEEDS_MINER)
    assert receipt.roles == {"coordinator", "miner"}
    assert MINER.key_id in receipt.key_ids


def test_miner_role_missing_or_unknown_or_wrong_owner() -> None:
    assert reason(make_envelope(), MINER_KEYS, NEEDS_MINER) == "missing miner signature"
    # Unknown miner key: fine unless the miner role is required.
    assert verify_envelope(make_envelope(_miner_payload()), KEYS).roles == {"coordinator"}
    assert reason(make_envelope(_miner_payload()), KEYS, NEEDS_MINER) == "missing miner signature"
    stranger = default_keyset(entry(MINER, "miner", owner="someone-else"))
    assert reason(make_envelope(_miner_payload()), stranger, NEEDS_MINER) == (
        "miner key owner does not match provider"
    )
    # The coordinator key is known, but not as a miner key: it cannot sign for the miner.
    as_coord = _miner_payload(signer=COORD)
    assert reason(make_envelope(as_coord), MINER_KEYS, NEEDS_MINER) == "missing miner signature"


def test_bad_miner_signature_rejects_whenever_the_key_is_known() -> None:
    fields = payload_fields()
    report = build_miner_report("job-0001", 1, "ab" * 32, "1.9", "gpu_seconds")
    forged = MinerSignature(MINER.key_id, MINER.sign(report))  # not over the PAE
    payload = build_receipt_payload(**fields, miner_report=report, miner_signature=forged)
    assert reason(make_envelope(payload), MINER_KEYS) == "bad miner signature"
    assert reason(make_envelope(payload), MINER_KEYS, NEEDS_MINER) == "bad miner signature"
    assert verify_envelope(make_envelope(payload), KEYS).roles == {"coordinator"}  # key unknown


def test_miner_report_must_match_receipt() -> None:
    payload = json.loads(_miner_payload())
    for field, value in [("units", "2.5"), ("attempt", 3), ("job_id", "job-x"), ("unit_type", "tokens")]:
        changed = dict(payload, **{field: value})
        if field == "units":
            changed["cost"] = "10.5"
        got = reason(make_envelope(canonical_json(changed)), MINER_KEYS)
        assert got == "miner report does not match receipt"
    half = {k: v for k, v in payload.items() if k != "miner_signature"}
    got = reason(make_envelope(canonical_json(half)))
    assert got == "miner_report and miner_signature must come together"
    with pytest.raises(PayloadError, match="does not match"):
        make_payload(
            miner_report=build_miner_report("job-0001", 2, "ab" * 32, "1.9", "gpu_seconds"),
            miner_signature=MinerSignature(MINER.key_id, b"\x00" * 64),
        )


def test_result_digest_binary_and_structured() -> None:
    import hashlib

    assert result_digest(b"\x00\x01") == hashlib.sha256(b"\x00\x01").digest()
    structured = {"label": "cat", "score": 0.5, "count": 2.0, "tags": ["a", None, True]}
    expected = b'{"count":2,"label":"cat","score":0.5,"tags":["a",null,true]}'
    assert result_digest(structured) == hashlib.sha256(expected).digest()
    from google.protobuf import struct_pb2

    message = struct_pb2.Struct()
    message.update(structured)
    assert result_digest(message) == hashlib.sha256(expected).digest()


def test_keys_with_other_roles_do_not_count_for_envelope_roles() -> None:
    miner_only = KeySet([entry(MINER, "miner", owner=PROVIDER)])
    assert reason(make_envelope(signers=(MINER,)), miner_only) == "missing coordinator signature"
