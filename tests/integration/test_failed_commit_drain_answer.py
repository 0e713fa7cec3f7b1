"""A result that arrives on a stream while a client's cancel of its job is being written is answered once the
cancel has settled. If the miner drains meanwhile, the session waits for that answer before its GoAway
DRAINED. (Review round 8, helper-29: the cancel's commit closed the drained session first, and the answer was
never sent: the miner exited with its result unacknowledged. No write fails here: the store is only slow.)
"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import CANCELED, Harness, eventually, gated_sdk_miner
from test_failed_commit import held_lock


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_drained_miner_gets_an_answer_to_its_last_result(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address)
    task = coord.run_miner(miner)
    job = await alice.submit({"n": 1})
    await eventually(lambda: miner.running, what="the job running on the SDK miner")
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    blocker = held_lock(coord)  # the cancel's write waits (a slow store; it does not fail)
    try:
        cancel = asyncio.ensure_future(alice.cancel(job.job_id))
        await eventually(lambda: job.job_id in scheduler._unsettled and not session.held,
                         what="the cancel decided, its write waiting")  # fmt: skip
        runner.gate.set()  # the miner's result crosses the cancel
        await eventually(lambda: any(t.get_name() == f"when-back-{job.job_id}" for t in scheduler._background),
                         what="the result waiting for the cancel to land")  # fmt: skip
        miner.drain()  # SIGTERM: no job running, one result awaiting its ack
        await eventually(lambda: session.draining, what="the session draining")
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert (await cancel).state == CANCELED
    await asyncio.wait_for(task, 5.0)  # the miner exits (GoAway DRAINED)
    assert not miner.unacked, (
        f"the drained miner exited with its result never answered: unacked={list(miner.unacked)} "
        f"(session closed: {session.closed}, reason DRAINED)"
    )
