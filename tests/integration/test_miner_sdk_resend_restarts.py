"""A valid result whose ack is only delayed (the store slow) survives the coordinator restarting four times (a
rolling deploy): only streams ended for a message the coordinator could not take count against a result.
(Review round 9, helper-30: every new stream counted, and the result was dropped on the fifth.)"""

from __future__ import annotations

import asyncio

from coord_support import COMPLETED, Harness, eventually
from test_miner_reconnect import a_result_awaiting_its_ack, down  # noqa: F401


async def test_a_valid_result_survives_coordinator_restarts_while_the_store_is_slow(down: Harness) -> None:  # noqa: F811
    down.overrides["lease_seconds"] = 30.0
    async with a_result_awaiting_its_ack(down) as sent:
        miner, job = sent.miner, sent.job
        for n in range(2, 6):
            await asyncio.sleep(0.3)
            await down.stop()
            await down.start()
            await eventually(lambda n=n: miner.connects >= n, within=10.0, what=f"stream {n}")
            assert job.job_id in miner.unacked, (
                f"stream {n} (the coordinator restarted {n - 1} times, none of its streams ended because of "
                f"the result): the SDK dropped job {job.job_id}'s valid, unacknowledged result"
            )
        sent.release()
        await eventually(lambda: job.job_id not in miner.unacked, within=10.0, what="the result acked")
        done = await down.finished(down.client("alice"), job.job_id, within=5.0)
        assert done.state == COMPLETED and done.attempt == 1
