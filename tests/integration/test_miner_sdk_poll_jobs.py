"""The SDK miner on the poll transport (`Miner(transport="poll")`, `aitbc miner run --transport poll`): the unary
RPCs (RegisterMiner, PollJob, Heartbeat, SubmitResult, Drain) against a real coordinator. Jobs complete with
receipts that verify (the miner's signature too), never more run at once than the miner's slots, and a drain
finishes and acknowledges the running jobs before run() returns, taking none of the work submitted meanwhile."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.miner import Outcome, job_input
from aitbc.receipts import KeySet, Policy, Signer, verify_bundle
from coord_support import COMPLETED, QUEUED, Harness, eventually, gated_sdk_miner, miner_key, sdk_miner
from google.protobuf.json_format import MessageToDict


class CountingRunner:
    """Echoes each job after a short while, counting the jobs it runs at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.runs = 0

    async def __call__(self, job: Any) -> Outcome:
        self.now += 1
        self.runs += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.05)  # (long enough for the other slot's job to start meanwhile)
            return Outcome(job_input(job), units="1", unit_type="jobs")
        finally:
            self.now -= 1


async def test_jobs_complete_with_verified_receipts_within_the_slots(coord: Harness) -> None:
    alice = coord.client("alice")
    runner = CountingRunner()
    miner = sdk_miner(coord.address, runner, slots=2, transport="poll", signer=Signer("11" * 32))
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1, what="the poll miner registered")
    assert (await coord.admin().miners())["miner-00"].transport == "unary"

    jobs = [await alice.submit({"n": n, "text": f"job {n}"}) for n in range(8)]
    done = [await coord.finished(alice, job.job_id) for job in jobs]
    assert [(d.state, d.attempt) for d in done] == [(COMPLETED, 1)] * 8
    assert runner.runs == 8 and 1 <= runner.peak <= 2, f"{runner.peak} jobs ran at once on 2 slots"

    keys = KeySet.load(await alice.signing_keys())
    for n, job in enumerate(jobs):
        receipt = verify_bundle(await alice.bundle(job.job_id), keys, Policy({"coordinator", "miner"}))
        assert receipt.payload["job_id"] == job.job_id
        result = (await alice.result(job.job_id)).result
        assert MessageToDict(result.result) == {"n": n, "text": f"job {n}"}
        assert result.receipt_id == receipt.receipt_id and result.miner_id == "miner-00"
    await eventually(lambda: miner.acked == 8, what="every result acknowledged")
    assert not miner.unacked and not miner.running


async def test_drain_finishes_and_acknowledges_the_running_jobs_before_run_returns(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address, transport="poll")
    miner.capabilities.slots = 2
    task = coord.run_miner(miner)
    first, second = await alice.submit({"n": 1}), await alice.submit({"n": 2})
    await eventually(lambda: len(miner.running) == 2, what="both jobs running on the poll miner")

    miner.drain()  # SIGTERM
    await eventually(lambda: miner.draining, what="draining")
    await eventually(lambda: _draining(coord), what="the Drain call landed")
    extra = await alice.submit({"n": 3})  # not for a draining miner
    assert not task.done(), "run() returned with jobs running"
    runner.gate.set()
    await asyncio.wait_for(task, 10)

    assert miner.acked == 2 and not miner.unacked and not miner.running
    for job in (first, second):
        got = await alice.get(job.job_id)
        assert (got.state, got.attempt) == (COMPLETED, 1)
    assert (await alice.get(extra.job_id)).state == QUEUED
    assert runner.runs == [1, 1]


async def _draining(coord: Harness) -> bool:
    miners = await coord.admin().miners()
    return "miner-00" in miners and miners["miner-00"].status == apb.MINER_STATUS_DRAINING


async def test_an_operators_drain_ends_run_cleanly_once_the_job_is_done(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address, transport="poll")
    task = coord.run_miner(miner)
    job = await alice.submit({"n": 1})
    await eventually(lambda: miner.running, what="the job running on the poll miner")
    await coord.admin().drain("miner-00")
    await eventually(lambda: miner.draining, what="the miner told it drains")
    later = await alice.submit({"n": 2})
    runner.gate.set()
    await asyncio.wait_for(task, 10)  # SESSION_DRAINED ends it, without an error
    assert (await alice.get(job.job_id)).state == COMPLETED and miner.acked == 1
    assert (await alice.get(later.job_id)).state == QUEUED and runner.runs == [1]


async def test_the_cli_runs_a_poll_miner_and_drains_on_sigterm(coord: Harness) -> None:
    """`aitbc miner run --transport poll`: registers on the unary path, completes a job, exits 0 on SIGTERM."""
    alice = coord.client("alice")
    proc = _cli_poll_miner(coord.address)
    try:
        job = await alice.submit({"via": "cli"})
        done = await coord.finished(alice, job.job_id, within=20.0)
        assert done.state == COMPLETED
        assert (await coord.admin().miners())["miner-00"].transport == "unary"
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        stderr = proc.stderr.read().decode()
        assert code == 0, stderr[-2000:]
        assert "connected to the coordinator at" in stderr and "(poll)" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _cli_poll_miner(address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aitbc.cli", "miner", "run", "--address", address,
         "--api-key", miner_key("miner-00"), "--runner", "echo", "--transport", "poll"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
