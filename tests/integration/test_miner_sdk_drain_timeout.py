"""A draining SDK miner whose only business left is a result awaiting its ack, with the coordinator gone
for good, gives up on the ack after `drain_ack_timeout_s` and exits. (Review round 8, helper-29: since the
miner keeps results until acked, drain() no longer stopped it, and it waited for the coordinator for good.)
"""

from __future__ import annotations

import asyncio

from coord_support import Harness
from test_miner_reconnect import a_result_awaiting_its_ack, down  # noqa: F401  (down: the fixture)


async def test_a_drained_miner_gives_up_on_an_ack_that_never_comes(down: Harness) -> None:  # noqa: F811
    async with a_result_awaiting_its_ack(down, drain_ack_timeout_s=2.0) as sent:
        await asyncio.sleep(0.2)
        await down.stop()  # the coordinator goes away for good (it is never started again)
        sent.release()
        miner = sent.miner
        assert sent.job.job_id in miner.unacked
        miner.drain()  # SIGTERM
        try:
            await asyncio.wait_for(asyncio.shield(sent.task), 10.0)
            exited = True
        except TimeoutError:
            exited = False
        assert exited, (
            f"SIGTERM'd miner still running 10 s later with no coordinator (unacked={list(miner.unacked)}, "
            f"running={list(miner.running)}, draining={miner.draining}, stopped={miner.stopped.is_set()})"
        )
