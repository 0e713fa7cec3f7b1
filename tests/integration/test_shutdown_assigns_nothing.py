"""Work decided for a miner once the coordinator stops: every session was told to go away (GoAway SHUTTING_DOWN,
its stream's last message), so an assignment decided after it is never sent. Written all the same, the job was
its miner's in the store: after the restart its miner came back without it, and the job lost an attempt (FAILED
with one) though it never ran. A Capacity raise (or a slot freed by a failure) read while the stop began did so.
Real coordinator on loopback, real SQLite; the scheduler is called in this event loop where the message's
handling would, in the loop turn the stop begins (the stream's reader may read it until its writer has sent the
go-away)."""

from __future__ import annotations

import asyncio

import pytest
from coord_support import QUEUED, Harness
from test_miner_capacity import capacity

from coordinator.scheduler.engine import FailureIn


async def stop_begun(coord: Harness) -> asyncio.Future:
    """The coordinator's stop, started and run until the scheduler has told every miner to go away."""
    assert coord.coordinator is not None
    scheduler = coord.coordinator.scheduler
    stopping = asyncio.ensure_future(coord.coordinator.stop(grace=1.0))
    # (loop turn by loop turn, not polled with a delay: the stream's writer sends the go-away in the next ones)
    while not scheduler.stopping:  # noqa: ASYNC110
        await asyncio.sleep(0)
    return stopping


async def restarted_miner_runs(coord: Harness, job_id: str) -> None:
    """After the restart, the miner (a new stream listing nothing: it never heard of the job) gets the job at
    its first attempt."""
    coord.coordinator = None
    await coord.start()
    sm = await coord.stream_miner(slots=1)
    [a] = await sm.assignments(1)
    assert (a.job.job_id, a.attempt) == (job_id, 1), coord.db.events(job_id)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_capacity_raise_read_as_the_coordinator_stops_assigns_nothing(coord: Harness) -> None:
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=1)
    await capacity(coord, sm, 0)
    job = await alice.submit({"n": 1}, max_attempts=1)
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    stopping = await stop_begun(coord)
    await scheduler.offer(session, 1)
    await stopping
    assert coord.db.job_state(job.job_id) == QUEUED, coord.db.events(job.job_id)
    assert sm.pending("assignment") == 0
    await restarted_miner_runs(coord, job.job_id)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_slot_freed_as_the_coordinator_stops_is_not_refilled(coord: Harness) -> None:
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=1)
    held = await alice.submit({"n": 1}, max_attempts=1)
    [a] = await sm.assignments(1)
    job = await alice.submit({"n": 2}, max_attempts=1)  # queued behind it
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    stopping = await stop_begun(coord)
    await scheduler.fail(session, FailureIn(held.job_id, a.attempt, False, "BROKEN", ""))
    await stopping
    assert coord.db.job_state(job.job_id) == QUEUED, coord.db.events(job.job_id)
    await restarted_miner_runs(coord, job.job_id)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_job_given_back_as_the_coordinator_stops_goes_to_no_other_miner(coord: Harness) -> None:
    """A reject read as the stop begins: the job went to another miner's idle slot, after that miner's go-away."""
    alice = coord.client("alice")
    sm = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"n": 1}, max_attempts=1)
    [a] = await sm.assignments(1)
    other = await coord.stream_miner("miner-01", slots=1)  # idle
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    stopping = await stop_begun(coord)
    await scheduler.reject(session, job.job_id, a.attempt, "busy")
    await stopping
    assert coord.db.job_state(job.job_id) == QUEUED, coord.db.events(job.job_id)
    assert other.pending("assignment") == 0
