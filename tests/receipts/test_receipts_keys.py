"""Key ids, signers and the key set file format."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aitbc.receipts import KeyEntry, KeySet, KeySetError, Signer, jwk_thumbprint
from receipts_helpers import COORD, LOG, MINER, T0, default_keyset, entry


def test_key_id_is_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of the RFC 8032 TEST 1 key.
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert jwk_thumbprint(pub) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    x = base64.urlsafe_b64encode(pub).rstrip(b"=").decode()
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    digest = base64.urlsafe_b64encode(hashlib.sha256(jwk.encode()).digest()).rstrip(b"=").decode()
    assert jwk_thumbprint(pub) == digest
    with pytest.raises(ValueError):
        jwk_thumbprint(pub[:31])


def test_signer_from_hex_and_bytes_agree_and_hide_seed() -> None:
    seed = bytes(range(32))
    assert Signer(seed.hex()).public_key == Signer(seed).public_key
    assert Signer(seed).key_id == jwk_thumbprint(Signer(seed).public_key)
    assert seed.hex() not in repr(Signer(seed))
    assert Signer(Signer(seed).seed).public_key == Signer(seed).public_key
    for bad in (b"\x00" * 31, "zz" * 32, "00" * 33):
        with pytest.raises(ValueError):
            Signer(bad)


def test_keyset_dump_load_round_trip() -> None:
    keys = default_keyset(
        entry(MINER, "miner", owner="miner-alpha"),
        entry(
            Signer(b"\x07" * 32),
            "coordinator",
            status="retired",
            valid_until=datetime(2026, 6, 1, tzinfo=UTC),
        ),
    )
    dumped = keys.dump()
    loaded = KeySet.load(dumped)
    assert loaded.keys == keys.keys
    assert loaded.dump() == dumped
    obj = json.loads(dumped)["keys"]
    assert obj[0] == {
        "key_id": COORD.key_id,
        "role": "coordinator",
        "status": "active",
        "public_key": COORD.public_key.hex(),
        "valid_from": "2026-01-01T00:00:00.000000Z",
    }
    assert obj[2]["note_verifier_key"].startswith("aitbc.coordinator/coord-test+")
    assert obj[3]["owner"] == "miner-alpha"
    assert loaded.by_key_id(LOG.key_id)[0].role == "log"
    assert loaded.by_key_id("nope") == ()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k.update(role="admin"),
        lambda k: k.update(status="revoked"),
        lambda k: k.update(public_key="00" * 31),
        lambda k: k.update(valid_from="2026-01-01T00:00:00"),  # naive: no offset
        lambda k: k.pop("key_id"),
        lambda k: k.update(surprise="x"),
    ],
)
def test_keyset_load_rejects_malformed(mutate) -> None:  # type: ignore[no-untyped-def]
    obj = json.loads(default_keyset().dump())
    mutate(obj["keys"][0])
    with pytest.raises(KeySetError):
        KeySet.load(json.dumps(obj))


def test_keyset_load_rejects_duplicate_json_keys() -> None:
    text = default_keyset().dump().replace(b'"role":"coordinator"', b'"role":"coordinator","role":"log"')
    with pytest.raises(KeySetError, match="duplicate"):
        KeySet.load(text)


def test_key_entry_refuses_naive_datetimes_and_checks_validity() -> None:
    with pytest.raises(KeySetError):
        KeyEntry.for_signer(COORD, "coordinator", datetime(2026, 1, 1))  # noqa: DTZ001
    e = KeyEntry.for_signer(COORD, "coordinator", T0, valid_until=datetime(2026, 2, 1, tzinfo=UTC))
    assert e.valid_at(T0) and e.valid_at(datetime(2026, 2, 1, tzinfo=UTC))
    assert not e.valid_at(datetime(2025, 12, 31, tzinfo=UTC))
    assert not e.valid_at(datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC))
    assert e.key_id_matches
    shifted = KeyEntry.for_signer(COORD, "coordinator", T0.astimezone(timezone(timedelta(hours=-5))))
    assert shifted.valid_from.tzinfo is UTC and shifted.valid_from == T0
    wrong = KeyEntry(COORD.key_id, "coordinator", "active", MINER.public_key, T0)
    assert not wrong.key_id_matches
