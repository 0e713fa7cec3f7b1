"""A Capacity raise whose fill fails to commit (see test_failed_commit for the trigger that refuses one row): the
miner's message needs no write of its own, so the failure is the coordinator's (undone, its job read back), not
the miner's stream's. Real coordinator on loopback, real SQLite."""

from __future__ import annotations

import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import COMPLETED, QUEUED, Harness, eventually
from test_failed_commit import allow, refuse
from test_miner_capacity import capacity, offered


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_raise_whose_fill_fails_to_commit_keeps_the_stream_and_loses_no_job(coord: Harness) -> None:
    """Capacity 0 -> 1 with two jobs queued: the fill's write (the first job's assignment) fails. The stream ended
    (the write's error raised from the Capacity's handling), while the slot the undone fill freed was refilled at
    once with the second job, on that stream: its assignment never reached the miner, whose next hello did not
    list it, and the job was FAILED (MINER_LOST_JOB, its one attempt spent) without ever running."""
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=1)
    await capacity(coord, sm, 0)
    first = await alice.submit({"n": 1}, max_attempts=1)
    second = await alice.submit({"n": 2}, max_attempts=1)
    refuse(coord, first.job_id, "job_events", "NEW.reason = 'ASSIGNED'")
    sm.send(capacity=mpb.Capacity(slots=1))
    [a] = await sm.assignments(1)  # the refill's job, on the same stream
    assert a.job.job_id == second.job_id and not sm.closed.is_set()
    assert await offered(coord) == 1  # the raise is taken
    allow(coord, "job_events")
    await eventually(lambda: first.job_id in coord.coordinator.scheduler.jobs, what="the first job read back")
    assert coord.db.job_state(first.job_id) == QUEUED
    sm.result(a.job.job_id, a.attempt)
    assert (await sm.next("result_ack")).accepted
    [b] = await sm.assignments(1)  # the slot freed: the job whose assignment failed, now
    assert (b.job.job_id, b.attempt) == (first.job_id, 1)
    sm.result(b.job.job_id, b.attempt)
    for job in (first, second):
        done = await coord.finished(alice, job.job_id)
        assert (done.state, done.attempt) == (COMPLETED, 1), coord.db.events(job.job_id)
    assert not sm.closed.is_set() and len(sm.streams) == 1
