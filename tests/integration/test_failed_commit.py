"""A commit that fails (a full disk, an I/O error; here a trigger in the SQLite file refusing one row) must
leave the coordinator's view of its jobs equal to the store: nothing is read in a state that never landed,
no message of the failed decision reaches a miner, and every job still runs to an end without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from coord_support import (
    ADMIN_KEY,
    ASSIGNED,
    CANCELED,
    COMPLETED,
    EXPIRED,
    QUEUED,
    RUNNING,
    Harness,
    StreamMiner,
    eventually,
    mpb,
    rpc_error,
    struct,
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


async def running_job(coord: Harness, **options):  # type: ignore[no-untyped-def]
    """A job RUNNING on miner-00 (one slot), as stored: (client, miner, job, assignment)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1}, **options)
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING stored")
    return alice, miner, job, a


async def test_a_cancel_that_fails_to_commit_leaves_the_job_running_with_its_miner(coord: Harness) -> None:
    alice, miner, job, a = await running_job(coord)

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
        assert job.job_id not in scheduler.jobs and scheduler._background
        retry = asyncio.create_task(alice.cancel(job.job_id, reason="second try"))
        await asyncio.sleep(0.3)
        assert not retry.done()
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    canceled = await asyncio.wait_for(retry, 5)
    assert (canceled.state, canceled.terminal_message) == (CANCELED, "second try")
    assert coord.db.job_state(job.job_id) == CANCELED and scheduler.queues.depth == 0


def held_lock(coord: Harness) -> sqlite3.Connection:
    """Hold the file's write lock: the coordinator's writes (and reads back after a failure) wait for it."""
    blocker = sqlite3.connect(coord.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


async def assigned_behind_the_lock(coord: Harness, payload: dict | None = None):  # type: ignore[no-untyped-def]
    """miner-00 (one slot) given a job in memory whose write waits behind the held write lock: (client, miner,
    its session, the lock (the caller commits it), the submit call)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    blocker = held_lock(coord)
    submit = asyncio.ensure_future(alice.submit(payload or {"j": 1}))
    try:
        await eventually(
            lambda: session.held, what="the job assigned to miner-00 in memory (its write waiting)"
        )
    except BaseException:
        blocker.execute("COMMIT")
        blocker.close()
        raise
    return alice, miner, session, blocker, submit


async def fail_a_cancel(coord: Harness, job_id: str) -> sqlite3.Connection:
    """A cancel whose commit fails; returns with the job out of memory and its read-back held up (the
    scheduler is called in this event loop, so nothing runs between the failure and the lock)."""
    refuse(coord, job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    with pytest.raises(sqlite3.IntegrityError):
        await coord.coordinator.scheduler.cancel(job_id, None, "fails")
    blocker = held_lock(coord)
    blocker.execute("DROP TRIGGER test_refuse_job_events")
    assert job_id not in coord.coordinator.scheduler.jobs
    return blocker


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_failed_cancel_of_an_assigned_job_keeps_its_execution_deadline(coord: Harness) -> None:
    """Read back as ASSIGNED, the job's execution deadline counts from its assignment (it counted from a
    start it never had: 1970, and the job was timed out at once)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1}, max_attempts=1)
    [a] = await miner.assignments(1)
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="ASSIGNED stored")
    (await fail_a_cancel(coord, job.job_id)).execute("COMMIT")
    await eventually(lambda: job.job_id in coord.coordinator.scheduler.jobs, what="the job read back")
    await asyncio.sleep(0.3)
    assert miner.pending("cancel") == 0 and coord.db.job_state(job.job_id) == ASSIGNED
    miner.result(a.job.job_id, a.attempt)
    assert (await miner.next("result_ack")).accepted
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED


async def test_a_result_sent_while_its_job_is_read_back_is_accepted(coord: Harness) -> None:
    alice, miner, job, a = await running_job(coord, max_attempts=1)
    blocker = await fail_a_cancel(coord, job.job_id)
    miner.result(a.job.job_id, a.attempt)  # the miner finished meanwhile: it was refused as JOB_NOT_HELD
    await asyncio.sleep(0.2)
    blocker.execute("COMMIT")
    blocker.close()
    ack = await miner.next("result_ack")
    assert ack.accepted, ack
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)


@pytest.mark.coordinator(lease_seconds=1.0)
async def test_a_miner_reconnecting_while_its_job_is_read_back_keeps_it(coord: Harness) -> None:
    _, miner, job, a = await running_job(coord)
    blocker = await fail_a_cancel(coord, job.job_id)
    await miner.kill()
    back = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, a.attempt),))
    # the welcome names it among the jobs the miner keeps (an SDK miner stops the others), so its
    # heartbeats go on listing it and renew the lease once it is read back
    assert [(r.job_id, r.attempt) for r in back.welcome.resumed_jobs] == [(job.job_id, a.attempt)]
    assert back.held == {job.job_id: a.attempt}
    await asyncio.sleep(0.2)
    blocker.execute("COMMIT")
    blocker.close()
    await eventually(lambda: job.job_id in coord.coordinator.scheduler.jobs, what="the job read back")
    await asyncio.sleep(1.5)  # past the lease
    assert back.pending("cancel") == 0  # it was told NOT_HELD, and the job ran again as attempt 2
    back.result(job.job_id, a.attempt)
    assert (await back.next("result_ack")).accepted
    assert [e["reason"] for e in coord.db.events(job.job_id)] == [
        "SUBMITTED",
        "ASSIGNED",
        "ACCEPTED",
        "COMPLETED",
    ]


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_the_slot_of_a_job_being_read_back_stays_taken(coord: Harness) -> None:
    alice, miner, job, _ = await running_job(coord)
    blocker = await fail_a_cancel(coord, job.job_id)
    other = asyncio.create_task(alice.submit({"y": 2}))  # the slot looked free: the miner got two jobs
    await asyncio.sleep(0.2)
    blocker.execute("COMMIT")
    blocker.close()
    queued = await other
    await eventually(lambda: job.job_id in coord.coordinator.scheduler.jobs, what="the job read back")
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    assert (list(session.held), session.reserved) == ([job.job_id], 0)
    assert (await alice.get(queued.job_id)).state == QUEUED and miner.pending("assignment") == 0


async def test_a_change_built_on_a_failed_one_does_not_land(coord: Harness) -> None:
    """miner-00's failure report is refused by the store while the job, requeued in memory, is already
    assigned to miner-01: that assignment must not land over a requeue that never did (the store had
    sequence 3 then 5, the counts of jobs by state drifted for good, a watcher was told CANCELED)."""
    alice = coord.client("alice")
    m0 = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await m0.assignments(1)
    m1 = await coord.stream_miner("miner-01", slots=1)
    m0.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING stored")
    scheduler = coord.coordinator.scheduler
    watch = alice.watch(job.job_id)
    assert (await anext(watch)).job.state == RUNNING
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'FLAKY'")
    blocker = held_lock(coord)
    m0.failure(a.job.job_id, a.attempt, retryable=True, code="FLAKY")
    await eventually(
        lambda: scheduler.by_miner["miner-01"].held, what="the job assigned to miner-01 in memory"
    )
    blocker.execute("COMMIT")
    blocker.close()
    await m0.wait_closed()  # the failed commit ends miner-00's stream
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    allow(coord, "job_events")
    assert [e["sequence"] for e in coord.db.events(job.job_id)] == [1, 2, 3]
    assert m1.pending("assignment") == 0
    # read back as RUNNING on miner-00, which is gone: after the grace period it runs again, on miner-01
    [b] = await m1.assignments(1)
    assert (b.job.job_id, b.attempt) == (job.job_id, 2)
    m1.result(b.job.job_id, b.attempt)
    states = [update.job.state async for update in watch]
    assert CANCELED not in states and states[-1] == COMPLETED, states
    events = coord.db.events(job.job_id)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert [e["reason"] for e in events] == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "MINER_GONE", "ASSIGNED",
                                             "ACCEPTED", "COMPLETED"]  # fmt: skip
    assert not any(scheduler.active_counts.values())  # as the store has it: no active job


