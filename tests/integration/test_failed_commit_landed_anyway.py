"""A job read back after a failed commit, found terminal in the store although memory never announced its end
(a write reported failed that had in fact landed). Its watchers, its waiting GetJobResult calls and the
observers' per-job state must hear of the end as stored; the read-back used to drop the job silently, and a
WatchJob then waited until its deadline.

The landing is made by the test: the cancel's write is refused (a trigger), and while the read-back waits for the
write lock, the test's own connection writes the rows that cancel would have written, with the store's own
writing code, and commits them.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from coord_support import CANCELED, CLIENT_KEYS, RUNNING, Harness, details_of, eventually
from test_failed_commit import fail_a_cancel, running_job

from coordinator.domain import states
from coordinator.domain.clock import now_us
from coordinator.domain.model import JobState
from coordinator.observability.metrics import Metrics
from coordinator.store.base import UnitOfWork
from coordinator.store.sqlite import _write_units

ALICE = (("x-api-key", CLIENT_KEYS["alice"]),)
HANG_BOUND_S = 20.0  # a bound on a wait that, unfixed, lasts until the call's deadline (not a speed check)


async def land_the_cancel_meanwhile(coord: Harness, job_id: str) -> None:
    """Fail a cancel, then land its rows behind the coordinator's back before the job is read back."""
    blocker = await fail_a_cancel(coord, job_id)  # out of memory; its read-back waits for the lock
    try:
        job = await coord.coordinator.scheduler.store.get_job(job_id)
        assert job is not None and job.state is JobState.RUNNING
        event = states.transition(job, JobState.CANCELED, "CANCELED_BY_CLIENT", now_us(), message="landed")
        unit = UnitOfWork()
        unit.add_update(job, event.from_state)
        unit.add_event(event)
        _write_units(blocker, [unit])
    finally:
        blocker.execute("COMMIT")
        blocker.close()


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_watchers_hear_of_an_end_that_landed_although_its_write_was_reported_failed(
    coord: Harness,
) -> None:
    scheduler = coord.coordinator.scheduler
    metrics = Metrics(scheduler, None, "test")  # the real observer, fed like the coordinator's own
    scheduler.observers.append(metrics.observe)
    _alice, _miner, job, _ = await running_job(coord)
    stub = coord.jobs_stub()
    watch = stub.WatchJob(jpb.WatchJobRequest(job_id=job.job_id), metadata=ALICE, timeout=60)
    first = await watch.read()
    assert first.job.state == RUNNING
    result = asyncio.ensure_future(
        stub.GetJobResult(jpb.GetJobResultRequest(job_id=job.job_id, wait=True), metadata=ALICE, timeout=60)
    )
    await eventually(lambda: len(scheduler.watchers.get(job.job_id, ())) == 2, what="both calls waiting")
    assert job.job_id in metrics._assigned_us

    await land_the_cancel_meanwhile(coord, job.job_id)

    async def rest_of_the_watch() -> list[jpb.WatchJobResponse]:
        messages = []
        while (message := await watch.read()) is not grpc.aio.EOF:
            messages.append(message)
        return messages

    heard = await asyncio.wait_for(rest_of_the_watch(), HANG_BOUND_S)
    assert [(m.job.state, m.event.reason) for m in heard] == [(CANCELED, "CANCELED_BY_CLIENT")]
    assert heard[-1].sequence == first.sequence + 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(result, HANG_BOUND_S)
    err = details_of(caught.value)
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_COMPLETED")
    # observers: the job's end counted, its per-job entry gone; the live gauge no longer counts it RUNNING
    assert job.job_id not in metrics._assigned_us
    assert metrics.jobs_finished.labels("canceled")._value.get() == 1
    assert scheduler.active_counts[JobState.RUNNING] == 0
    assert job.job_id not in scheduler.jobs and job.job_id not in scheduler._detached
