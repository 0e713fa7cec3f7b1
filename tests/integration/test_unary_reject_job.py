"""RejectJob: the unary path's `Reject`. A job held by a unary session is given back: queued at once for another
miner, its attempt unspent (a REJECTED transition), where the unary path had only ReportFailure (an attempt spent) or
silence (the session's heartbeat timeout, then the reconnect grace). Refused as SubmitResult is: a stale attempt or a
job not held FAILED_PRECONDITION with its ErrorInfo, an unknown session NOT_FOUND, a reason over 512 characters
INVALID_ARGUMENT (the bound a stream's Reject has)."""

from __future__ import annotations

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    ASSIGNED,
    COMPLETED,
    QUEUED,
    Harness,
    capabilities,
    eventually,
    expect_error,
    miner_key,
    rpc_error,
    struct,
)

# long timers: a job back in the queue got there by the reject, not by a lease, a timeout or a grace
LONG = {"heartbeat_timeout_seconds": 60.0, "lease_seconds": 60.0, "reconnect_grace_seconds": 60.0}


def md(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", miner_key(name)),)


async def registered(stub: object, name: str) -> str:
    """A unary session of miner `name` (one slot): its id."""
    hello = mpb.Hello(capabilities=capabilities(slots=1))
    reply = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=md(name))  # type: ignore[attr-defined]
    return reply.welcome.session_id


async def polled(stub: object, session: str, name: str) -> mpb.Assignment:
    request = mpb.PollJobRequest(session_id=session, max_jobs=1)
    [a] = (await stub.PollJob(request, metadata=md(name), timeout=5)).assignments  # type: ignore[attr-defined]
    return a


def reject_request(
    session: str, job_id: str, attempt: int, reason: str = "no GPU memory"
) -> mpb.RejectJobRequest:
    return mpb.RejectJobRequest(
        session_id=session, reject=mpb.Reject(job_id=job_id, attempt=attempt, reason=reason)
    )


@pytest.mark.coordinator(**LONG)
async def test_reject_job_queues_a_held_job_at_once_with_its_attempt_unspent(coord: Harness) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()
    session = await registered(stub, "miner-00")
    job = await alice.submit({"n": 1})
    a = await polled(stub, session, "miner-00")
    assert (a.job.job_id, a.attempt) == (job.job_id, 1)
    assert (await alice.get(job.job_id)).state == ASSIGNED

    answer = await stub.RejectJob(reject_request(session, job.job_id, 1), metadata=md("miner-00"))
    assert (answer.ack.job_id, answer.ack.attempt, answer.ack.accepted) == (job.job_id, 1, True)
    got = await alice.get(job.job_id)
    assert (got.state, got.attempt) == (QUEUED, 0)
    [back] = [e for e in coord.db.events(job.job_id) if e["to_state"] == QUEUED and e["reason"] == "REJECTED"]
    assert back["message"] == "no GPU memory"

    # a repeat changes nothing: the job is no longer held
    again = await rpc_error(stub.RejectJob(reject_request(session, job.job_id, 1), metadata=md("miner-00")))
    expect_error(again, grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_HELD")
    assert (await alice.get(job.job_id)).attempt == 0

    # another miner takes it at its first attempt (the attempt given back was not spent)
    other = await registered(stub, "miner-01")
    b = await polled(stub, other, "miner-01")
    assert (b.job.job_id, b.attempt) == (job.job_id, 1)
    result = mpb.Result(
        job_id=job.job_id, attempt=1, result=struct({"ok": True}), units="1", unit_type="jobs"
    )
    await stub.SubmitResult(mpb.SubmitResultRequest(session_id=other, result=result), metadata=md("miner-01"))
    done = await alice.get(job.job_id)
    assert (done.state, done.attempt, done.miner_id) == (COMPLETED, 1, "miner-01")
    assert coord.db.count("receipts", job.job_id) == 1


@pytest.mark.coordinator(**LONG)
async def test_reject_job_of_a_stale_attempt_or_a_job_not_held_is_refused_and_changes_nothing(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()
    session = await registered(stub, "miner-00")
    held = await alice.submit({"n": 1})
    await polled(stub, session, "miner-00")
    elsewhere = await alice.submit({"n": 2})  # queued: no slot free here, no other miner

    stale = await rpc_error(stub.RejectJob(reject_request(session, held.job_id, 2), metadata=md("miner-00")))
    expect_error(stale, grpc.StatusCode.FAILED_PRECONDITION, "STALE_ATTEMPT")
    assert stale.metadata["job_id"] == held.job_id
    not_held = await rpc_error(
        stub.RejectJob(reject_request(session, elsewhere.job_id, 1), metadata=md("miner-00"))
    )
    expect_error(not_held, grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_HELD")
    assert not_held.metadata["job_id"] == elsewhere.job_id

    assert [
        (j.state, j.attempt) for j in [await alice.get(held.job_id), await alice.get(elsewhere.job_id)]
    ] == [
        (ASSIGNED, 1),
        (QUEUED, 0),
    ]
    assert coord.db.events(held.job_id)[-1]["to_state"] == ASSIGNED


@pytest.mark.coordinator(**LONG)
async def test_reject_job_of_an_unknown_session_or_with_a_reason_too_long_is_refused(coord: Harness) -> None:
    alice = coord.client("alice")
    stub = coord.miner_stub()
    session = await registered(stub, "miner-00")
    job = await alice.submit({"n": 1})
    await polled(stub, session, "miner-00")

    unknown = await rpc_error(
        stub.RejectJob(reject_request("no-such-session", job.job_id, 1), metadata=md("miner-00"))
    )
    expect_error(unknown, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    # another identity's call naming this session: not its session
    foreign = await rpc_error(stub.RejectJob(reject_request(session, job.job_id, 1), metadata=md("miner-01")))
    expect_error(foreign, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")

    too_long = await rpc_error(
        stub.RejectJob(reject_request(session, job.job_id, 1, "x" * 513), metadata=md("miner-00"))
    )
    expect_error(too_long, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [f for f, _ in too_long.violations] == ["reject.reason"]
    long_session = await rpc_error(
        stub.RejectJob(reject_request("s" * 65, job.job_id, 1), metadata=md("miner-00"))
    )  # (bounded as every unary call's session id: the field named)
    expect_error(long_session, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [f for f, _ in long_session.violations] == ["session_id"]
    missing = await rpc_error(
        stub.RejectJob(mpb.RejectJobRequest(session_id=session), metadata=md("miner-00"))
    )
    expect_error(missing, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [f for f, _ in missing.violations] == ["reject"]

    assert (await alice.get(job.job_id)).state == ASSIGNED  # none of them changed anything
    # 512 characters are taken
    await stub.RejectJob(reject_request(session, job.job_id, 1, "x" * 512), metadata=md("miner-00"))
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="the job queued again")
