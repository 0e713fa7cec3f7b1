"""A coordinator that stops reading the SDK miner's stream for a while (its store slow: the reader waits on a
result's commit) finds no backlog of heartbeats behind it: at most one waits to be sent, and lists the jobs held
when it leaves. (Review round 28: one heartbeat was queued per interval for as long as the stream did not
move, each listing the jobs of its own time, all sent at once when it moved again, against the stream's
message budget.)"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import COMPLETED, Harness, eventually, sdk_miner
from test_failed_commit import held_lock

RESULT_BYTES = 1_000_000  # eight of them: more than the stream's flow-control window takes unread


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=10.0, heartbeat_interval_seconds=0.05)
async def test_heartbeats_do_not_pile_up_while_the_coordinator_does_not_read(coord: Harness) -> None:
    from aitbc.miner import Outcome

    gate = asyncio.Event()

    async def runner(job):  # type: ignore[no-untyped-def]
        await gate.wait()
        return Outcome(b"z" * RESULT_BYTES, units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner, slots=8)
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    alice = coord.client("alice")
    jobs = await alice.submit_many([{"n": i} for i in range(8)])
    await eventually(lambda: len(miner.running) == 8, what="eight jobs running")
    blocker = held_lock(coord)  # the coordinator's reader waits on the first results' commit
    try:
        gate.set()
        await eventually(lambda: len(miner.unacked) == 8, what="eight results out")
        backlog = []
        for _ in range(20):  # 40 heartbeat intervals
            await asyncio.sleep(0.1)
            backlog.append(miner._outbox.qsize() if miner._outbox is not None else 0)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert max(backlog) <= 8 + 1, (
        f"messages waiting in the miner's outbox: {backlog}"
    )  # (its results, 1 beat)
    for job in jobs:
        assert (await coord.finished(alice, job.job_id, within=15.0)).state == COMPLETED
