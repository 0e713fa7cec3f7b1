"""The log as an outside auditor meets it: checkpoints kept across restarts and key rotations, on SQLite and
PostgreSQL, every one verifiable offline with only the published keys (the `aitbc receipts verify` CLI and the
Node verifier), each later one a proven extension of every earlier one."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from aitbc.client import Client
from aitbc.coordinator.v1 import job_pb2, receipt_service_pb2
from aitbc.miner import Miner, Outcome, Runner, echo_runner
from aitbc.receipts import (
    KeySet,
    Signer,
    leaf_hash,
    result_digest,
    verify_bundle,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)

from coordinator.config import ApiKeyEntry, Settings, SettingsError, validate
from coordinator.server import Coordinator, start

CLIENT, MINER = "client-key-0001", "miner-key-0001"
NODE = shutil.which("node")
NODE_VERDICTS = Path(__file__).resolve().parents[1] / "receipts" / "node_verdicts.js"


def settings(database_url: str) -> Settings:
    s = Settings(
        app_port=0, database_url=database_url,
        client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),),
        miner_api_keys=(ApiKeyEntry("m1", "miner", MINER),),
        heartbeat_interval_seconds=0.5, heartbeat_timeout_seconds=5, lease_seconds=5, reconnect_grace_seconds=1,
    )  # fmt: skip
    validate(s)
    return s


async def complete_job(coordinator: Coordinator, signer: Signer, n: int, runner: Runner = echo_runner) -> str:
    """One job run by a real SDK miner (its own receipt key) until its receipt is stored."""
    address = f"127.0.0.1:{coordinator.port}"
    miner = Miner(address, MINER, signer=signer, backoff_base_s=0.05, runner=runner)
    running = asyncio.create_task(miner.run())
    try:
        async with Client(address, CLIENT) as client:
            job = await client.submit({"n": n, "text": "Zürich 😀"})
            done = await asyncio.wait_for(client.wait(job.job_id), 30)
            assert done.state == job_pb2.JOB_STATE_COMPLETED, done
            await asyncio.wait_for(client.receipts.GetReceipt(
                receipt_service_pb2.GetReceiptRequest(job_id=job.job_id), metadata=client.metadata,
                wait_for_ready=True), 10)  # fmt: skip
            return job.job_id
    finally:
        miner.stop()
        await asyncio.wait_for(running, 10)


def rotate(database_url: str, role: str) -> None:
    """`aitbc-coordinator keys rotate`, as an operator runs it (the coordinator stopped)."""
    done = subprocess.run([sys.executable, "-m", "coordinator", "keys", "rotate", "--database", database_url,
                           "--role", role], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def cli_verify(tmp_path: Path, bundle: bytes, keys: bytes, *extra: str) -> str:
    """`aitbc receipts verify` on files, as an auditor runs it offline; its one line of output."""
    (tmp_path / "bundle.json").write_bytes(bundle)
    (tmp_path / "keys.json").write_bytes(keys)
    done = subprocess.run([sys.executable, "-m", "aitbc.receipts.cli", "verify", str(tmp_path / "bundle.json"),
                           "--keys", str(tmp_path / "keys.json"), *extra],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def node_verify(
    bundle: bytes, keys: bytes, older: str | None = None, proof: list[bytes] | None = None
) -> None:
    """The Node verifier's verdict on a bundle (and its extension of an older checkpoint): it verifies."""
    case = {"name": "bundle", "kind": "bundle", "data": base64.b64encode(bundle).decode(),
            "roles": ["coordinator", "miner"]}  # fmt: skip
    if older is not None:
        case.update(older=older, proof=[h.hex() for h in proof or []])
    done = subprocess.run([NODE or "node", str(NODE_VERDICTS)], capture_output=True, timeout=60, check=False,
                          input=json.dumps({"keyset": keys.decode(), "cases": [case]}).encode())  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == [{"name": "bundle", "ok": True}]


