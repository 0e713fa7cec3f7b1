"""Reads while a decision is being written that will fail: nothing of it may be served.

GetJob waits for the job's writes to settle; so must every other path that answers a client with a job's
state. Each test holds SQLite's write lock while a decision about a job is made in memory (its write waits),
reads the job some other way meanwhile, then releases the lock and lets the write fail: the state the read
answers with must be one that landed. (Round-5 review, helper-25: each of these failed before the fix.)
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from coord_support import ASSIGNED, CANCELED, COMPLETED, QUEUED, Harness, eventually
from test_failed_commit import held_lock, refuse, running_job

from coordinator.domain.model import JobState


async def completed_in_memory(coord: Harness, miner, job_id: str, attempt: int) -> sqlite3.Connection:  # type: ignore[no-untyped-def]
    """The miner's result for job_id: COMPLETED in memory, its write (which will fail) behind the lock."""
    refuse(coord, job_id, "receipts")
    blocker = held_lock(coord)
    miner.result(job_id, attempt)
    scheduler = coord.coordinator.scheduler
    try:
        await eventually(
            lambda: (j := scheduler.jobs.get(job_id)) is not None and j.state is JobState.COMPLETED,
            what="COMPLETED in memory, its write waiting for the lock",
        )
    except BaseException:
        blocker.execute("COMMIT")
        blocker.close()
        raise
    return blocker


def release(blocker: sqlite3.Connection) -> None:
    blocker.execute("COMMIT")
    blocker.close()


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_a_cancel_meeting_a_completion_still_being_written_is_decided_on_what_lands(
    coord: Harness,
) -> None:
    alice, miner, job, a = await running_job(coord, max_attempts=3)
    blocker = await completed_in_memory(coord, miner, job.job_id, a.attempt)
    try:
        cancel = asyncio.ensure_future(alice.cancel(job.job_id, "client gives up"))
        await asyncio.sleep(0.3)
        assert not cancel.done()  # it waits for the result's write (it was refused JOB_TERMINAL at once)
    finally:
        release(blocker)
    canceled = await asyncio.wait_for(cancel, 15.0)  # the result failed: the job came back, then was canceled
    assert canceled.state == CANCELED
    assert coord.db.job_state(job.job_id) == CANCELED and coord.db.count("receipts", job.job_id) == 0


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_list_jobs_does_not_serve_a_completion_still_being_written(coord: Harness) -> None:
    alice, miner, job, a = await running_job(coord, max_attempts=3)
    blocker = await completed_in_memory(coord, miner, job.job_id, a.attempt)
    try:
        listing = asyncio.ensure_future(alice.list())  # (the store is read while the write lock is held: WAL)
        await asyncio.sleep(0.3)
    finally:
        release(blocker)
    listed = await asyncio.wait_for(listing, 10.0)
    await miner.wait_closed()  # the failed result ends the miner's stream
    seen = {j.job_id: j.state for j in listed.jobs}
    assert coord.db.job_state(job.job_id) != COMPLETED  # the result never landed
    assert job.job_id in seen and seen[job.job_id] != COMPLETED


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_an_idempotent_resubmit_does_not_serve_a_completion_still_being_written(coord: Harness) -> None:
    alice, miner, job, a = await running_job(coord, max_attempts=3, idempotency_key="k-1")
    blocker = await completed_in_memory(coord, miner, job.job_id, a.attempt)
    try:
        resubmit = asyncio.ensure_future(alice.submit({"x": 1}, max_attempts=3, idempotency_key="k-1"))
        await asyncio.sleep(0.3)
    finally:
        release(blocker)
    again = await asyncio.wait_for(resubmit, 10.0)
    await miner.wait_closed()
    assert again.job_id == job.job_id and coord.db.job_state(job.job_id) != COMPLETED
    assert again.state != COMPLETED


async def test_submit_answers_with_its_own_write_not_an_assignment_still_being_written(
    coord: Harness,
) -> None:
    """The job is queued (no miner) while its insert waits; a miner connecting meanwhile is given it in its
    welcome's write, which fails. SubmitJob answers once the insert landed: QUEUED, as written."""
    alice = coord.client("alice")
    with sqlite3.connect(coord.db_path) as conn:  # every assignment's write fails
        conn.execute(
            "CREATE TRIGGER test_refuse_assign BEFORE INSERT ON job_events WHEN NEW.reason = 'ASSIGNED' "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)
    try:
        submit = asyncio.ensure_future(alice.submit({"x": 1}))
        await eventually(lambda: scheduler.queues.depth == 1, what="the job queued in memory")
        miner = await coord.stream_miner("miner-00", slots=1)
        await eventually(lambda: scheduler.by_miner["miner-00"].held, what="the job assigned in memory")
    finally:
        release(blocker)
    job = await asyncio.wait_for(submit, 10.0)
    await miner.wait_closed()  # the assignment's write failed: the welcomed stream ends
    assert coord.db.job_state(job.job_id) == QUEUED
    assert job.state == QUEUED and job.state != ASSIGNED and not job.miner_id


async def test_list_jobs_waits_for_a_write_that_starts_while_it_waits_for_another(coord: Harness) -> None:
    """ListJobs waits for the page's job Y, whose cancel is being written; meanwhile job X of the page is
    canceled too, its write queued behind. Both writes fail: the listing must not show X CANCELED.
    (Review round 6, helper-27: ListJobs answered X's live copy once Y's write had settled.)"""
    alice = coord.client("alice")
    x = await alice.submit({"x": 1})  # no miner: both stay QUEUED
    y = await alice.submit({"y": 1})
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)
    try:
        # Y's cancel: the writer takes it and waits on the lock (its 5 s busy timeout, then it fails)
        cancel_y = asyncio.ensure_future(alice.cancel(y.job_id, "y"))
        await eventually(lambda: y.job_id in scheduler._unsettled, what="Y's cancel queued")
        await asyncio.sleep(0.3)
        listing = asyncio.ensure_future(alice.list())  # reads the page, then waits for Y's write
        await asyncio.sleep(0.5)
        assert not listing.done()
        cancel_x = asyncio.ensure_future(alice.cancel(x.job_id, "x"))  # queued behind Y's; fails too
        await eventually(lambda: x.job_id in scheduler._unsettled, what="X's cancel queued")
        listed = await asyncio.wait_for(listing, 15.0)
        await asyncio.gather(cancel_x, cancel_y, return_exceptions=True)
    finally:
        release(blocker)
    seen = {j.job_id: j.state for j in listed.jobs}
    await eventually(lambda: x.job_id in scheduler.jobs, within=10.0, what="X read back")
    assert coord.db.job_state(x.job_id) == QUEUED and coord.db.job_state(y.job_id) == QUEUED  # neither landed
    assert seen[x.job_id] == QUEUED and seen[y.job_id] == QUEUED
