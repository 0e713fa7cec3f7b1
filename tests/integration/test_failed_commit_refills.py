"""Fills while commits keep failing, and refills after a failed commit on a stream that this failure ends (see
test_failed_commit for the trigger that refuses rows). Real coordinator on loopback, real SQLite."""

from __future__ import annotations

import logging
import sqlite3
import time

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import COMPLETED, FAILED, RUNNING, Harness, StreamMiner, eventually, rpc_error
from test_failed_commit import allow, refuse
from test_miner_capacity import capacity

LONG = {"lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0, "reconnect_grace_seconds": 30.0}


def refuse_every_assignment(coord: Harness) -> None:
    """From now on, a commit assigning any job fails (as on a full disk, for the writes that matter here)."""
    with sqlite3.connect(coord.db_path) as conn:
        conn.execute(
            "CREATE TRIGGER test_refuse_assigned BEFORE INSERT ON job_events WHEN NEW.reason = 'ASSIGNED' "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )


def allow_assignments(coord: Harness) -> None:
    with sqlite3.connect(coord.db_path) as conn:
        conn.execute("DROP TRIGGER test_refuse_assigned")


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


async def run_to_the_end(coord: Harness, sm: StreamMiner, job_ids: set[str]) -> None:
    """The miner runs every job it is given until job_ids are all over (as stored); each of those at attempt 1."""
    deadline = time.monotonic() + 20
    while any(coord.db.job_state(job_id) not in (COMPLETED, FAILED) for job_id in job_ids):
        assert time.monotonic() < deadline, {job_id: coord.db.events(job_id) for job_id in job_ids}
        try:
            [a] = await sm.assignments(1, within=0.5)
        except AssertionError:
            continue  # (none yet: look at the store again)
        if a.job.job_id in job_ids:
            assert a.attempt == 1, (a.job.job_id, a.attempt, coord.db.events(a.job.job_id))
        sm.result(a.job.job_id, a.attempt)
        assert (await sm.next("result_ack")).accepted


# ------------------------------------------------------------------------------ 1. a miner flapping its capacity
@pytest.mark.coordinator(**LONG)
async def test_a_miner_flapping_its_capacity_while_commits_fail_does_not_write_at_each_raise(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Capacity 1, 0, 1, 0... (40 raises) while every assignment fails to commit. Each raise's fill took a queued
    job and wrote at once, not backed off like the undo's own refills: ~25 failing writes (and as many WARNINGs
    with a traceback) in well under a second, at the miner's pace; each write takes jobs out of the scheduler
    to be read back, their write backoff growing. Now a raise while commits keep failing waits as a refill
    does (0.05 s after the last failure, doubling): a few writes. No attempt is spent either way."""
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=2)
    await capacity(coord, sm, 0)
    jobs = await alice.submit_many([{"n": i} for i in range(40)], max_attempts=1)
    refuse_every_assignment(coord)
    caplog.set_level(logging.WARNING, logger="coordinator.scheduler")
    for _ in range(40):
        sm.send(capacity=mpb.Capacity(slots=1))
        sm.send(capacity=mpb.Capacity(slots=0))
    await capacity(coord, sm, 2)  # handled after the 80 before it (a stream's messages are handled in order)
    raises_failed = logged(caplog, "raised capacity could not be written")
    failed_writes = logged(caplog, "jobs restored from the store")  # one per failed unit that took jobs out
    assert raises_failed <= 3 and failed_writes <= 12, (raises_failed, failed_writes)
    allow_assignments(coord)
    assert sm.pending("assignment") == 0
    # the raise put off is filled once the wait is over (no message of the miner needed), every job at attempt 1
    await run_to_the_end(coord, sm, {j.job_id for j in jobs})
    for job in jobs:
        done = await coord.finished(alice, job.job_id)
        assert (done.state, done.attempt) == (COMPLETED, 1)


# ------------------------------------------------ 2. a failed message of a stream ends it: no refill lands there
async def _message_that_fails(coord: Harness, kind: str):  # type: ignore[no-untyped-def]
    """miner-00 (one slot) holds job A (RUNNING; ASSIGNED for an accept), B is queued behind it; then A's next
    event is refused and the miner sends `kind` about A. (client, miner, A, B)"""
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=1)
    a_job = await alice.submit({"a": 1})
    [a] = await sm.assignments(1)
    if kind != "accept":
        sm.accept(a)
        await eventually(lambda: coord.db.job_state(a_job.job_id) == RUNNING, what="A RUNNING stored")
    b_job = await alice.submit({"b": 1}, max_attempts=1)
    refuse(coord, a_job.job_id, "job_events")
    if kind == "result":
        sm.result(a.job.job_id, a.attempt)
    elif kind == "failure":
        sm.failure(a.job.job_id, a.attempt, retryable=True)
    elif kind == "reject":
        sm.send(reject=mpb.Reject(job_id=a.job.job_id, attempt=a.attempt, reason="busy"))
    else:
        sm.accept(a)
    return alice, sm, a_job, b_job


@pytest.mark.parametrize("kind", ["result", "failure", "reject", "accept"])
@pytest.mark.coordinator(**LONG)
async def test_a_message_whose_commit_fails_ends_its_stream_and_no_queued_job_is_lost_there(
    coord: Harness, kind: str
) -> None:
    """The review's finding, confirmed: the undo keeps a slot for A (its miner may still run it) for each slot
    it frees (the fill's assignment of B, undone), so the refill finds no free slot on the dying stream."""
    alice, sm, _, b_job = await _message_that_fails(coord, kind)
    await sm.wait_closed()
    assert not sm.streams[0].had(b_job.job_id, 1)
    allow(coord, "job_events")
    back = await coord.stream_miner(slots=1)  # lists nothing: A is lost with the stream (and runs again)
    await run_to_the_end(coord, back, {b_job.job_id})
    done = await coord.finished(alice, b_job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert "MINER_LOST_JOB" not in [e["reason"] for e in coord.db.events(b_job.job_id)]


async def _commits_failed_in_a_row(coord: Harness, times: int) -> None:
    """Fail `times` commits in a row, touching no miner: cancels of a job no miner can take."""
    alice = coord.client("alice")
    stray = await alice.submit({"stray": 1}, constraints={"region": "nowhere"})
    refuse(coord, stray.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    for _ in range(times):
        err = await rpc_error(alice.cancel(stray.job_id))
        assert err.code == grpc.StatusCode.INTERNAL
        await eventually(
            lambda: stray.job_id in coord.coordinator.scheduler.jobs, what="the stray job read back"
        )
    allow(coord, "job_events")


@pytest.mark.coordinator(**LONG)
async def test_a_result_failing_beside_a_slot_whose_fill_waits_refills_nothing_on_its_ending_stream(
    coord: Harness,
) -> None:
    """The refill is not always empty: a slot may wait free beside queued jobs (its fill put off while commits
    kept failing: a raise, or an undo's refill). Then a write lands (the failures in a row are over), and a result
    on that stream fails: its fill took the queued jobs B and E for the two free slots, the undo kept one slot
    for A and freed two, so the refill at once (one failure in a row) gave F to the stream that this very failure
    ended. F's assignment never left; the miner came back without it: MINER_LOST_JOB, its one attempt spent,
    FAILED without ever running."""
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=2)
    await capacity(coord, sm, 1)
    a_job = await alice.submit({"a": 1})
    [a] = await sm.assignments(1)
    sm.accept(a)
    await eventually(lambda: coord.db.job_state(a_job.job_id) == RUNNING, what="A RUNNING stored")
    queued = await alice.submit_many([{"n": i} for i in range(3)], max_attempts=1)  # B, E, F
    await _commits_failed_in_a_row(coord, 10)  # the next fill waits 12.8 s after the last of them
    await capacity(coord, sm, 2)  # a free slot, its fill put off, beside B, E, F
    assert sm.pending("assignment") == 0
    await alice.submit({"lands": 1}, constraints={"region": "nowhere"})  # a write lands
    refuse(coord, a_job.job_id, "job_events", "NEW.reason = 'COMPLETED'")
    sm.result(a.job.job_id, a.attempt)
    await sm.wait_closed()
    assert [j.job_id for j in queued if sm.streams[0].had(j.job_id, 1)] == []
    allow(coord, "job_events")
    back = await coord.stream_miner(slots=2)  # lists nothing
    await run_to_the_end(coord, back, {j.job_id for j in queued})
    for job in queued:
        done = await coord.finished(alice, job.job_id)
        assert (done.state, done.attempt) == (COMPLETED, 1), coord.db.events(job.job_id)
