"""Jobs of a unary (poll) miner show RUNNING while they run: a Heartbeat listing a job the session holds at
that attempt, while the job is still ASSIGNED, moves it to RUNNING (reason ACCEPTED), as a stream's Accept
does. Other heartbeats write nothing, and the order of things (a heartbeat after the result, racing the
result's commit, during a read-back after a failed commit, its own write failing) breaks nothing. The SDK's
poll miner sends a heartbeat ACCEPT_AFTER_S after a job started if it still runs, none for a job done
sooner."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.miner import ACCEPT_AFTER_S, Outcome, job_input
from coord_support import (
    ASSIGNED,
    COMPLETED,
    RUNNING,
    Harness,
    capabilities,
    eventually,
    gated_sdk_miner,
    miner_key,
    mpb,
    sdk_miner,
    struct,
)
from test_failed_commit import allow, fail_a_cancel, held_lock, refuse

MD = (("x-api-key", miner_key("miner-00")),)
# A heartbeat interval far longer than a job's ACCEPT_AFTER_S: only the SDK's early heartbeat can tell the
# coordinator in time (the lease and the heartbeat timeout must exceed the interval)
SLOW_BEATS = {"heartbeat_interval_seconds": 5.0, "lease_seconds": 10.0, "heartbeat_timeout_seconds": 15.0}
PROMPT_S = 1.0  # an answer that waited for no write comes back well within this, even on a loaded machine


class UnaryMiner:
    """A unary session driven call by call (generated stubs): register, poll, heartbeat, result."""

    def __init__(self, coord: Harness) -> None:
        self.stub = coord.miner_stub()
        self.session_id = ""

    async def register(self) -> None:
        hello = mpb.Hello(capabilities=capabilities(slots=2))
        reg = await self.stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=MD)
        self.session_id = reg.welcome.session_id

    async def poll(self) -> mpb.Assignment:
        request = mpb.PollJobRequest(session_id=self.session_id, max_jobs=1)
        [a] = (await self.stub.PollJob(request, metadata=MD, timeout=5)).assignments
        return a

    def heartbeat(self, *jobs: tuple[str, int]) -> Any:
        listed = [mpb.RunningJob(job_id=j, attempt=a) for j, a in jobs]
        request = mpb.HeartbeatRequest(session_id=self.session_id, running_jobs=listed)
        return self.stub.Heartbeat(request, metadata=MD, timeout=10)

    def result(self, job_id: str, attempt: int) -> Any:
        r = mpb.Result(
            job_id=job_id, attempt=attempt, result=struct({"ok": True}), units="1", unit_type="jobs"
        )
        return self.stub.SubmitResult(
            mpb.SubmitResultRequest(session_id=self.session_id, result=r), metadata=MD
        )


async def assigned_job(coord: Harness) -> tuple[Any, UnaryMiner, mpb.Assignment]:
    """A job ASSIGNED (as stored) to a registered unary miner-00: (client, miner, assignment)."""
    alice = coord.client("alice")
    miner = UnaryMiner(coord)
    await miner.register()
    job = await alice.submit({"x": 1})
    a = await miner.poll()
    assert a.job.job_id == job.job_id
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="ASSIGNED stored")
    return alice, miner, a


def reasons(coord: Harness, job_id: str) -> list[str]:
    return [e["reason"] for e in coord.db.events(job_id)]


async def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    answer = await call
    return answer, time.monotonic() - started


# ------------------------------------------------------------------------------------------ the contract
async def test_heartbeat_listing_an_assigned_job_moves_it_to_running_as_an_accept(coord: Harness) -> None:
    alice, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    seen: list[int] = []

    async def watch() -> None:
        async for update in alice.watch(job_id):
            seen.append(update.job.state)

    watching = asyncio.create_task(watch())
    await eventually(lambda: seen, what="the watch's first message")

    answer = await miner.heartbeat((job_id, a.attempt))
    assert not answer.cancels and not answer.draining
    # RUNNING once the heartbeat is answered, stored, with the stream's accept event
    assert (await alice.get(job_id)).state == RUNNING and coord.db.job_state(job_id) == RUNNING
    accepted = coord.db.events(job_id)[-1]
    assert (accepted["reason"], accepted["from_state"], accepted["to_state"]) == (
        "ACCEPTED",
        ASSIGNED,
        RUNNING,
    )
    assert (accepted["attempt"], accepted["miner_id"]) == (a.attempt, "miner-00")
    admin = coord.admin()
    listed = await admin.stub.ListJobs(apb.AdminServiceListJobsRequest(states=[RUNNING]), metadata=admin.md)
    assert [j.job_id for j in listed.jobs] == [job_id]  # `aitbc admin jobs --state running` lists it

    assert (await miner.result(job_id, a.attempt)).ack.accepted
    await asyncio.wait_for(watching, 5)
    assert seen == [ASSIGNED, RUNNING, COMPLETED]  # not ASSIGNED -> COMPLETED
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]


async def test_heartbeats_with_nothing_to_accept_write_nothing(coord: Harness) -> None:
    """RUNNING already, a stale attempt, a job not held, an unknown job: no event, and the answer waits for no
    write (it comes back at once while the store's write lock is held)."""
    alice, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    await miner.heartbeat((job_id, a.attempt))  # accepted: RUNNING
    other = await alice.submit({"x": 2})  # queued, not this miner's (it polls no more)
    before = coord.db.events(job_id)

    blocker = held_lock(coord)
    try:
        listed = [(job_id, a.attempt), (job_id, a.attempt + 1), (other.job_id, 1), ("no-such-job", 1)]
        answer, took = await timed(miner.heartbeat(*listed))
        assert not answer.cancels and took < PROMPT_S, f"the heartbeat waited {took:.2f} s"
        answer, took = await timed(miner.heartbeat())
        assert took < PROMPT_S, f"the empty heartbeat waited {took:.2f} s"
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert coord.db.events(job_id) == before and reasons(coord, other.job_id) == ["SUBMITTED"]
    assert (await alice.get(other.job_id)).state != RUNNING


async def test_stream_heartbeat_does_not_accept(coord: Harness) -> None:
    """The stream keeps its explicit Accept: a stream's heartbeat listing an ASSIGNED job renews its lease and
    writes nothing (its reader handles heartbeats without an await)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)  # heartbeats every 0.2 s, listing its jobs
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    await asyncio.sleep(0.6)  # three heartbeats listing the job
    assert coord.db.job_state(job.job_id) == ASSIGNED
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING by the Accept")


# ------------------------------------------------------------------------------------ the order of things
async def test_heartbeat_after_the_jobs_result_changes_nothing(coord: Harness) -> None:
    alice, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    assert (await miner.result(job_id, a.attempt)).ack.accepted  # its result implies the accept
    before = coord.db.events(job_id)
    answer = await miner.heartbeat((job_id, a.attempt))  # sent before the result's answer came, say
    assert not answer.cancels
    assert coord.db.events(job_id) == before
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]
    assert (await alice.get(job_id)).state == COMPLETED


async def test_heartbeat_while_the_results_commit_waits_answers_without_a_write(coord: Harness) -> None:
    """The result's commit waits for the disk (the SDK lists a job until its result's ack): the heartbeat
    listing the job finds it no longer held and answers at once; the result lands, its accept implied, once."""
    _, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    blocker = held_lock(coord)
    try:
        result = asyncio.ensure_future(miner.result(job_id, a.attempt))
        await eventually(
            lambda: job_id in coord.coordinator.scheduler._unsettled, what="the result's commit queued"
        )
        answer, took = await timed(miner.heartbeat((job_id, a.attempt)))
        assert not answer.cancels and took < PROMPT_S, f"the heartbeat waited {took:.2f} s"
        assert not result.done()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert (await asyncio.wait_for(result, 5)).ack.accepted
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]
    accepted, completed = coord.db.events(job_id)[-2:]
    assert accepted["occurred_us"] == completed["occurred_us"]  # one decision: the result's


async def test_result_behind_the_heartbeats_accept_lands_after_it(coord: Harness) -> None:
    """The heartbeat's accept waits for the disk and the result comes meanwhile: both land, in order, the job
    accepted once."""
    alice, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    blocker = held_lock(coord)
    try:
        beat = asyncio.ensure_future(miner.heartbeat((job_id, a.attempt)))
        await eventually(
            lambda: job_id in coord.coordinator.scheduler._unsettled, what="the accept's commit queued"
        )
        result = asyncio.ensure_future(miner.result(job_id, a.attempt))
        await asyncio.sleep(0.2)
        assert not beat.done() and not result.done()  # (both wait for the write lock)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert not (await asyncio.wait_for(beat, 5)).cancels
    assert (await asyncio.wait_for(result, 5)).ack.accepted
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]
    assert (await alice.get(job_id)).state == COMPLETED and coord.db.count("receipts", job_id) == 1


async def test_heartbeats_accept_failing_to_commit_is_answered_and_the_next_accepts(coord: Harness) -> None:
    """Its write failing, the accept is undone as an accept's is (the job read back, ASSIGNED, still the
    session's); the heartbeat itself is answered as usual, and the next one accepts the job."""
    alice, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    scheduler = coord.coordinator.scheduler
    refuse(coord, job_id, "job_events", "NEW.reason = 'ACCEPTED'")
    answer = await miner.heartbeat((job_id, a.attempt))  # no error: the heartbeat needed no write of its own
    assert not answer.cancels and not answer.draining
    assert coord.db.job_state(job_id) == ASSIGNED and "ACCEPTED" not in reasons(coord, job_id)
    await eventually(
        lambda: job_id in scheduler.by_miner["miner-00"].held, what="the job read back, still held"
    )
    assert (
        await alice.get(job_id)
    ).state == ASSIGNED  # as stored: never RUNNING in a state that did not land
    allow(coord, "job_events")

    await miner.heartbeat((job_id, a.attempt))
    assert coord.db.job_state(job_id) == RUNNING
    assert (await miner.result(job_id, a.attempt)).ack.accepted
    done = await coord.finished(alice, job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1) and coord.db.count("receipts", job_id) == 1
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]


