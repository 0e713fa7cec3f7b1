"""The Python and the Node verifier give the same verdict on the same bytes (docs/receipts.md, both ways).

A receipt must not verify in one language and fail in the other: each case below is built here, verified
by `aitbc.receipts` and by `clients/node` (a child `node` process, tests/receipts/node_verdicts.js), and
both verdicts must be the expected one. The cases are the edges where two JSON stacks tend to drift:
non-ASCII text and keys (code point order, not UTF-16 order), escapes, numbers (-0, 1.0, 1e21, integers
past 2^53), nulls, duplicate keys, key validity, miner reports, every field of a bundle, and legacy v1
receipts as the original AITBC signer wrote them.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aitbc.receipts import (
    KeyEntry,
    KeySet,
    KeySetError,
    Policy,
    Signer,
    VerificationError,
    build_miner_report,
    canonical_json,
    format_checkpoint,
    note_key_id,
    sign_miner_report,
    sign_note,
    verify_any,
)
from aitbc.receipts.keys import b64url
from aitbc.receipts.payload import MinerSignature
from receipts_helpers import (
    COORD,
    ISSUED,
    LOG,
    MINER,
    PROVIDER,
    T0,
    Log,
    entry,
    load_vector,
    make_envelope,
    make_log,
    make_payload,
    payload_fields,
)

NODE = shutil.which("node")
RUNNER = Path(__file__).with_name("node_verdicts.js")
LEGACY = load_vector("aitbc_v1_receipt_sample.json")
LEGACY_SIGNER = Signer(LEGACY["private_key_hex"])
RETIRED_AT = ISSUED + timedelta(days=1)
NEXT_COORD = Signer(b"\x09" * 32)

KEYS = KeySet(
    [
        entry(COORD, "coordinator", status="retired", valid_until=RETIRED_AT),
        entry(NEXT_COORD, "coordinator", valid_from=RETIRED_AT),
        entry(LOG, "log"),
        entry(MINER, "miner", owner=PROVIDER),
        KeyEntry.for_signer(LEGACY_SIGNER, "coordinator", T0),  # trusted for the legacy cases
    ]
)


@dataclass(frozen=True)
class Case:
    """Bytes to verify, how (bundle, envelope or legacy), the expected verdict, under which roles; for a
    bundle, optionally an older checkpoint it must extend and the consistency proof."""

    name: str
    kind: str
    data: bytes
    ok: bool
    roles: tuple[str, ...] = ("coordinator",)
    older: str | None = None
    proof: list[bytes] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "data": base64.b64encode(self.data).decode(),
                               "roles": list(self.roles)}  # fmt: skip
        if self.older is not None:
            out["older"] = self.older
            out["proof"] = [h.hex() for h in self.proof or []]
        return out


def payload_with(**extra: Any) -> dict[str, Any]:
    """A valid payload as a dict (times formatted), with extra fields."""
    return {**json.loads(make_payload()), **extra}


def raw_json(obj: dict[str, Any], key: Callable[[str], Any] = lambda k: k) -> bytes:
    """Compact UTF-8 JSON with keys in the order ``key`` gives (the canonical order is code point)."""
    items = (
        f"{json.dumps(k, ensure_ascii=False)}:{json.dumps(obj[k], ensure_ascii=False)}"
        for k in sorted(obj, key=key)
    )
    return ("{" + ",".join(items) + "}").encode()


def bundle_of(envelope: bytes) -> bytes:
    return make_log(target_envelope=envelope).bundle(3)


def envelope_cases() -> list[Case]:
    text = {
        "unit_type": "Sekunden·ü",
        "provider": "mineur-é😀",
        "client": "客户",
        "note": 'a\u2028b\x7f\x1f"\\/',
    }
    keys = {"é": "1", "\uff01": "2", "😀": "3", "z": "ü", "Z": "", "\u00ff": "4", "\U0010ffff": "5"}
    non_ascii = payload_with(**text, **keys)
    cases = [
        Case("plain", "bundle", bundle_of(make_envelope()), True),
        Case(
            "non-ASCII text and keys in code point order",
            "bundle",
            bundle_of(make_envelope(canonical_json(non_ascii))),
            True,
        ),
        Case(
            "non-ASCII keys in UTF-16 order",
            "envelope",
            make_envelope(raw_json(non_ascii, key=lambda k: k.encode("utf-16-be"))),
            False,
        ),
        Case(
            "non-ASCII written as an escape",
            "envelope",
            make_envelope(canonical_json(non_ascii).replace("é".encode(), b"\\u00e9")),
            False,
        ),
        Case(
            "solidus escaped",
            "envelope",
            make_envelope(canonical_json(non_ascii).replace(b"/", b"\\/", 1)),
            False,
        ),
        Case(
            "astral character as an escaped surrogate pair",
            "envelope",
            make_envelope(canonical_json(non_ascii).replace("😀".encode(), b"\\ud83d\\ude00")),
            False,
        ),
        Case(
            "largest safe integers",
            "envelope",
            make_envelope(canonical_json(payload_with(big=2**53 - 1, small=-(2**53 - 1)))),
            True,
        ),
    ]
    for name, number in [("-0", b"-0"), ("1.0", b"1.0"), ("1e21", b"1e21"), ("1E2", b"1E2"), ("2^53", b"9007199254740992"),
                         ("2^64", b"18446744073709551616"), ("null", b"null"), ("-0.0", b"-0.0")]:  # fmt: skip
        signed = canonical_json(payload_with(n=0)).replace(b'"n":0', b'"n":' + number)
        cases.append(Case(f"extra field {name}", "envelope", make_envelope(signed), False))
    dup = make_payload().replace(b'"cost":"7.98"', b'"cost":"0.01","c\\u006fst":"7.98"')
    cases.append(Case("duplicate key, one written as an escape", "envelope", make_envelope(dup), False))
    cases.append(Case("signed before the next key was valid", "envelope",
                      make_envelope(signers=(NEXT_COORD,)), False))  # fmt: skip
    late = make_payload(issued_at=RETIRED_AT + timedelta(microseconds=1))
    cases.append(Case("retired key, a microsecond after valid_until", "envelope", make_envelope(late), False))
    cases.append(Case("retired key, at valid_until", "envelope",
                      make_envelope(make_payload(issued_at=RETIRED_AT)), True))  # fmt: skip
    cases.append(Case("next key, after rotation", "envelope",
                      make_envelope(late, signers=(NEXT_COORD,)), True))  # fmt: skip
    return cases


def miner_cases() -> list[Case]:
    def with_report(unit_type: str, provider: str = PROVIDER, signer: Signer = MINER) -> bytes:
        fields = payload_fields(unit_type=unit_type, provider=provider)
        report = build_miner_report(fields["job_id"], fields["attempt"], fields["result_sha256"], fields["units"],
                                    unit_type)  # fmt: skip
        signature = MinerSignature(signer.key_id, sign_miner_report(signer, report))
        return make_envelope(make_payload(unit_type=unit_type, provider=provider, miner_report=report,
                                          miner_signature=signature))  # fmt: skip

    both = ("coordinator", "miner")
    return [
        Case("miner report", "bundle", bundle_of(with_report("gpu_seconds")), True, both),
        Case(
            "miner report, non-ASCII unit type", "bundle", bundle_of(with_report("Sekunden·ü😀")), True, both
        ),
        Case(
            "miner key of another provider",
            "envelope",
            with_report("gpu_seconds", "someone-else"),
            False,
            both,
        ),
        Case(
            "miner report by an unknown key",
            "envelope",
            with_report("gpu_seconds", signer=NEXT_COORD),
            False,
            both,
        ),
    ]


def tampered_bundles(log: Log) -> list[Case]:
    good = json.loads(log.bundle(3))

    def case(name: str, change: Callable[[dict[str, Any]], None]) -> Case:
        obj = json.loads(json.dumps(good))
        change(obj)
        return Case(f"bundle: {name}", "bundle", json.dumps(obj).encode(), False)

    def flip_payload(obj: dict[str, Any]) -> None:
        envelope = json.loads(base64.b64decode(obj["envelope"]))
        envelope["payload"] = base64.b64encode(
            base64.b64decode(envelope["payload"]).replace(b"7.98", b"7.99")
        ).decode()
        obj["envelope"] = base64.b64encode(json.dumps(envelope, separators=(",", ":")).encode()).decode()

    other_log = Log(log.tree, log.envelopes, origin="aitbc.coordinator/elsewhere")
    return [
        case("leaf_index + 1", lambda o: o.update(leaf_index=o["leaf_index"] + 1)),
        case("leaf_index - 1", lambda o: o.update(leaf_index=o["leaf_index"] - 1)),
        case(
            "tree_size + 1",
            lambda o: o["inclusion_proof"].update(tree_size=o["inclusion_proof"]["tree_size"] + 1),
        ),
        case("a proof hash changed", lambda o: o["inclusion_proof"]["hashes"].__setitem__(0, "00" * 32)),
        case("a proof hash dropped", lambda o: o["inclusion_proof"]["hashes"].pop()),
        case("a proof hash added", lambda o: o["inclusion_proof"]["hashes"].append("00" * 32)),
        case(
            "checkpoint size changed",
            lambda o: o.update(checkpoint=o["checkpoint"].replace("\n7\n", "\n8\n")),
        ),
        case("checkpoint of another origin", lambda o: o.update(checkpoint=other_log.checkpoint())),
        case("checkpoint signature changed", lambda o: o.update(checkpoint=o["checkpoint"][:-6] + "AAAAA\n")),
        case("payload changed", flip_payload),
        case(
            "signature changed",
            lambda o: o.update(
                envelope=base64.b64encode(
                    base64.b64decode(o["envelope"]).replace(b'"sig":"', b'"sig":"AA', 1)
                ).decode()
            ),
        ),
        case("an extra field", lambda o: o.update(extra=1)),
        case("envelope re-encoded (padding dropped)", lambda o: o.update(envelope=o["envelope"].rstrip("="))),
    ]


def consistency_cases(log: Log) -> list[Case]:
    older = log.checkpoint(4)
    proof = log.tree.consistency_proof(4, log.tree.size)
    bundle = log.bundle(3)
    return [
        Case("extends an older checkpoint", "bundle", bundle, True, older=older, proof=proof),
        Case(
            "consistency proof of other sizes",
            "bundle",
            bundle,
            False,
            older=older,
            proof=log.tree.consistency_proof(5, log.tree.size),
        ),
        Case(
            "older checkpoint of a fork",
            "bundle",
            bundle,
            False,
            older=make_log(target=0).checkpoint(4),
            proof=proof,
        ),
    ]


def checkpoint_cases(log: Log) -> list[Case]:
    text = format_checkpoint(log.origin, log.tree.size, log.tree.root())
    size_line = f"\n{log.tree.size}\n"
    root_b64 = base64.b64encode(log.tree.root()).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    bent_root = root_b64[:42] + alphabet[alphabet.index(root_b64[42]) ^ 1] + "="  # same bytes, a pad bit set
    assert base64.b64decode(bent_root) == log.tree.root() and bent_root != root_b64
    stranger = Signer(b"\x0b" * 32)

    def signed(text: str, name: str = log.origin, signer: Signer = LOG) -> str:
        return sign_note(text, name, signer)

    def extra_line(note: str, name: str, signer: Signer, message: str) -> str:
        sig = note_key_id(name, signer.public_key) + signer.sign(message.encode())
        return f"{note}\u2014 {name} {base64.b64encode(sig).decode()}\n"

    def case(name: str, note: str, ok: bool) -> Case:
        return Case(f"checkpoint: {name}", "bundle", log.bundle(3, checkpoint=note), ok)

    return [
        case(
            "co-signed by an unknown witness",
            extra_line(signed(text), "witness.example", stranger, text),
            True,
        ),
        case(
            "the log key under another name too", extra_line(signed(text), "other.example", LOG, text), True
        ),
        # Key names hold no space as Go's note package (unicode.IsSpace) has it: U+0085 is one, U+FEFF is not.
        case("a witness name with U+0085", extra_line(signed(text), "wit\u0085ness", stranger, text), False),
        case("a witness name with U+FEFF", extra_line(signed(text), "wit\ufeffness", stranger, text), True),
        case("a witness name with U+3000", extra_line(signed(text), "wit\u3000ness", stranger, text), False),
        case("a second, bad signature by the log key", extra_line(signed(text), log.origin, LOG, "x"), False),
        case("signed only under another name", signed(text, "other.example"), False),
        case("an extension line", signed(text + "extra\n"), False),
        case("a size with a leading zero", signed(text.replace(size_line, f"\n0{log.tree.size}\n")), False),
        case("a root with other pad bits", signed(text.replace(root_b64, bent_root)), False),
        case("CRLF line ends", signed(text).replace("\n", "\r\n"), False),
        case("no final newline", signed(text)[:-1], False),
    ]


def original_v1_receipt(payload: dict[str, Any], ensure_ascii: bool = False) -> bytes:
    """A receipt signed exactly as the original AITBC v1 coordinator signed (aitbc_crypto.signing):
    json.dumps(sort_keys, compact) with its default ensure_ascii, after dropping None values from objects and
    from lists."""

    def drop_none(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_none(v) for v in value if v is not None]
        return value

    message = json.dumps(drop_none(payload), separators=(",", ":"), sort_keys=True).encode("utf-8")
    signature = {"alg": "Ed25519", "key_id": b64url(LEGACY_SIGNER.public_key),
                 "sig": b64url(LEGACY_SIGNER.sign(message))}  # fmt: skip
    return json.dumps({"payload": payload, "signature": signature}, ensure_ascii=ensure_ascii).encode()


def legacy_cases() -> list[Case]:
    sample = {"payload": LEGACY["payload"], "signature": LEGACY["signature"]}
    accented = {**LEGACY["payload"], "provider": "Zürich-矿工-😀", "model": "modèle\x7f", "prompt_hash": None,
                "metadata": {"tags": ["a", None, "ü"], "ключ": 1.5, "\uff01": [None]}}  # fmt: skip
    tampered = original_v1_receipt(accented).replace("Zürich".encode(), b"Zurich")
    lone = {**LEGACY["payload"], "model": "half \ud83d pair"}
    return [
        Case("legacy: the published v1 sample", "legacy", json.dumps(sample).encode(), True),
        Case(
            "legacy: plain ASCII as the original signed it",
            "legacy",
            original_v1_receipt(LEGACY["payload"]),
            True,
        ),
        Case(
            "legacy: non-ASCII text and keys, nulls in lists", "legacy", original_v1_receipt(accented), True
        ),
        Case("legacy: a changed field", "legacy", tampered, False),
        # Signed, but not Unicode: both parsers refuse a lone surrogate before any signature is checked.
        Case("legacy: a lone surrogate", "legacy", original_v1_receipt(lone, ensure_ascii=True), False),
    ]


def all_cases() -> list[Case]:
    log = make_log()
    return (
        envelope_cases()
        + miner_cases()
        + tampered_bundles(log)
        + consistency_cases(log)
        + checkpoint_cases(log)
        + legacy_cases()
    )


def python_verdict(case: Case) -> bool:
    older = case.older
    proof = case.proof if older is not None else None
    try:
        verify_any(
            case.data, KEYS, Policy(frozenset(case.roles)), older_checkpoint=older, consistency_proof=proof
        )
    except VerificationError:
        return False
    return True


def node_verdicts(cases: list[Case]) -> dict[str, dict[str, Any]]:
    assert NODE is not None
    request = {"keyset": KEYS.dump().decode(), "cases": [c.to_json() for c in cases]}
    done = subprocess.run([NODE, str(RUNNER)], input=json.dumps(request).encode(), capture_output=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return {v["name"]: v for v in json.loads(done.stdout)}


def test_cases_have_distinct_names() -> None:
    names = [c.name for c in all_cases()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.name)
def test_python_verdict_is_the_expected_one(case: Case) -> None:
    assert python_verdict(case) is case.ok


@pytest.mark.skipif(NODE is None, reason="node is not installed (the Node client needs Node 20+)")
def test_node_verdicts_are_the_expected_ones() -> None:
    cases = all_cases()
    verdicts = node_verdicts(cases)
    wrong = {c.name: verdicts[c.name] for c in cases if verdicts[c.name]["ok"] is not c.ok}
    assert not wrong
    assert not [v for v in verdicts.values() if str(v.get("code", "")).startswith("CRASH")]


def key_set_texts() -> dict[str, tuple[str, bool]]:
    """Key set documents, each with whether it is acceptable (docs/receipts.md section 4)."""
    good = entry(COORD, "coordinator").to_json()

    def with_key(ok: bool, **changes: Any) -> tuple[str, bool]:
        key = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return json.dumps({"keys": [key]}, ensure_ascii=False), ok

    hexed = good["public_key"]
    return {
        "good": with_key(True),
        "public_key in upper case hex": with_key(True, public_key=hexed.upper()),
        "public_key with spaces": with_key(
            False, public_key=" ".join(hexed[i : i + 2] for i in range(0, 64, 2))
        ),
        "public_key with a sign": with_key(False, public_key="+" + hexed[1:]),
        "valid_until before valid_from": with_key(False, valid_until="2025-12-31T23:59:59.999999Z"),
        "valid_until at valid_from": with_key(True, valid_until=good["valid_from"]),
        "times with offsets and nanoseconds": with_key(
            True, valid_from="2026-01-01T01:00:00.123456789+01:00"
        ),
        "times in lower case": with_key(True, valid_from="2026-01-01t00:00:00z"),
        "a time without offset": with_key(False, valid_from="2026-01-01T00:00:00"),
        "an impossible date": with_key(False, valid_from="2026-02-30T00:00:00Z"),
        "a leap second": with_key(False, valid_from="2026-06-30T23:59:60Z"),
        "an offset of 24 hours": with_key(False, valid_from="2026-01-01T00:00:00+24:00"),
        "an offset of 60 minutes": with_key(False, valid_from="2026-01-01T00:00:00+00:60"),
        "year 0": with_key(False, valid_from="0000-01-01T00:00:00Z"),
        "year 50": with_key(True, valid_from="0050-03-01T00:00:00Z"),
        "before year 1 in UTC": with_key(False, valid_from="0001-01-01T00:00:00+01:00"),
        "after year 9999 in UTC": with_key(False, valid_until="9999-12-31T23:59:59-01:00"),
        "an unknown field": with_key(False, comment="x"),
        "an unknown role": with_key(False, role="witness"),
        "an unknown status": with_key(False, status="revoked"),
        "owner not a string": with_key(False, owner=1),
        "a key id that is not the key's thumbprint": with_key(True, key_id="x"),
        "a duplicate field": (
            json.dumps({"keys": [good]}).replace('"role":', '"role": "log", "role":', 1),
            False,
        ),
        "keys not a list": (json.dumps({"keys": good}), False),
    }


def python_loads(text: str) -> bool:
    try:
        KeySet.load(text.encode())
    except KeySetError:
        return False
    return True


@pytest.mark.parametrize(("name", "case"), key_set_texts().items(), ids=list(key_set_texts()))
def test_python_loads_exactly_the_acceptable_key_sets(name: str, case: tuple[str, bool]) -> None:
    text, ok = case
    assert python_loads(text) is ok


@pytest.mark.skipif(NODE is None, reason="node is not installed (the Node client needs Node 20+)")
def test_node_loads_exactly_the_acceptable_key_sets() -> None:
    texts = key_set_texts()
    request = {"keysets": [{"name": name, "text": text} for name, (text, _) in texts.items()]}
    done = subprocess.run([NODE, str(RUNNER)], input=json.dumps(request).encode(), capture_output=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    verdicts = {v["name"]: v for v in json.loads(done.stdout)}
    assert {name: verdicts[name] for name, (_, ok) in texts.items() if verdicts[name]["ok"] is not ok} == {}
