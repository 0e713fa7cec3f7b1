"""Races around a unary Heartbeat as the poll path's accept (ASSIGNED -> RUNNING), and around the `stream_end`
timer that ends a closed session's stream whose writes are blocked (with the auth interceptor releasing a failed
call before its status), from a review that found no bug (helper-123). Not tested before: the timer
ends only the old stream of a miner identity, never its new, healthy one; an old stream whose miner reads
again ends with its GoAway, not STREAM_STALLED; a job listed twice is accepted once; a job canceled before the
heartbeat stays canceled; a session replaced while its accept's write waits, then fails, leaves the job to the
new session; failed calls release their identity's counts once (never below zero) and still carry their status
and details. Real coordinator on loopback, real SQLite, real gRPC flow control.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from coord_support import (
    ASSIGNED,
    CANCELED,
    COMPLETED,
    RUNNING,
    Harness,
    capabilities,
    eventually,
    expect_error,
    miner_key,
    rpc_error,
)
from test_bounded_state_streams import stall, stream_that_stopped_reading
from test_failed_commit import allow, held_lock, refuse
from test_poll_miner_jobs_show_running import assigned_job, reasons

TIMEOUT_S = 3.0  # HEARTBEAT_TIMEOUT_SECONDS here: room to act on the old stream before its stream_end timer
MD = (("x-api-key", miner_key("miner-00")),)
STALLED = {"heartbeat_timeout_seconds": TIMEOUT_S, "lease_seconds": 30.0, "reconnect_grace_seconds": 30.0}


def usage_of(coord: Harness, miner: str = "miner-00"):  # type: ignore[no-untyped-def]
    """The identity's counts of calls and streams in flight (what MAX_STREAMS_PER_IDENTITY limits)."""
    return coord.coordinator.keyring.state("miner", miner).usage  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ stream_end
@pytest.mark.coordinator(**STALLED)
async def test_stream_end_of_a_replaced_stalled_stream_leaves_the_identitys_new_stream_working(
    coord: Harness,
) -> None:
    """The timer is the old session's: it cancels that session's handler, never the new stream of the same
    identity (same miner id, same key), which stays open, keeps its session, and takes and finishes work after
    the old one ended."""
    scheduler = coord.coordinator.scheduler
    usage = usage_of(coord)
    async with stream_that_stopped_reading(coord):
        old = scheduler.by_miner["miner-00"]
        await stall(coord, old)
        new = await coord.stream_miner("miner-00", slots=1)
        current = scheduler.by_miner["miner-00"]
        assert old.closed and current is not old
        await eventually(lambda: usage.streams == 1, within=1.5 * TIMEOUT_S, what="the old stream's end")
        await asyncio.sleep(TIMEOUT_S)  # a second round of the timer, had it been rescheduled, would be over
        assert not new.closed.is_set() and new.end_status is None, "the new stream was ended"
        assert scheduler.by_miner["miner-00"] is current and not current.closed
        assert current.end_reason == "" and usage.streams == 1
        # the new stream works: the jobs the old one was given came back to the queue, then new ones
        alice = coord.client()
        job = await alice.submit({"after": "the old stream ended"})
        while True:
            a = await new.next("assignment", within=10)
            new.accept(a)
            new.result(a.job.job_id, a.attempt)
            if a.job.job_id == job.job_id:
                break
        await eventually(
            lambda: coord.db.job_state(job.job_id) == COMPLETED, what="completed on the new stream"
        )
        assert not new.closed.is_set()


@pytest.mark.coordinator(**STALLED)
async def test_replaced_stream_whose_miner_reads_again_ends_with_its_goaway_not_stream_stalled(
    coord: Harness,
) -> None:
    """An old stream blocked a while, whose miner reads again before a heartbeat timeout: its write goes
    through, then its GoAway SESSION_REPLACED, and the call ends OK; the stream_end timer then finds its
    handler over."""
    scheduler = coord.coordinator.scheduler
    usage = usage_of(coord)
    async with stream_that_stopped_reading(coord) as call:
        old = scheduler.by_miner["miner-00"]
        await stall(coord, old)
        await coord.stream_miner("miner-00", slots=1)
        assert old.closed
        kinds = []
        while (message := await asyncio.wait_for(call.read(), TIMEOUT_S)) is not grpc.aio.EOF:
            kinds.append(message.WhichOneof("message"))
        assert kinds[-1] == "go_away", kinds
        assert await call.code() == grpc.StatusCode.OK, await call.details()
        assert old.end_reason == ""
        await eventually(lambda: usage.streams == 1, what="the old stream's count released")
        await asyncio.sleep(TIMEOUT_S)  # past the timer: it did nothing
        assert usage.streams == 1 and not scheduler.by_miner["miner-00"].closed