async def test_heartbeat_during_a_read_back_changes_nothing_then_the_next_accepts(coord: Harness) -> None:
    """A cancel failed to commit: the job is out of memory until it is read back (held up here by the write
    lock). A heartbeat listing it meanwhile neither waits for the read-back (an accept would, 10 s at most) nor
    changes anything; once the job is back, still the session's, the next heartbeat accepts it."""
    _, miner, a = await assigned_job(coord)
    job_id = a.job.job_id
    scheduler = coord.coordinator.scheduler
    blocker = await fail_a_cancel(coord, job_id)
    try:
        answer, took = await timed(miner.heartbeat((job_id, a.attempt)))
        assert not answer.cancels and took < PROMPT_S, f"the heartbeat waited {took:.2f} s"
        assert job_id not in scheduler.jobs  # (still being read back)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(
        lambda: job_id in scheduler.by_miner["miner-00"].held, what="the job read back, still held"
    )
    assert coord.db.job_state(job_id) == ASSIGNED

    await miner.heartbeat((job_id, a.attempt))
    assert coord.db.job_state(job_id) == RUNNING
    assert (await miner.result(job_id, a.attempt)).ack.accepted
    assert reasons(coord, job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]


# ---------------------------------------------------------------------------------- the SDK's poll miner
@pytest.mark.coordinator(**SLOW_BEATS)
async def test_sdk_poll_miner_job_shows_running_soon_after_it_starts(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address, transport="poll")
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1, what="the poll miner registered")
    job = await alice.submit({"x": 1})
    await eventually(lambda: runner.runs, what="the job started")
    # told ACCEPT_AFTER_S after it started, not at the next heartbeat (5 s)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, within=2.0, what="RUNNING")
    assigned, accepted = coord.db.events(job.job_id)[1:3]
    waited = (accepted["occurred_us"] - assigned["occurred_us"]) / 1e6
    assert accepted["reason"] == "ACCEPTED" and ACCEPT_AFTER_S <= waited < 2.0, waited
    runner.gate.set()
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert reasons(coord, job.job_id) == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]


