"""The job lifecycle against the SQLite file: TTL expiry by timer, restart on the same file, illegal
transitions refused (and changing nothing), the append-only event table."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest
from aitbc.client import struct_to_dict
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    CANCELED,
    COMPLETED,
    EXPIRED,
    QUEUED,
    RUNNING,
    Harness,
    capabilities,
    eventually,
    expect_error,
    miner_key,
    rpc_error,
    struct,
)


async def test_queued_job_expires_at_its_ttl_without_any_read(coord: Harness) -> None:
    alice = coord.client("alice")
    job = await alice.submit({"x": 1}, ttl_s=1)
    keep = await alice.submit({"x": 2}, ttl_s=60)
    # observe only the file: no RPC reads the job until it has expired
    await eventually(lambda: coord.db.job_state(job.job_id) == EXPIRED, within=5, what="EXPIRED in the store")
    [event] = [e for e in coord.db.events(job.job_id) if e["to_state"] == EXPIRED]
    assert event["reason"] == "TTL_EXPIRED" and event["from_state"] == QUEUED
    assert event["occurred_us"] >= job.created_at.ToMicroseconds() + 1_000_000
    got = await alice.get(job.job_id)
    assert got.state == EXPIRED and got.terminal_reason == "TTL_EXPIRED"
    assert coord.db.job_state(keep.job_id) == QUEUED
    # an expired job is never dispatched
    miner = await coord.stream_miner("miner-00", slots=2)
    [a] = await miner.assignments(1)
    assert a.job.job_id == keep.job_id


async def test_jobs_survive_a_restart_on_the_same_database_file(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    done = await alice.submit({"n": "done"})
    [a] = await miner.assignments(1)
    miner.result(a.job.job_id, a.attempt, {"answer": 1})
    assert (await coord.finished(alice, done.job_id)).state == COMPLETED
    await miner.kill()
    waiting = await alice.submit({"n": "waiting"}, idempotency_key="w-1")
    canceled = await alice.submit({"n": "canceled"})
    await alice.cancel(canceled.job_id)

    await coord.restart()  # stop, then a new coordinator (new port) on the same file
    alice = coord.client("alice")
    assert (await alice.get(done.job_id)).state == COMPLETED
    result = await alice.result(done.job_id)
    assert struct_to_dict(result.result.result) == {"answer": 1} and result.result.receipt_id
    assert (await alice.get(canceled.job_id)).state == CANCELED
    got = await alice.get(waiting.job_id)
    assert got.state == QUEUED and struct_to_dict(got.payload) == {"n": "waiting"}
    listed = {j.job_id for j in (await alice.list()).jobs}
    assert listed == {done.job_id, waiting.job_id, canceled.job_id}
    # idempotency keys survive too
    again = await alice.submit({"n": "waiting"}, idempotency_key="w-1")
    assert again.job_id == waiting.job_id

    # the queued job is rebuilt into the ready queues and dispatched after the restart
    miner = await coord.stream_miner("miner-01")
    [b] = await miner.assignments(1)
    assert b.job.job_id == waiting.job_id and b.attempt == 1
    miner.result(b.job.job_id, b.attempt)
    assert (await coord.finished(alice, waiting.job_id)).state == COMPLETED


@pytest.mark.coordinator(reconnect_grace_seconds=3.0)
async def test_shutdown_tells_miners_to_go_away_and_a_running_job_survives_the_restart(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")

    assert coord.coordinator is not None
    stopping = asyncio.ensure_future(coord.coordinator.stop(grace=1.0))
    go_away = await miner.next("go_away")
    assert go_away.reason == "SHUTTING_DOWN" and go_away.reconnect_after.ToMilliseconds() > 0
    await stopping
    await miner.wait_closed()
    coord.coordinator = None
    assert coord.db.job_state(job.job_id) == RUNNING  # the job is safe in the store

    await coord.restart()  # a new coordinator on the same file; the miner comes back within the grace
    welcome = await miner.connect(running_jobs=((job.job_id, 1),))
    assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == [(job.job_id, 1)]
    miner.result(job.job_id, 1, {"across": "restart"})
    assert (await miner.next("result_ack")).accepted
    final = await coord.finished(coord.client("alice"), job.job_id)
    assert (final.state, final.attempt, final.miner_id) == (COMPLETED, 1, "miner-00")


async def test_result_for_a_canceled_job_is_refused_on_the_stream(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")
    await alice.cancel(job.job_id)
    await miner.next("cancel")
    events_before = coord.db.events(job.job_id)

    miner.result(job.job_id, a.attempt)  # too late: the job is CANCELED
    ack = await miner.next("result_ack")
    assert ack.accepted is False and ack.reason == "JOB_NOT_HELD" and not ack.receipt_id
    assert (await alice.get(job.job_id)).state == CANCELED
    assert coord.db.events(job.job_id) == events_before
    assert coord.db.count("job_results", job.job_id) == 0
    assert coord.db.count("receipts", job.job_id) == 0


async def test_result_for_a_canceled_job_is_refused_on_the_unary_path(coord: Harness) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()
    md = (("x-api-key", miner_key("miner-00")),)
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities())),
                                   metadata=md)  # fmt: skip
    session = reg.welcome.session_id
    job = await alice.submit({"x": 1})
    polled = await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=md, timeout=5)
    [a] = polled.assignments
    assert a.job.job_id == job.job_id
    await alice.cancel(job.job_id)
    events_before = coord.db.events(job.job_id)

    result = mpb.Result(job_id=job.job_id, attempt=a.attempt, result=struct({"late": True}))
    err = await rpc_error(stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=result),
                                            metadata=md))  # fmt: skip
    expect_error(err, grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_HELD")
    assert (await alice.get(job.job_id)).state == CANCELED
    assert coord.db.events(job.job_id) == events_before
    assert coord.db.count("job_results", job.job_id) == 0 and coord.db.count("receipts", job.job_id) == 0
    # the cancel reached the unary miner too
    hb = await stub.Heartbeat(mpb.HeartbeatRequest(session_id=session), metadata=md)
    assert [(c.job_id, c.reason) for c in hb.cancels] == [(job.job_id, "CANCELED_BY_CLIENT")]


async def test_second_result_for_a_completed_job_creates_no_second_receipt(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.result(job.job_id, a.attempt, {"v": 1})
    first = await miner.next("result_ack")
    assert first.accepted and first.receipt_id
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    events_before = coord.db.events(job.job_id)

    miner.result(job.job_id, a.attempt, {"v": 1})  # a repeat (its ack lost, say): the same acknowledgement
    second = await miner.next("result_ack")
    assert second.accepted and second.receipt_id == first.receipt_id
    miner.result(job.job_id, a.attempt, {"v": 2})  # another answer for the same attempt: no receipt covers it
    other = await miner.next("result_ack")
    assert not other.accepted and other.reason == "JOB_NOT_HELD" and first.receipt_id in other.message
    miner.result(job.job_id, a.attempt + 1, {"v": 3})  # an attempt that never existed
    third = await miner.next("result_ack")
    assert third.accepted is False

    assert coord.db.count("receipts", job.job_id) == 1
    assert coord.db.count("job_results", job.job_id) == 1
    assert coord.db.events(job.job_id) == events_before
    assert [e["reason"] for e in events_before].count("COMPLETED") == 1
    result = await alice.result(job.job_id)
    assert struct_to_dict(result.result.result) == {"v": 1}


async def test_second_result_on_the_unary_path_changes_nothing(coord: Harness) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()
    md = (("x-api-key", miner_key("miner-00")),)
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities())),
                                   metadata=md)  # fmt: skip
    session = reg.welcome.session_id
    job = await alice.submit({"x": 1})
    [a] = (await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=md, timeout=5)).assignments
    result = mpb.Result(job_id=job.job_id, attempt=a.attempt, result=struct({"v": 1}))
    req = mpb.SubmitResultRequest(session_id=session, result=result)
    first = (await stub.SubmitResult(req, metadata=md)).ack
    second = (await stub.SubmitResult(req, metadata=md)).ack
    assert first.accepted and second.accepted and first.receipt_id == second.receipt_id
    other = mpb.Result(job_id=job.job_id, attempt=a.attempt, result=struct({"v": 2}))
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # another answer is no repeat
        await stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=other), metadata=md)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completed with another result" in refused.value.details()
    assert coord.db.count("receipts", job.job_id) == 1
    assert [e["reason"] for e in coord.db.events(job.job_id)].count("COMPLETED") == 1


async def test_event_table_is_append_only(coord: Harness) -> None:
    alice = coord.client("alice")
    job = await alice.submit({"x": 1})
    await alice.cancel(job.job_id)
    before = coord.db.events(job.job_id)
    assert [e["reason"] for e in before] == ["SUBMITTED", "CANCELED_BY_CLIENT"]

    conn = sqlite3.connect(coord.db_path, timeout=10)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE job_events SET reason = 'FORGED' WHERE job_id = ?", (job.job_id,))
        conn.rollback()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM job_events WHERE job_id = ?", (job.job_id,))
        conn.rollback()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM job_events")
        conn.rollback()
    finally:
        conn.close()
    assert coord.db.events(job.job_id) == before


@pytest.mark.coordinator(reconnect_grace_seconds=30, lease_seconds=30)
async def test_job_counts_by_state_stay_exact_through_every_path_and_a_restart(coord: Harness) -> None:
    """The scheduler keeps non-terminal jobs by state per transition (metrics read it instead of scanning
    every job per scrape): after submissions, dispatch, completion, a retryable failure, a cancel and a
    restart it equals a count of the jobs themselves."""

    def recount() -> dict:
        s = coord.coordinator.scheduler
        actual = {state: 0 for state in s.active_counts}
        for job in s.jobs.values():
            if job.state in actual:  # a finished job stays in s.jobs until its commit lands
                actual[job.state] += 1
        return actual

    async def exact() -> bool:
        return coord.coordinator.scheduler.active_counts == recount()

    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=3)
    jobs = [await alice.submit({"n": i}, max_attempts=3) for i in range(6)]
    first, second, _held = await miner.assignments(3)
    miner.accept(first)
    miner.result(first.job.job_id, first.attempt)
    miner.failure(second.job.job_id, second.attempt, retryable=True)
    await alice.cancel(jobs[5].job_id)
    await eventually(exact, what="counts equal to a recount")
    counts = coord.coordinator.scheduler.active_counts
    assert sum(counts.values()) == len(coord.coordinator.scheduler.jobs) >= 3
    await coord.restart()  # loaded from the store: the ASSIGNED/RUNNING ones wait for their miner
    await eventually(exact, what="counts equal to a recount after a restart")
    assert sum(coord.coordinator.scheduler.active_counts.values()) == sum(counts.values())
