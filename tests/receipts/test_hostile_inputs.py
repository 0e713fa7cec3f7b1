"""Hostile inputs to the offline verifier: whatever a bundle, key set, checkpoint or proof holds, the answer is
"valid" or a VerificationError (the CLI: its one line and documented exit code), never another exception, a
hang or unbounded memory."""

from __future__ import annotations

import base64
import copy
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aitbc.receipts import (
    RECEIPT_PAYLOAD_TYPE,
    KeyEntry,
    KeySet,
    KeySetError,
    VerificationError,
    build_envelope,
    note_key_id,
    parse_consistency_proof,
    sign_note,
    verify_any,
    verify_bundle,
    verify_checkpoint,
)
from aitbc.receipts.cli import main
from aitbc.receipts.keys import b64url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receipts_helpers import COORD, LOG, MINER, ORIGIN, PROVIDER, T0, default_keyset, entry, make_log

LOG_ = make_log(n=7, target=3)
KEYS = default_keyset(entry(MINER, "miner", owner=PROVIDER))
GOOD = json.loads(LOG_.bundle(3))


def verdict(fn: Any, *args: Any, **kw: Any) -> str:
    """ "OK" or "FAIL <reason>"; any other exception fails the test (it is the bug this file is about)."""
    try:
        fn(*args, **kw)
    except (VerificationError, KeySetError) as exc:
        return f"FAIL {exc}"
    return "OK"


def bundle_with(**fields: Any) -> bytes:
    return json.dumps(dict(GOOD, **fields)).encode()


def note_parts() -> tuple[str, str]:
    text, sigs = GOOD["checkpoint"].split("\n\n")
    return text + "\n", sigs


# -- checkpoint notes holding a lone surrogate (JSON "\ud800" decodes to one; it is not UTF-8) ----------------


@pytest.mark.parametrize(
    "where",
    ["origin", "size line", "unknown signer name"],
)
def test_note_with_lone_surrogate_is_malformed(where: str) -> None:
    text, sigs = note_parts()
    if where == "origin":
        note = "\ud800" + text + "\n" + sigs
    elif where == "size line":
        note = text.replace("\n", "\n\ud800", 1) + "\n" + sigs
    else:  # beside a valid signature: was accepted (the line ignored) by Python, so by Node too
        note = text + "\n" + sigs + "— \ud800 AAAAAAAA\n"
    for keys in (KEYS, KeySet([entry(COORD, "coordinator"), KeyEntry.for_signer(LOG, "log", T0)])):
        assert verdict(verify_any, bundle_with(checkpoint=note), keys) == "FAIL malformed checkpoint"
        assert (
            verdict(verify_bundle, LOG_.bundle(3), keys, older_checkpoint=note) == "FAIL malformed checkpoint"
        )


def test_key_set_verifier_key_with_lone_surrogate_name_is_ignored() -> None:
    obj = json.loads(KEYS.dump())
    for key in obj["keys"]:
        if key["role"] == "log":
            key["note_verifier_key"] = (
                "\ud800+00000000+" + base64.b64encode(b"\x01" + LOG.public_key).decode()
            )
    keys = KeySet.load(json.dumps(obj))
    assert verdict(verify_any, LOG_.bundle(3), keys) == "FAIL checkpoint not signed by a known log key"


def test_cli_note_with_lone_surrogate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, sigs = note_parts()
    (tmp_path / "b.json").write_bytes(bundle_with(checkpoint="\ud800" + text + "\n" + sigs))
    (tmp_path / "k.json").write_bytes(KEYS.dump())
    code = main(["verify", str(tmp_path / "b.json"), "--keys", str(tmp_path / "k.json")])
    assert (code, capsys.readouterr().out) == (1, "FAIL: malformed checkpoint\n")


# -- tree sizes a log cannot have (uint64) ---------------------------------------------------------------------


@pytest.mark.parametrize("digits", [str(2**64), "9" * 21, "9" * 4301, "9" * 100_000])
def test_checkpoint_size_beyond_uint64_is_malformed(digits: str) -> None:
    note = sign_note(f"{ORIGIN}\n{digits}\n{base64.b64encode(bytes(32)).decode()}\n", ORIGIN, LOG)
    assert verdict(verify_checkpoint, note, KEYS) == "FAIL malformed checkpoint"
    assert verdict(verify_bundle, LOG_.bundle(3), KEYS, older_checkpoint=note) == "FAIL malformed checkpoint"


