"""A commit that fails (a full disk, an I/O error; here a trigger in the SQLite file refusing one row) must
leave the coordinator's view of its jobs equal to the store: nothing is read in a state that never landed,
no message of the failed decision reaches a miner, and every job still runs to an end without a restart.
"""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import (
    ADMIN_KEY,
    CANCELED,
    COMPLETED,
    QUEUED,
    RUNNING,
    Harness,
    eventually,
    rpc_error,
)


def refuse(coord: Harness, job_id: str, table: str, condition: str = "1") -> None:
    """From now on, a commit writing this job's row into table fails."""
    with sqlite3.connect(coord.db_path) as conn:
        conn.execute(
            f"CREATE TRIGGER test_refuse_{table} BEFORE INSERT ON {table} WHEN NEW.job_id = '{job_id}' "
            f"AND {condition} BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )


def allow(coord: Harness, table: str) -> None:
    with sqlite3.connect(coord.db_path) as conn:
        conn.execute(f"DROP TRIGGER test_refuse_{table}")


async def test_a_cancel_that_fails_to_commit_leaves_the_job_running_with_its_miner(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING stored")

    refuse(coord, job.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    err = await rpc_error(alice.cancel(job.job_id))
    assert err.code == grpc.StatusCode.INTERNAL
    allow(coord, "job_events")

    # Read as stored (it was CANCELED in memory, held by nobody, its miner's result refused as JOB_NOT_HELD)
    assert (await alice.get(job.job_id)).state == RUNNING
    await eventually(lambda: job.job_id in coord.coordinator.scheduler.jobs, what="the job restored")
    assert miner.pending("cancel") == 0  # the failed decision's message never left
    miner.result(a.job.job_id, a.attempt)
    ack = await miner.next("result_ack")
    assert ack.accepted and ack.receipt_id, ack
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert [e["reason"] for e in coord.db.events(job.job_id)] == [
        "SUBMITTED",
        "ASSIGNED",
        "ACCEPTED",
        "COMPLETED",
    ]


async def test_a_result_that_fails_to_commit_is_not_read_and_the_job_runs_again(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)

    refuse(coord, job.job_id, "receipts")
    miner.result(a.job.job_id, a.attempt)
    await miner.wait_closed()  # the failed commit ends the miner's stream
    # never COMPLETED without its result and receipt (it was, in memory, until a restart)
    got = await alice.get(job.job_id)
    assert got.state != COMPLETED and coord.db.count("receipts", job.job_id) == 0
    allow(coord, "receipts")

    back = await coord.stream_miner("miner-00", slots=1)  # it comes back, not listing the job
    [again] = await back.assignments(1, within=10)
    assert (again.job.job_id, again.attempt) == (job.job_id, 2)
    back.result(again.job.job_id, again.attempt)
    assert (await back.next("result_ack")).accepted
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2)
    assert coord.db.count("receipts", job.job_id) == 1


async def test_a_queued_job_whose_cancel_fails_to_commit_is_still_dispatched(coord: Harness) -> None:
    alice = coord.client("alice")
    job = await alice.submit({"x": 1})
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    err = await rpc_error(alice.cancel(job.job_id))
    assert err.code == grpc.StatusCode.INTERNAL
    allow(coord, "job_events")

    # back in the ready queue, counted once: it was dropped from the queue and never dispatched again
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job restored")
    stats = await coord.admin().stub.GetStats(apb.GetStatsRequest(), metadata=(("x-api-key", ADMIN_KEY),))
    assert (stats.queue_depth, scheduler.queues.depth) == (1, 1)
    assert (await alice.get(job.job_id)).state == QUEUED
    miner = await coord.stream_miner("miner-00")
    [a] = await miner.assignments(1)
    assert a.job.job_id == job.job_id
    canceled = await alice.cancel(job.job_id)  # and it can be canceled once the store writes again
    assert canceled.state == CANCELED and coord.db.job_state(job.job_id) == CANCELED


async def test_a_commit_failing_after_its_miner_went_away_is_undone_too(coord: Harness) -> None:
    """The miner's stream ends while its result's commit waits for the disk; then that commit fails. The
    result must not be applied as if it had landed (COMPLETED with no receipt, watchers told so)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)

    blocker = sqlite3.connect(coord.db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the coordinator's writer now waits for the lock
        miner.result(a.job.job_id, a.attempt)
        await eventually(
            lambda: coord.coordinator.scheduler._unsettled.get(job.job_id) is not None,
            what="the result's commit queued",
        )
        await miner.kill()  # the stream (and the task waiting on the commit) is cancelled
        await eventually(lambda: not coord.coordinator.scheduler.by_miner, what="the session closed")
        blocker.execute(
            f"CREATE TRIGGER test_refuse_receipts BEFORE INSERT ON receipts WHEN NEW.job_id = '{job.job_id}' "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
        blocker.execute("COMMIT")  # the writer goes on, and the trigger refuses the result's unit
    finally:
        blocker.close()
    await eventually(lambda: job.job_id in coord.coordinator.scheduler.jobs, what="the job restored")
    got = await alice.get(job.job_id)
    assert got.state != COMPLETED and coord.db.count("receipts", job.job_id) == 0
    allow(coord, "receipts")

    back = await coord.stream_miner("miner-00", slots=1)
    [again] = await back.assignments(1, within=10)
    assert (again.job.job_id, again.attempt) == (job.job_id, 2)
    back.result(again.job.job_id, again.attempt)
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2) and coord.db.count("receipts", job.job_id) == 1


async def test_a_cancel_retried_while_the_job_is_read_back_waits_for_it(coord: Harness) -> None:
    """A retry that arrives while the job is out of memory, being read back from the store, waits for it
    and cancels it (the store holds it as QUEUED). The read-back is held up here by a lock on the file."""
    alice = coord.client("alice")
    job = await alice.submit({"x": 1})
    scheduler = coord.coordinator.scheduler
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    # called in this event loop (the coordinator's), so that nothing runs between the failure and the lock
    with pytest.raises(sqlite3.IntegrityError):
        await scheduler.cancel(job.job_id, None, "first try")
    blocker = sqlite3.connect(coord.db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the restore's barrier write now waits for this lock
        blocker.execute("DROP TRIGGER test_refuse_job_events")
        assert job.job_id not in scheduler.jobs and scheduler._restoring
        retry = asyncio.create_task(alice.cancel(job.job_id, reason="second try"))
        await asyncio.sleep(0.3)
        assert not retry.done()
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    canceled = await asyncio.wait_for(retry, 5)
    assert (canceled.state, canceled.terminal_message) == (CANCELED, "second try")
    assert coord.db.job_state(job.job_id) == CANCELED and scheduler.queues.depth == 0
