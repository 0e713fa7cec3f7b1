"""The Python SDK and CLI reach every client-facing RPC (helper-98), against a real coordinator: QuoteCost
(`Client.quote`, `aitbc quote`) with and without eligible miners, GetUsage (`Client.usage`, `aitbc usage`) as the
coordinator books completed jobs, ListReceipts, GetCheckpoint, GetInclusionProof and GetConsistencyProof
(`Client.list_receipts`, `checkpoint`, `inclusion_proof`, `consistency_proof`; `aitbc receipts list`,
`checkpoint`, `inclusion`, `consistency`) fetched and verified offline with the SDK's verifier; and a check that
every JobService and ReceiptService RPC has a `Client` method that makes it (as the Node client's README test
does), so that the next RPC cannot be left out again."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitbc import cli
from aitbc.client import Client
from aitbc.coordinator.v1 import job_service_pb2, receipt_service_pb2
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.miner import echo_runner
from aitbc.receipts import KeySet, leaf_hash, verify_bundle, verify_checkpoint, verify_inclusion
from aitbc.receipts.verify import VerificationError
from coord_support import (
    CLIENT_KEYS,
    COMPLETED,
    Harness,
    StreamMiner,
    details_of,
    expect_error,
    rpc_error,
    sdk_miner,
    struct,
)

ROOT = Path(__file__).resolve().parents[2]
UTC_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


# ---------------------------------------------------------------------- helpers
async def run_priced_job(client: Client, miner: StreamMiner, units: str) -> str:
    """A job run to COMPLETED by the hand-driven miner, reporting `units` of work (at the miner's price)."""
    job = await client.submit({"units": units})
    assignment = await miner.next("assignment")
    miner.held.pop(job.job_id, None)
    miner.send(results=mpb.Results(results=[mpb.Result(
        job_id=job.job_id, attempt=assignment.attempt, result=struct({"ok": True}), units=units,
        unit_type="gpu_seconds")]))  # fmt: skip
    await miner.next("result_ack")
    assert (await client.wait(job.job_id)).state == COMPLETED
    return job.job_id


async def aitbc(capsys: pytest.CaptureFixture[str], coord: Harness, *argv: str) -> tuple[int, str, str]:
    """`aitbc ARGV --address ... --api-key alice's` in-process, in a thread (it runs its own event loop)."""
    capsys.readouterr()
    offline = argv[:2] == ("receipts", "verify")  # (verifying takes no coordinator)
    command = [*argv] if offline else [*argv, "--address", coord.address, "--api-key", CLIENT_KEYS["alice"]]
    code = await asyncio.to_thread(cli.main, command)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- QuoteCost
async def test_quote_without_eligible_miners_is_zero_and_empty_prices(coord: Harness) -> None:
    client = coord.client()
    quote = await client.quote()
    assert (quote.eligible_miners, quote.min_unit_price, quote.max_unit_price, quote.min_cost, quote.max_cost) == (
        0, "", "", "", ""
    )  # fmt: skip
    await coord.stream_miner("miner-00", price="0.4", region="us-east")
    quote = await client.quote({"region": "eu-west"}, "10")  # a miner, but not of that region
    assert quote.eligible_miners == 0 and quote.min_cost == ""


async def test_quote_ranges_over_the_eligible_miners_in_decimal_strings(coord: Harness) -> None:
    await coord.stream_miner("miner-00", price="0.4", region="eu-west")
    await coord.stream_miner("miner-01", price="1.25", region="eu-west")
    await coord.stream_miner("miner-02", price="0.1", region="us-east")
    client = coord.client()
    quote = await client.quote({"region": "eu-west"}, "10")
    assert (quote.eligible_miners, quote.min_unit_price, quote.max_unit_price, quote.min_cost, quote.max_cost) == (
        2, "0.4", "1.25", "4", "12.5"
    )  # fmt: skip
    # units as an int or a Decimal (plain notation: Decimal("1E+1") is sent as "10", which the coordinator takes)
    assert (await client.quote({"region": "eu-west"}, 10)).max_cost == "12.5"
    assert (await client.quote({"region": "eu-west"}, Decimal("1E+1"))).max_cost == "12.5"
    assert (await client.quote({"region": "eu-west"}, Decimal("0.3"))).min_cost == "0.12"
    # no units: one unit; every miner when no constraint
    everyone = await client.quote()
    assert (everyone.eligible_miners, everyone.min_cost, everyone.max_cost) == (3, "0.1", "1.25")
    # never a float: its binary value is not the decimal written (refused before anything is sent)
    with pytest.raises(TypeError, match="units"):
        await client.quote(units=0.1)  # type: ignore[arg-type]
    bad = await rpc_error(client.quote(units="1e3"))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in bad.violations] == ["units"]