def test_checkpoint_size_uint64_max_still_parses() -> None:
    note = sign_note(f"{ORIGIN}\n{2**64 - 1}\n{base64.b64encode(bytes(32)).decode()}\n", ORIGIN, LOG)
    assert verify_checkpoint(note, KEYS).size == 2**64 - 1


# -- legacy receipts nested deeply ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [300, 500, 900])
def test_deep_legacy_payload_gives_a_verdict(depth: int) -> None:
    deep = "[" * depth + "]" * depth
    sig = {"alg": "Ed25519", "key_id": b64url(COORD.public_key), "sig": "AA"}
    data = ('{"payload":{"x":' + deep + '},"signature":' + json.dumps(sig) + "}").encode()
    assert verdict(verify_any, data, KEYS).startswith("FAIL ")  # (bad signature, or malformed past ~450)


# -- work bounded by what the key set holds, not by the input's size -------------------------------------------


def test_repeated_signature_is_verified_once() -> None:
    env = json.loads(LOG_.envelopes[3])
    data = json.dumps(dict(env, signatures=env["signatures"] * 60_000)).encode()  # ~9 MB
    start = time.process_time()
    assert verify_any(data, KEYS).roles == {"coordinator"}
    # Each Ed25519 verification costs ~0.1 ms: 60,000 of them took ~6 s of CPU; once each, well under 2 s.
    assert time.process_time() - start < 2.5


def test_cli_endless_file_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    (tmp_path / "k.json").write_bytes(KEYS.dump())
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
        "from aitbc.receipts.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "verify", "/dev/zero", "--keys", str(tmp_path / "k.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (run.returncode, run.stderr) == (2, ""), run.stderr[-2000:]
    assert run.stdout.startswith("FAIL: cannot read file /dev/zero: ") and run.stdout.count("\n") == 1
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 900_000  # KiB


# -- mutation sweeps: no input gives anything but a verdict -------------------------------------------------------

VALUES = [
    None,
    0,
    -1,
    1.5,
    True,
    "",
    "x",
    [],
    {},
    [[[]]],
    2**64,
    -(2**64),
    10**300,
    "\ud800",
    {"a": 1},
    ["a"],
]
DELETE = object()


def _paths(obj: Any, path: tuple[Any, ...] = ()) -> Any:
    yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from _paths(value, (*path, key))


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(obj)
    cur = out
    for key in path[:-1]:
        cur = cur[key]
    if value is DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return out


def _mutants(obj: Any) -> Any:
    for path in list(_paths(obj)):
        for value in [*VALUES, DELETE]:
            if value is DELETE and (not path or isinstance(path[-1], int)):
                continue
            yield _set(obj, path, value)


def test_every_field_of_a_bundle_and_its_envelope_mistyped() -> None:
    env = json.loads(LOG_.envelopes[3])
    for bundle in _mutants(GOOD):
        verdict(verify_any, json.dumps(bundle).encode(), KEYS)
    for mutant in _mutants(env):
        data = json.dumps(mutant).encode()
        verdict(verify_any, data, KEYS)
        verdict(verify_any, bundle_with(envelope=base64.b64encode(data).decode()), KEYS)


def test_every_field_of_a_payload_mistyped() -> None:
    payload = json.loads(base64.b64decode(json.loads(LOG_.envelopes[3])["payload"]))
    for mutant in _mutants(payload):
        body = json.dumps(mutant, sort_keys=True, separators=(",", ":")).encode()
        verdict(verify_any, build_envelope(body, RECEIPT_PAYLOAD_TYPE, [COORD]), KEYS)


def test_every_field_of_a_key_set_mistyped() -> None:
    for mutant in _mutants(json.loads(KEYS.dump())):
        try:
            keys = KeySet.load(json.dumps(mutant))
        except KeySetError:
            continue
        verdict(verify_any, LOG_.bundle(3), keys)


def test_every_field_of_a_legacy_receipt_mistyped() -> None:
    legacy = {"payload": {"a": 1, "b": [1, None]}, "signature": {"alg": "Ed25519", "key_id": b64url(COORD.public_key), "sig": "AA"}}  # fmt: skip
    for mutant in _mutants(legacy):
        verdict(verify_any, json.dumps(mutant).encode(), KEYS)


