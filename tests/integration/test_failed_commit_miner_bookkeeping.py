"""Failed commits (see test_failed_commit) and a miner's sessions: a new session's write built on a failed one of
its miner's previous session, and a refusal (reject) whose write fails."""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from coord_support import ASSIGNED, Harness, capabilities, eventually, miner_key, mpb, rpc_error
from test_failed_commit import allow, held_lock, refuse


async def test_a_failed_session_opening_write_does_not_end_the_next_connect_of_the_miner(
    coord: Harness,
) -> None:
    """The first session's opening write (its welcome's assignment) fails; a second Connect of the miner, opened
    while that write waited, took the job over, and its own opening write, built on the failed one, was refused
    with it: that Connect ended too (INTERNAL), though nothing of its own failed. It stays, and gets the job
    once it is read back."""
    job = await coord.client().submit({"x": 1})
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'ASSIGNED'")
    blocker = held_lock(coord)
    try:
        first = await coord.stream_miner("miner-00", slots=1)  # (welcomed with the job, its write waiting)
        second = await coord.stream_miner("miner-00", slots=1)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await first.wait_closed()
    allow(coord, "job_events")
    [a] = await second.assignments(1)
    assert a.job.job_id == job.job_id and not second.closed.is_set()
    second.result(job.job_id, a.attempt)
    assert (await second.next("result_ack")).accepted


async def test_a_miner_listing_a_job_whose_reject_failed_to_commit_keeps_it(coord: Harness) -> None:
    """The reject of attempt 1 fails to commit: as stored, the job is the miner's at attempt 1. The job taken out
    to be read back was marked as the miner's at attempt 0 (the attempt a reject queues it with), so the
    miner's new session listing attempt 1 was told NOT_HELD, and the job ran again as attempt 2."""
    alice = coord.client()
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    scheduler = coord.coordinator.scheduler
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'REJECTED'")
    with pytest.raises(sqlite3.IntegrityError):
        await scheduler.reject(scheduler.by_miner["miner-00"], job.job_id, a.attempt, "busy")
    blocker = held_lock(coord)  # (called in this loop: nothing ran since the failure; the read-back waits)
    blocker.execute("DROP TRIGGER test_refuse_job_events")
    try:
        assert job.job_id not in scheduler.jobs
        await miner.kill()
        back = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, a.attempt),))
        assert [(r.job_id, r.attempt) for r in back.welcome.resumed_jobs] == [(job.job_id, a.attempt)]
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    assert coord.db.job_state(job.job_id) == ASSIGNED and back.pending("cancel") == 0
    back.result(job.job_id, a.attempt)
    assert (await back.next("result_ack")).accepted
    assert [e["reason"] for e in coord.db.events(job.job_id)] == [
        "SUBMITTED",
        "ASSIGNED",
        "ACCEPTED",
        "COMPLETED",
    ]


async def test_a_registration_whose_write_fails_leaves_no_session_behind(coord: Harness) -> None:
    """RegisterMiner's write (its receipt key) fails: the call is refused, and no session is left open that its
    miner never heard of (it stayed, listed as connected, until its liveness check)."""
    with sqlite3.connect(coord.db_path) as conn:
        conn.execute("CREATE TRIGGER test_refuse_keys BEFORE INSERT ON signing_keys "
                     "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END")  # fmt: skip
    hello = mpb.Hello(capabilities=capabilities(slots=1), receipt_public_key=bytes(range(32)))
    refused = await rpc_error(coord.miner_stub().RegisterMiner(
        mpb.RegisterMinerRequest(hello=hello), metadata=(("x-api-key", miner_key("miner-00")),)))  # fmt: skip
    assert refused.code == grpc.StatusCode.INTERNAL
    assert "miner-00" not in await coord.admin().miners()
    assert not coord.coordinator.scheduler.by_miner