async def test_every_checkpoint_verifies_and_extends_the_earlier_ones_across_restarts_and_rotations(
    database_url: str, tmp_path: Path
) -> None:
    signer = Signer.generate()
    seen: list[str] = []  # every checkpoint note a client was served, in order
    bundles: dict[str, bytes] = {}
    for rotation in (None, "log", "coordinator"):
        if rotation is not None:
            rotate(database_url, rotation)
        coordinator = await start(settings(database_url))
        try:
            address = f"127.0.0.1:{coordinator.port}"
            async with Client(address, CLIENT) as client:
                seen.append((await client.receipts.GetCheckpoint(
                    receipt_service_pb2.GetCheckpointRequest(), metadata=client.metadata)).checkpoint.note)  # fmt: skip
            for _ in range(2):
                job_id = await complete_job(coordinator, signer, len(bundles))
                async with Client(address, CLIENT) as client:
                    bundles[job_id] = await client.bundle(job_id)
                    seen.append(json.loads(bundles[job_id])["checkpoint"])
            async with Client(address, CLIENT) as client:
                keys_json = await client.signing_keys()
                proofs = await proofs_between(client, seen)
                first_last = await first_and_last_inclusion(client, list(bundles.values()))
        finally:
            await coordinator.stop(grace=0.5)

    keys = KeySet.load(keys_json)
    assert {(k.role, k.status) for k in keys} >= {("log", "retired"), ("log", "active"), ("coordinator", "retired"),
                                                  ("coordinator", "active"), ("miner", "active")}  # fmt: skip
    checkpoints = [verify_checkpoint(note, keys) for note in seen]  # old log keys' checkpoints verify too
    assert [c.size for c in checkpoints] == [0, 1, 2, 2, 3, 4, 4, 5, 6]
    for (i, j), proof in proofs.items():
        assert verify_consistency(checkpoints[i].size, checkpoints[j].size, checkpoints[i].root,
                                  checkpoints[j].root, proof), (i, j)  # fmt: skip
    last = checkpoints[-1]
    for index, (leaf, proof) in first_last.items():
        assert verify_inclusion(leaf_hash(leaf), index, last.size, proof, last.root), index

    # Offline, with only the published keys: every receipt (signed by retired keys or not, each checkpoint
    # by the log key of its time) with the miner's signature, and the latest extending the first ever seen.
    for n, bundle in enumerate(bundles.values()):
        line = cli_verify(tmp_path, bundle, keys_json, "--require", "miner")
        assert line.startswith("OK ") and f"leaf={n}" in line, line
    newest = list(bundles.values())[-1]
    first_seen = next(i for i, c in enumerate(checkpoints) if c.size > 0)
    (tmp_path / "older.note").write_text(seen[first_seen])
    proof = proofs[(first_seen, len(seen) - 1)]
    (tmp_path / "proof.json").write_text(json.dumps(
        {"first_size": checkpoints[first_seen].size, "second_size": last.size, "hashes": [h.hex() for h in proof]}))  # fmt: skip
    line = cli_verify(tmp_path, newest, keys_json, "--older-checkpoint", str(tmp_path / "older.note"),
                      "--consistency-proof", str(tmp_path / "proof.json"))  # fmt: skip
    assert f"extends={checkpoints[first_seen].size}" in line, line
    if NODE is not None:
        node_verify(newest, keys_json, seen[first_seen], proof)


async def proofs_between(client: Client, notes: list[str]) -> dict[tuple[int, int], list[bytes]]:
    """GetConsistencyProof between every two checkpoints seen (both non-empty: first_size 0 needs none)."""
    sizes = [int(note.split("\n")[1]) for note in notes]
    out = {}
    for i, first in enumerate(sizes):
        for j in range(i, len(sizes)):
            if first == 0:
                out[(i, j)] = []  # the empty tree is a prefix of every tree
                continue
            request = receipt_service_pb2.GetConsistencyProofRequest(first_size=first, second_size=sizes[j])
            out[(i, j)] = list(
                (await client.receipts.GetConsistencyProof(request, metadata=client.metadata)).proof.hashes
            )
    return out


async def first_and_last_inclusion(
    client: Client, bundles: list[bytes]
) -> dict[int, tuple[bytes, list[bytes]]]:
    """Inclusion proofs (against the latest checkpoint, tree_size 0) of the log's first and last leaves, with
    their envelopes (from the bundles)."""
    envelopes = {json.loads(b)["leaf_index"]: base64.b64decode(json.loads(b)["envelope"]) for b in bundles}
    size = (await client.receipts.GetCheckpoint(receipt_service_pb2.GetCheckpointRequest(),
                                                metadata=client.metadata)).checkpoint.tree_size  # fmt: skip
    out = {}
    for index in (0, size - 1):
        proof = (await client.receipts.GetInclusionProof(
            receipt_service_pb2.GetInclusionProofRequest(leaf_index=index), metadata=client.metadata)).proof  # fmt: skip
        assert (proof.leaf_index, proof.tree_size) == (index, size)
        out[index] = (envelopes[index], list(proof.hashes))
    return out


