"""A valid result whose ack is only delayed (the store slow) survives the coordinator restarting four times (a
rolling deploy): only streams ended for a message the coordinator could not take count against a result.
(Review round 9, helper-30: every new stream counted, and the result was dropped on the fifth.)"""

from __future__ import annotations

import asyncio

from coord_support import COMPLETED, Harness, eventually
from test_failed_commit import held_lock
from test_miner_reconnect import down, running, sdk_miner  # noqa: F401


async def test_a_valid_result_survives_coordinator_restarts_while_the_store_is_slow(down: Harness) -> None:  # noqa: F811
    from aitbc.miner import Outcome, job_input

    down.overrides["reconnect_grace_seconds"] = 30.0
    down.overrides["lease_seconds"] = 30.0
    await down.start()
    alice = down.client("alice")
    gate = asyncio.Event()

    async def runner(job):  # type: ignore[no-untyped-def]
        await gate.wait()
        return Outcome(job_input(job), units="1", unit_type="jobs")

    miner = sdk_miner(down)
    miner.runner = runner
    async with running(miner):
        await eventually(lambda: miner.connects == 1)
        job = await alice.submit({"x": 1})
        await eventually(lambda: bool(miner.running), what="the job running")
        blocker = held_lock(down)
        try:
            gate.set()
            await eventually(lambda: job.job_id in miner.unacked, what="the result sent")
            for n in range(2, 6):
                await asyncio.sleep(0.3)
                await down.stop()
                await down.start()
                await eventually(lambda n=n: miner.connects >= n, within=10.0, what=f"stream {n}")
                assert job.job_id in miner.unacked, (
                    f"stream {n} (the coordinator restarted {n - 1} times, none of its streams ended because of "
                    f"the result): the SDK dropped job {job.job_id}'s valid, unacknowledged result"
                )
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        await eventually(lambda: job.job_id not in miner.unacked, within=10.0, what="the result acked")
        alice = down.client("alice")
        done = await down.finished(alice, job.job_id, within=5.0)
        assert done.state == COMPLETED and done.attempt == 1
