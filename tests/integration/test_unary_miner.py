"""The unary miner path end to end: RegisterMiner, long-poll PollJob, Heartbeat, SubmitResult,
ReportFailure, Drain; the same scheduler, leases and rules as the stream."""

from __future__ import annotations

import asyncio
import time

import grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    Harness,
    capabilities,
    expect_error,
    miner_key,
    rpc_error,
    struct,
)

MD = (("x-api-key", miner_key("miner-00")),)


async def test_unary_path_end_to_end(coord: Harness) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()

    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=1))),
                                   metadata=MD)  # fmt: skip
    w = reg.welcome
    session = w.session_id
    assert session and w.miner_id == "miner-00"
    assert w.heartbeat_interval.ToMilliseconds() == 200 and w.lease_duration.ToMilliseconds() == 1000
    assert (await coord.admin().miners())["miner-00"].transport == "unary"

    # an empty long-poll waits out (most of) its deadline, then answers empty
    started = time.monotonic()
    empty = await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=MD, timeout=0.5)
    assert not empty.assignments and time.monotonic() - started >= 0.3

    # a waiting long-poll gets a job submitted while it waits
    poll = asyncio.ensure_future(stub.PollJob(mpb.PollJobRequest(session_id=session, max_jobs=1), metadata=MD,
                                            timeout=5))  # fmt: skip
    await asyncio.sleep(0.1)  # let the poll reach the coordinator (either order must work)
    job = await alice.submit({"task": "unary"})
    [a] = (await asyncio.wait_for(poll, 5)).assignments
    assert (a.job.job_id, a.attempt) == (job.job_id, 1)
    assert a.job.payload.fields["task"].string_value == "unary"

    # heartbeats renew the lease well past its 1 s; the first, listing the job still ASSIGNED, accepts it (the
    # unary path has no Accept call): RUNNING from then on, as a stream's job is once accepted
    for _ in range(8):
        hb = await stub.Heartbeat(mpb.HeartbeatRequest(
            session_id=session, running_jobs=[mpb.RunningJob(job_id=job.job_id, attempt=1)]), metadata=MD)  # fmt: skip
        assert not hb.cancels and not hb.draining
        await asyncio.sleep(0.2)
    got = await alice.get(job.job_id)
    assert (got.state, got.attempt) == (RUNNING, 1)
    assert [e["reason"] for e in coord.db.events(job.job_id)] == ["SUBMITTED", "ASSIGNED", "ACCEPTED"]

    result = mpb.Result(job_id=job.job_id, attempt=1, result=struct({"sum": 6}), units="2", unit_type="jobs")
    ack = (
        await stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=result), metadata=MD)
    ).ack
    assert ack.accepted and ack.receipt_id
    res = await alice.result(job.job_id)
    assert res.job.state == COMPLETED and res.result.miner_id == "miner-00"
    assert res.result.receipt_id == ack.receipt_id and res.result.units == "2"

    # a final failure
    failing = await alice.submit({"task": "bad"})
    [b] = (await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=MD, timeout=5)).assignments
    assert b.job.job_id == failing.job_id
    f = mpb.Failure(job_id=failing.job_id, attempt=1, retryable=False, code="BAD_INPUT", message="no")
    fack = (
        await stub.ReportFailure(mpb.ReportFailureRequest(session_id=session, failure=f), metadata=MD)
    ).ack
    assert fack.accepted
    got = await alice.get(failing.job_id)
    assert (got.state, got.terminal_reason) == (FAILED, "BAD_INPUT")
    # a repeated failure report (its ack lost) is acknowledged again, like a repeated result; another report
    # about the job, no longer held, is refused
    again = await stub.ReportFailure(mpb.ReportFailureRequest(session_id=session, failure=f), metadata=MD)
    assert again.ack.accepted
    other = mpb.Failure(job_id=failing.job_id, attempt=1, retryable=False, code="OTHER", message="no")
    expect_error(await rpc_error(stub.ReportFailure(mpb.ReportFailureRequest(session_id=session, failure=other),
                                                    metadata=MD)), grpc.StatusCode.FAILED_PRECONDITION,
                 "JOB_NOT_HELD")  # fmt: skip

    # drain: the running job finishes, nothing new is handed out, then the session ends
    last = await alice.submit({"task": "last"})
    [c] = (await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=MD, timeout=5)).assignments
    drained = await stub.Drain(mpb.DrainRequest(session_id=session, reason="maintenance"), metadata=MD)
    assert drained.running_jobs == 1
    hb = await stub.Heartbeat(mpb.HeartbeatRequest(
        session_id=session, running_jobs=[mpb.RunningJob(job_id=last.job_id, attempt=c.attempt)]), metadata=MD)  # fmt: skip
    assert hb.draining
    extra = await alice.submit({"task": "extra"})
    none = await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=MD, timeout=0.3)
    assert not none.assignments
    result = mpb.Result(job_id=last.job_id, attempt=c.attempt, result=struct({"ok": True}))
    assert (await stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=result),
                                    metadata=MD)).ack.accepted  # fmt: skip
    expect_error(await rpc_error(stub.Heartbeat(mpb.HeartbeatRequest(session_id=session), metadata=MD)),
                 grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")  # fmt: skip
    assert (await alice.get(last.job_id)).state == COMPLETED
    assert (await alice.get(extra.job_id)).state == QUEUED


async def test_unary_lease_not_renewed_returns_the_job_to_the_queue(coord: Harness) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities())),
                                   metadata=MD)  # fmt: skip
    session = reg.welcome.session_id
    job = await alice.submit({"x": 1})
    [a] = (await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=MD, timeout=5)).assignments
    assert a.attempt == 1
    # the session stays alive (heartbeats without the job) but the job's lease is not renewed
    cancels = []
    for _ in range(10):
        hb = await stub.Heartbeat(mpb.HeartbeatRequest(session_id=session), metadata=MD)
        cancels.extend(hb.cancels)
        if cancels:
            break
        await asyncio.sleep(0.2)
    assert [(c.job_id, c.attempt, c.reason) for c in cancels] == [(job.job_id, 1, "LEASE_EXPIRED")]
    requeued = [e for e in coord.db.events(job.job_id) if e["to_state"] == QUEUED and e["from_state"]]
    assert [e["reason"] for e in requeued] == ["LEASE_EXPIRED"]
    # the next poll gets it back as attempt 2; the stale attempt's result is refused
    [b] = (await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=MD, timeout=5)).assignments
    assert (b.job.job_id, b.attempt) == (job.job_id, 2)
    stale = mpb.Result(job_id=job.job_id, attempt=1, result=struct({"stale": True}))
    expect_error(await rpc_error(stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=stale),
                                                   metadata=MD)),
                 grpc.StatusCode.FAILED_PRECONDITION, "STALE_ATTEMPT")  # fmt: skip
    assert coord.db.count("job_results", job.job_id) == 0