# -------------------------------------------------------------------------------- the heartbeat's accept
async def test_heartbeat_listing_a_job_twice_accepts_it_once(coord: Harness) -> None:
    _, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    answer = await miner.heartbeat((job_id, a.attempt), (job_id, a.attempt))
    assert not answer.cancels
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED"]
    assert (await miner.result(job_id, a.attempt)).ack.accepted


async def test_heartbeat_listing_a_job_canceled_before_it_tells_the_cancel_and_accepts_nothing(
    coord: Harness,
) -> None:
    alice, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    await alice.cancel(job_id)
    answer = await miner.heartbeat((job_id, a.attempt))
    assert [(c.job_id, c.attempt) for c in answer.cancels] == [(job_id, a.attempt)]
    assert coord.db.job_state(job_id) == CANCELED
    assert "ACCEPTED" not in reasons(coord, job_id)
    assert ASSIGNED in [e["to_state"] for e in coord.db.events(job_id)]


async def test_session_replaced_while_its_heartbeats_accept_fails_to_write_keeps_the_job_for_the_new_one(
    coord: Harness,
) -> None:
    """The accept's write waits (the store's lock held) and then fails; meanwhile the miner registers again
    listing the job. The old Heartbeat is answered, the job read back is ASSIGNED and the new session's, whose
    next heartbeat accepts it, and its result lands once."""
    _, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    scheduler = coord.coordinator.scheduler
    old = scheduler.by_miner["miner-00"]
    refuse(coord, job_id, "job_events", "NEW.reason = 'ACCEPTED'")
    blocker = held_lock(coord)
    try:
        beat = asyncio.ensure_future(miner.heartbeat((job_id, a.attempt)))
        await eventually(lambda: old.handling == 1, what="the accept's write waiting")
        listed = [mpb.RunningJob(job_id=job_id, attempt=a.attempt)]
        hello = mpb.Hello(capabilities=capabilities(slots=2), running_jobs=listed)
        register = asyncio.ensure_future(
            miner.stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=MD)
        )
        await eventually(lambda: scheduler.by_miner["miner-00"] is not old, what="the session replaced")
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert not (await beat).cancels
    welcome = (await register).welcome
    assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == [(job_id, a.attempt)]
    miner.session_id = welcome.session_id
    new = scheduler.by_miner["miner-00"]
    await eventually(lambda: job_id in new.held, what="the job read back, the new session's")
    assert coord.db.job_state(job_id) == ASSIGNED
    allow(coord, "job_events")
    await miner.heartbeat((job_id, a.attempt))
    assert coord.db.job_state(job_id) == RUNNING
    assert (await miner.result(job_id, a.attempt)).ack.accepted
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]


# ------------------------------------------------------------------ failed calls: released once, status kept
async def test_failed_unary_and_stream_calls_release_their_identity_once_and_keep_their_status(
    coord: Harness,
) -> None:
    """Released before its status is sent (85c44cc): each failed call gives back its count once, never twice
    (the counts end at zero, not below), and its caller still gets the code, reason and details."""
    usage = usage_of(coord)
    stub = coord.miner_stub()
    for _ in range(5):
        request = mpb.HeartbeatRequest(session_id="0" * 32)
        err = await rpc_error(stub.Heartbeat(request, metadata=MD))
        expect_error(err, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    for _ in range(5):
        call = miner_service_pb2_grpc.MinerServiceStub(coord.channel()).Connect(metadata=MD)
        await call.write(mpb.ConnectRequest(heartbeat=mpb.MinerHeartbeat()))
        err = await rpc_error(call.read())
        expect_error(err, grpc.StatusCode.INVALID_ARGUMENT, "HELLO_REQUIRED")
    await eventually(lambda: (usage.inflight, usage.streams) == (0, 0), what="every failed call released")
    await asyncio.sleep(0.2)  # nothing released late a second time
    assert (usage.inflight, usage.streams) == (0, 0)