@pytest.mark.parametrize(
    "proof",
    [
        {"first_size": 4, "second_size": 7, "hashes": ["00" * 32] * 10_000},
        {"first_size": 2**64, "second_size": 2**64 + 7, "hashes": []},
        {"first_size": "9" * 5000},
        {"proof": {"proof": {}}},
        {"hashes": ["A" * 1_000_000]},
        {"first_size": 4, "second_size": 7, "hashes": [None]},
        {"first_size": "٤", "second_size": "7"},
        [1],
        None,
    ],
)
def test_consistency_proofs(proof: Any) -> None:
    older = LOG_.checkpoint(4)
    assert (
        verdict(
            lambda: verify_bundle(
                LOG_.bundle(3),
                KEYS,
                older_checkpoint=older,
                consistency_proof=parse_consistency_proof(json.dumps(proof)),
            )
        )
        != "OK"
    )


def test_big_inputs_give_a_verdict() -> None:
    text, _ = note_parts()
    long_path = dict(GOOD, inclusion_proof={"tree_size": 7, "hashes": ["00" * 32] * 10_000})
    for fn, args in [
        (verify_any, (json.dumps(long_path).encode(),)),
        (
            verify_any,
            (bundle_with(leaf_index=2**64, inclusion_proof={"tree_size": 2**64 + 1, "hashes": []}),),
        ),
        (verify_checkpoint, ("a" * 5_000_000 + "\n\n— x AAAAAAAA\n",)),
        (verify_checkpoint, (text + "\n" + "— x AAAAAAAA\n" * 200_000,)),
        (verify_checkpoint, (text + "\n— " + ORIGIN + " " + "A" * 5_000_000 + "\n",)),
        (verify_any, (b'{"envelope":"' + b"A" * 5_000_000 + b'"}',)),
        (verify_any, (b'{"envelope":"\xff"}',)),
    ]:
        assert verdict(fn, *args, KEYS).startswith("FAIL")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.characters(blacklist_categories=())),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(_paths(GOOD))), _json)
def test_property_any_value_anywhere_in_a_bundle(path: tuple[Any, ...], value: Any) -> None:
    verdict(verify_any, json.dumps(_set(GOOD, path, value)).encode(), KEYS)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 10_000))
def test_property_bytes_spliced_into_a_bundle(junk: bytes, at: int) -> None:
    data = LOG_.bundle(3)
    at %= len(data) + 1
    verdict(verify_any, data[:at] + junk + data[at:], KEYS)


# -- the Node verifier gives the same verdicts (tests/receipts/node_verdicts.js) -------------------------------

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed (the Node client needs Node 20+)")
def test_node_agrees() -> None:
    """(Node's JSON parser refuses a lone surrogate escape outright; Python's took the note and ignored the line.)"""
    text, sigs = note_parts()
    witness = note_key_id("\ufffd", LOG.public_key) + LOG.sign(text.encode())  # (Node hashes U+FFFD for it)
    env = json.loads(LOG_.envelopes[3])
    cases = {
        "surrogate witness name": (bundle_with(checkpoint=f"{text}\n{sigs}— \ud800 {base64.b64encode(witness).decode()}\n"), False),
        "size 2^64": (bundle_with(checkpoint=sign_note(f"{ORIGIN}\n{2**64}\n{text.split(chr(10))[2]}\n", ORIGIN, LOG)), False),
        "repeated signature": (bundle_with(envelope=base64.b64encode(json.dumps(dict(env, signatures=env["signatures"] * 50)).encode()).decode()), None),
        "good": (LOG_.bundle(3), True),
    }  # fmt: skip
    request = {
        "keyset": KEYS.dump().decode(),
        "cases": [
            {"name": n, "kind": "bundle", "data": base64.b64encode(d).decode()} for n, (d, _) in cases.items()
        ],
    }
    runner = Path(__file__).with_name("node_verdicts.js")
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(runner)], input=json.dumps(request).encode(), capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    node = {v["name"]: v for v in json.loads(done.stdout)}
    for name, (data, ok) in cases.items():
        python = verdict(verify_any, data, KEYS)
        assert (node[name]["ok"], python == "OK") == ((ok, ok) if ok is not None else (False, False)), (
            name,
            node[name],
            python,
        )


@pytest.mark.parametrize(
    "text",
    ["٢٠٢٦-11-26T22:46:59.123456Z", "2026-11-26T22:46:59.１２３４５６Z", "2026-11-26T2２:46:59.123456Z"],
)
def test_a_receipt_time_with_digits_other_than_ascii_is_refused(text: str) -> None:
    """Python's \\d matched any Unicode digit, and int() reads them: a receipt time the Node verifier (and every
    issuer) never writes was accepted."""
    from aitbc.receipts.times import check_receipt_time, parse_time

    with pytest.raises(ValueError):
        check_receipt_time(text)
    with pytest.raises(ValueError):
        parse_time(text)
