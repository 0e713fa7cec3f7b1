"""The SDK miner's drain() keeps a result until it is acknowledged: with no job running but a result whose
write is still in flight (and then fails), it stays to send it again on its next stream. (Review round 7,
helper-28: drain() stopped the miner at once, the result was lost, and the job ran again.)
"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import COMPLETED, Harness, eventually, gated_sdk_miner
from test_failed_commit import allow, held_lock


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_drain_keeps_a_result_until_it_is_acknowledged(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address)
    task = coord.run_miner(miner)
    job = await alice.submit({"n": 1})
    await eventually(lambda: miner.running, what="the job running on the SDK miner")
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)  # the result's write waits for the lock
    try:
        runner.gate.set()
        await eventually(lambda: miner.unacked and job.job_id in scheduler._unsettled,
                         what="the result sent, its write waiting")  # fmt: skip
        miner.drain()  # SIGTERM: no job running, one result not yet acknowledged
        await asyncio.sleep(0.3)
        ended_with_unacked = task.done() and bool(miner.unacked)
        blocker.execute(  # the result's write now fails
            f"CREATE TRIGGER test_refuse_receipts BEFORE INSERT ON receipts WHEN NEW.job_id = '{job.job_id}' "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    await eventually(lambda: job.job_id not in scheduler._unsettled, what="the result's write failed")
    allow(coord, "receipts")
    await asyncio.sleep(3.0)  # grace 0.5 s: a job whose miner is gone is requeued by now
    events = [(e["reason"], e["attempt"]) for e in coord.db.events(job.job_id)]
    assert not ended_with_unacked and ("COMPLETED", 1) in events, (
        f"drain() ended the miner with an unacknowledged result (ended: {ended_with_unacked}); "
        f"the result was lost, the job's events: {events}"
    )
    done = await coord.finished(alice, job.job_id, within=5.0)
    assert (done.state, done.attempt) == (COMPLETED, 1) and runner.runs == [1]
