"""A draining SDK miner (SIGTERM, or every slot stuck) that opens a new stream, after a lost one or to offer other
slots: the coordinator fills the new session before it reads the miner's drain, sent after the welcome (a drain
the miner asked for is its process's, not remembered for its next stream). The miner rejects what it is given
then, its attempt unspent, for another miner to run: a draining miner takes no new job (review round 32: it
ran them, and its drain waited for them to end)."""

from __future__ import annotations

from typing import Any

import pytest
from coord_support import QUEUED, GatedRunner, Harness, eventually, sdk_miner
from test_miner_sdk_stuck_runners import Refusing


class Recording(GatedRunner):
    """A GatedRunner recording the ids of the jobs it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[str] = []

    async def __call__(self, job: Any) -> Any:
        self.jobs.append(job.job_id)
        return await super().__call__(job)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_a_draining_miner_rejects_what_its_new_stream_is_given(coord: Harness) -> None:
    alice = coord.client("alice")
    relay = Refusing("127.0.0.1", coord.coordinator.port)
    await relay.start()
    runner = Recording()
    miner = sdk_miner(f"127.0.0.1:{relay.port}", runner, slots=2)
    task = coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        first = await alice.submit({"n": 1}, max_attempts=1)
        await eventually(lambda: runner.jobs == [first.job_id], what="the first job running")
        relay.refuse = True
        relay.cut()  # the stream lost; the miner then told to drain (SIGTERM), with its job still running
        miner.drain()
        later = await alice.submit({"n": 2}, max_attempts=1)  # queued: the miner's session is gone
        relay.refuse = False
        await eventually(lambda: "REJECTED" in [e["reason"] for e in coord.db.events(later.job_id)],
                         within=15.0, what="the job given to the new stream, rejected")  # fmt: skip
        runner.gate.set()
        await eventually(task.done, within=15.0, what="the drained miner's end")
        assert task.exception() is None
        assert runner.jobs == [first.job_id]
        assert coord.db.job_state(later.job_id) == QUEUED  # its attempt unspent, for another miner
    finally:
        runner.gate.set()
        await relay.close()
