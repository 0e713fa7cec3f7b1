"""Every published vector in ../shared/vectors, checked against this package."""

from __future__ import annotations

import hashlib

import pytest
from aitbc.receipts import (
    EMPTY_ROOT,
    MerkleTree,
    NoteError,
    Signer,
    leaf_hash,
    note_key_id,
    open_note,
    pae,
    parse_verifier_key,
    verifier_key_string,
    verify_strict,
)
from aitbc.receipts.canonical import CanonicalError, legacy_canonical_json
from aitbc.receipts.legacy import LegacyError, legacy_key_id, verify_legacy
from receipts_helpers import load_vector


@pytest.mark.parametrize("vector", load_vector("rfc8032_ed25519.json")["vectors"], ids=lambda v: v["name"])
def test_rfc8032_sign_reproduces_and_verifies(vector: dict) -> None:
    signer = Signer(vector["secret_key_hex"])
    message = bytes.fromhex(vector["message_hex"])
    assert signer.public_key.hex() == vector["public_key_hex"]
    assert signer.sign(message).hex() == vector["signature_hex"]
    assert verify_strict(signer.public_key, message, bytes.fromhex(vector["signature_hex"]))
    assert not verify_strict(signer.public_key, message + b"x", bytes.fromhex(vector["signature_hex"]))


def test_rfc6962_roots_for_every_prefix_and_empty() -> None:
    data = load_vector("rfc6962_merkle_roots.json")
    leaves = [leaf_hash(bytes.fromhex(x)) for x in data["leaves_hex"]]
    assert EMPTY_ROOT.hex() == data["empty_tree_root_hex"]
    assert MerkleTree().root().hex() == data["empty_tree_root_hex"]
    grown = MerkleTree()
    for n in range(1, 9):
        grown.append(leaves[n - 1])
        expected = data["roots_hex_by_size"][str(n)]
        assert grown.root().hex() == expected
        assert MerkleTree(leaves[:n]).root().hex() == expected
        assert grown.root(n).hex() == expected
    assert len(data["roots_hex_by_size"]) == 8
    assert hashlib.sha256(b"").hexdigest() == data["empty_tree_root_hex"]


def test_dsse_pae_byte_exact() -> None:
    data = load_vector("dsse_pae.json")
    got = pae(data["payload_type"], data["payload_utf8"].encode())
    assert got == data["pae_utf8"].encode()


def test_cctv_ed25519_edge_cases_strict_policy() -> None:
    cases = load_vector("ed25519_edge_cases_cctv.json")
    expected = load_vector("ed25519_edge_cases_expected.json")
    assert len(cases) == 914
    accepted = [
        c["number"]
        for c in cases
        if verify_strict(bytes.fromhex(c["key"]), c["msg"].encode(), bytes.fromhex(c["sig"]))
    ]
    assert accepted == expected["accepted_numbers"]
    assert len(accepted) == 43
    assert len(cases) - len(accepted) == expected["rejected_count"] == 871


@pytest.mark.parametrize(
    ("pub", "msg", "sig"),
    [
        (b"", b"m", b"\x00" * 64),
        (b"\x01" * 31, b"m", b"\x00" * 64),
        (b"\x01" * 33, b"m", b"\x00" * 64),
        (b"\x01" * 32, b"m", b"\x00" * 63),
        (b"\x01" * 32, b"m", b"\x00" * 65),
        ("not bytes", b"m", b"\x00" * 64),
        (b"\x01" * 32, None, b"\x00" * 64),
    ],
)
def test_verify_strict_never_raises_on_garbage(pub: object, msg: object, sig: object) -> None:
    assert verify_strict(pub, msg, sig) is False  # type: ignore[arg-type]


def test_c2sp_note_example_verifies_and_a_changed_byte_rejects() -> None:
    data = load_vector("c2sp_signed_note_example.json")
    assert open_note(data["note"], [data["verifier_key"]]) == data["signed_text"]
    verifier = parse_verifier_key(data["verifier_key"])
    assert verifier.name == "example.com/foo"
    assert verifier_key_string(verifier.name, verifier.public_key) == data["verifier_key"]
    assert note_key_id(verifier.name, verifier.public_key).hex() == "530d903a"
    text_len = len(data["signed_text"])
    for i in range(text_len - 1):  # every byte of the text but the final newline, which frames it
        ch = data["note"][i]
        changed = data["note"][:i] + ("X" if ch != "X" else "Y") + data["note"][i + 1 :]
        with pytest.raises(NoteError):
            open_note(changed, [data["verifier_key"]])


def test_c2sp_note_unknown_key_is_not_enough() -> None:
    data = load_vector("c2sp_signed_note_example.json")
    with pytest.raises(NoteError):
        open_note(data["note"], [])


def test_aitbc_v1_sample_verifies_and_every_changed_field_rejects() -> None:
    data = load_vector("aitbc_v1_receipt_sample.json")
    pub = bytes.fromhex(data["verify_key_hex"])
    assert legacy_canonical_json(data["payload"]).decode() == data["canonical"]
    assert data["signature"]["key_id"] == legacy_key_id(pub)
    assert Signer(data["private_key_hex"]).public_key == pub
    receipt = {"payload": data["payload"], "signature": data["signature"]}
    assert verify_legacy(receipt, pub) == data["payload"]
    for name, value in data["payload"].items():
        changed = dict(data["payload"])
        changed[name] = value + 1 if isinstance(value, int | float) else value + "x"
        with pytest.raises(LegacyError, match="bad signature"):
            verify_legacy({"payload": changed, "signature": data["signature"]}, pub)
    dropped = {k: v for k, v in data["payload"].items() if k != "nonce"}
    with pytest.raises(LegacyError, match="bad signature"):
        verify_legacy({"payload": dropped, "signature": data["signature"]}, pub)


def test_aitbc_v1_sample_wrong_key_and_bad_signature_encoding() -> None:
    data = load_vector("aitbc_v1_receipt_sample.json")
    pub = bytes.fromhex(data["verify_key_hex"])
    receipt = {"payload": data["payload"], "signature": data["signature"]}
    with pytest.raises(LegacyError, match="key id does not match key"):
        verify_legacy(receipt, Signer(b"\x09" * 32).public_key)
    padded = dict(data["signature"], sig=data["signature"]["sig"] + "==")
    with pytest.raises(LegacyError):
        verify_legacy({"payload": data["payload"], "signature": padded}, pub)
    wrong_alg = dict(data["signature"], alg="ES256")
    with pytest.raises(LegacyError, match="unsupported"):
        verify_legacy({"payload": data["payload"], "signature": wrong_alg}, pub)


def test_legacy_canonical_form_is_what_the_v1_signer_wrote() -> None:
    """v1 signed json.dumps(sort_keys, compact) with its default ensure_ascii, None dropped from objects and
    lists (aitbc_crypto.receipt.canonical_json); the bytes below are that output, written out."""
    payload = {"\uff01": "Zürich\x7f", "é": "😀", "z": '"\\\n\x1f', "n": None, "l": [None, 1.5, [None]]}
    expected = rb'{"l":[1.5,[]],"z":"\"\\\n\u001f","\u00e9":"\ud83d\ude00","\uff01":"Z\u00fcrich\u007f"}'
    assert legacy_canonical_json(payload) == expected
    with pytest.raises(CanonicalError):
        legacy_canonical_json({"a": "half \ud83d pair"})  # not Unicode: refused, as the parsers refuse it