async def test_a_submit_whose_caller_went_away_mid_write_still_runs(coord: Harness) -> None:
    alice = coord.client("alice")
    blocker = held_lock(coord)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice.jobs.SubmitJob(alice.request({"x": 1}), metadata=alice.metadata, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    blocker.execute("COMMIT")
    blocker.close()
    [(job_id,)] = await eventually(lambda: coord.db.query("SELECT job_id FROM jobs"), what="the job stored")
    miner = await coord.stream_miner("miner-00", slots=1)  # it was forgotten in memory, never dispatched
    [a] = await miner.assignments(1)
    assert a.job.job_id == job_id


async def test_a_write_that_keeps_failing_is_retried_with_backoff(coord: Harness, caplog) -> None:
    alice = coord.client("alice")
    m0 = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await m0.assignments(1)
    await coord.stream_miner("miner-01", slots=1)
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'ASSIGNED' AND NEW.attempt = 2")
    caplog.set_level(logging.WARNING, logger="coordinator.scheduler")
    m0.failure(a.job.job_id, a.attempt, retryable=True, code="FLAKY")
    await asyncio.sleep(1.0)
    restores = sum("jobs restored from the store" in r.getMessage() for r in caplog.records)
    assert 3 <= restores <= 8, restores  # 0, 0.05, 0.1, 0.2, 0.4 s...: it was ~500 per second
    allow(coord, "job_events")
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="assigned once writes land")


@pytest.mark.coordinator(retry_backoff_base_seconds=5.0, retry_backoff_max_seconds=5.0)
async def test_the_retry_backoff_is_stored(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.failure(a.job.job_id, a.attempt, retryable=True, code="FLAKY")
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="QUEUED stored")
    in_memory = coord.coordinator.scheduler.jobs[job.job_id].not_before_us
    stored = coord.db.scalar("SELECT not_before_us FROM jobs WHERE job_id = ?", (job.job_id,))
    assert in_memory > 0 and stored == in_memory  # a restart (or a read back) kept no backoff


@pytest.mark.coordinator(lease_seconds=30.0)  # the heartbeat timeout (1 s) comes first
async def test_a_miner_whose_session_closes_in_a_failed_commit_is_still_told_to_go(coord: Harness) -> None:
    """Sessions live in memory only: one closed by a decision whose write failed (its job's requeue) is
    closed all the same. Its miner was never told, and held a stream nobody served, for good."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1, heartbeat=False)  # falls silent
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING stored")
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'HEARTBEAT_TIMEOUT'")
    go_away = await miner.next("go_away")
    assert go_away.reason == "HEARTBEAT_TIMEOUT"
    await miner.wait_closed()
    allow(coord, "job_events")
    # read back RUNNING on a miner that is gone: requeued after the grace period, as after any lost stream
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="requeued")
    assert [e["reason"] for e in coord.db.events(job.job_id)][-1] == "MINER_GONE"


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_slot_freed_by_a_change_that_fails_is_not_given_away(coord: Harness) -> None:
    """A cancel frees the miner's only slot; a submit fills it before the cancel's write fails. The miner
    still runs the first job (it was never told): the second assignment must not land (it did, and the
    one-slot miner held two jobs)."""
    alice, miner, job, _ = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    blocker = held_lock(coord)
    cancel = asyncio.create_task(scheduler.cancel(job.job_id, None, "fails"))
    await eventually(lambda: scheduler._unsettled.get(job.job_id) is not None, what="the cancel queued")
    other = asyncio.create_task(alice.submit({"y": 2}))
    await eventually(lambda: len(scheduler.by_miner["miner-00"].held) == 1, what="the slot filled in memory")
    blocker.execute("COMMIT")
    blocker.close()
    with pytest.raises(sqlite3.IntegrityError):
        await cancel
    with pytest.raises(grpc.aio.AioRpcError):  # built on the freed slot: refused with it
        await other
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    session = scheduler.by_miner["miner-00"]
    assert (list(session.held), session.reserved) == ([job.job_id], 0)
    assert miner.peak_held == 1 and coord.db.scalar("SELECT count(*) FROM jobs") == 1
    allow(coord, "job_events")


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_reserved_slot_moves_with_its_miner_to_a_new_session(coord: Harness) -> None:
    alice, miner, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, job.job_id)
    other = asyncio.create_task(alice.submit({"y": 2}))
    await eventually(lambda: scheduler.queues.depth == 1, what="the other job queued (the slot is reserved)")
    await miner.kill()
    back = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, a.attempt),))
    assert scheduler.by_miner["miner-00"].reserved == 1  # the new session took the old one's reservation
    await asyncio.sleep(0.2)
    blocker.execute("COMMIT")
    blocker.close()
    queued = await other
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    session = scheduler.by_miner["miner-00"]
    assert (list(session.held), session.reserved, session.free) == ([job.job_id], 0, 0)
    assert (await alice.get(queued.job_id)).state == QUEUED and back.pending("assignment") == 0


async def test_a_batch_waiting_on_an_idempotency_key_dispatches_nothing_before_its_write(
    coord: Harness,
) -> None:
    """A SubmitJobs whose later job waits for another submit of the same key: its earlier jobs were
    dispatched meanwhile, their assignments written before their inserts (then overwritten as QUEUED)."""
    alice = coord.client("alice")
    first = asyncio.create_task(alice.submit({"k": 0}, idempotency_key="k1"))
    blocker = held_lock(coord)  # the first submit of k1 stays in flight
    await asyncio.sleep(0.1)
    requests = [alice.request({"a": 1}), alice.request({"k": 0}, idempotency_key="k1")]
    batch = asyncio.ensure_future(
        alice.jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=requests), metadata=alice.metadata)
    )
    await asyncio.sleep(0.1)
    miner = await coord.stream_miner("miner-00", slots=2)
    await asyncio.sleep(0.2)
    assert miner.pending("assignment") == 0  # nothing of the batch is visible yet
    blocker.execute("COMMIT")
    blocker.close()
    await first
    jobs = [r.job for r in (await batch).responses]
    assigned = await miner.assignments(2)
    assert {a.job.job_id for a in assigned} >= {jobs[0].job_id}
    for job in jobs:
        events = coord.db.events(job.job_id)
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        assert coord.db.job_state(job.job_id) == events[-1]["to_state"]


@pytest.mark.coordinator(reconnect_grace_seconds=30.0)
async def test_a_session_is_written_before_what_is_decided_while_it_is_welcomed(coord: Harness) -> None:
    """The new session's decision (requeue a job its miner no longer lists) was queued only after the
    welcome was written: a client's cancel in between landed first, and was then overwritten as QUEUED."""
    from coordinator.domain.model import Capabilities

    alice = coord.client("alice")
    scheduler = coord.coordinator.scheduler
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    await miner.assignments(1)
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="ASSIGNED stored")
    await miner.kill()
    await eventually(lambda: scheduler.orphans.get("miner-00"), what="orphaned")
    _, _, pending = scheduler.open_session("miner-00", Capabilities(slots=1), "unary", [])
    committing = scheduler.queue_commit(pending)  # as Connect does now, before writing the welcome
    canceled = await scheduler.cancel(job.job_id, "alice", "bye")  # while the welcome is written
    await scheduler.finish_commit(pending, committing)
    assert canceled.state == CANCELED and coord.db.job_state(job.job_id) == CANCELED
    assert [e["reason"] for e in coord.db.events(job.job_id)][-2:] == ["MINER_LOST_JOB", "CANCELED_BY_CLIENT"]


