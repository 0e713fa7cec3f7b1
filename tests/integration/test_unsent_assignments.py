"""An assignment its stream never wrote (decided as the stream ended: its commit in flight, or queued behind a
write that never finished) was counted as the miner's all the same: the job waited out the reconnect grace
period for a miner that could not come back with it, then cost an attempt (FAILED with max_attempts=1, though
it never ran). It goes back to the queue when the stream ends, its attempt unspent. Real coordinator on
loopback, real SQLite; the stream is ended as the coordinator's liveness check ends one (its handler cancelled)
in the loop turn the assignment is decided, before its commit lands."""

from __future__ import annotations

import asyncio

import pytest
from coord_support import COMPLETED, Harness, eventually
from test_miner_capacity import capacity

LONG_GRACE = {"lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0, "reconnect_grace_seconds": 30.0}


@pytest.mark.coordinator(**LONG_GRACE)
async def test_an_assignment_its_stream_never_wrote_goes_back_at_once_unspent(coord: Harness) -> None:
    alice = coord.client("alice")
    first = await coord.stream_miner("miner-00", slots=1)
    await capacity(coord, first, 0)
    job = await alice.submit({"n": 1}, max_attempts=1)
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]

    filling = asyncio.ensure_future(scheduler.offer(session, 1))  # decides the assignment, awaits its commit
    await asyncio.sleep(0)
    held = session.held.get(job.job_id)
    assert held is not None and not held.told, "decided, not yet written"
    session.end_reason = "STREAM_STALLED"  # as the liveness check ends a stream: its handler cancelled
    session.stream_task.cancel()
    await filling
    await eventually(lambda: session.closed, what="the stream's end handled")
    assert sum(1 for kind, _ in first.log if kind == "assignment") == 0, "the assignment was never written"

    second = await coord.stream_miner("miner-01", slots=1)
    [a] = await second.assignments(1, within=5.0)  # not after the 30 s grace: at once
    assert (a.job.job_id, a.attempt) == (job.job_id, 1), coord.db.events(job.job_id)
    second.accept(a)
    second.result(a.job.job_id, a.attempt, {"ok": True})
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    back = [e for e in coord.db.events(job.job_id) if e["reason"] == "MINER_GONE"]
    assert len(back) == 1 and back[0]["attempt"] == 0, coord.db.events(job.job_id)


@pytest.mark.coordinator(**LONG_GRACE)
async def test_an_assignment_written_before_the_stream_ended_waits_for_its_miner(coord: Harness) -> None:
    """The other side of the line: once written, the miner may have it; it keeps the job through the grace
    period and resumes it."""
    alice = coord.client("alice")
    first = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"n": 2}, max_attempts=1)
    [a] = await first.assignments(1)
    first.accept(a)
    await first.kill()
    second = await coord.stream_miner("miner-01", slots=1)
    await asyncio.sleep(0.5)
    assert second.pending("assignment") == 0, "the job waits for its miner, who may be running it"
    back = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, a.attempt),))
    back.result(job.job_id, a.attempt, {"ok": True})
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
