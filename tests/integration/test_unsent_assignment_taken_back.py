"""A cancel of an assignment its miner never heard of withdraws it (helper h6).

A client's cancel (or a lease expiry, an execution timeout) of an assignment still waiting to leave (a stream's
outbox, a poll not yet come) sent its miner a Cancel for a job it never had: the stream's writer passed the
assignment over (its session no longer held it) and then wrote the Cancel; on the unary path a poll that came
between the cancel's decision and its commit took the assignment out of the waiting list (and passed it
over), so the Cancel found nothing to withdraw and was handed out by the next poll. An assignment whose
execution deadline passed before it left (no poll came; or read back so after a failed commit) cost its job
an attempt (FAILED with max_attempts 1, never run) instead of going back unspent. And one given back unspent
while its stream's writer was stuck, then assigned to that stream again at the same attempt, left twice: the
miner ran the attempt twice. Real coordinator on loopback, real SQLite."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import CANCELED, COMPLETED, QUEUED, Harness, capabilities, eventually, miner_key
from test_failed_commit import fail_a_cancel, held_lock
from test_failed_commit_read_back_untold import read_back
from test_miner_capacity import capacity
from test_unary_miner_drain import UnaryMiner

from coordinator.scheduler.sessions import UNSENT_ON_POLL

QUIET = {"lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0, "reconnect_grace_seconds": 30.0}


@pytest.mark.coordinator(**QUIET)
async def test_a_cancel_of_an_unwritten_stream_assignment_tells_the_miner_nothing(coord: Harness) -> None:
    """The cancel is decided while the assignment's commit is in flight (it reaches the outbox after): the
    writer passes it over, and no Cancel follows it."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    await capacity(coord, miner, 0)
    job = await alice.submit({"n": 1})
    scheduler = coord.coordinator.scheduler
    session = scheduler.by_miner["miner-00"]
    filling = asyncio.ensure_future(scheduler.offer(session, 1))  # decides the assignment, awaits its commit
    await asyncio.sleep(0)
    held = session.held.get(job.job_id)
    assert held is not None and not held.told, "decided, not yet written"
    await scheduler.cancel(job.job_id, None, "changed my mind")
    await filling
    # the writer sends in order: once a later job's assignment arrives, whatever was queued for this one left
    other = await alice.submit({"n": 2})
    [a] = await miner.assignments(1)
    assert a.job.job_id == other.job_id
    assert [(kind, body.job_id) for kind, body in miner.log if kind == "cancel"] == [], miner.log
    assert not any(b.job.job_id == job.job_id for kind, body in miner.log if kind == "assignments"
                   for b in body.assignments)  # fmt: skip
    assert not session.unsent
    assert coord.db.job_state(job.job_id) == CANCELED


@pytest.mark.coordinator(**QUIET)
async def test_a_cancel_decided_before_a_poll_took_the_assignment_reaches_no_poll(coord: Harness) -> None:
    """The poll came between the cancel's decision and its commit: it passed the assignment over (the session no
    longer held it). The Cancel found nothing left to withdraw, and the next poll handed it out."""
    miner = UnaryMiner(coord)
    await miner.register()
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    job = await assignment_untold(coord, miner)
    assert [a.job.job_id for a in session.pending_assignments] == [job.job_id]
    blocker = held_lock(coord)
    try:
        cancel = asyncio.ensure_future(
            coord.coordinator.scheduler.cancel(job.job_id, None, "changed my mind")
        )
        await eventually(
            lambda: job.job_id not in session.held, what="the cancel decided (its write waiting)"
        )
        assert not (await miner.poll(timeout=2.0)).assignments
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await cancel
    assert coord.db.job_state(job.job_id) == CANCELED
    polled = await miner.poll(timeout=1.0)
    assert not polled.assignments and not polled.cancels, polled
    assert not session.unsent and not session.pending_assignments


@pytest.mark.coordinator(**QUIET)
async def test_an_assignment_no_poll_took_goes_back_unspent_when_its_execution_deadline_passes(
    coord: Harness,
) -> None:
    """It never ran: its execution timeout was counted as a failed run (FAILED with max_attempts 1)."""
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_untold(coord, miner, execution_timeout_s=1)
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="the job given back", within=10.0)
    await completed_at_attempt_1(coord, miner, job.job_id)
    [back] = [e for e in coord.db.events(job.job_id) if e["reason"] == "EXECUTION_TIMEOUT"]
    assert back["attempt"] == 0 and back["message"] == UNSENT_ON_POLL, coord.db.events(job.job_id)