async def test_a_result_beyond_what_the_ledger_can_book_is_refused_alone(coord: Harness) -> None:
    """10^10 units overflowed a 64-bit ledger entry inside the writer: the whole group failed, other
    clients' submits with it."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    result = mpb.Result(job_id=job.job_id, attempt=a.attempt, result=struct({"ok": True}),
                        units="10000000000", unit_type="tokens")  # fmt: skip
    miner.send(results=mpb.Results(results=[result]))
    ack = await miner.next("result_ack")
    assert (ack.accepted, ack.reason) == (False, "INVALID_RESULT")
    assert (await alice.submit({"y": 2})).state in (QUEUED, ASSIGNED)


async def test_a_result_for_a_job_that_cannot_be_read_back_is_answered_retry_once(coord: Harness) -> None:
    """Shutting down, a job taken out after a failed commit is not read back: a result for it is answered
    UNAVAILABLE at once (it recursed until RecursionError). Not JOB_NOT_HELD: the job is the miner's in the
    store, and the next coordinator gives it back when the miner returns listing it."""
    from coordinator.domain.errors import CoordinatorError, Kind
    from coordinator.domain.model import PayloadKind
    from coordinator.scheduler.engine import ResultIn

    _, _, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    scheduler.stopping = True
    try:
        with pytest.raises(sqlite3.IntegrityError):
            await scheduler.cancel(job.job_id, None, "fails")
        assert scheduler._detached[job.job_id].task is None
        r = ResultIn(job.job_id, a.attempt, b"{}", PayloadKind(1), b"\0" * 32, "1", "jobs")
        with pytest.raises(CoordinatorError) as refused:
            await asyncio.wait_for(scheduler.complete(scheduler.by_miner["miner-00"], [r]), 5)
        assert (refused.value.kind, refused.value.reason) == (Kind.UNAVAILABLE, "JOB_RESTORING")
    finally:
        scheduler.stopping = False


def held_on(coord: Harness, miner: str) -> int:
    return coord.db.scalar(
        "SELECT count(*) FROM jobs WHERE miner_id = ? AND state IN (?, ?)", (miner, ASSIGNED, RUNNING)
    )


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_every_slot_freed_by_an_unsettled_change_counts_not_only_the_last(coord: Harness) -> None:
    """A 2-slot miner: one cancel (it fails) and then another (it lands) free both slots, and two submits fill
    them. Only the last change of the miner's slots was required: three jobs on two slots."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=2)
    x, w = await alice.submit({"x": 1}), await alice.submit({"w": 1})
    await miner.assignments(2)
    scheduler = coord.coordinator.scheduler
    refuse(coord, x.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    blocker = held_lock(coord)
    fails = asyncio.create_task(scheduler.cancel(x.job_id, None, "fails"))
    await eventually(lambda: scheduler._unsettled.get(x.job_id) is not None, what="the first cancel queued")
    lands = asyncio.create_task(scheduler.cancel(w.job_id, None, "lands"))
    await eventually(lambda: scheduler._unsettled.get(w.job_id) is not None, what="the second cancel queued")
    submits = [asyncio.ensure_future(alice.submit({"z": n})) for n in range(2)]
    await eventually(
        lambda: len(scheduler.by_miner["miner-00"].held) == 2, what="both slots filled in memory"
    )
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.gather(fails, lands, *submits, return_exceptions=True)
    await eventually(lambda: x.job_id in scheduler.jobs, what="the job read back")
    session = scheduler.by_miner["miner-00"]
    assert len(session.held) <= 2 and held_on(coord, "miner-00") <= 2 and miner.peak_held <= 2
    allow(coord, "job_events")


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_slot_freed_and_refilled_in_one_decision_still_counts_an_earlier_free(coord: Harness) -> None:
    """A 2-slot miner holds x and w, two jobs queued behind them; x's cancel (it fails) frees a slot and fills it;
    w's failure frees the other and fills it, in one decision, which looked at its own free only. (A stream
    miner: a unary one is filled by its polls only, never in the decision that freed its slot.)"""
    from coordinator.scheduler.engine import FailureIn

    alice = coord.client("alice")
    scheduler = coord.coordinator.scheduler
    await coord.stream_miner("miner-00", slots=2)
    session = scheduler.by_miner["miner-00"]
    x, w = await alice.submit({"x": 1}), await alice.submit({"w": 1})
    assert set(session.held) == {x.job_id, w.job_id}
    queued = [asyncio.ensure_future(alice.submit({"q": n})) for n in range(2)]
    await eventually(lambda: scheduler.queues.depth == 2, what="two jobs queued (the miner is full)")
    refuse(coord, x.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    blocker = held_lock(coord)
    fails = asyncio.create_task(scheduler.cancel(x.job_id, None, "fails"))
    await eventually(lambda: scheduler._unsettled.get(x.job_id) is not None, what="the cancel queued")
    attempt = session.held[w.job_id].attempt
    failure = asyncio.create_task(scheduler.fail(session, FailureIn(w.job_id, attempt, False, "BROKEN", "")))
    await eventually(lambda: len(session.held) == 2 and w.job_id not in session.held, what="refilled")
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.gather(fails, failure, *queued, return_exceptions=True)
    await eventually(lambda: x.job_id in scheduler.jobs, what="the job read back")
    assert len(session.held) <= 2 and held_on(coord, "miner-00") <= 2
    allow(coord, "job_events")


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_failed_change_does_not_refuse_an_assignment_that_did_not_need_its_slot(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=2)
    x = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    scheduler = coord.coordinator.scheduler
    refuse(coord, x.job_id, "receipts")
    blocker = held_lock(coord)
    miner.result(a.job.job_id, a.attempt)
    await eventually(lambda: scheduler._unsettled.get(x.job_id) is not None, what="the result queued")
    other = asyncio.ensure_future(alice.submit({"y": 2}))  # into the other slot, free all along
    await eventually(lambda: len(scheduler.by_miner["miner-00"].held) == 1, what="assigned in memory")
    blocker.execute("COMMIT")
    blocker.close()
    assert (await other).state == ASSIGNED  # it was refused with the result (DependencyFailed)
    allow(coord, "receipts")


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_miner_away_when_its_cancel_failed_gets_its_slot_reserved_on_return(coord: Harness) -> None:
    alice, miner, job, a = await running_job(coord)
    waiting = await alice.submit({"y": 2})  # queued: the only slot is taken
    await miner.kill()
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: scheduler.orphans.get("miner-00"), what="orphaned")
    blocker = await fail_a_cancel(coord, job.job_id)  # no live session: nothing reserved
    back = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, a.attempt),))
    await asyncio.sleep(0.2)
    blocker.execute("COMMIT")
    blocker.close()
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    session = scheduler.by_miner["miner-00"]
    assert list(session.held) == [job.job_id] and back.pending("assignment") == 0
    assert (await alice.get(waiting.job_id)).state == QUEUED