# ---------------------------------------------------------------------- GetUsage
async def test_usage_is_the_account_as_the_coordinator_booked_the_receipts(coord: Harness) -> None:
    alice, bob = coord.client("alice"), coord.client("bob")
    fresh = await alice.usage()
    assert (fresh.account_id, fresh.kind, fresh.balance, fresh.receipts, fresh.units) == (
        "alice",
        "client",
        "0",
        0,
        "0",
    )
    assert not fresh.HasField("updated_at")
    miner = await coord.stream_miner("miner-00", price="0.4")
    jobs = [await run_priced_job(alice, miner, units) for units in ("2.5", "0.25")]
    account = await alice.usage()
    # 2.5 x 0.4 + 0.25 x 0.4 = 1.1, a client's spending negative; exact, as the receipts' cost fields say
    assert (account.balance, account.receipts, account.units) == ("-1.1", 2, "2.75")
    assert account.HasField("updated_at")
    costs = [json.loads(base64.b64decode(json.loads(r.envelope)["payload"]))["cost"]
             for j in jobs for r in await alice.list_receipts(j)]  # fmt: skip
    assert sum(map(Decimal, costs)) == -Decimal(account.balance)
    # another client's account is its own: nothing booked
    assert (await bob.usage()).receipts == 0


# ---------------------------------------------------------------------- receipts, checkpoints, proofs
async def test_checkpoint_and_proofs_fetched_and_verified_offline(coord: Harness) -> None:
    coord.run_miner(sdk_miner(coord.address, echo_runner))
    client = coord.client()
    keys = KeySet.load(await client.signing_keys())
    first = await client.submit({"n": 1})
    await coord.finished(client, first.job_id)
    older = await client.checkpoint()
    assert older.tree_size == 1 and verify_checkpoint(older.note, keys).size == 1
    assert older.signed_at.seconds > 0
    for n in (2, 3, 4):
        job = await client.submit({"n": n})
        await coord.finished(client, job.job_id)
    newer = await client.checkpoint()
    assert newer.tree_size == 4 and verify_checkpoint(newer.note, keys).root == newer.root_hash

    # ListReceipts: the job's receipt, as GetReceipt serves it
    (receipt,) = await client.list_receipts(first.job_id)
    assert receipt.envelope == (await client.receipt(first.job_id)).receipt.envelope
    # GetInclusionProof: that receipt's leaf in the newer tree
    proof = await client.inclusion_proof(receipt.leaf_index, newer.tree_size)
    assert (proof.leaf_index, proof.tree_size) == (receipt.leaf_index, 4)
    assert verify_inclusion(
        leaf_hash(receipt.envelope), receipt.leaf_index, 4, list(proof.hashes), newer.root_hash
    )
    assert (await client.inclusion_proof(receipt.leaf_index)).tree_size == 4  # 0: the latest checkpoint's

    # GetConsistencyProof: the log grew from the kept checkpoint, checked by verify_bundle as given
    consistency = await client.consistency_proof(older.tree_size)
    assert (consistency.first_size, consistency.second_size) == (1, 4)
    bundle = await client.bundle(job.job_id)
    verified = verify_bundle(bundle, keys, older_checkpoint=older.note, consistency_proof=consistency)
    assert verified.consistent_with is not None and verified.consistent_with.size == 1
    # ... and a proof between other sizes does not pass for it
    other = await client.consistency_proof(2, 4)
    with pytest.raises(VerificationError, match="consistency proof does not match checkpoints"):
        verify_bundle(bundle, keys, older_checkpoint=older.note, consistency_proof=other)
    expect_error(
        await rpc_error(client.consistency_proof(5)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TREE_SIZE"
    )
    expect_error(
        await rpc_error(client.inclusion_proof(4, 4)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TREE_SIZE"
    )
    # another client's job: NOT_FOUND, as for GetReceipt
    expect_error(await rpc_error(coord.client("bob").list_receipts(first.job_id)), grpc.StatusCode.NOT_FOUND,
                 "JOB_NOT_FOUND")  # fmt: skip


# ---------------------------------------------------------------------- the CLI
async def test_the_cli_quotes_and_shows_usage(coord: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await aitbc(capsys, coord, "quote")
    assert (code, json.loads(out)) == (0, {"eligible_miners": 0, "min_unit_price": "", "max_unit_price": "",
                                           "min_cost": "", "max_cost": ""}), err  # fmt: skip
    code, out, err = await aitbc(capsys, coord, "usage")
    assert (code, json.loads(out)) == (0, {"account_id": "alice", "kind": "client", "balance": "0",
                                           "receipts": "0", "units": "0"}), err  # fmt: skip

    miner = await coord.stream_miner("miner-00", price="0.4", region="eu-west")
    await run_priced_job(coord.client(), miner, "2.5")
    code, out, err = await aitbc(capsys, coord, "usage")
    usage = json.loads(out)
    assert code == 0 and UTC_Z.fullmatch(usage.pop("updated_at")), out
    assert usage == {
        "account_id": "alice",
        "kind": "client",
        "balance": "-1",
        "receipts": "1",
        "units": "2.5",
    }

    await coord.stream_miner("miner-01", price="1.25", region="eu-west")
    code, out, err = await aitbc(
        capsys, coord, "quote", "--constraints", '{"region": "eu-west"}', "--units", "10"
    )
    assert (code, json.loads(out)) == (0, {"eligible_miners": 2, "min_unit_price": "0.4", "max_unit_price": "1.25",
                                           "min_cost": "4", "max_cost": "12.5"}), err  # fmt: skip

    # refused by the coordinator: one line, exit 1; bad command-line input: exit 2, nothing sent
    code, out, err = await aitbc(capsys, coord, "quote", "--units", "1e3")
    assert (code, out) == (1, "") and err.startswith("aitbc: INVALID_ARGUMENT") and "units" in err, err
    code, out, err = await aitbc(capsys, coord, "quote", "--constraints", '{"colour": "red"}')
    assert (code, out) == (2, "") and err.startswith("aitbc: --constraints:"), err


async def test_the_cli_fetches_checkpoints_and_proofs_that_verify(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    coord.run_miner(sdk_miner(coord.address, echo_runner))
    client = coord.client()
    first = await client.submit({"n": 1})
    await coord.finished(client, first.job_id)
    checkpoint_file, proof_file = tmp_path / "checkpoint.json", tmp_path / "proof.json"
    code, out, err = await aitbc(capsys, coord, "receipts", "checkpoint", "--out", str(checkpoint_file))
    assert (code, out) == (0, ""), err
    kept = json.loads(checkpoint_file.read_text())["checkpoint"]
    assert kept["tree_size"] == "1" and kept["origin"] == "aitbc.coordinator/coord-local"
    assert UTC_Z.fullmatch(kept["signed_at"]) and kept["note"].startswith(kept["origin"] + "\n1\n")
    for n in (2, 3):
        job = await client.submit({"n": n})
        await coord.finished(client, job.job_id)

    code, out, err = await aitbc(capsys, coord, "receipts", "list", job.job_id)
    (listed,) = json.loads(out)["receipts"]
    assert code == 0 and (listed["job_id"], listed["leaf_index"]) == (job.job_id, "2"), out
    assert UTC_Z.fullmatch(listed["issued_at"])
    code, out, err = await aitbc(capsys, coord, "receipts", "inclusion", "0")
    proof = json.loads(out)["proof"]
    assert code == 0 and proof["tree_size"] == "3", out
    newer = await client.checkpoint()
    (receipt,) = await client.list_receipts(first.job_id)
    hashes = [base64.b64decode(h) for h in proof["hashes"]]
    assert verify_inclusion(leaf_hash(receipt.envelope), 0, 3, hashes, newer.root_hash)

    # the consistency proof and the kept checkpoint, as `aitbc receipts verify` takes them
    code, out, err = await aitbc(capsys, coord, "receipts", "consistency", "1", "--out", str(proof_file))
    assert (code, out) == (0, ""), err
    assert json.loads(proof_file.read_text())["proof"]["first_size"] == "1"
    for name, write in (("receipt.json", client.bundle(job.job_id)), ("keys.json", client.signing_keys())):
        (tmp_path / name).write_bytes(await write)
    verify = ("receipts", "verify", str(tmp_path / "receipt.json"), "--keys", str(tmp_path / "keys.json"),
              "--older-checkpoint", str(checkpoint_file), "--consistency-proof", str(proof_file))  # fmt: skip
    code, out, err = await aitbc(capsys, coord, *verify)
    assert code == 0 and out.startswith("OK ") and out.rstrip().endswith(" tree_size=3 origin="
                                                                          "aitbc.coordinator/coord-local extends=1"), out  # fmt: skip
    # a proof from another size does not pass for it
    code, out, err = await aitbc(capsys, coord, "receipts", "consistency", "2", "--out", str(proof_file))
    assert code == 0, err
    code, out, err = await aitbc(capsys, coord, *verify)
    assert (code, out) == (1, "FAIL: consistency proof does not match checkpoints\n")

    # refused: one line, exit 1; a size that is no size: exit 2
    code, out, err = await aitbc(capsys, coord, "receipts", "consistency", "9")
    assert (code, out) == (1, "") and err.startswith("aitbc: INVALID_ARGUMENT (INVALID_TREE_SIZE)"), err
    code, out, err = await aitbc(capsys, coord, "receipts", "list", "no-such-job")
    assert code == 1 and err.startswith("aitbc: NOT_FOUND (JOB_NOT_FOUND)"), err
    for argv in (("receipts", "consistency", "0"), ("receipts", "inclusion", "-1")):
        with pytest.raises(SystemExit) as exited:
            cli.main([*argv, "--address", coord.address])
        assert exited.value.code == 2, argv


# ---------------------------------------------------------------------- every RPC has its method
class Recorder(grpc.aio.UnaryUnaryClientInterceptor):
    """Notes the method of every unary call made over its channel (observation only: the calls go on
    unchanged); its `streams` the server-streaming ones (grpc takes one kind of interceptor per object)."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.streams = StreamRecorder(self.methods)

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        _note(self.methods, details)
        return await continuation(details, request)


class StreamRecorder(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        _note(self.methods, details)
        return await continuation(details, request)


def _note(methods: list[str], details: grpc.aio.ClientCallDetails) -> None:
    method = details.method
    methods.append(method.decode() if isinstance(method, bytes) else method)


# RPC -> the Client method that makes it, and its arguments (ctx: "job" completed, "queued" to cancel). A new
# RPC in job_service.proto or receipt_service.proto fails the tests below until the SDK has a method for it.
CALLS: dict[str, tuple[str, Callable[[dict[str, str]], tuple[Any, ...]]]] = {
    "SubmitJob": ("submit", lambda ctx: ({"n": 1},)),
    "SubmitJobs": ("submit_many", lambda ctx: ([{"n": 2}],)),
    "GetJob": ("get", lambda ctx: (ctx["job"],)),
    "GetJobResult": ("result", lambda ctx: (ctx["job"],)),
    "CancelJob": ("cancel", lambda ctx: (ctx["queued"],)),
    "ListJobs": ("list", lambda ctx: ()),
    "WatchJob": ("watch", lambda ctx: (ctx["job"],)),
    "QuoteCost": ("quote", lambda ctx: ()),
    "GetUsage": ("usage", lambda ctx: ()),
    "GetReceipt": ("receipt", lambda ctx: (ctx["job"],)),
    "ListReceipts": ("list_receipts", lambda ctx: (ctx["job"],)),
    "GetSigningKeys": ("signing_keys", lambda ctx: ()),
    "GetCheckpoint": ("checkpoint", lambda ctx: ()),
    "GetInclusionProof": ("inclusion_proof", lambda ctx: (0,)),
    "GetConsistencyProof": ("consistency_proof", lambda ctx: (1,)),
}
SERVICES = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    receipt_service_pb2.DESCRIPTOR.services_by_name["ReceiptService"],
)


def test_every_job_and_receipt_rpc_is_listed() -> None:
    rpcs = {m.name for service in SERVICES for m in service.methods}
    assert rpcs == set(CALLS), f"RPCs without a Client method here: {sorted(rpcs - set(CALLS))}"


async def test_every_job_and_receipt_rpc_has_a_client_method_that_makes_it(coord: Harness) -> None:
    coord.run_miner(sdk_miner(coord.address, echo_runner))
    setup = coord.client()
    done = await setup.submit({"n": 0})
    await coord.finished(setup, done.job_id)
    queued = await setup.submit({"n": 0}, constraints={"region": "nowhere"})  # stays QUEUED: to cancel
    recorder = Recorder()
    channel = grpc.aio.insecure_channel(coord.address, interceptors=[recorder, recorder.streams])
    coord.channels.append(channel)
    client = Client(coord.address, CLIENT_KEYS["alice"], channel=channel)
    for service in SERVICES:
        for method in service.methods:
            recorder.methods.clear()
            name, arguments = CALLS[method.name]
            try:
                answer = getattr(client, name)(*arguments({"job": done.job_id, "queued": queued.job_id}))
                if inspect.isasyncgen(answer):  # (a watch: followed to the end of the completed job)
                    async for _ in answer:
                        pass
                else:
                    await answer
            except grpc.aio.AioRpcError as exc:
                raise AssertionError(f"{method.name}: {details_of(exc)}") from exc
            assert recorder.methods == [f"/{service.full_name}/{method.name}"], (
                method.name,
                recorder.methods,
            )


def test_the_readme_names_every_client_method() -> None:
    readme = (ROOT / "README.md").read_text()
    sdk = readme.split("\n## The Python SDK and CLI\n", 1)[1].split("\n## ", 1)[0]
    missing = [name for name, _ in CALLS.values() if f"{name}(" not in sdk]
    assert not missing, f"the README's Python SDK section does not name {missing}"
