"""Receipts as the coordinator issues them: exactly once, append-only, logged, booked, verifiable offline.

A real coordinator on loopback, a real SQLite file, a hand-driven miner stream (to send duplicates and bad
signatures on purpose), and the SDK's offline verifier.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import grpc
import pytest
from aitbc.client import Client
from aitbc.coordinator.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_service_pb2,
    miner_service_pb2,
    miner_service_pb2_grpc,
    receipt_service_pb2,
)
from aitbc.receipts import (
    KeySet,
    MerkleTree,
    Policy,
    Signer,
    VerificationError,
    build_miner_report,
    canonical_struct,
    leaf_hash,
    parse_checkpoint,
    sign_miner_report,
    verify_bundle,
    verify_consistency,
    verify_inclusion,
)

from coordinator.config import ApiKeyEntry, Settings
from coordinator.server import start

CLIENT, MINER, ADMIN = "client-key-0001", "miner-key-0001", "admin-key-0001"
OTHER_CLIENT, OTHER_MINER = "client-key-0002", "miner-key-0002"


def settings(db: Path) -> Settings:
    return Settings(
        app_port=0, database_url=f"sqlite:///{db}",
        client_api_keys=(ApiKeyEntry("alice", "client", CLIENT), ApiKeyEntry("bob", "client", OTHER_CLIENT)),
        miner_api_keys=(ApiKeyEntry("m1", "miner", MINER), ApiKeyEntry("m2", "miner", OTHER_MINER)),
        admin_api_keys=(ApiKeyEntry("ops", "admin", ADMIN),),
        heartbeat_interval_seconds=0.5, heartbeat_timeout_seconds=5, lease_seconds=5,
    )  # fmt: skip


class HandMiner:
    """A miner stream driven message by message."""

    def __init__(self, address: str, signer: Signer | None = None, price: str = "2.5") -> None:
        self.channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.call = miner_service_pb2_grpc.MinerServiceStub(self.channel).Connect(
            metadata=(("x-api-key", MINER),)
        )
        self.signer = signer
        self.price = price

    async def hello(self) -> miner_service_pb2.Welcome:
        caps = miner_service_pb2.MinerCapabilities(slots=4, price=self.price)
        key = self.signer.public_key if self.signer else b""
        await self.call.write(
            miner_service_pb2.ConnectRequest(
                hello=miner_service_pb2.Hello(capabilities=caps, receipt_public_key=key)
            )
        )
        return (await self.next("welcome")).welcome

    async def next(self, kind: str) -> miner_service_pb2.ConnectResponse:
        while True:
            message = await asyncio.wait_for(self.call.read(), 10)
            assert message is not grpc.aio.EOF, "stream ended"
            if message.WhichOneof("message") == kind:
                return message

    def result(
        self, a: miner_service_pb2.Assignment, value: dict, sign_with: Signer | None = None
    ) -> miner_service_pb2.Result:
        r = miner_service_pb2.Result(
            job_id=a.job.job_id, attempt=a.attempt, units="2", unit_type="gpu_seconds"
        )
        r.result.update(value)
        signer = sign_with or self.signer
        if signer is not None:
            digest = hashlib.sha256(canonical_struct(value)).hexdigest()
            r.miner_report = build_miner_report(a.job.job_id, a.attempt, digest, "2", "gpu_seconds")
            r.miner_signature = sign_miner_report(signer, r.miner_report)
        return r

    async def send_results(self, *results: miner_service_pb2.Result) -> list[miner_service_pb2.ResultAck]:
        await self.call.write(
            miner_service_pb2.ConnectRequest(results=miner_service_pb2.Results(results=results))
        )
        return [(await self.next("result_ack")).result_ack for _ in results]

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


@pytest.fixture
async def world(tmp_path: Path):
    coordinator = await start(settings(tmp_path / "c.db"))
    address = f"127.0.0.1:{coordinator.port}"
    client = Client(address, CLIENT)
    state = {"coordinator": coordinator, "address": address, "client": client, "db": tmp_path / "c.db"}
    yield state
    await client.close()
    await state["coordinator"].stop(grace=0.5)


async def complete_one(world, miner: HandMiner, payload: dict) -> tuple[str, miner_service_pb2.ResultAck]:
    job = await world["client"].submit(payload)
    assignment = (await miner.next("assignments")).assignments.assignments[0]
    assert assignment.job.job_id == job.job_id
    [ack] = await miner.send_results(miner.result(assignment, {"out": payload}))
    return job.job_id, ack


def rows(db: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def test_duplicate_result_yields_exactly_one_receipt_and_it_verifies(world) -> None:
    signer = Signer.generate()
    miner = HandMiner(world["address"], signer)
    await miner.hello()
    job_id, first = await complete_one(world, miner, {"n": 1})
    job = await world["client"].get(job_id)
    assignment = miner_service_pb2.Assignment(job=job, attempt=1)
    [again] = await miner.send_results(miner.result(assignment, {"out": {"n": 1}}))
    assert first.accepted and again.accepted and again.receipt_id == first.receipt_id
    assert rows(world["db"], "SELECT count(*) FROM receipts WHERE job_id = ?", job_id) == [(1,)]
    keys = KeySet.load(await world["client"].signing_keys())
    verified = verify_bundle(
        await world["client"].bundle(job_id), keys, Policy(frozenset({"coordinator", "miner"}))
    )
    assert verified.receipt_id == first.receipt_id
    assert verified.payload["provider"] == "m1" and verified.payload["client"] == "alice"
    assert verified.payload["cost"] == "5" and verified.payload["price"] == "2.5"
    await miner.close()


async def test_bad_miner_signature_is_refused_and_changes_nothing(world) -> None:
    miner = HandMiner(world["address"], Signer.generate())
    await miner.hello()
    job = await world["client"].submit({"n": 2})
    assignment = (await miner.next("assignments")).assignments.assignments[0]
    [ack] = await miner.send_results(miner.result(assignment, {"x": 1}, sign_with=Signer.generate()))
    assert not ack.accepted and ack.reason == "BAD_MINER_SIGNATURE"
    unsigned = miner_service_pb2.Result(job_id=job.job_id, attempt=1, units="1")
    unsigned.result.update({"x": 1})
    [ack] = await miner.send_results(unsigned)
    assert not ack.accepted and ack.reason == "BAD_MINER_SIGNATURE"
    assert (await world["client"].get(job.job_id)).state in (2, 3)
    assert rows(world["db"], "SELECT count(*) FROM receipts") == [(0,)]
    [ack] = await miner.send_results(miner.result(assignment, {"x": 1}))
    assert ack.accepted
    await miner.close()


async def test_receipt_tables_refuse_update_and_delete(world) -> None:
    miner = HandMiner(world["address"])
    await miner.hello()
    await complete_one(world, miner, {"n": 3})
    await miner.close()
    await world["client"].receipts.GetCheckpoint(
        receipt_service_pb2.GetCheckpointRequest(), metadata=world["client"].metadata
    )
    for table in ("receipts", "log_leaves", "ledger_entries", "checkpoints", "job_events"):
        assert rows(world["db"], f"SELECT count(*) FROM {table}")[0][0] > 0, (
            f"{table} is empty: the check would prove nothing"
        )
    for statement in ("UPDATE receipts SET envelope = x'00'", "DELETE FROM receipts", "UPDATE log_leaves SET leaf_hash = x'00'",
                      "DELETE FROM log_leaves", "DELETE FROM ledger_entries", "UPDATE checkpoints SET note = ''",
                      "DELETE FROM job_events"):  # fmt: skip
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            rows(world["db"], statement)


async def test_replayed_receipt_id_is_refused_by_the_ledger(world) -> None:
    miner = HandMiner(world["address"])
    await miner.hello()
    _, ack = await complete_one(world, miner, {"n": 4})
    await miner.close()
    with pytest.raises(sqlite3.IntegrityError):
        rows(world["db"], "INSERT INTO ledger_entries (account_id, kind, receipt_id, amount_nano, units_nano, booked_us) "
                          "VALUES ('alice', 'client', ?, -1, 1, 0)", ack.receipt_id)  # fmt: skip


async def test_usage_ledger_books_client_debit_and_miner_credit(world) -> None:
    miner = HandMiner(world["address"], price="1.5")
    await miner.hello()
    for n in range(3):
        await complete_one(world, miner, {"n": n})
    quote = await world["client"].jobs.QuoteCost(
        job_service_pb2.QuoteCostRequest(units="10"), metadata=world["client"].metadata
    )
    assert (quote.eligible_miners, quote.min_cost) == (1, "15")
    await miner.close()
    usage = await world["client"].jobs.GetUsage(
        job_service_pb2.GetUsageRequest(), metadata=world["client"].metadata
    )
    assert (usage.account.balance, usage.account.receipts, usage.account.units) == ("-9", 3, "6")
    admin = admin_service_pb2_grpc.AdminServiceStub(world["client"].channel)
    accounts = await admin.ListAccounts(
        admin_service_pb2.ListAccountsRequest(), metadata=(("x-api-key", ADMIN),)
    )
    balances = {(a.account_id, a.kind): a.balance for a in accounts.accounts}
    assert balances == {("alice", "client"): "-9", ("m1", "miner"): "9"}


async def test_log_is_consistent_across_restart_and_tampering_is_detected(world, tmp_path: Path) -> None:
    miner = HandMiner(world["address"])
    await miner.hello()
    first_job, _ = await complete_one(world, miner, {"n": 1})
    await complete_one(world, miner, {"n": 2})
    receipts = world["client"].receipts
    md = world["client"].metadata
    old = (await receipts.GetCheckpoint(receipt_service_pb2.GetCheckpointRequest(), metadata=md)).checkpoint
    await miner.close()
    await world["coordinator"].stop(grace=0.5)

    world["coordinator"] = await start(settings(world["db"]))
    address = f"127.0.0.1:{world['coordinator'].port}"
    client = Client(address, CLIENT)
    miner = HandMiner(address)
    await miner.hello()
    job = await client.submit({"n": 3})
    assignment = (await miner.next("assignments")).assignments.assignments[0]
    assert assignment.job.job_id == job.job_id
    await miner.send_results(miner.result(assignment, {"n": 3}))
    new = (
        await client.receipts.GetCheckpoint(receipt_service_pb2.GetCheckpointRequest(), metadata=md)
    ).checkpoint
    assert new.tree_size == old.tree_size + 1
    proof = (await client.receipts.GetConsistencyProof(
        receipt_service_pb2.GetConsistencyProofRequest(first_size=old.tree_size, second_size=new.tree_size), metadata=md)).proof  # fmt: skip
    assert verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, list(proof.hashes))
    bundle = json.loads(await client.bundle(first_job))
    keys = KeySet.load(await client.signing_keys())
    await miner.close()
    await client.close()

    # Someone with the file rewrites an envelope (triggers dropped): the signed log no longer includes it.
    with sqlite3.connect(world["db"]) as conn:
        conn.execute("DROP TRIGGER receipts_no_update")
        stored = conn.execute("SELECT envelope FROM receipts WHERE job_id = ?", (first_job,)).fetchone()[0]
        envelope = json.loads(stored)
        payload = json.loads(base64.b64decode(envelope["payload"]))
        payload["cost"] = "0"  # the client's bill, rewritten
        envelope["payload"] = base64.b64encode(
            json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        ).decode()
        forged = json.dumps(envelope, separators=(",", ":")).encode()
        conn.execute("UPDATE receipts SET envelope = ? WHERE job_id = ?", (forged, first_job))
    assert (
        bytes(rows(world["db"], "SELECT envelope FROM receipts WHERE job_id = ?", first_job)[0][0]) == forged
    )
    bundle["envelope"] = base64.b64encode(forged).decode()
    with pytest.raises(VerificationError):
        verify_bundle(json.dumps(bundle).encode(), keys, Policy())
    # and the root alone catches it, whatever the signatures: the forged leaf is not in the signed tree
    checkpoint = parse_checkpoint(bundle["checkpoint"].split("\n\n")[0] + "\n")
    proof = [bytes.fromhex(h) for h in bundle["inclusion_proof"]["hashes"]]
    args = (bundle["leaf_index"], checkpoint.size, proof, checkpoint.root)
    assert verify_inclusion(leaf_hash(stored), *args)
    assert not verify_inclusion(leaf_hash(forged), *args)

    # A rewritten log leaf is caught at start-up: the tree no longer matches the last signed checkpoint.
    await world["coordinator"].stop(grace=0.5)
    with sqlite3.connect(world["db"]) as conn:
        conn.execute("DROP TRIGGER log_leaves_no_update")
        conn.execute(
            "UPDATE log_leaves SET leaf_hash = ? WHERE leaf_index = 0", (hashlib.sha256(b"forged").digest(),)
        )
    with pytest.raises(RuntimeError, match="altered"):
        world["coordinator"] = await start(settings(world["db"]))
    world["coordinator"] = await start(settings(tmp_path / "fresh.db"))  # for the fixture's teardown


async def test_rotated_key_still_verifies_old_receipts(world) -> None:
    miner = HandMiner(world["address"])
    await miner.hello()
    old_job, _ = await complete_one(world, miner, {"n": 1})
    await miner.close()
    await world["coordinator"].stop(grace=0.5)

    from coordinator.receipts.keyring import rotate
    from coordinator.store import open_store

    store = open_store(f"sqlite:///{world['db']}")
    await store.open()
    await rotate(store, "coordinator")
    await store.close()

    world["coordinator"] = await start(settings(world["db"]))
    address = f"127.0.0.1:{world['coordinator'].port}"
    client = Client(address, CLIENT)
    miner = HandMiner(address)
    await miner.hello()
    job = await client.submit({"n": 2})
    assignment = (await miner.next("assignments")).assignments.assignments[0]
    await miner.send_results(miner.result(assignment, {"n": 2}))
    keyset_json = json.loads(await client.signing_keys())
    coordinator_keys = [k for k in keyset_json["keys"] if k["role"] == "coordinator"]
    assert sorted(k["status"] for k in coordinator_keys) == ["active", "retired"]
    keys = KeySet.load(json.dumps(keyset_json))
    old = verify_bundle(await client.bundle(old_job), keys, Policy())
    new = verify_bundle(await client.bundle(job.job_id), keys, Policy())
    assert old.key_ids != new.key_ids
    retired = next(k for k in coordinator_keys if k["status"] == "retired")
    assert old.key_ids == (retired["key_id"],)
    await miner.close()
    await client.close()


async def test_receipts_are_readable_by_their_client_their_miner_and_admins_only(world) -> None:
    miner = HandMiner(world["address"])
    await miner.hello()
    job_id, ack = await complete_one(world, miner, {"n": 1})
    await miner.close()
    stub = world["client"].receipts
    request = receipt_service_pb2.ListReceiptsRequest(job_id=job_id)
    for key in (CLIENT, MINER, ADMIN):
        receipts = (await stub.ListReceipts(request, metadata=(("x-api-key", key),))).receipts
        assert [r.receipt_id for r in receipts] == [ack.receipt_id], key
    for key in (OTHER_CLIENT, OTHER_MINER):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetReceipt(
                receipt_service_pb2.GetReceiptRequest(job_id=job_id), metadata=(("x-api-key", key),)
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, key


async def test_a_state_is_read_only_once_its_rows_are_durable(world) -> None:
    """Polling GetJob to COMPLETED, then GetReceipt at once, always finds the receipt: a job's new state is
    never served before the commit that holds it (and its result and receipt) has landed."""
    from aitbc.miner import Miner, probe_capabilities

    miner = Miner(world["address"], MINER, capabilities=probe_capabilities(4, price="1"))
    task = asyncio.create_task(miner.run())
    client = world["client"]
    try:
        for n in range(40):
            job = await client.submit({"n": n})
            while (await client.get(job.job_id)).state != 4:
                pass  # poll as fast as the server answers
            receipt = await client.receipt(job.job_id)
            result = await client.result(job.job_id)
            assert (
                receipt.receipt.job_id == job.job_id
                and result.result.receipt_id == receipt.receipt.receipt_id
            )
    finally:
        miner.stop()
        await task


async def test_a_receipt_that_fails_to_commit_leaves_no_gap_in_the_log(world) -> None:
    """A commit holding a receipt fails (here a trigger in the SQLite file refuses that one job's receipt;
    in production a full disk). The log must not keep a place for it: the next receipts take the next
    places, the coordinator's tree equals the tree of the stored leaves, a checkpoint signed afterwards
    covers exactly them, and the coordinator starts again on the same file (the tree it rebuilds matches)."""
    miner = HandMiner(world["address"])
    await miner.hello()
    await complete_one(world, miner, {"n": 1})
    doomed = await world["client"].submit({"n": 2})
    with sqlite3.connect(world["db"]) as conn:
        conn.execute(
            "CREATE TRIGGER test_refuse_one_receipt BEFORE INSERT ON receipts WHEN NEW.job_id = "
            f"'{doomed.job_id}' BEGIN SELECT RAISE(ABORT, 'test: this receipt cannot be written'); END"
        )  # fmt: skip
    assignment = (await miner.next("assignments")).assignments.assignments[0]
    assert assignment.job.job_id == doomed.job_id
    await miner.call.write(miner_service_pb2.ConnectRequest(results=miner_service_pb2.Results(
        results=[miner.result(assignment, {"n": 2})])))  # fmt: skip
    with pytest.raises((grpc.aio.AioRpcError, AssertionError)):  # the failed commit ends the stream
        await miner.next("result_ack")
    await miner.close()
    assert rows(world["db"], "SELECT count(*) FROM receipts WHERE job_id = ?", doomed.job_id) == [(0,)]
    with sqlite3.connect(world["db"]) as conn:
        conn.execute("DROP TRIGGER test_refuse_one_receipt")
    scheduler = world["coordinator"].scheduler
    for _ in range(500):  # the job is read back from the store (RUNNING, its miner gone)
        if doomed.job_id in scheduler.jobs:
            break
        await asyncio.sleep(0.01)

    miner = HandMiner(world["address"])
    await miner.hello()  # not listing the job: it runs again, and its receipt takes the next place
    again = (await miner.next("assignments")).assignments.assignments[0]
    assert (again.job.job_id, again.attempt) == (doomed.job_id, 2)
    [ack] = await miner.send_results(miner.result(again, {"n": 2}))
    assert ack.accepted
    for n in (3, 4):
        await complete_one(world, miner, {"n": n})
    await miner.close()
    stored = [bytes(h) for (h,) in rows(world["db"], "SELECT leaf_hash FROM log_leaves ORDER BY leaf_index")]
    places = rows(world["db"], "SELECT leaf_index, job_id FROM receipts ORDER BY leaf_index")
    assert [i for i, _ in places] == [0, 1, 2, 3]  # no place kept for the receipt that was not written
    assert places[1][1] == doomed.job_id
    issuer = world["coordinator"].issuer
    assert issuer.tree.size == 4 and await issuer.root(4) == MerkleTree(stored).root(4)
    md = world["client"].metadata
    checkpoint = (await world["client"].receipts.GetCheckpoint(
        receipt_service_pb2.GetCheckpointRequest(), metadata=md)).checkpoint  # fmt: skip
    assert (checkpoint.tree_size, checkpoint.root_hash) == (4, MerkleTree(stored).root(4))
    await world["coordinator"].stop(grace=0.5)
    world["coordinator"] = await start(settings(world["db"]))  # the rebuilt tree matches the checkpoint


async def test_a_miner_key_whose_registration_fails_to_commit_is_registered_again(world) -> None:
    """The key was kept in memory though not stored: published until a restart, never written, and the
    receipts it signed unverifiable after one."""
    with sqlite3.connect(world["db"]) as conn:
        conn.execute("CREATE TRIGGER test_refuse_keys BEFORE INSERT ON signing_keys WHEN NEW.role = 'miner' "
                     "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END")  # fmt: skip
    signer = Signer.generate()
    miner = HandMiner(world["address"], signer)
    await miner.hello()  # welcomed, while its session's writes (the key) are committed
    with pytest.raises((grpc.aio.AioRpcError, AssertionError)):  # the failed commit ends the stream
        await miner.next("assignments")
    await miner.close()
    stored = "SELECT count(*) FROM signing_keys WHERE role = 'miner'"
    assert rows(world["db"], stored) == [(0,)]
    issuer = world["coordinator"].issuer
    for _ in range(500):  # read back from the store
        if not any(r.role == "miner" for r in issuer.published_keys()):
            break
        await asyncio.sleep(0.01)
    assert not any(r.role == "miner" for r in issuer.published_keys())
    with sqlite3.connect(world["db"]) as conn:
        conn.execute("DROP TRIGGER test_refuse_keys")

    miner = HandMiner(world["address"], signer)
    await miner.hello()  # the same key again: registered and stored this time
    job_id, ack = await complete_one(world, miner, {"n": 1})
    await miner.close()
    assert ack.accepted and rows(world["db"], stored) == [(1,)]
    keys = KeySet.load(await world["client"].signing_keys())
    verified = verify_bundle(
        await world["client"].bundle(job_id), keys, Policy(frozenset({"coordinator", "miner"}))
    )
    assert verified.receipt_id == ack.receipt_id