async def test_an_expiry_that_keeps_failing_to_commit_backs_off(coord: Harness, caplog) -> None:
    """The expiry was due again the moment the job was read back: ~700 write-and-read-back rounds a second,
    then an OverflowError in the backoff left the job in memory with no timer."""
    alice = coord.client("alice")
    job = await alice.submit({"x": 1}, ttl_s=1)
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'TTL_EXPIRED'")
    caplog.set_level(logging.WARNING, logger="coordinator.scheduler")
    await asyncio.sleep(2.0)  # about a second of failing expiries: 0, 0.05, 0.1, 0.2, 0.4 s... apart
    restores = sum("jobs restored from the store" in r.getMessage() for r in caplog.records)
    assert 2 <= restores <= 10, restores
    assert not any("could not place" in r.getMessage() for r in caplog.records)
    allow(coord, "job_events")
    await eventually(lambda: coord.db.job_state(job.job_id) == EXPIRED, within=10, what="expired at last")


async def test_a_batch_job_does_not_expire_before_its_insert(coord: Harness) -> None:
    """A SubmitJobs waiting on another submit of one of its keys: its first job's expiry fired meanwhile
    and was written before the job's insert (stored QUEUED with a TTL_EXPIRED event; every later write of
    it failed)."""
    alice = coord.client("alice")
    first = asyncio.create_task(alice.submit({"k": 0}, idempotency_key="k1"))
    blocker = held_lock(coord)
    await asyncio.sleep(0.1)
    requests = [alice.request({"a": 1}, ttl_s=1), alice.request({"k": 0}, idempotency_key="k1")]
    batch = asyncio.ensure_future(
        alice.jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=requests), metadata=alice.metadata)
    )
    await asyncio.sleep(1.5)  # past the first job's time to live, while the batch waits for k1
    blocker.execute("COMMIT")
    blocker.close()
    await first
    job = (await batch).responses[0].job
    await eventually(lambda: coord.db.job_state(job.job_id) == EXPIRED, what="expired after its insert")
    assert [e["reason"] for e in coord.db.events(job.job_id)] == ["SUBMITTED", "TTL_EXPIRED"]


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_job_read_back_does_not_land_on_a_miner_that_no_longer_lists_it(coord: Harness) -> None:
    """The miner came back without the job (it lost it) and took a queued job in its only slot: the job read
    back was put on top of it (two jobs on one slot, in memory and in the store)."""
    alice, miner, job, _ = await running_job(coord)
    waiting = await alice.submit({"y": 2})
    await miner.kill()
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: scheduler.orphans.get("miner-00"), what="orphaned")
    blocker = await fail_a_cancel(coord, job.job_id)
    back = await coord.stream_miner("miner-00", slots=1)  # lists nothing
    await asyncio.sleep(0.2)
    blocker.execute("COMMIT")
    blocker.close()
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="requeued: its miner lost it")
    assert [e["reason"] for e in coord.db.events(job.job_id)][-1] == "MINER_LOST_JOB"
    assert list(scheduler.by_miner["miner-00"].held) == [waiting.job_id] and held_on(coord, "miner-00") == 1
    assert back.peak_held == 1


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_reservation_is_not_moved_for_a_job_the_new_session_does_not_list(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=2)
    x, w = await alice.submit({"x": 1}), await alice.submit({"w": 1})
    attempts = {a.job.job_id: a.attempt for a in await miner.assignments(2)}
    await eventually(lambda: held_on(coord, "miner-00") == 2, what="both stored as assigned")
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, x.job_id)
    await miner.kill()
    await coord.stream_miner("miner-00", slots=1, running_jobs=((w.job_id, attempts[w.job_id]),))
    assert scheduler.by_miner["miner-00"].reserved == 0
    blocker.execute("COMMIT")
    blocker.close()
    await eventually(lambda: x.job_id in scheduler.jobs, what="the job read back")
    session = scheduler.by_miner["miner-00"]
    assert list(session.held) == [w.job_id] and session.free == 0
    await eventually(lambda: coord.db.job_state(x.job_id) == QUEUED, what="x requeued")


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_lost_job_whose_requeue_fails_too_stays_off_the_miner(coord: Harness) -> None:
    """Read back onto a miner that came back without it, the job's requeue (MINER_LOST_JOB) fails as well:
    the job was then reserved on, and put on, that miner's full session."""
    alice, miner, job, _ = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, job.job_id)
    blocker.execute(
        f"CREATE TRIGGER test_refuse_job_events BEFORE INSERT ON job_events WHEN NEW.job_id = '{job.job_id}' "
        "AND NEW.reason = 'MINER_LOST_JOB' BEGIN SELECT RAISE(ABORT, 'test: refused'); END"
    )
    await miner.kill()
    await eventually(lambda: "miner-00" not in scheduler.by_miner, what="the session closed")
    other = asyncio.ensure_future(alice.submit({"y": 2}))
    await asyncio.sleep(0.1)
    back = await coord.stream_miner("miner-00", slots=1)  # lists nothing; takes the other job
    blocker.execute("COMMIT")
    blocker.close()
    await other
    await asyncio.sleep(0.5)  # read back, requeue refused, read back again
    session = scheduler.by_miner["miner-00"]
    assert job.job_id not in session.held and len(session.held) + session.reserved <= 1
    assert back.peak_held == 1
    allow(coord, "job_events")
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, within=10, what="requeued at last")
    assert held_on(coord, "miner-00") == 1  # the other job only
    # its miner is connected, without it: lost (as the immediate requeue says), not gone, after the backoff too
    requeues = [e["reason"] for e in coord.db.events(job.job_id) if e["to_state"] == QUEUED]
    assert requeues[-1] == "MINER_LOST_JOB", requeues