async def test_a_coordinator_id_other_than_the_logs_origin_is_refused_at_start(tmp_path: Path) -> None:
    """The log's checkpoints are signed under aitbc.coordinator/<COORDINATOR_ID>: restarted under another id,
    the coordinator served the stored checkpoint with a contradicting `origin` and every bundle failed offline
    ("checkpoint not signed by a known log key"), and its next checkpoints looked like another log's. Such a
    start is now refused, naming the id the log was published under."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    coordinator = await start(settings(url))
    job_id = await complete_job(coordinator, Signer.generate(), 1)  # GetReceipt signed a checkpoint
    await coordinator.stop(grace=0.5)

    with pytest.raises(SettingsError, match=r"COORDINATOR_ID=coord-local\b"):
        await start(settings(url).replace(coordinator_id="renamed"))

    coordinator = await start(settings(url))  # under its own id the log is served as before
    try:
        async with Client(f"127.0.0.1:{coordinator.port}", CLIENT) as client:
            keys = KeySet.load(await client.signing_keys())
            assert (
                verify_bundle(await client.bundle(job_id), keys).checkpoint.origin
                == "aitbc.coordinator/coord-local"
            )
    finally:
        await coordinator.stop(grace=0.5)


async def test_receipts_verify_with_the_published_keys_after_the_clock_steps_back(tmp_path: Path) -> None:
    """The wall clock stepped back an hour since the store's keys were made (a VM resumed, a clock corrected):
    receipts were issued before their keys' valid_from ("signed before key valid" offline), `keys rotate` then
    published windows ending before they began (every key set refused, "valid_until is before valid_from"), and a
    miner's replaced key could end before receipts it signed. Now no time the coordinator writes (issued_at, a
    key's start or end) goes below the latest one it wrote before, and each receipt verifies offline."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    await (await start(settings(url))).stop(grace=0.5)  # its keys are made, and kept in the store
    with sqlite3.connect(tmp_path / "c.db") as db:  # made an hour ahead of the clock as it reads now
        db.execute("UPDATE signing_keys SET valid_from_us = valid_from_us + 3600000000")
    first_miner, second_miner = Signer.generate(), Signer.generate()
    job_ids = []
    for rotation, signer in ((None, first_miner), ("coordinator", first_miner), ("log", second_miner)):
        if rotation is not None:
            rotate(url, rotation)
        coordinator = await start(settings(url))
        try:
            job_ids.append(await complete_job(coordinator, signer, len(job_ids)))
            async with Client(f"127.0.0.1:{coordinator.port}", CLIENT) as client:
                keys_json = await client.signing_keys()
                bundles = [await client.bundle(job_id) for job_id in job_ids]
        finally:
            await coordinator.stop(grace=0.5)

    keys = KeySet.load(keys_json)
    assert {(k.role, k.status) for k in keys} >= {("coordinator", "retired"), ("log", "retired"),
                                                  ("miner", "retired"), ("miner", "active")}  # fmt: skip
    for n, bundle in enumerate(bundles):
        line = cli_verify(tmp_path, bundle, keys_json, "--require", "miner")
        assert line.startswith("OK ") and f"leaf={n}" in line, line


async def test_a_receipt_of_non_ascii_units_and_a_big_number_verifies_in_python_and_node(
    tmp_path: Path,
) -> None:
    """What a miner reports is signed as canonical JSON (UTF-8, not escapes; code point key order): the
    coordinator's bytes verify offline in both languages, and the result digest a client computes from the
    result it expected (a Python int past 2^53 included: a Struct carries it as a double) is the signed one."""
    expected = {"text": "Zürich 😀", "big": 2**60, "ключ": [-0.0, 1e21]}

    async def runner(job: job_pb2.Job) -> Outcome:
        return Outcome(expected, units="1.5", unit_type="Sekunden·ü😀\u2028")

    url = f"sqlite:///{tmp_path / 'c.db'}"
    coordinator = await start(settings(url))
    try:
        job_id = await complete_job(coordinator, Signer.generate(), 0, runner)
        async with Client(f"127.0.0.1:{coordinator.port}", CLIENT) as client:
            keys_json, bundle = await client.signing_keys(), await client.bundle(job_id)
    finally:
        await coordinator.stop(grace=0.5)
    assert cli_verify(tmp_path, bundle, keys_json, "--require", "miner").startswith("OK ")
    verified = verify_bundle(bundle, KeySet.load(keys_json))
    assert verified.payload["unit_type"] == "Sekunden·ü😀\u2028"
    assert verified.payload["result_sha256"] == result_digest(expected).hex()
    if NODE is not None:
        node_verify(bundle, keys_json)