async def test_a_unary_call_held_up_by_the_store_does_not_count_as_the_miners_silence(coord: Harness) -> None:
    """A unary miner waits for its SubmitResult; the store keeps the call waiting (its write lock is held)
    longer than the heartbeat timeout (1 s here). That silence is the coordinator's: the session stays open
    and the result lands. (The stream already counted it so; the unary path closed the session for
    HEARTBEAT_TIMEOUT and requeued its jobs meanwhile.)"""
    from test_failed_commit import held_lock

    alice = coord.client("alice")
    stub = coord.miner_stub()
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=2))),
                                   metadata=MD)  # fmt: skip
    session = reg.welcome.session_id
    job = await alice.submit({"task": "slow store"})
    [a] = (
        await stub.PollJob(mpb.PollJobRequest(session_id=session, max_jobs=1), metadata=MD, timeout=5)
    ).assignments
    blocker = held_lock(coord)
    try:
        submitted = asyncio.ensure_future(stub.SubmitResult(mpb.SubmitResultRequest(
            session_id=session, result=mpb.Result(job_id=job.job_id, attempt=a.attempt, result=struct({"ok": 1}),
                                                  units="1", unit_type="jobs")), metadata=MD, timeout=10))  # fmt: skip
        await asyncio.sleep(2.5)  # 2.5 heartbeat timeouts without a heartbeat: the miner waits for its call
        assert not submitted.done()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    response = await asyncio.wait_for(submitted, 10)
    assert response.ack.accepted
    assert coord.db.job_state(job.job_id) == COMPLETED
    scheduler = coord.coordinator.scheduler
    live = scheduler.sessions.get(session)
    assert live is not None and not live.closed, "the session was closed while its call waited for the store"