@pytest.mark.coordinator(retry_backoff_base_seconds=0.5, retry_backoff_max_seconds=0.5)
async def test_a_job_made_ready_by_two_timers_is_queued_once(coord: Harness) -> None:
    """A job in retry backoff whose cancel failed is read back with its own ready timer besides the old one:
    both pushed it, and the queue depth stayed one too high for good."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.failure(a.job.job_id, a.attempt, retryable=True, code="FLAKY")  # ready again in 0.5 s
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="requeued")
    await alice.submit({"y": 2})  # takes the only slot
    await miner.assignments(1)
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    assert (await rpc_error(alice.cancel(job.job_id))).code == grpc.StatusCode.INTERNAL
    allow(coord, "job_events")
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    await asyncio.sleep(1.0)  # both ready timers have fired
    assert scheduler.queues.depth == 1
    other = await coord.stream_miner("miner-01", slots=1)
    assert (await other.assignments(1))[0].job.job_id == job.job_id
    await eventually(lambda: scheduler.queues.depth == 0, what="the queue empty")


@pytest.mark.coordinator(retry_backoff_base_seconds=30.0, retry_backoff_max_seconds=30.0)
async def test_a_timer_dispatch_and_a_cancel_in_one_loop_turn_are_written_in_that_order(
    coord: Harness,
) -> None:
    """The dispatch's write was queued only when its task first ran, after the cancel decided in the same
    turn: stored ASSIGNED under a CANCELED event log, the miner told cancel then assignment."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1}, max_attempts=3)
    [a] = await miner.assignments(1)
    miner.failure(a.job.job_id, a.attempt, retryable=True, code="FLAKY")  # waits out a 30 s backoff
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="requeued")
    scheduler = coord.coordinator.scheduler
    live = scheduler.jobs[job.job_id]
    live.not_before_us = 0
    scheduler._dispatch_or_queue(live)  # what the ready timer does, in the same turn as the cancel below
    canceled = await scheduler.cancel(job.job_id, None, "same turn")
    assert canceled.state == CANCELED
    await eventually(lambda: coord.db.job_state(job.job_id) == CANCELED, what="stored CANCELED")
    events = coord.db.events(job.job_id)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["reason"] == "CANCELED_BY_CLIENT"


async def fail_while_the_miner_comes_back(
    coord: Harness, message: str, table: str, condition: str, listed: bool
):  # type: ignore[no-untyped-def]
    """miner-00 sends message ("result" or "accept") about its job; the write waits for the file lock while
    the miner reconnects (listing the job, or not); then the write fails (a trigger on table refuses the
    job's row where condition). Returns (client, job, first assignment, the miner back)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)
    try:
        if message == "result":
            miner.result(a.job.job_id, a.attempt)
        else:
            miner.accept(a)
        await eventually(lambda: scheduler._unsettled.get(job.job_id) is not None, what="the change queued")
        await miner.kill()
        running = ((job.job_id, a.attempt),) if listed else ()
        back = await coord.stream_miner("miner-00", slots=1, running_jobs=running)
        blocker.execute(
            f"CREATE TRIGGER test_refuse_{table} BEFORE INSERT ON {table} WHEN NEW.job_id = '{job.job_id}' "
            f"AND {condition} BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    await eventually(lambda: scheduler._unsettled.get(job.job_id) is None, what="the change's write failed")
    allow(coord, table)
    return alice, job, a, back


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_result_failing_after_its_miner_came_back_without_the_job_requeues_it(coord: Harness) -> None:
    """The result's write waits for the disk; the miner reconnects, listing nothing (the job is done on its
    side); then the write fails. The job was read back onto the new session, which never had it: its slot
    was blocked until the 30 s lease ran out. The session that held it is the one of the decision."""
    alice, job, _, back = await fail_while_the_miner_comes_back(
        coord, "result", "receipts", "1", listed=False
    )
    [again] = await back.assignments(1, within=10)  # requeued at once (MINER_LOST_JOB), not after the lease
    assert (again.job.job_id, again.attempt) == (job.job_id, 2)
    assert "MINER_LOST_JOB" in [e["reason"] for e in coord.db.events(job.job_id)]
    back.result(again.job.job_id, again.attempt)
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2) and coord.db.count("receipts", job.job_id) == 1
    assert coord.coordinator.scheduler.by_miner["miner-00"].reserved == 0


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_an_accept_failing_after_its_miner_came_back_listing_the_job_leaves_it_there(
    coord: Harness,
) -> None:
    """The accept's write waits for the disk; the miner reconnects listing the job (its new session keeps
    it); then the write fails. The job stays with the miner: it was requeued as lost while the miner ran it,
    and given to it a second time."""
    alice, job, a, back = await fail_while_the_miner_comes_back(
        coord, "accept", "job_events", "NEW.reason = 'ACCEPTED'", listed=True
    )
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    assert list(scheduler.by_miner["miner-00"].held) == [job.job_id]
    back.result(job.job_id, a.attempt)
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert "MINER_LOST_JOB" not in [e["reason"] for e in coord.db.events(job.job_id)]
    assert back.pending("assignment") == 0 and scheduler.by_miner["miner-00"].reserved == 0


# A change decided while a job is an orphan of its miner (no session holds it) that fails while the miner has
# a session opened before the change: the job was read back onto that session, which never had it (beyond
# its slots if they were all taken). The job gets there when its result waits for the disk, the miner comes
# back without it, and the result and then its requeue as lost fail: read back a second time, it waits out
# its write backoff as an orphan while the miner's new session is open. Found by the randomized test.


async def orphan_beside_a_new_session(coord: Harness, slots: int, failures: int = 2):  # type: ignore[no-untyped-def]
    """A job RUNNING on miner-00 that becomes an orphan of miner-00 (its writes refused) while the miner's new
    session, opened before, is open and never had it. Returns (client, job, the miner back)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=slots)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING stored")
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)
    try:
        miner.result(a.job.job_id, a.attempt)  # its write waits for the lock
        await eventually(lambda: scheduler._unsettled.get(job.job_id) is not None, what="the result queued")
        await miner.kill()
        back = await coord.stream_miner("miner-00", slots=slots)  # comes back listing nothing
        blocker.execute(  # every event of the job is refused: the result, its requeue as lost, ...
            f"CREATE TRIGGER test_refuse_job_events BEFORE INSERT ON job_events WHEN NEW.job_id = "
            f"'{job.job_id}' BEGIN SELECT RAISE(ABORT, 'test: refused'); END"
        )
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    # ... so the job, read back again, waits out its write backoff as an orphan of miner-00
    await eventually(
        lambda: job.job_id in scheduler.orphans.get("miner-00", {})
        and scheduler._write_failures.get(job.job_id, 0) >= failures,
        what="the job an orphan",
    )
    session = scheduler.by_miner["miner-00"]
    assert job.job_id not in session.held and session.reserved == 0
    return alice, job, back


async def cancel_fails(coord: Harness, job_id: str) -> None:
    """A cancel decided now (the job still an orphan) that fails; then the job is read back."""
    scheduler = coord.coordinator.scheduler
    assert job_id in scheduler.orphans.get("miner-00", {})
    with pytest.raises(sqlite3.IntegrityError):
        await scheduler.cancel(job_id, None, "fails")
    allow(coord, "job_events")
    await eventually(lambda: job_id in scheduler.jobs, what="the job read back")


