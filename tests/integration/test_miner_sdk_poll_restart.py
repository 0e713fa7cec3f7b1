"""A poll miner across a coordinator restart: its calls fail UNAVAILABLE while the coordinator is down (tried again
with jittered backoff), then SESSION_NOT_FOUND once it is back; the miner registers again listing the job whose
result awaits its ack, sends that result again (it completes at its first attempt, not lost), and goes on to
complete new jobs."""

from __future__ import annotations

import asyncio

from coord_support import COMPLETED, Harness, eventually, gated_sdk_miner
from test_miner_reconnect import down, running  # noqa: F401


async def test_the_poll_miner_comes_back_after_a_restart_with_its_result(down: Harness) -> None:  # noqa: F811
    down.overrides["reconnect_grace_seconds"] = 10.0  # the job waits for its miner to come back with it
    await down.start()
    alice = down.client("alice")
    miner, runner = gated_sdk_miner(f"127.0.0.1:{down.overrides['app_port']}", transport="poll")
    async with running(miner):
        await eventually(lambda: miner.connects == 1, what="registered")
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running")
        session = miner.session_id

        await down.stop()
        runner.gate.set()  # the job ends while the coordinator is down: its result cannot be sent
        await eventually(lambda: job.job_id in miner.unacked, what="the result kept, unacknowledged")
        await asyncio.sleep(0.5)  # (a few tries fail meanwhile)
        assert job.job_id in miner.unacked

        await down.start()
        alice = down.client("alice")
        await eventually(lambda: miner.connects >= 2, within=15.0, what="registered again")
        assert miner.session_id != session
        done = await down.finished(alice, job.job_id, within=10.0)
        assert (done.state, done.attempt) == (COMPLETED, 1), down.db.events(job.job_id)
        await eventually(lambda: not miner.unacked, what="its ack")

        later = [await alice.submit({"n": n}) for n in (2, 3)]
        for j in later:
            assert (await down.finished(alice, j.job_id)).state == COMPLETED
        assert runner.runs == [1, 1, 1] and miner.acked == 3
