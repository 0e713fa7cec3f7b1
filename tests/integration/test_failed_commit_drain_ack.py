"""A draining miner's last result, answered in the background because its job was being read back after a
failed commit, is acked before the GoAway DRAINED. (Review round 7, helper-28: the result's own commit closed
the drained session, and the background answer dropped the ack of a closed session: the job was COMPLETED,
the miner never heard so.)
"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import COMPLETED, Harness, mpb
from test_failed_commit import fail_a_cancel, running_job


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_the_last_result_of_a_draining_miner_answered_in_the_background_is_acked(
    coord: Harness,
) -> None:
    alice, miner, job, a = await running_job(coord)
    blocker = await fail_a_cancel(coord, job.job_id)  # job out of memory; its read-back waits for the lock
    try:
        miner.result(job.job_id, a.attempt)  # coming back: answered in the background once the job is back
        await asyncio.sleep(0.3)
        miner.send(
            drain=mpb.MinerDrain(reason="done")
        )  # the miner drains (waits: the job's slot is reserved)
        await asyncio.sleep(0.3)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    done = await coord.finished(alice, job.job_id, within=15.0)
    assert (done.state, done.attempt) == (COMPLETED, a.attempt)  # the result landed...
    go_away = await miner.next("go_away", within=10.0)
    assert go_away.reason == "DRAINED"
    await miner.wait_closed()
    kinds = [k for k, _ in miner.log]
    acks = [b for k, b in miner.log if k == "result_ack" and b.job_id == job.job_id]
    # ...but its ack never reached the miner before the stream ended
    assert [b.accepted for b in acks] == [True], f"no ack for the landed result; stream carried {kinds}"
