"""A draining SDK miner waits drain_ack_timeout_s for the acks of its last results from when it has nothing
left to run, not from drain(). (Review round 9, helper-30: the timer ran from drain(), so a job finishing
just before it fired left its result a few hundred ms for its ack, on a live stream: the miner stopped with
the result unacknowledged.)"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import Harness, eventually, gated_sdk_miner
from test_failed_commit import held_lock


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_drained_miner_waits_drain_ack_timeout_after_its_last_result(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address, drain_ack_timeout_s=2.0)
    task = coord.run_miner(miner)
    job = await alice.submit({"n": 1})
    await eventually(lambda: bool(miner.running), what="the job running")
    loop = asyncio.get_running_loop()
    miner.drain()  # SIGTERM while the job runs: the 2 s timer starts now
    drained_at = loop.time()
    await asyncio.sleep(1.5)
    blocker = held_lock(coord)  # the store is slow for a moment: the result's ack takes ~1 s
    try:
        runner.gate.set()  # the job finishes 1.5 s after SIGTERM: nothing left to run from now on
        await eventually(lambda: job.job_id in miner.unacked, what="the result sent")
        finished_at = loop.time()
        await asyncio.sleep(1.0)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.wait_for(task, 5.0)  # the ack came, then the GoAway DRAINED
    assert not miner.unacked, (finished_at - drained_at, list(miner.unacked))
