"""``receipts verify``: exit codes and the one-line output, on bundles built here with a Signer and tree."""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aitbc.receipts import KeySet, Signer
from aitbc.receipts.cli import add_parser, main, run
from receipts_helpers import MINER, PROVIDER, default_keyset, entry, load_vector, make_log


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    log = make_log(n=7, target=3)
    paths = {
        "keys": tmp_path / "keys.json",
        "bundle": tmp_path / "bundle.json",
        "envelope": tmp_path / "envelope.json",
        "older": tmp_path / "older.note",
        "proof": tmp_path / "proof.json",
    }
    paths["keys"].write_bytes(default_keyset(entry(MINER, "miner", owner=PROVIDER)).dump())
    paths["bundle"].write_bytes(log.bundle(3))
    paths["envelope"].write_bytes(log.envelopes[3])
    paths["older"].write_text(log.checkpoint(4), encoding="utf-8")
    proof = {"first_size": 4, "second_size": 7, "hashes": [h.hex() for h in log.tree.consistency_proof(4, 7)]}
    paths["proof"].write_text(json.dumps(proof), encoding="utf-8")
    return paths


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    code = main(["verify", *map(str, argv)])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # exactly one line
    return code, out.strip()


def test_good_bundle(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, files["bundle"], "--keys", files["keys"])
    assert code == 0
    receipt_id = json.loads(base64.b64decode(json.loads(base64.b64decode(
        json.loads(files["bundle"].read_bytes())["envelope"]))["payload"]))["receipt_id"]  # fmt: skip
    assert out.startswith(f"OK {receipt_id} job=job-0001 format=dsse roles=coordinator leaf=3 tree_size=7")


def test_good_bundle_with_consistency(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(
        capsys,
        files["bundle"],
        "--keys",
        files["keys"],
        "--older-checkpoint",
        files["older"],
        "--consistency-proof",
        files["proof"],
    )
    assert (code, out.endswith("extends=4")) == (0, True)


def test_bare_envelope(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, files["envelope"], "--keys", files["keys"])
    assert code == 0 and out.startswith("OK ") and "leaf=" not in out


def test_tampered_bundle(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    obj = json.loads(files["bundle"].read_bytes())
    envelope = json.loads(base64.b64decode(obj["envelope"]))
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["cost"] = "0.01"
    envelope["payload"] = base64.b64encode(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).decode()
    obj["envelope"] = base64.b64encode(json.dumps(envelope, separators=(",", ":")).encode()).decode()
    files["bundle"].write_text(json.dumps(obj), encoding="utf-8")
    assert cli(capsys, files["bundle"], "--keys", files["keys"]) == (1, "FAIL: bad signature")


def test_tampered_inclusion_proof(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    obj = json.loads(files["bundle"].read_bytes())
    obj["leaf_index"] = 2
    files["bundle"].write_text(json.dumps(obj), encoding="utf-8")
    assert cli(capsys, files["bundle"], "--keys", files["keys"]) == (
        1,
        "FAIL: inclusion proof does not match checkpoint",
    )


def test_policy_flags(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, files["bundle"], "--keys", files["keys"], "--require", "attestation") == (
        1,
        "FAIL: missing attestation signature",
    )
    assert cli(capsys, files["bundle"], "--keys", files["keys"], "--require", "miner") == (
        1,
        "FAIL: missing miner signature",
    )


def test_rollback_and_bad_proof(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    proof = json.loads(files["proof"].read_text())
    proof["hashes"] = proof["hashes"][:-1]
    files["proof"].write_text(json.dumps(proof))
    args = ("--older-checkpoint", files["older"], "--consistency-proof", files["proof"])
    assert cli(capsys, files["bundle"], "--keys", files["keys"], *args) == (
        1,
        "FAIL: consistency proof does not match checkpoints",
    )
    newer = make_log(n=9, target=3)
    files["older"].write_text(newer.checkpoint())
    assert cli(capsys, files["bundle"], "--keys", files["keys"], "--older-checkpoint", files["older"]) == (
        1,
        "FAIL: older checkpoint is larger (rollback)",
    )


def test_unreadable_inputs_exit_2(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(capsys, tmp_path / "missing.json", "--keys", files["keys"])
    assert code == 2 and out.startswith("FAIL: cannot read file")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x89PNG\r\n")
    assert cli(capsys, junk, "--keys", files["keys"]) == (2, "FAIL: not JSON")
    code, out = cli(capsys, files["bundle"], "--keys", junk)
    assert code == 2 and out.startswith("FAIL: bad key set")
    files["envelope"].write_text('{"something": "else"}')
    assert cli(capsys, files["envelope"], "--keys", files["keys"]) == (2, "FAIL: unrecognised receipt format")


def test_legacy_receipt(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load_vector("aitbc_v1_receipt_sample.json")
    keys = KeySet(
        [*KeySet.load(files["keys"].read_bytes()), entry(Signer(data["private_key_hex"]), "coordinator")]
    )
    files["keys"].write_bytes(keys.dump())
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"payload": data["payload"], "signature": data["signature"]}))
    assert cli(capsys, legacy, "--keys", files["keys"]) == (
        0,
        "OK rcpt-20250926-000123 job=job-abc123 format=aitbc-v1 roles=coordinator",
    )
    legacy.write_text(
        json.dumps({"payload": {**data["payload"], "units": 2.9}, "signature": data["signature"]})
    )
    assert cli(capsys, legacy, "--keys", files["keys"]) == (1, "FAIL: bad signature")


def test_add_parser_wires_into_a_parent_cli(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="aitbc")
    commands = parser.add_subparsers(dest="command", required=True)
    receipts_commands = add_parser(commands)
    receipts_commands.add_parser("get")  # room for the other engineer's command
    args = parser.parse_args(["receipts", "verify", str(files["bundle"]), "--keys", str(files["keys"])])
    assert args.func is run
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("OK ")


def test_module_runs_standalone(files: dict[str, Path]) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo / "clients" / "python")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aitbc.receipts.cli",
            "verify",
            str(files["bundle"]),
            "--keys",
            str(files["keys"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK ")
