"""A draining SDK miner whose only business left is a result awaiting its ack, with the coordinator gone
for good, gives up on the ack after `drain_ack_timeout_s` and exits. (Review round 8, helper-29: since the
miner keeps results until acked, drain() no longer stopped it, and it waited for the coordinator for good.)
"""

from __future__ import annotations

import asyncio

from coord_support import Harness, eventually
from test_failed_commit import held_lock
from test_miner_reconnect import down, running, sdk_miner  # noqa: F401  (down: the fixture)


async def test_a_drained_miner_gives_up_on_an_ack_that_never_comes(down: Harness) -> None:  # noqa: F811
    from aitbc.miner import Outcome, job_input

    down.overrides["reconnect_grace_seconds"] = 30.0
    await down.start()
    alice = down.client("alice")
    gate = asyncio.Event()

    async def runner(job):  # type: ignore[no-untyped-def]
        await gate.wait()
        return Outcome(job_input(job), units="1", unit_type="jobs")

    miner = sdk_miner(down)
    miner.runner = runner
    miner.drain_ack_timeout_s = 2.0
    async with running(miner) as task:
        await eventually(lambda: miner.connects == 1)
        job = await alice.submit({"x": 1})
        await eventually(lambda: bool(miner.running), what="the job running")
        blocker = held_lock(down)
        try:
            gate.set()
            await eventually(lambda: job.job_id in miner.unacked, what="the result sent")
            await asyncio.sleep(0.2)
            await down.stop()  # the coordinator goes away for good (it is never started again)
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert job.job_id in miner.unacked
        miner.drain()  # SIGTERM
        try:
            await asyncio.wait_for(asyncio.shield(task), 10.0)
            exited = True
        except TimeoutError:
            exited = False
        assert exited, (
            f"SIGTERM'd miner still running 10 s later with no coordinator (unacked={list(miner.unacked)}, "
            f"running={list(miner.running)}, draining={miner.draining}, stopped={miner.stopped.is_set()})"
        )
