"""A miner handed a new attempt of a job it still runs (the old attempt's cancel not read yet, or read in the same
poll answer) ends the old attempt's runner: it is over (the coordinator refuses its result), and left running it
would go on holding no slot, a job more than the miner offers."""

from __future__ import annotations

import asyncio

import pytest
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import Outcome
from coord_support import COMPLETED, Harness, eventually, sdk_miner


class FirstRunHangs:
    """A runner whose first run of a job hangs (until canceled) and whose later runs finish at once."""

    def __init__(self) -> None:
        self.runs = 0
        self.first_canceled = asyncio.Event()

    async def __call__(self, job: job_pb2.Job) -> Outcome:
        self.runs += 1
        if self.runs > 1:
            return Outcome({"ok": True})
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            self.first_canceled.set()
            raise
        raise AssertionError("the first run was never canceled")


@pytest.mark.parametrize("transport", ["stream", "poll"])
# no backoff: the timed-out attempt's cancel and the next attempt's assignment reach the miner together
@pytest.mark.coordinator(retry_backoff_base_seconds=0.0, retry_backoff_max_seconds=0.0)
async def test_a_new_attempt_of_a_job_ends_its_old_attempts_runner(coord: Harness, transport: str) -> None:
    runner = FirstRunHangs()
    miner = sdk_miner(coord.address, runner, slots=2, transport=transport)
    coord.run_miner(miner)
    await eventually(lambda: miner.connects >= 1, what="the miner connected")
    alice = coord.client("alice")
    job = await alice.submit({"n": 1}, execution_timeout_s=1.0)

    done = await coord.finished(alice, job.job_id, within=20.0)
    assert (done.state, done.attempt) == (COMPLETED, 2)
    await asyncio.wait_for(runner.first_canceled.wait(), 5.0)
    assert runner.runs == 2
    await eventually(lambda: not miner.running and not miner._canceled, what="no runner left")
