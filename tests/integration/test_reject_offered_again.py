"""A job its miner rejected goes to another miner first; with none, it is offered to the rejecting miner again
after a pause (RETRY_BACKOFF_BASE_SECONDS, 0.1 s at the soonest), its attempt unspent.

It used to wait in the queue beside the idle miner until something unrelated filled that miner's slot (a submit,
a result, a new stream): found in review round 32, as the SDK miner now rejects an assignment whose slot a
canceled callable still holds, and a one-slot miner whose callable then returns sat idle beside the job."""

from __future__ import annotations

import pytest
from aitbc.coordinator.v1 import job_pb2
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import Harness


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=0.2)
async def test_a_job_rejected_by_the_only_miner_is_offered_to_it_again(coord: Harness) -> None:
    miner = await coord.stream_miner("miner-00", slots=1)
    alice = coord.client("alice")
    job = await alice.submit({"n": 1}, max_attempts=1)
    first = await miner.next("assignment")
    miner.held.pop(job.job_id, None)
    miner.send(reject=mpb.Reject(job_id=job.job_id, attempt=first.attempt, reason="busy for a moment"))
    again = await miner.next("assignment", within=10.0)
    assert again.job.job_id == job.job_id
    assert again.attempt == first.attempt  # the refusal spent no attempt (max_attempts=1: it can still run)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=0.2)
async def test_a_rejected_job_goes_to_another_free_miner_first(coord: Harness) -> None:
    first_miner = await coord.stream_miner("miner-00", slots=1)
    alice = coord.client("alice")
    job = await alice.submit({"n": 1})
    offered = await first_miner.next("assignment")
    second_miner = await coord.stream_miner("miner-01", slots=1)
    first_miner.held.pop(job.job_id, None)
    first_miner.send(reject=mpb.Reject(job_id=job.job_id, attempt=offered.attempt, reason="not now"))
    taken = await second_miner.next("assignment", within=10.0)
    assert taken.job.job_id == job.job_id
    got = await alice.get(job.job_id)
    assert got.state == job_pb2.JOB_STATE_ASSIGNED and got.miner_id == "miner-01"