@pytest.mark.coordinator(**QUIET)
async def test_an_untold_assignment_read_back_past_its_execution_deadline_goes_back_unspent(
    coord: Harness,
) -> None:
    """No poll took it before its job was taken out (a cancel that failed to commit), and its execution
    deadline passed while it was out: it never ran, so it goes back with its attempt unspent, once (not handed
    out too: the miner would have it twice)."""
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_untold(coord, miner, poll_s=0.3, execution_timeout_s=1)
    blocker = await fail_a_cancel(coord, job.job_id)
    await asyncio.sleep(1.1)  # (its execution deadline passes while the read-back waits for the store)
    await read_back(coord, job.job_id, blocker)
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="the job given back", within=10.0)
    await completed_at_attempt_1(coord, miner, job.job_id)
    back = [e for e in coord.db.events(job.job_id) if e["message"] == UNSENT_ON_POLL]
    assert len(back) == 1 and back[0]["attempt"] == 0, coord.db.events(job.job_id)


async def completed_at_attempt_1(coord: Harness, miner: UnaryMiner, job_id: str) -> None:
    """The next poll hands the job out once, at attempt 1, and its result completes it."""
    polled = await miner.poll(max_jobs=2)
    assert [(b.job.job_id, b.attempt) for b in polled.assignments] == [(job_id, 1)], coord.db.events(job_id)
    assert (await miner.result(job_id, 1)).ack.accepted
    assert (await coord.finished(coord.client(), job_id)).state == COMPLETED
    assert not (await miner.poll(max_jobs=2, timeout=1.0)).assignments


async def assignment_untold(coord: Harness, miner: UnaryMiner, poll_s: float = 1.0, **options: object):  # type: ignore[no-untyped-def]
    """A job (max_attempts 1) assigned to miner's waiting poll, which gave up while the assignment was being
    written: the assignment waits for the next poll (as test_unary_miner_drain.assignment_no_poll_took, with
    the job's options)."""
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    waiting = asyncio.ensure_future(miner.poll(timeout=poll_s))
    await eventually(lambda: session.poll_waiting, what="poll waiting")
    blocker = held_lock(coord)
    try:
        submit = asyncio.ensure_future(coord.client().submit({"n": 1}, max_attempts=1, **options))
        await eventually(lambda: session.held, what="the job assigned in memory (its write waiting)")
        assert not (await waiting).assignments  # (gone before the write landed)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    return await submit


@pytest.mark.coordinator(lease_seconds=2.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_an_assignment_given_back_while_its_writer_was_stuck_reaches_its_miner_once(
    coord: Harness,
) -> None:
    """The miner stops reading: the stream's writer waits on HTTP/2 flow control, and an assignment queued behind
    it runs out its lease before it left, so it goes back unspent (attempt 1 again). Refilled onto the same
    stream before the writer got to the first one, both left, as the same attempt: the miner ran the job twice
    at attempt 1."""
    call = coord.miner_stub().Connect(metadata=(("x-api-key", miner_key("miner-00")),))
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(slots=100))))
    assert (await call.read()).WhichOneof("message") == "welcome"
    writing = asyncio.Lock()
    beating = asyncio.create_task(heartbeats(call, writing))  # alive, but reading nothing until told to
    try:
        alice = coord.client("alice")
        session = coord.coordinator.scheduler.by_miner["miner-00"]
        for _ in range(30):  # 27 MB: far more than flow control lets through to a miner that does not read
            await alice.submit(bytes(900_000), max_attempts=5)
        await eventually(lambda: session.write_blocked_since_us, what="the stream's writer stuck")
        job = await alice.submit({"n": 1}, max_attempts=5)
        held = session.held[job.job_id]
        assert (held.attempt, held.told) == (1, False)
        await eventually(lambda: job.job_id not in session.held, what="its lease run out", within=10.0)
        await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="the job given back")
        # lowered, then raised again: the session is filled from the queue, and the job comes back to it
        for slots in (99, 100):
            async with writing:
                await call.write(mpb.ConnectRequest(capacity=mpb.Capacity(slots=slots)))
        await eventually(lambda: job.job_id in session.held, what="the job assigned to the stream again")
        assert session.held[job.job_id].attempt == 1
        marker = await alice.submit({"last": 1})  # (written after everything queued before it)
        given = await assignments_until(call, marker.job_id)
    finally:
        beating.cancel()
        call.cancel()
    assert given.count((job.job_id, 1)) == 1, given
    assert len(given) == len(set(given)), "an attempt assigned twice"


async def heartbeats(call, writing: asyncio.Lock) -> None:  # type: ignore[no-untyped-def]
    """Until cancelled. Each write under `writing`: two writes at once on one call end it (grpc.aio:
    GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, seen once in a CI run)."""
    with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
        while True:
            async with writing:
                await call.write(mpb.ConnectRequest(heartbeat=mpb.MinerHeartbeat()))
            await asyncio.sleep(0.2)


async def assignments_until(call, job_id: str) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Read the stream up to job_id's assignment: every (job, attempt) assigned, in order."""
    given: list[tuple[str, int]] = []
    while True:
        message = await asyncio.wait_for(call.read(), 30.0)
        assert message is not grpc.aio.EOF, given
        if message.WhichOneof("message") == "assignments":
            given += [(a.job.job_id, a.attempt) for a in message.assignments.assignments]
            if job_id in {j for j, _ in given}:
                return given