def cancels(miner: StreamMiner) -> list[tuple[str, int, str]]:
    return [(c.job_id, c.attempt, c.reason) for kind, c in miner.log if kind == "cancel"]


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_cancel_failing_while_the_job_is_an_orphan_does_not_put_it_on_the_new_session(
    coord: Harness,
) -> None:
    alice, job, back = await orphan_beside_a_new_session(coord, slots=1)
    await cancel_fails(coord, job.job_id)
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    placed_on_new_session, reserved = job.job_id in session.held, session.reserved

    canceled = await alice.cancel(job.job_id)  # lands now
    assert canceled.state == CANCELED
    await eventually(lambda: coord.db.job_state(job.job_id) == CANCELED, what="stored CANCELED")
    await asyncio.sleep(0.2)  # (a cancel sent to the miner would be there by now)
    assert not placed_on_new_session and not cancels(back), (
        f"the job was read back onto miner-00's new session (held: {placed_on_new_session}, {reserved} "
        f"reserved), which never had it; that session was then told to cancel it: {cancels(back)}"
    )


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_cancel_failing_while_the_job_is_an_orphan_does_not_overfill_the_new_session(
    coord: Harness,
) -> None:
    """The same, the new session (2 slots) busy with two other jobs: it ends up holding three."""
    alice, job, back = await orphan_beside_a_new_session(coord, slots=2, failures=5)  # backoff 0.4 s
    others = [await alice.submit({"y": n}) for n in range(2)]
    assert sorted(a.job.job_id for a in await back.assignments(2)) == sorted(o.job_id for o in others)
    await cancel_fails(coord, job.job_id)
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    assert len(session.held) + session.reserved <= session.slots, (
        f"miner-00's new session holds {sorted(session.held)} + {session.reserved} reserved on "
        f"{session.slots} slots (the orphan {job.job_id} among them)"
    )


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_cancel_of_an_orphan_failing_after_the_orphans_timer_does_not_put_it_on_the_new_session(
    coord: Harness,
) -> None:
    """The same, the cancel's write waiting until the orphans' timer has dropped the (canceled) job from the
    miner's orphans: nothing then showed that no session held it when the cancel was decided."""
    alice, job, back = await orphan_beside_a_new_session(coord, slots=1, failures=3)  # backoff 0.1 s
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)
    try:
        cancel = asyncio.create_task(scheduler.cancel(job.job_id, None, "fails"))
        await eventually(
            lambda: job.job_id not in scheduler.orphans.get("miner-00", {}), what="the orphans' timer"
        )
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    with pytest.raises(sqlite3.IntegrityError):
        await cancel
    allow(coord, "job_events")
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    session = scheduler.by_miner["miner-00"]
    assert job.job_id not in session.held and session.reserved == 0
    canceled = await alice.cancel(job.job_id)
    assert canceled.state == CANCELED
    await asyncio.sleep(0.2)  # (a cancel sent to the miner would be there by now)
    assert not cancels(back)


async def requeued_after_its_miner_vanished(coord: Harness, miner: str):  # type: ignore[no-untyped-def]
    """Job J assigned to a stream miner (attempt 1) that vanishes: J is requeued (MINER_GONE) once the
    reconnect grace runs out. Returns (client, J, the miner, its assignment)."""
    alice = coord.client("alice")
    m = await coord.stream_miner(miner, slots=1)
    job = await alice.submit({"j": 1})
    [a1] = await m.assignments(1)
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="J assigned")
    await m.kill()
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="J requeued (MINER_GONE)")
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: scheduler.jobs[job.job_id].in_queue, what="J back in the ready queue")
    return alice, job, m, a1


async def drain_then_release(coord: Harness, session, blocker: sqlite3.Connection) -> bool:  # type: ignore[no-untyped-def]
    """Drain miner-00 while the file lock is held, then let the writes go; whether the drain closed the
    session at once."""
    try:
        # (in memory, as DrainMiner's once its row is stored: the RPC's own write would wait behind the lock)
        coord.coordinator.scheduler.drain(session, "ADMIN")
        await asyncio.sleep(0.2)
        return session.closed
    finally:
        blocker.execute("COMMIT")
        blocker.close()


async def the_empty_drained_session_ended(miner, session) -> None:  # type: ignore[no-untyped-def]
    """A drained session whose only job was undone by a failed write ends (it stayed open, idle, for good)."""
    await asyncio.sleep(1.0)
    go_aways = [m.reason for kind, m in miner.log if kind == "go_away"]
    kinds = [kind for kind, _ in miner.log]
    assert "drain" in kinds and kinds.index("drain") < kinds.index("go_away"), kinds
    assert session.closed and go_aways == ["DRAINED"], (
        f"the drained session holds nothing ({dict(session.held)}, {session.reserved} reserved) and is still "
        f"open (closed: {session.closed}, draining: {session.draining}); go-aways {go_aways}"
    )


async def the_drained_session_waited(
    coord: Harness, miner, job_id: str, attempt: int, closed_early: bool
) -> None:  # type: ignore[no-untyped-def]
    """After a failed write, J (read back) is still the draining miner's: its session was not closed early
    nor told to go, J was not requeued as gone; once the miner finishes J, the session ends (DRAINED)."""
    await eventually(lambda: job_id in coord.coordinator.scheduler.jobs, what="J read back")
    await asyncio.sleep(1.0)  # past the grace period
    go_aways = [m.reason for kind, m in miner.log if kind == "go_away"]
    cancels = [c.job_id for kind, c in miner.log if kind == "cancel"]
    events = [e["reason"] for e in coord.db.events(job_id)]
    assert not closed_early and not go_aways and "MINER_GONE" not in events, (
        f"the draining session was closed early (closed: {closed_early}, go-aways {go_aways}); J's events "
        f"{events}; cancels sent to the miner: {cancels}"
    )
    miner.result(job_id, attempt)  # its last job done, the drained session ends
    assert (await miner.next("go_away")).reason == "DRAINED"
    assert coord.db.job_state(job_id) == COMPLETED


# Found by a review: a reservation moved to a session of another miner (or for another attempt) that listed
# the job, a job read back onto a session that listed another attempt, and a drain that closed a session
# whose job was being read back.


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_a_reservation_stays_with_its_holder_when_another_miner_lists_a_stale_attempt(
    coord: Harness,
) -> None:
    """miner-02 ran job J (attempt 1), vanished, and J went to miner-01 (attempt 2) after the grace period.
    J's cancel fails; while J is read back, miner-02 comes back listing its stale attempt 1. J's reserved slot
    was moved from miner-01's session (whose miner runs J) to miner-02's: miner-01's session looked free,
    took two new jobs, and then J was put back on it (3 jobs on 2 slots)."""
    alice, job, m2, a1 = await requeued_after_its_miner_vanished(coord, "miner-02")
    scheduler = coord.coordinator.scheduler
    m1 = await coord.stream_miner("miner-01", slots=2)
    [a2] = await m1.assignments(1)
    assert (a2.job.job_id, a2.attempt) == (job.job_id, 2)
    k = await alice.submit({"k": 1})
    [ak] = await m1.assignments(1)
    assert ak.job.job_id == k.job_id
    await eventually(lambda: held_on(coord, "miner-01") == 2, what="J and K stored on miner-01")

    blocker = await fail_a_cancel(coord, job.job_id)  # J out of memory; its slot reserved on miner-01
    s1 = scheduler.by_miner["miner-01"]
    assert s1.reserved == 1
    try:
        await m2.connect(((job.job_id, a1.attempt),))  # stale: miner-02 never heard it lost J
        moved = (s1.reserved, scheduler.by_miner["miner-02"].reserved)
        submits = [asyncio.ensure_future(alice.submit({"y": n})) for n in range(2)]
        await eventually(lambda: scheduler.queues.depth + held_in_memory(scheduler, "miner-02") == 2,
                         what="two jobs queued or on miner-02")  # fmt: skip
        m1.result(k.job_id, ak.attempt)  # frees K's slot: the fill sees two free slots
        await eventually(lambda: k.job_id not in s1.held, what="K's result decided")
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.gather(*submits)
    await eventually(lambda: job.job_id in scheduler.jobs, what="J read back")
    await asyncio.sleep(0.3)
    held = sorted(s1.held)
    assert len(s1.held) + s1.reserved <= s1.slots and m1.peak_held <= 2, (
        f"miner-01 (2 slots) holds {len(held)} jobs, J among them: {job.job_id in s1.held}; peak {m1.peak_held};"
        f" reservations (miner-01, miner-02) after miner-02's hello: {moved}"
    )
    assert moved == (1, 0)
    assert (job.job_id, a1.attempt, "NOT_HELD") in [
        (c.job_id, c.attempt, c.reason) for k, c in m2.log if k == "cancel"
    ]