class QuickRunner:
    """Echoes each job at once: done long before ACCEPT_AFTER_S."""

    async def __call__(self, job: Any) -> Outcome:
        return Outcome(job_input(job), units="1", unit_type="jobs")


@pytest.mark.coordinator(**SLOW_BEATS)
async def test_sdk_poll_miner_short_jobs_cost_no_heartbeat(coord: Harness) -> None:
    """A job done before ACCEPT_AFTER_S is accepted by its result: no early heartbeat for it (no call per
    short job), its accept and completion one decision."""
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, QuickRunner(), slots=2, transport="poll")
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1, what="the poll miner registered")
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    jobs = [await alice.submit({"n": n}) for n in range(4)]
    for job in jobs:
        assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    await asyncio.sleep(ACCEPT_AFTER_S + 0.3)  # past every early heartbeat's time
    assert session.heartbeat_us == 0, "a heartbeat was sent for short jobs"
    for job in jobs:
        accepted, completed = coord.db.events(job.job_id)[-2:]
        assert (accepted["reason"], completed["reason"]) == ("ACCEPTED", "COMPLETED")
        assert accepted["occurred_us"] == completed["occurred_us"]


@pytest.mark.coordinator(**SLOW_BEATS)
async def test_sdk_poll_miner_job_done_before_its_early_heartbeat_sends_none(coord: Harness) -> None:
    """A job whose result is sent before ACCEPT_AFTER_S passes: its timer finds it no longer running."""
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address, transport="poll")
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1, what="the poll miner registered")
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    job = await alice.submit({"x": 1})
    await eventually(lambda: runner.runs, what="the job started")
    runner.gate.set()
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    await asyncio.sleep(ACCEPT_AFTER_S + 0.3)
    assert session.heartbeat_us == 0
