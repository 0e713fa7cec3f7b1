"""A result refused INVALID_RESULT, reported failed by the SDK miner (72f3b4e), with the miner's other paths
(review round 19): draining, and the result sent again on a new stream after its ack was lost. In each, the
job fails at its first attempt (not when its 60 s lease runs out), and a draining miner ends at once (not
after its 60 s wait for the last acks)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from coord_support import FAILED, Harness, eventually, sdk_miner
from test_network_chaos import ChaosProxy

LONG = {"lease_seconds": 60.0, "heartbeat_timeout_seconds": 5.0, "reconnect_grace_seconds": 60.0}


def nan_runner(gate: asyncio.Event) -> Any:
    """A runner whose output no JSON can hold (a NaN): the coordinator refuses it INVALID_RESULT."""
    from aitbc.miner import Outcome

    async def run(job: Any) -> Any:
        await gate.wait()
        return Outcome({"x": float("nan")}, units="1", unit_type="jobs")

    return run


@pytest.mark.parametrize("resent", [False, True], ids=["same stream", "resent on a new stream"])
@pytest.mark.parametrize("draining", [False, True], ids=["working", "draining"])
@pytest.mark.coordinator(**LONG)
async def test_a_refused_result_fails_its_job_at_once(coord: Harness, draining: bool, resent: bool) -> None:
    assert coord.coordinator is not None
    proxy = ChaosProxy(coord.coordinator.port)
    await proxy.start()
    gate = asyncio.Event()
    miner = sdk_miner(f"127.0.0.1:{proxy.port}", nan_runner(gate))
    task = coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        alice = coord.client("alice")
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running")
        if draining:
            miner.drain()
            await asyncio.sleep(0.3)
        if resent:
            proxy.stall()  # the result goes nowhere; then the connection is reset
        gate.set()
        if resent:
            await eventually(lambda: miner.unacked, what="the result sent")
            await asyncio.sleep(0.2)
            proxy.cut("rst")
            proxy.heal()
        done = await coord.finished(alice, job.job_id, within=15)
        events = coord.db.events(job.job_id)
        assert (done.state, done.attempt) == (FAILED, 1), events
        assert events[-1]["reason"] == "INVALID_RESULT"
        assert miner.connects == (2 if resent else 1)
        if draining:
            await asyncio.wait_for(asyncio.shield(task), 10)  # drained: run() returns
        else:
            await eventually(lambda: not miner.unacked, what="the failure report acked")
            assert not task.done()
    finally:
        await proxy.close()
