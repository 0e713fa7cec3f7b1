"""An assignment decided for a session that is replaced before the assignment leaves (its commit still in flight)
goes back to the queue unspent, at the attempt it had: the miner's new session never heard of it. The old
session must not hand it out all the same once its commit lands: written on the old stream (or answered to the
old session's waiting poll), the job ran twice at the same attempt number, once there and once wherever it went
next. Real coordinator on loopback, real SQLite; the assignment's commit is held behind the file's write lock
while the miner's identity registers again."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import COMPLETED, QUEUED, Harness, capabilities, eventually, miner_key
from test_failed_commit import allow, held_lock, refuse
from test_miner_capacity import capacity

from coordinator.domain.model import JobState

LONG = {"lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0, "reconnect_grace_seconds": 30.0}
MD = (("x-api-key", miner_key("miner-00")),)


@pytest.mark.coordinator(**LONG)
async def test_a_replaced_streams_unsent_assignment_is_not_written_on_it(coord: Harness) -> None:
    alice = coord.client("alice")
    old = await coord.stream_miner("miner-00", slots=1)
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    blocker = held_lock(coord)
    try:
        submit = asyncio.ensure_future(alice.submit({"n": 1}, max_attempts=1))
        await eventually(lambda: len(session.held) == 1, what="the job decided for the old stream")
        [held] = session.held.values()
        assert not held.told, "decided, its commit waiting for the lock: not written"
        # the same identity registers again (a second process, or a reconnect the coordinator has not noticed)
        new = await coord.stream_miner("miner-00", slots=1)
        assert not session.held and session.closed
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    job = await asyncio.wait_for(submit, 10.0)
    [a] = await new.assignments(1)
    assert (a.job.job_id, a.attempt) == (job.job_id, 1)
    await old.wait_closed()
    assert not old.streams[0].had(job.job_id, 1), "given back unspent, the old stream wrote it all the same"
    new.accept(a)
    new.result(a.job.job_id, a.attempt, {"ok": True})
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED


@pytest.mark.coordinator(**LONG)
async def test_a_replaced_unary_sessions_waiting_poll_does_not_hand_out_a_job_given_back(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()
    hello = mpb.Hello(capabilities=capabilities(slots=1))
    first = (await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=MD)).welcome
    job = await alice.submit({"n": 2}, max_attempts=1)  # no poll waits: queued
    scheduler = coord.coordinator.scheduler
    assert scheduler.jobs[job.job_id].state is JobState.QUEUED
    session = scheduler.by_miner["miner-00"]
    blocker = held_lock(coord)
    try:
        poll = asyncio.ensure_future(stub.PollJob(
            mpb.PollJobRequest(session_id=first.session_id, max_jobs=1), metadata=MD, timeout=10))  # fmt: skip
        await eventually(
            lambda: len(session.held) == 1, what="the poll's fill deciding the job, its commit held"
        )
        # (its answer waits for its commit, behind the lock)
        register = asyncio.ensure_future(
            stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=MD)
        )
        await eventually(lambda: session.closed, what="the miner's identity registered again")
        assert not session.held
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    second = (await asyncio.wait_for(register, 10.0)).welcome
    old_answer = await asyncio.wait_for(poll, 10.0)
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="the job given back")
    new_answer = await stub.PollJob(mpb.PollJobRequest(session_id=second.session_id, max_jobs=1),
                                    metadata=MD, timeout=5)  # fmt: skip
    [a] = new_answer.assignments
    assert (a.job.job_id, a.attempt) == (job.job_id, 1)
    handed = [(x.job.job_id, x.attempt) for x in old_answer.assignments]
    assert handed == [], (
        f"the old session's poll handed out {handed} too; events {coord.db.events(job.job_id)}"
    )


@pytest.mark.coordinator(**LONG)
async def test_an_unsent_assignment_whose_commit_fails_as_its_stream_ends_is_assigned_again_unspent(
    coord: Harness,
) -> None:
    """The give-back of the stream's end builds on the assignment's commit; that commit fails: both are undone
    and the job, read back as stored (QUEUED, attempt 0), goes to the next miner at attempt 1."""
    alice = coord.client("alice")
    first = await coord.stream_miner("miner-00", slots=1)
    await capacity(coord, first, 0)
    job = await alice.submit({"n": 3}, max_attempts=1)
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'ASSIGNED'")
    filling = asyncio.ensure_future(scheduler.offer(session, 1))
    await asyncio.sleep(0)
    held = session.held.get(job.job_id)
    assert held is not None and not held.told, "decided, not yet written"
    session.end_reason = "STREAM_STALLED"
    session.stream_task.cancel()
    with contextlib.suppress(Exception):
        await filling
    await eventually(lambda: session.closed, what="the stream's end handled")
    allow(coord, "job_events")
    second = await coord.stream_miner("miner-01", slots=1)
    [a] = await second.assignments(1, within=10.0)
    assert (a.job.job_id, a.attempt) == (job.job_id, 1), coord.db.events(job.job_id)
    assert not first.streams[0].had(job.job_id, 1)
    second.accept(a)
    second.result(a.job.job_id, a.attempt, {"ok": True})
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
