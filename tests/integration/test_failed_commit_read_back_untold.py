"""A job read back after a failed commit keeps whether its miner may have heard of its assignment (helper h1).

The read-back rebuilt every assignment as told: one that had never left (a unary assignment no poll took, a
stream's its writer never wrote) then cost the job an attempt when its lease ran out, its miner registered
again, or its stream ended (FAILED with max_attempts 1, never run), instead of going back unspent. One its
miner had (handed out while the job was out being read back) still spends its attempt: given back unspent, it
would run twice at that attempt. Real coordinator on loopback, real SQLite; the failed commit is a client's
cancel refused by a trigger (as in test_failed_commit)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from coord_support import ASSIGNED, COMPLETED, FAILED, QUEUED, Harness, eventually
from test_failed_commit import allow, fail_a_cancel, held_lock
from test_unary_miner_drain import UnaryMiner, assignment_no_poll_took

from coordinator.scheduler.sessions import UNSENT_ON_POLL, UNSENT_ON_STREAM

QUIET = {"lease_seconds": 2.0, "heartbeat_timeout_seconds": 30.0, "reconnect_grace_seconds": 0.5}


async def read_back(coord: Harness, job_id: str, blocker: sqlite3.Connection) -> None:
    """Let the read-back held up by fail_a_cancel run, and wait until the job is back in memory."""
    blocker.execute("COMMIT")
    blocker.close()
    await eventually(lambda: job_id in coord.coordinator.scheduler.jobs, what="the job read back")


def reasons(coord: Harness, job_id: str) -> list[str]:
    return [e["reason"] for e in coord.db.events(job_id)]


@pytest.mark.coordinator(**QUIET)
async def test_an_untold_assignment_read_back_goes_back_unspent_when_its_lease_runs_out(
    coord: Harness,
) -> None:
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_no_poll_took(coord, miner)
    await read_back(coord, job.job_id, await fail_a_cancel(coord, job.job_id))
    await eventually(lambda: coord.db.job_state(job.job_id) != ASSIGNED, what="the read-back lease run out",
                     within=10.0)  # fmt: skip
    assert coord.db.job_state(job.job_id) == QUEUED, coord.db.events(job.job_id)
    polled = await miner.poll()
    assert [(b.job.job_id, b.attempt) for b in polled.assignments] == [(job.job_id, 1)]
    assert not polled.cancels  # (the unsent assignment was withdrawn with its cancel)
    assert (await miner.result(job.job_id, 1)).ack.accepted
    assert reasons(coord, job.job_id) == ["SUBMITTED", "ASSIGNED", "LEASE_EXPIRED", "ASSIGNED", "ACCEPTED",
                                          "COMPLETED"]  # fmt: skip


@pytest.mark.coordinator(**QUIET)
async def test_an_untold_assignment_read_back_onto_a_new_session_goes_back_unspent(coord: Harness) -> None:
    """The miner registers again while the job is out: its new session does not list a job it never heard of."""
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_no_poll_took(coord, miner)
    blocker = await fail_a_cancel(coord, job.job_id)
    await miner.register()
    await read_back(coord, job.job_id, blocker)
    polled = await miner.poll()
    assert [(b.job.job_id, b.attempt) for b in polled.assignments] == [(job.job_id, 1)], coord.db.events(
        job.job_id
    )
    assert (await miner.result(job.job_id, 1)).ack.accepted
    [back] = [e for e in coord.db.events(job.job_id) if e["reason"] == "MINER_LOST_JOB"]
    assert back["attempt"] == 0 and back["message"] == UNSENT_ON_POLL


@pytest.mark.coordinator(**QUIET)
async def test_an_untold_assignment_read_back_onto_its_open_session_is_still_delivered(
    coord: Harness,
) -> None:
    """Its session is open and its assignment still waits for a poll: the poll hands it out, at its attempt
    (not given back meanwhile: that would be another write, and the job may go to another miner)."""
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_no_poll_took(coord, miner)
    await read_back(coord, job.job_id, await fail_a_cancel(coord, job.job_id))
    polled = await miner.poll()
    assert [(b.job.job_id, b.attempt) for b in polled.assignments] == [(job.job_id, 1)]
    assert (await miner.result(job.job_id, 1)).ack.accepted
    assert reasons(coord, job.job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]


@pytest.mark.coordinator(**QUIET)
async def test_an_assignment_handed_out_while_its_job_is_read_back_spends_its_attempt(coord: Harness) -> None:
    """Untold when the job was taken out, then handed out by a poll before the read-back: its miner has it. Its
    lease running out spends the attempt (given back unspent, it would run again at attempt 1). The miner
    heartbeats without renewing it: a lease that runs out while a unary miner is silent waits for the session's
    liveness check instead (test_unary_silence_leases)."""
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_no_poll_took(coord, miner)  # (max_attempts 1)
    blocker = await fail_a_cancel(coord, job.job_id)
    polled = await miner.poll()
    assert [(b.job.job_id, b.attempt) for b in polled.assignments] == [(job.job_id, 1)]
    await read_back(coord, job.job_id, blocker)
    await miner.heartbeat()  # present, not listing the job: its lease is not renewed
    done = await coord.finished(coord.client(), job.job_id, within=10.0)
    assert done.state == FAILED, coord.db.events(job.job_id)
    last = coord.db.events(job.job_id)[-1]
    assert (last["reason"], last["attempt"]) == ("ATTEMPTS_EXHAUSTED", 1), coord.db.events(job.job_id)
    assert "LEASE_EXPIRED" in last["message"]


@pytest.mark.coordinator(**QUIET)
async def test_an_unwritten_stream_assignment_read_back_after_its_stream_ended_goes_back_at_once(
    coord: Harness,
) -> None:
    """A cancel is decided while the assignment's own write waits; the stream ends before that write lands (the
    assignment is never written), and then the cancel fails. Read back with no session, the job went to the
    grace period as its miner's (0.5 s here) and then lost its only attempt (MINER_GONE)."""
    alice = coord.client("alice")
    first = await coord.stream_miner("miner-00", slots=1)
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    blocker = held_lock(coord)
    try:
        submit = asyncio.ensure_future(alice.submit({"n": 1}, max_attempts=1))
        await eventually(lambda: session.held, what="the job assigned in memory (its write waiting)")
        [(job_id, held)] = session.held.items()
        assert not held.told
        # the cancel's failure, staged within the held write (seen by the coordinator once it is committed)
        blocker.execute(
            "CREATE TRIGGER test_refuse_job_events BEFORE INSERT ON job_events WHEN NEW.job_id = ? AND "
            "NEW.reason = 'CANCELED_BY_CLIENT' BEGIN SELECT RAISE(ABORT, 'test: cannot be made'); END"
            .replace("?", f"'{job_id}'")
        )  # fmt: skip
        cancel = asyncio.ensure_future(scheduler.cancel(job_id, None, "fails"))
        await asyncio.sleep(0)  # decided: the job taken from the session, its write queued behind the lock
        session.end_reason = "STREAM_STALLED"  # as the liveness check ends a stream: its handler cancelled
        session.stream_task.cancel()
        await eventually(lambda: session.closed, what="the stream's end handled")
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.wait_for(submit, 10.0)
    with pytest.raises(sqlite3.IntegrityError):
        await cancel
    allow(coord, "job_events")
    assert not any(kind == "assignment" for kind, _ in first.log), "the assignment was never written"
    second = await coord.stream_miner("miner-01", slots=1)
    [a] = await second.assignments(1, within=5.0)
    assert (a.job.job_id, a.attempt) == (job_id, 1), coord.db.events(job_id)
    second.accept(a)
    second.result(job_id, a.attempt, {"ok": True})
    assert (await coord.finished(alice, job_id)).state == COMPLETED
    [back] = [e for e in coord.db.events(job_id) if e["reason"] == "MINER_GONE"]
    assert back["attempt"] == 0 and back["message"] == UNSENT_ON_STREAM


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_replaced_streams_unsent_assignment_goes_back_with_the_streams_message(
    coord: Harness,
) -> None:
    """Its session replaced before the assignment was written: given back unspent, said of a stream (it was
    said as of a poll: "no poll took the assignment")."""
    alice = coord.client("alice")
    await coord.stream_miner("miner-00", slots=1)
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    blocker = held_lock(coord)
    try:
        submit = asyncio.ensure_future(alice.submit({"n": 1}, max_attempts=1))
        await eventually(lambda: session.held, what="the job decided for the old stream, its write waiting")
        new = await coord.stream_miner("miner-00", slots=1)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    job = await asyncio.wait_for(submit, 10.0)
    [a] = await new.assignments(1)
    assert (a.job.job_id, a.attempt) == (job.job_id, 1)
    [back] = [e for e in coord.db.events(job.job_id) if e["reason"] == "MINER_LOST_JOB"]
    assert back["attempt"] == 0 and back["message"] == UNSENT_ON_STREAM
