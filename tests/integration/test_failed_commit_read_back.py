"""Jobs read back from the store after a failed commit: what waits for them, and what they are on return.

(Round-5 review, helper-25: each of these failed before the fix.)
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from coord_support import ASSIGNED, COMPLETED, EXPIRED, RUNNING, Harness, eventually
from test_failed_commit import fail_a_cancel, running_job


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_result_waiting_longer_than_a_read_back_takes_is_not_refused_but_retried(
    coord: Harness,
) -> None:
    """The store stays unwritable past the 10 s a result waits for its job's read-back. The result used to be
    refused JOB_NOT_HELD, and then the job was read back into that miner's hands: the miner had dropped the
    work, and the job waited out its lease. Now the stream ends UNAVAILABLE (JOB_RESTORING): the miner
    reconnects listing the job, keeps it, and its result lands."""
    alice, miner, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, job.job_id)  # out of memory; its read-back waits for the lock
    try:
        miner.result(job.job_id, a.attempt)
        # past the writer's 5 s busy timeout (the read-back's write fails, and is retried) and past 10 s
        await asyncio.wait_for(miner.closed.wait(), 15.0)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert miner.end_status == grpc.StatusCode.UNAVAILABLE
    refused = [
        b for kind, b in miner.log if kind == "result_ack" and not b.accepted and b.job_id == job.job_id
    ]
    assert refused == []
    await eventually(lambda: job.job_id in scheduler.jobs, within=15.0, what="the job read back")
    assert coord.db.job_state(job.job_id) == RUNNING
    await miner.connect(running_jobs=((job.job_id, a.attempt),))  # the miner's retry: it lists the job
    miner.result(job.job_id, a.attempt)
    done = await coord.finished(alice, job.job_id)
    assert done.state == COMPLETED and coord.db.job_state(job.job_id) == COMPLETED
    assert coord.db.count("receipts", job.job_id) == 1


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_queued_job_read_back_after_its_time_to_live_expires_instead_of_running(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    job = await alice.submit({"x": 1}, ttl_s=1)  # no miner yet: stored QUEUED
    submitted = time.monotonic()
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, job.job_id)  # out of memory; its read-back waits for the lock
    try:
        miner = await coord.stream_miner("miner-00", slots=1)  # idle, eligible
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - submitted)))  # its time to live runs out
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(lambda: coord.db.job_state(job.job_id) in (EXPIRED, ASSIGNED), what="the job read back")
    await asyncio.sleep(0.3)
    given = [x.job.job_id for kind, body in miner.log if kind == "assignments" for x in body.assignments]
    assert job.job_id not in given
    assert coord.db.job_state(job.job_id) == EXPIRED and job.job_id not in scheduler.jobs