def held_in_memory(scheduler, miner: str) -> int:  # type: ignore[no-untyped-def]
    session = scheduler.by_miner.get(miner)
    return 0 if session is None else len(session.held)


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_a_drained_session_waits_for_its_job_being_read_back(coord: Harness) -> None:
    """J's cancel fails (the miner still runs J: its slot is reserved on the session); the miner is drained
    while J is read back. drain() saw no held job (J out of memory) and closed the session at once (GoAway
    DRAINED, on which the SDK miner exits killing J); J was read back as an orphan and requeued after the
    grace period (MINER_GONE), the miner never told to cancel it. Now the session waits for J."""
    alice = coord.client("alice")
    scheduler = coord.coordinator.scheduler
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"j": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING stored")
    blocker = await fail_a_cancel(coord, job.job_id)
    session = scheduler.by_miner["miner-00"]
    assert session.reserved == 1
    closed_early = await drain_then_release(coord, session, blocker)
    await the_drained_session_waited(coord, miner, job.job_id, a.attempt, closed_early)


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_a_job_read_back_is_not_put_on_a_session_that_listed_another_attempt(coord: Harness) -> None:
    """miner-00 runs J attempt 1, loses its stream, and J is requeued (MINER_GONE). It registers (unary)
    listing attempt 1: its poll is told NOT_HELD, and given attempt 2. J's cancel then fails; it registers
    again, still listing attempt 1. Read back, J (attempt 2) was put on the
    new session because its miner listed *some* attempt: that session held an attempt its miner never had
    nor listed (told NOT_HELD for attempt 1 at the same time), its slot taken until the lease ran out
    (30 s), instead of J being requeued at once."""
    from coordinator.domain.model import Capabilities

    _, job, _, a1 = await requeued_after_its_miner_vanished(coord, "miner-00")
    scheduler = coord.coordinator.scheduler
    listed = [(job.job_id, a1.attempt)]
    s1, _, pending = scheduler.open_session("miner-00", Capabilities(slots=1), "unary", listed)
    await scheduler.commit_pending(pending)
    _, cancels = await scheduler.poll(s1, 1, 5.0)
    assert [(c.job_id, c.attempt, c.reason) for c in cancels] == [(job.job_id, 1, "NOT_HELD")]
    assigned, _ = await scheduler.poll(s1, 1, 5.0)
    assert [(o.job.job_id, o.attempt) for o in assigned] == [(job.job_id, 2)]
    blocker = await fail_a_cancel(coord, job.job_id)
    try:
        s2, _, pending = scheduler.open_session("miner-00", Capabilities(slots=1), "unary", listed)
        await scheduler.commit_pending(pending)  # nothing to write
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(lambda: job.job_id in scheduler.jobs, what="J read back")
    await asyncio.sleep(0.2)
    cancels = [(c.job_id, c.attempt, c.reason) for c in s2.pending_cancels]
    held = {j: h.attempt for j, h in s2.held.items()}
    assert job.job_id not in s2.held, (
        f"the new session holds {held} (its miner listed attempt 1 only, and was never given attempt 2), "
        f"free {s2.free}; it is told {cancels}"
    )


# Found by a second review: drained sessions closed too early by a decision that then failed, or never closed
# after one; an SDK miner told to stop a job being read back that it was to keep. Each docstring tells what
# went wrong before the fix.


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_a_draining_session_whose_last_jobs_cancel_fails_is_not_closed(coord: Harness) -> None:
    """miner-00 runs J and is drained (its session waits for J). J's cancel is decided: the cancel frees the
    last held slot of a draining session, so the same decision closes the session (DRAINED). The cancel's
    write fails: the session stays closed and its GoAway DRAINED is sent all the same (_failed sends the
    GoAways of a failed decision), while the miner was never told to cancel J and still runs it. J is read
    back as an orphan (no live session: nothing reserved), requeued after the grace period (MINER_GONE).
    Expected, as in test_a_drained_session_waits_for_its_job_being_read_back: the session waits for J."""
    _, miner, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    await coord.admin().drain("miner-00")
    await miner.next("drain")
    session = scheduler.by_miner["miner-00"]
    assert not session.closed and list(session.held) == [job.job_id]
    blocker = await fail_a_cancel(coord, job.job_id)
    closed_by_the_failed_cancel = session.closed
    blocker.execute("COMMIT")
    blocker.close()
    await the_drained_session_waited(coord, miner, job.job_id, a.attempt, closed_by_the_failed_cancel)


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=0.5)
async def test_a_drain_while_the_last_jobs_cancel_is_written_waits_for_that_write(
    coord: Harness,
) -> None:
    """J's cancel is decided (its write waits for the file lock: J no longer held in memory), then miner-00
    is drained: drain() sees no held job and no reservation and closes the session at once (GoAway DRAINED
    sent). The cancel's write then fails: J is read back RUNNING on a miner that was sent away while it
    runs J (never told to cancel it), and requeued after the grace period (MINER_GONE)."""
    from test_failed_commit import allow, held_lock, refuse

    _, miner, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
    blocker = held_lock(coord)
    try:
        cancel = asyncio.create_task(scheduler.cancel(job.job_id, None, "fails"))
        await eventually(lambda: scheduler._unsettled.get(job.job_id) is not None, what="the cancel queued")
    except BaseException:
        blocker.close()
        raise
    closed_by_the_drain = await drain_then_release(coord, session, blocker)
    [error] = await asyncio.gather(cancel, return_exceptions=True)
    assert isinstance(error, sqlite3.IntegrityError), error
    allow(coord, "job_events")
    await the_drained_session_waited(coord, miner, job.job_id, a.attempt, closed_by_the_drain)


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_drained_session_whose_only_job_is_undone_is_closed(coord: Harness) -> None:
    """A submit hands J to miner-00 in the same write as J's insert; while that write waits, miner-00 is
    drained (it holds J in memory: the session waits for it). The write fails: J is forgotten and taken out
    of the session (_forget_failed_insert; the same with _detach for an assignment that fails), which is now
    draining with nothing held nor reserved, and is never closed: nothing fills it again. The miner (never
    told of J) is left connected, drained and idle, for good."""
    _, miner, session, blocker, submit = await assigned_behind_the_lock(coord)
    try:
        # (told once the write of its job has settled; in memory, as DrainMiner's once its row is
        # stored: the RPC's own write would wait behind the lock)
        coord.coordinator.scheduler.drain(session, "ADMIN")
        await asyncio.sleep(0.1)
        assert not session.closed
        blocker.execute(
            "CREATE TRIGGER test_refuse_jobs BEFORE INSERT ON jobs "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    await asyncio.gather(submit, return_exceptions=True)
    await eventually(lambda: not session.held, what="J forgotten")
    await the_empty_drained_session_ended(miner, session)


@pytest.mark.coordinator(lease_seconds=1.0, reconnect_grace_seconds=30.0)
async def test_an_sdk_miner_reconnecting_while_its_job_is_read_back_keeps_running_it(
    coord: Harness,
) -> None:
    """The SDK miner runs J; J's cancel fails; while J is read back the miner's stream is replaced and it
    reconnects listing J (attempt 1). open_session keeps J for it (no NOT_HELD: Detached.runs), but J is not in
    Welcome.resumed_jobs (it is not held at open), and the SDK cancels every running job the welcome does
    not name. J is then read back onto the new session (kept_by: listed) with a lease nobody renews: the
    job is killed on the miner and requeued when the lease runs out (LEASE_EXPIRED), instead of finishing
    as attempt 1 (docs/operations.md: 'a miner that came back listing the job ... keeps it')."""
    from aitbc.miner import Miner
    from coord_support import capabilities, miner_key

    started, release = asyncio.Event(), asyncio.Event()
    killed: list[str] = []

    async def hold(job):  # type: ignore[no-untyped-def]
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            killed.append(job.job_id)
            raise
        return {"ok": True}

    miner = Miner(coord.address, miner_key("miner-00"), hold, capabilities(slots=1), own_connection=True)
    coord.run_miner(miner)
    await eventually(lambda: miner.session_id, what="the SDK miner connected")
    alice = coord.client("alice")
    job = await alice.submit({"x": 1})
    await asyncio.wait_for(started.wait(), 5)
    await eventually(lambda: coord.db.job_state(job.job_id) in (ASSIGNED, RUNNING), what="J stored held")
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, job.job_id)
    try:
        # Another stream of miner-00 (listing J, so the reservation moves with it) replaces the SDK's
        # session: the SDK is told SESSION_REPLACED and reconnects at once, listing J (attempt 1).
        connects = miner.connects
        other = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, 1),))
        await eventually(lambda: miner.connects > connects, what="the SDK miner back")
        marker = scheduler._detached[job.job_id]
        session = scheduler.by_miner["miner-00"]
        assert marker.listed is not None and marker.listed[0] is session and session.reserved == 1
        await other.wait_closed()
        await asyncio.sleep(0.2)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(lambda: job.job_id in scheduler.jobs, what="J read back")
    await asyncio.sleep(1.5)  # past the lease
    release.set()
    done = await coord.finished(alice, job.job_id)
    events = [e["reason"] for e in coord.db.events(job.job_id)]
    assert not killed and done.attempt == 1 and "LEASE_EXPIRED" not in events, (
        f"the SDK miner killed J on reconnecting (killed: {killed}); J finished as attempt {done.attempt}; "
        f"events {events}"
    )


