"""Jobs read back from the store after a failed commit: what waits for them, and what they are on return.

(Round-5 review, helper-25: each of these failed before the fix.)
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from coord_support import ASSIGNED, COMPLETED, EXPIRED, Harness, details_of, eventually, sdk_miner
from test_failed_commit import fail_a_cancel, running_job


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_result_waiting_longer_than_a_read_back_takes_is_answered_once_the_job_is_back(
    coord: Harness,
) -> None:
    """The store stays unwritable past the 10 s a unary call waits for its job's read-back. On the stream the
    result waits as long as it takes, without holding up the stream: it used to be refused JOB_NOT_HELD after
    10 s, and then the job was read back into that miner's hands (the miner had dropped the work, and the
    job waited out its lease)."""
    alice, miner, job, a = await running_job(coord)
    blocker = await fail_a_cancel(coord, job.job_id)  # out of memory; its read-back waits for the lock
    try:
        miner.result(job.job_id, a.attempt)
        # past the writer's 5 s busy timeout (the read-back's write fails, and is retried) and past 10 s
        await asyncio.sleep(12.0)
        assert not miner.closed.is_set()  # the stream is read meanwhile: its heartbeats keep it alive
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    done = await coord.finished(alice, job.job_id, within=15.0)  # read back, then its result lands
    assert (done.state, done.attempt) == (COMPLETED, a.attempt)

    def acks() -> list[bool]:
        return [b.accepted for kind, b in miner.log if kind == "result_ack" and b.job_id == job.job_id]

    # (the ack leaves on the stream after the same commit the client's watch hears of: it may arrive just after)
    await eventually(lambda: acks(), what="the result's ack")
    assert acks() == [True]
    assert coord.db.count("receipts", job.job_id) == 1


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_a_unary_result_waiting_longer_than_a_read_back_takes_is_answered_retry(coord: Harness) -> None:
    """The same through SubmitResult: after 10 s it is answered UNAVAILABLE (JOB_RESTORING), never refused as
    not held; sent again once the store writes, it lands."""
    from aitbc.coordinator.v1 import miner_service_pb2 as mpb
    from coord_support import capabilities, miner_key, struct

    md = (("x-api-key", miner_key("miner-00")),)
    stub = coord.miner_stub()
    alice = coord.client("alice")
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=1))),
                                   metadata=md)  # fmt: skip
    session = reg.welcome.session_id
    job = await alice.submit({"x": 1})
    [a] = (
        await stub.PollJob(mpb.PollJobRequest(session_id=session, max_jobs=1), metadata=md, timeout=5)
    ).assignments
    request = mpb.SubmitResultRequest(session_id=session, result=mpb.Result(
        job_id=job.job_id, attempt=a.attempt, result=struct({"ok": 1}), units="1", unit_type="jobs"))  # fmt: skip
    blocker = await fail_a_cancel(coord, job.job_id)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SubmitResult(request, metadata=md, timeout=20)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details_of(refused.value).reason == "JOB_RESTORING"
    await eventually(lambda: job.job_id in coord.coordinator.scheduler.jobs, within=15.0, what="read back")
    # (the unary miner's heartbeat keeps the session; its retry lands)
    await stub.Heartbeat(mpb.HeartbeatRequest(session_id=session, running_jobs=[
        mpb.RunningJob(job_id=job.job_id, attempt=a.attempt)]), metadata=md)  # fmt: skip
    response = await stub.SubmitResult(request, metadata=md, timeout=10)
    assert response.ack.accepted
    assert coord.db.job_state(job.job_id) == COMPLETED


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_queued_job_read_back_after_its_time_to_live_expires_instead_of_running(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    job = await alice.submit({"x": 1}, ttl_s=1)  # no miner yet: stored QUEUED
    submitted = time.monotonic()
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, job.job_id)  # out of memory; its read-back waits for the lock
    try:
        miner = await coord.stream_miner("miner-00", slots=1)  # idle, eligible
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - submitted)))  # its time to live runs out
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(lambda: coord.db.job_state(job.job_id) in (EXPIRED, ASSIGNED), what="the job read back")
    await asyncio.sleep(0.3)
    given = [x.job.job_id for kind, body in miner.log if kind == "assignments" for x in body.assignments]
    assert job.job_id not in given
    assert coord.db.job_state(job.job_id) == EXPIRED and job.job_id not in scheduler.jobs


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_an_sdk_miner_loses_no_result_while_one_waits_for_a_read_back(coord: Harness) -> None:
    """Two jobs on an SDK miner; A's cancel fails and its read-back waits on the store for 11 s. A's result
    waits for it, and B's result, sent meanwhile on the same stream, waits for the store too (its write
    fails once: the stream ends, the miner sends it again). Both land at their first attempt, run once.
    (Review round 6, helper-27: ending the stream after 10 s lost B's result, and the SDK, which forgot a
    job once its result was sent, did not list either job again: both ran twice.)"""
    from aitbc.miner import Outcome, job_input

    alice = coord.client("alice")
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}
    runs: list[tuple[str, int]] = []

    async def runner(job):  # type: ignore[no-untyped-def]
        name = job_input(job)["n"]
        runs.append((name, job.attempt))
        await gates[name].wait()
        return Outcome({"done": name}, units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner, slots=2)
    coord.run_miner(miner)
    a = await alice.submit({"n": "a"})
    b = await alice.submit({"n": "b"})
    await eventually(lambda: len(miner.running) == 2, what="both jobs running on the SDK miner")
    await eventually(
        lambda: coord.db.job_state(a.job_id) == ASSIGNED and coord.db.job_state(b.job_id) == ASSIGNED
    )
    blocker = await fail_a_cancel(coord, a.job_id)  # A out of memory; its read-back waits for the lock
    try:
        gates["a"].set()
        await asyncio.sleep(0.5)
        gates["b"].set()
        await eventually(lambda: not miner.running, what="both results sent")
        await asyncio.sleep(11.0)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    done = [await coord.finished(alice, j.job_id, within=30.0) for j in (a, b)]
    assert [(d.state, d.attempt) for d in done] == [(COMPLETED, 1), (COMPLETED, 1)]
    assert sorted(runs) == [("a", 1), ("b", 1)]
    await eventually(lambda: not miner.unacked, what="every result acknowledged")
