"""CancelJob in each state: QUEUED, ASSIGNED, RUNNING (the miner is told and its slot freed), terminal."""

from __future__ import annotations

import asyncio

import grpc
from aitbc.miner import Miner, Outcome
from coord_support import (
    ASSIGNED,
    CANCELED,
    COMPLETED,
    QUEUED,
    RUNNING,
    Harness,
    capabilities,
    eventually,
    expect_error,
    miner_key,
    rpc_error,
)


async def test_cancel_queued_job(coord: Harness) -> None:
    alice = coord.client("alice")
    job = await alice.submit({"x": 1})
    canceled = await alice.cancel(job.job_id, reason="changed my mind")
    assert canceled.state == CANCELED
    assert canceled.terminal_reason == "CANCELED_BY_CLIENT" and canceled.terminal_message == "changed my mind"
    assert canceled.finished_at.ToMicroseconds() > 0
    assert (await alice.get(job.job_id)).state == CANCELED
    assert coord.db.job_state(job.job_id) == CANCELED
    # a canceled queued job is never dispatched
    miner = await coord.stream_miner("miner-00")
    job2 = await alice.submit({"x": 2})
    [a] = await miner.assignments(1)
    assert a.job.job_id == job2.job_id


async def test_cancel_assigned_job_tells_the_miner(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    assert (await alice.get(job.job_id)).state == ASSIGNED  # not accepted yet
    canceled = await alice.cancel(job.job_id)
    assert canceled.state == CANCELED
    cancel = await miner.next("cancel")
    assert (cancel.job_id, cancel.attempt, cancel.reason) == (job.job_id, a.attempt, "CANCELED_BY_CLIENT")
    reasons = [e["reason"] for e in coord.db.events(job.job_id)]
    assert reasons == ["SUBMITTED", "ASSIGNED", "CANCELED_BY_CLIENT"]


async def test_cancel_running_job_tells_the_miner_and_frees_the_slot(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")
    other = await alice.submit({"x": 2})  # the only slot is taken: this one waits
    assert (await alice.get(other.job_id)).state == QUEUED

    canceled = await alice.cancel(job.job_id)
    assert canceled.state == CANCELED and canceled.attempt == 1
    cancel = await miner.next("cancel")
    assert (cancel.job_id, cancel.reason) == (job.job_id, "CANCELED_BY_CLIENT")
    [b] = await miner.assignments(1)  # the freed slot takes the waiting job at once
    assert b.job.job_id == other.job_id


async def test_cancel_terminal_job_is_failed_precondition(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.result(a.job.job_id, a.attempt)
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    err = await rpc_error(alice.cancel(job.job_id))
    expect_error(err, grpc.StatusCode.FAILED_PRECONDITION, "JOB_TERMINAL")
    assert (await alice.get(job.job_id)).state == COMPLETED

    queued = await alice.submit({"x": 2})
    await alice.cancel(queued.job_id)
    expect_error(await rpc_error(alice.cancel(queued.job_id)), grpc.StatusCode.FAILED_PRECONDITION,
                 "JOB_TERMINAL")  # fmt: skip


async def test_cancel_reaches_a_running_miner_runtime(coord: Harness) -> None:
    """The SDK's Miner receives the Cancel on its stream and stops the runner's task."""
    started, stopped = asyncio.Event(), asyncio.Event()

    async def forever(job) -> Outcome:  # type: ignore[no-untyped-def]
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.set()
            raise
        raise AssertionError("unreachable")

    miner = Miner(coord.address, miner_key("miner-01"), forever, capabilities(slots=1), own_connection=True)
    coord.run_miner(miner)
    alice = coord.client("alice")
    await eventually(lambda: miner.session_id, what="miner connected")
    job = await alice.submit({"x": 1})
    await asyncio.wait_for(started.wait(), 5)
    await eventually(lambda: miner.running, what="job running in the miner")
    await alice.cancel(job.job_id)
    await asyncio.wait_for(stopped.wait(), 5)
    assert job.job_id not in miner.running