@pytest.mark.coordinator(lease_seconds=30.0, retry_backoff_base_seconds=1.0, retry_backoff_max_seconds=1.0)
async def test_a_drained_session_whose_only_assignment_fails_is_closed(coord: Harness) -> None:
    """The same through _detach: J, ready again after its retry backoff, is handed to miner-00 (in memory)
    while the file is locked; miner-00 is drained (it holds J: the session waits); the assignment's write
    fails. J is taken out of the session (it never heard of it), which stays open, draining and empty."""
    from test_failed_commit import allow, held_lock, refuse

    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    job = await alice.submit({"j": 1})
    [a] = await miner.assignments(1)
    miner.failure(a.job.job_id, a.attempt, retryable=True)  # ready again in 1 s
    await eventually(lambda: not session.held, what="J requeued in memory")
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="J requeued")
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'ASSIGNED' AND NEW.attempt = 2")
    blocker = held_lock(coord)
    try:
        await eventually(lambda: session.held, what="J handed to miner-00 again, in memory")
        assert coord.db.job_state(job.job_id) == QUEUED  # (its assignment waits for the lock)
        # (told once the write of its job has settled; in memory, as DrainMiner's once its row is
        # stored: the RPC's own write would wait behind the lock)
        scheduler.drain(session, "ADMIN")
        await asyncio.sleep(0.1)
        assert not session.closed
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(
        lambda: scheduler._unsettled.get(job.job_id) is None, what="the assignment's write failed"
    )
    await eventually(lambda: job.job_id not in scheduler._detached and job.job_id in scheduler.jobs,
                     what="J read back")  # fmt: skip
    allow(coord, "job_events")
    await the_empty_drained_session_ended(miner, session)


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_drained_session_ends_once_a_later_free_of_its_miner_settles(coord: Harness) -> None:
    """The session's own last result and then the cancel of its miner's orphan (queued behind it) both wait for
    the disk; the close check of the result found the cancel unsettled, and nothing checked again once it
    settled: the session stayed open, empty and draining, for good."""
    # J: an orphan of miner-00 (its backoff ~1.6 s) beside miner-00's live session `back` (1 slot, empty)
    alice, job, back = await orphan_beside_a_new_session(coord, slots=1, failures=7)
    allow(coord, "job_events")
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    k = await alice.submit({"k": 1})
    [ak] = await back.assignments(1)
    assert ak.job.job_id == k.job_id and job.job_id in scheduler.orphans.get("miner-00", {})
    scheduler.drain(session, "ADMIN")  # holds K: waits
    assert not session.closed
    blocker = held_lock(coord)
    try:
        back.result(k.job_id, ak.attempt)  # U2: frees K's slot; its fill registers the close check
        await eventually(lambda: scheduler._unsettled.get(k.job_id) is not None, what="K's result queued")
        cancel = asyncio.create_task(scheduler.cancel(job.job_id, None, "orphan"))  # U1: frees M's "slot"
        await eventually(lambda: scheduler._unsettled.get(job.job_id) is not None, what="J's cancel queued")
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await cancel
    await asyncio.sleep(1.0)
    go_aways = [m.reason for kind, m in back.log if kind == "go_away"]
    assert session.closed and go_aways == ["DRAINED"], (
        f"drained session holds {dict(session.held)}, {session.reserved} reserved, unsettled frees "
        f"{scheduler._unsettled_frees.get('miner-00')}; closed {session.closed}; go-aways {go_aways}"
    )


async def test_a_drained_stream_is_not_given_a_job_after_its_drain(coord: Harness) -> None:
    """A job handed to the miner in memory while its write waits, then a drain: the Drain left at once and
    the assignment once durable, so the miner was told to take no new work and then given some. Found by
    the randomized test with drains."""
    _, miner, session, blocker, submit = await assigned_behind_the_lock(coord)
    try:
        # (in memory, as DrainMiner's once its row is stored: the RPC's own write would wait behind the lock)
        coord.coordinator.scheduler.drain(session, "ADMIN")
        await asyncio.sleep(0.2)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    job = await submit
    [a] = await miner.assignments(1)
    await miner.next("drain")
    order = [kind for kind, _ in miner.log]
    assert order.index("assignments") < order.index("drain"), (
        f"miner-00 read {order}: told to drain, then given {a.job.job_id} (attempt {a.attempt}; submitted "
        f"as {job.job_id}) on the same stream"
    )
