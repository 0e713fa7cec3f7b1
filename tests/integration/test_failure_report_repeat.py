"""A failure report sent again, whose first sending had landed (its ack lost with the stream, as the SDK miner
resends every unacknowledged report on its next stream), is acknowledged as a repeat, like a repeated result.
It was refused (JOB_NOT_HELD or STALE_ATTEMPT): "result refused" in the miner's log for a report that landed.

Also while the first copy's write is still in flight and the job, queued again at once (a retryable report),
is already back on the same miner at the next attempt: the repeat waits for that write, then is acked. (Review
round 11, helper-33: it read the store before the write landed, and was refused STALE_ATTEMPT.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from coord_support import ASSIGNED, FAILED, QUEUED, RUNNING, Harness, capabilities, eventually, miner_key, mpb
from test_failed_commit import held_lock, running_job


@pytest.mark.parametrize("retryable", [True, False])
@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_failure_report_sent_again_after_its_ack_was_lost_is_acked(
    coord: Harness, retryable: bool
) -> None:
    _, miner, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)  # the report's write waits: the stream breaks before its ack can leave
    try:
        miner.failure(job.job_id, a.attempt, retryable=retryable, code="FLAKY")
        await eventually(lambda: job.job_id in scheduler._unsettled, what="the report's write queued")
        await miner.kill()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    stored = QUEUED if retryable else FAILED
    await eventually(lambda: coord.db.job_state(job.job_id) == stored, what="the report recorded")
    assert not [b for kind, b in miner.log if kind == "result_ack"]  # its ack was lost
    # The miner comes back listing the job (its report unacknowledged) and sends the report again.
    back = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, a.attempt),))
    back.failure(job.job_id, a.attempt, retryable=retryable, code="FLAKY")
    ack = await back.next("result_ack")
    assert (ack.job_id, ack.attempt, ack.accepted, ack.reason) == (job.job_id, a.attempt, True, ""), ack
    await asyncio.sleep(0.2)
    reasons = [e["reason"] for e in coord.db.events(job.job_id)]
    assert reasons.count("FLAKY") == 1, reasons  # recorded once
    # and a report about that attempt that was not recorded (another code) is still refused
    back.failure(job.job_id, a.attempt, retryable=True, code="OTHER")
    other = await back.next("result_ack")
    assert not other.accepted and other.reason in ("JOB_NOT_HELD", "STALE_ATTEMPT"), other


@contextlib.asynccontextmanager
async def a_report_behind_the_lock(coord: Harness) -> AsyncIterator[tuple[Any, Any]]:
    """miner-00 (two slots) reports its job's attempt 1 failed (retryable) while the store's write lock is held,
    and its stream breaks before the ack can leave; the lock is released on leaving: (the job, its assignment)."""
    scheduler = coord.coordinator.scheduler
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=2)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING stored")
    blocker = held_lock(coord)
    try:
        miner.failure(job.job_id, a.attempt, retryable=True, code="FLAKY")
        await eventually(lambda: job.job_id in scheduler._unsettled, what="the report's write queued")
        await miner.kill()
        yield job, a
    finally:
        blocker.execute("COMMIT")
        blocker.close()


def send_again(miner: Any, job: Any, a: Any) -> None:
    miner.send(failure=mpb.Failure(job_id=job.job_id, attempt=a.attempt, retryable=True, code="FLAKY",
                                   message="test failure"))  # fmt: skip


async def acked_as_a_repeat(coord: Harness, miner: Any, job: Any, a: Any) -> None:
    ack = await miner.next("result_ack", within=5.0)
    await eventually(lambda: "FLAKY" in [e["reason"] for e in coord.db.events(job.job_id)],
                     what="the first report recorded")  # fmt: skip
    # The report had landed (recorded once, as FLAKY at attempt 1): its repeat is acked, not refused.
    assert (ack.job_id, ack.attempt, ack.accepted, ack.reason) == (job.job_id, a.attempt, True, ""), ack


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_report_sent_again_while_its_write_is_in_flight_and_its_job_is_back_on_the_miner(
    coord: Harness,
) -> None:
    scheduler = coord.coordinator.scheduler
    async with a_report_behind_the_lock(coord) as (job, a):
        # The miner comes back listing the job (its report unacknowledged), as the SDK miner does.
        back = await coord.stream_miner("miner-00", slots=2, running_jobs=((job.job_id, a.attempt),))

        def given_back() -> bool:
            session = scheduler.by_miner.get("miner-00")
            held = session.held.get(job.job_id) if session is not None else None
            return held is not None and held.attempt == a.attempt + 1

        # the retry backoff (0.05 s) runs out: the job, QUEUED in memory only, goes to the same miner again
        await eventually(given_back, what="attempt 2 given to miner-00 in memory (its write waiting)")
        send_again(back, job, a)
        await asyncio.sleep(0.5)  # (it was answered meanwhile, from the store, which lacked the report)
    await acked_as_a_repeat(coord, back, job, a)


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_report_resent_first_thing_on_a_new_stream_whose_welcome_gave_the_job_back(
    coord: Harness,
) -> None:
    """The SDK's order: the miner reconnects after the retry backoff ran out (the job queued again in memory,
    its report's write still waiting), its welcome gives it the job at attempt 2 (open_session's fill), and it
    sends the report again as its first message."""
    scheduler = coord.coordinator.scheduler
    async with a_report_behind_the_lock(coord) as (job, a):
        await eventually(lambda: scheduler.queues.depth == 1, what="the job queued again (in memory)")
        back = await coord.stream_miner("miner-00", slots=2, running_jobs=((job.job_id, a.attempt),))
        send_again(back, job, a)
        await asyncio.sleep(0.5)
    await acked_as_a_repeat(coord, back, job, a)


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_unary_report_retried_after_its_deadline_while_its_write_is_in_flight(coord: Harness) -> None:
    """The unary path: ReportFailure times out on the client while its write waits; the retry backoff runs out
    and the job is given to the same (unary) session again at attempt 2; the client's retry of the very same
    report is acked (it was refused STALE_ATTEMPT, FAILED_PRECONDITION, though the first one landed)."""
    md = (("x-api-key", miner_key("miner-00")),)
    scheduler = coord.coordinator.scheduler
    alice = coord.client("alice")
    stub = coord.miner_stub()
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=1))),
                                   metadata=md)  # fmt: skip
    session = reg.welcome.session_id
    job = await alice.submit({"x": 1})
    [a] = (await stub.PollJob(mpb.PollJobRequest(session_id=session, max_jobs=1), metadata=md,
                              timeout=5)).assignments  # fmt: skip
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="ASSIGNED stored")
    request = mpb.ReportFailureRequest(session_id=session, failure=mpb.Failure(
        job_id=job.job_id, attempt=a.attempt, retryable=True, code="FLAKY", message="test failure"))  # fmt: skip
    blocker = held_lock(coord)
    try:
        try:
            await stub.ReportFailure(request, metadata=md, timeout=0.3)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
        else:
            raise AssertionError("the report was answered while its write waits")

        # the miner polls for work meanwhile (a unary session takes work only while it polls)
        poll = asyncio.ensure_future(stub.PollJob(mpb.PollJobRequest(session_id=session, max_jobs=1),
                                                  metadata=md, timeout=5))  # fmt: skip

        def given_back() -> bool:
            s = scheduler.by_miner.get("miner-00")
            held = s.held.get(job.job_id) if s is not None else None
            return held is not None and held.attempt == a.attempt + 1

        await eventually(given_back, what="attempt 2 given to the unary session in memory")
        retry = asyncio.ensure_future(stub.ReportFailure(request, metadata=md, timeout=10))
        await asyncio.sleep(0.5)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    try:
        answer = await retry
    except grpc.aio.AioRpcError as exc:
        raise AssertionError(f"the retried report was refused: {exc.code().name} {exc.details()}") from None
    await eventually(lambda: "FLAKY" in [e["reason"] for e in coord.db.events(job.job_id)],
                     what="the first report recorded")  # fmt: skip
    assert answer.ack.accepted
    poll.cancel()
