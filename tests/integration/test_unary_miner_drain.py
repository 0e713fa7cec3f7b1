"""The unary miner path (RegisterMiner, Heartbeat, PollJob, ...) under an operator's drain, and its polls (review
round 25).

An operator's drain of a unary miner did not hold: a session with nothing left was closed at once, so the miner's
next call heard only SESSION_NOT_FOUND ("register again"), registered again and took new work; a drain
remembered for the miner was spent on a session closed the moment it registered. Now the session stays open,
taking no work, until the miner's next Heartbeat or PollJob, refused SESSION_DRAINED (as a stream ends with
GoAway DRAINED); so does a draining one whose last job a client canceled (closed, its cancel was lost).
Also: a long-poll counts as the miner present (it was closed HEARTBEAT_TIMEOUT while it waited), a unary
session is given no more jobs than its polls ask for (a freed slot was filled unasked, its job's lease running
unseen), and an assignment no poll took is withdrawn with its cancel.
Review round 31: jobs dispatched while a poll waits go to the session only as far as its waiting polls ask (a
batch went to it whole, the rest waiting unseen); an assignment no poll took goes back with its attempt unspent
(its lease run out, or its miner registered again: the miner never heard of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    QUEUED,
    Harness,
    capabilities,
    eventually,
    expect_error,
    miner_key,
    rpc_error,
    struct,
)
from test_auth_rate_limit import free_port, scrape
from test_failed_commit import held_lock

MD = (("x-api-key", miner_key("miner-00")),)


class UnaryMiner:
    """miner-00 on the unary path, over generated stubs on a real channel."""

    def __init__(self, coord: Harness) -> None:
        self.stub = coord.miner_stub()
        self.session_id = ""

    async def register(self, slots: int = 1) -> mpb.Welcome:
        hello = mpb.Hello(capabilities=capabilities(slots=slots))
        welcome = (await self.stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=MD)).welcome
        self.session_id = welcome.session_id
        return welcome

    def heartbeat(self, running: tuple[tuple[str, int], ...] = ()):  # type: ignore[no-untyped-def]
        return self.stub.Heartbeat(mpb.HeartbeatRequest(
            session_id=self.session_id, running_jobs=[mpb.RunningJob(job_id=j, attempt=a) for j, a in running]),
            metadata=MD)  # fmt: skip

    def poll(self, max_jobs: int = 1, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        return self.stub.PollJob(mpb.PollJobRequest(session_id=self.session_id, max_jobs=max_jobs), metadata=MD,
                                 timeout=timeout)  # fmt: skip

    def result(self, job_id: str, attempt: int):  # type: ignore[no-untyped-def]
        r = mpb.Result(
            job_id=job_id, attempt=attempt, result=struct({"ok": True}), units="1", unit_type="jobs"
        )
        return self.stub.SubmitResult(
            mpb.SubmitResultRequest(session_id=self.session_id, result=r), metadata=MD
        )


def expect_drained(err, reason: str = "ADMIN") -> None:  # type: ignore[no-untyped-def]
    expect_error(err, grpc.StatusCode.FAILED_PRECONDITION, "SESSION_DRAINED")
    assert err.metadata["drain_reason"] == reason, err.metadata


@pytest.fixture
async def metered(tmp_path: Path) -> AsyncIterator[Harness]:
    """The `coord` coordinator with /metrics on, a miner back within 5 s keeping its jobs and drain."""
    overrides = {"metrics_port": free_port(), "reconnect_grace_seconds": 5.0, "lease_seconds": 30.0,
                 "heartbeat_timeout_seconds": 1.0}  # fmt: skip
    async with Harness(tmp_path, overrides) as harness:
        yield harness


def gauge(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


async def test_an_idle_unary_miner_drained_by_an_operator_is_told_at_its_next_call(coord: Harness) -> None:
    miner = UnaryMiner(coord)
    await miner.register()
    drained = (await coord.admin().drain("miner-00")).miner
    assert drained.status == apb.MINER_STATUS_DRAINING
    # open until the miner hears of it: it is still listed, draining (closed at once, it was gone unsaid)
    assert (await coord.admin().miners())["miner-00"].status == apb.MINER_STATUS_DRAINING

    expect_drained(await rpc_error(miner.heartbeat()))
    assert "miner-00" not in await coord.admin().miners()
    expect_error(await rpc_error(miner.heartbeat()), grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")

    # told, its drain is over: registered again (a new process, say), it takes work
    await miner.register()
    job = await coord.client().submit({"n": 1})
    [a] = (await miner.poll()).assignments
    assert a.job.job_id == job.job_id


async def test_a_unary_miner_registering_again_before_it_is_told_stays_drained(coord: Harness) -> None:
    miner = UnaryMiner(coord)
    await miner.register()
    await coord.admin().drain("miner-00")
    job = await coord.client().submit({"n": 1})
    await miner.register()  # (a restart of the miner, before any call on its drained session)
    expect_drained(await rpc_error(miner.poll(timeout=2)))
    assert coord.db.job_state(job.job_id) == QUEUED, "the drained miner took new work"


async def test_a_drain_remembered_for_an_away_unary_miner_holds_for_its_next_registration(
    metered: Harness,
) -> None:
    """Drained while it ran a job, the miner fell silent (HEARTBEAT_TIMEOUT: its job waiting for it, its
    drain remembered). Back within the grace period, its new session is drained: the drain used to be spent on that
    session, closed DRAINED in the very RegisterMiner call, and the miner's next call, refused
    SESSION_NOT_FOUND, registered again and took the job back. Meanwhile GetStats, the gauge and ListMiners
    count the miner as draining, though away (GetStats and the gauge counted connected miners only)."""
    coord = metered
    scheduler = coord.coordinator.scheduler
    miner = UnaryMiner(coord)
    await miner.register()
    job = await coord.client().submit({"n": 1})
    [a] = (await miner.poll()).assignments
    await coord.admin().drain("miner-00")
    assert (await miner.heartbeat(((job.job_id, a.attempt),))).draining
    session = scheduler.by_miner["miner-00"]
    await eventually(lambda: session.closed, what="the silent session closed HEARTBEAT_TIMEOUT")
    # a unary miner's silence is how an outage looks: its job waits out the grace period for it
    assert coord.db.job_state(job.job_id) != QUEUED and job.job_id in scheduler.orphans["miner-00"]

    listed = (await coord.admin().miners())["miner-00"]
    assert (listed.status, listed.drain_pending) == (apb.MINER_STATUS_DISCONNECTED, True)
    stats = await coord.admin().stub.GetStats(apb.GetStatsRequest(), metadata=coord.admin().md)
    assert (stats.miners_online, stats.miners_draining) == (0, 1)
    text = await asyncio.to_thread(scrape, coord.coordinator.observability.metrics_port)
    assert (gauge(text, "aitbc_miners_draining"), gauge(text, "aitbc_miners_disconnected")) == (1.0, 1.0)

    await miner.register()
    expect_drained(await rpc_error(miner.poll(timeout=2)))
    assert coord.db.job_state(job.job_id) == QUEUED, "the remembered drain was spent: the miner took work"
    stats = await coord.admin().stub.GetStats(apb.GetStatsRequest(), metadata=coord.admin().md)
    assert stats.miners_draining == 0
    text = await asyncio.to_thread(scrape, coord.coordinator.observability.metrics_port)
    assert gauge(text, "aitbc_miners_draining") == 0.0


async def test_a_waiting_poll_hears_the_drain_at_once_and_then_that_the_session_is_drained(
    coord: Harness,
) -> None:
    miner = UnaryMiner(coord)
    await miner.register(slots=2)
    job = await coord.client().submit({"n": 1})
    [a] = (await miner.poll()).assignments
    waiting = asyncio.ensure_future(miner.poll(timeout=30))
    await eventually(
        lambda: coord.coordinator.scheduler.by_miner["miner-00"].poll_waiting, what="poll waiting"
    )
    await coord.admin().drain("miner-00")
    told = await asyncio.wait_for(waiting, 20)
    assert told.draining and not told.assignments

    waiting = asyncio.ensure_future(miner.poll(timeout=30))  # (told once: this one waits)
    await eventually(
        lambda: coord.coordinator.scheduler.by_miner["miner-00"].poll_waiting, what="poll waiting"
    )
    assert (await miner.result(job.job_id, a.attempt)).ack.accepted
    expect_drained(await rpc_error(asyncio.wait_for(waiting, 20)))


async def test_a_cancel_is_told_before_the_session_is_drained(coord: Harness) -> None:
    """The job of a drained unary miner is canceled by its client: the miner hears the cancel first (it is
    still running it), then that it is drained."""
    client = coord.client()
    miner = UnaryMiner(coord)
    await miner.register()
    job = await client.submit({"n": 1})
    [a] = (await miner.poll()).assignments
    await coord.admin().drain("miner-00")
    await client.cancel(job.job_id, "no longer needed")
    hb = await miner.heartbeat(((job.job_id, a.attempt),))
    assert [(c.job_id, c.reason) for c in hb.cancels] == [(job.job_id, "CANCELED_BY_CLIENT")] and hb.draining
    expect_drained(await rpc_error(miner.heartbeat()))


@pytest.mark.coordinator(heartbeat_timeout_seconds=1.0)
async def test_a_long_poll_keeps_the_unary_session_alive(coord: Harness) -> None:
    """A poll waiting longer than the heartbeat timeout (documented up to 60 s, the timeout 30 s by default) is
    the miner there, waiting for work: its session was closed HEARTBEAT_TIMEOUT under it."""
    miner = UnaryMiner(coord)
    await miner.register()
    assert not (await miner.poll(timeout=2.5)).assignments
    job = await coord.client().submit({"n": 1})
    [a] = (await miner.poll()).assignments
    assert a.job.job_id == job.job_id


async def test_a_unary_miner_is_given_no_more_jobs_than_its_polls_ask_for(coord: Harness) -> None:
    """A result frees slots of a 3-slot unary miner: the queued jobs wait for its polls (each taking
    max_jobs), rather than being handed to it unasked, their leases running while nobody looks."""
    client = coord.client()
    miner = UnaryMiner(coord)
    await miner.register(slots=3)
    first = await client.submit({"n": 0})
    [a] = (await miner.poll(max_jobs=1)).assignments
    others = [await client.submit({"n": n}) for n in (1, 2, 3)]
    assert (await miner.result(first.job_id, a.attempt)).ack.accepted
    assert [coord.db.job_state(j.job_id) for j in others] == [QUEUED] * 3
    [b] = (await miner.poll(max_jobs=1)).assignments
    assert b.job.job_id == others[0].job_id
    assert [coord.db.job_state(j.job_id) for j in others[1:]] == [QUEUED] * 2


async def test_a_batch_submitted_while_a_poll_waits_gives_the_unary_miner_only_what_the_poll_asks_for(
    coord: Harness,
) -> None:
    """Three jobs submitted together while a poll of a 3-slot unary miner waits asking for one: one is its; the
    others stay queued for any miner (all three went to the session: two waited there unseen, their leases
    running, for a poll that might never come)."""
    client = coord.client()
    miner = UnaryMiner(coord)
    await miner.register(slots=3)
    waiting = asyncio.ensure_future(miner.poll(max_jobs=1))
    await eventually(
        lambda: coord.coordinator.scheduler.by_miner["miner-00"].poll_waiting, what="poll waiting"
    )
    jobs = await client.submit_many([{"n": 1}, {"n": 2}, {"n": 3}])
    [a] = (await waiting).assignments
    others = [j.job_id for j in jobs if j.job_id != a.job.job_id]
    assert [coord.db.job_state(job_id) for job_id in others] == [QUEUED] * 2
    polled = await miner.poll(max_jobs=2)
    assert sorted(b.job.job_id for b in polled.assignments) == sorted(others)


async def assignment_no_poll_took(coord: Harness, miner: UnaryMiner):  # type: ignore[no-untyped-def]
    """A job (max_attempts 1) assigned to miner's waiting poll, which gave up while the assignment was being
    written (the store slow): the assignment waits for the next poll. Returns the job."""
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    waiting = asyncio.ensure_future(miner.poll(timeout=1.0))
    await eventually(lambda: session.poll_waiting, what="poll waiting")
    blocker = held_lock(coord)
    try:
        submit = asyncio.ensure_future(coord.client().submit({"n": 1}, max_attempts=1))
        await eventually(lambda: session.held, what="the job assigned in memory (its write waiting)")
        assert not (await waiting).assignments  # (gone before the write landed)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    return await submit


async def test_an_assignment_no_poll_took_goes_back_unspent_when_its_lease_runs_out(coord: Harness) -> None:
    """Its lease runs out (1 s here) before the next poll: it is withdrawn with its cancel (the next poll handed
    out both) and, since the miner never heard of it, the job is queued again with its attempt unspent (it came
    back as attempt 2; with max_attempts 1 it failed ATTEMPTS_EXHAUSTED, never run)."""
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_no_poll_took(coord, miner)
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="the assignment's lease run out")
    polled = await miner.poll()
    assert [(b.job.job_id, b.attempt) for b in polled.assignments] == [(job.job_id, 1)]
    assert not polled.cancels
    assert (await miner.result(job.job_id, 1)).ack.accepted
    assert [e["reason"] for e in coord.db.events(job.job_id)] == [
        "SUBMITTED", "ASSIGNED", "LEASE_EXPIRED", "ASSIGNED", "ACCEPTED", "COMPLETED"]  # fmt: skip


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_an_assignment_no_poll_took_goes_back_unspent_when_its_miner_registers_again(
    coord: Harness,
) -> None:
    """The miner registers again (a restart) before polling: the assignment it never heard of is not lost by it
    (MINER_LOST_JOB, spending the job's only attempt: FAILED ATTEMPTS_EXHAUSTED): the job is queued again with
    its attempt unspent, and the new session's poll gets it."""
    miner = UnaryMiner(coord)
    await miner.register()
    job = await assignment_no_poll_took(coord, miner)
    await miner.register()
    polled = await miner.poll()
    assert [(b.job.job_id, b.attempt) for b in polled.assignments] == [(job.job_id, 1)]
    assert (await miner.result(job.job_id, 1)).ack.accepted


async def test_two_polls_of_one_session_each_take_no_more_than_they_ask_for(coord: Harness) -> None:
    """Two callers poll one 2-slot session for one job each; two jobs come: one each (the first poll to
    resume took both, and the other none)."""
    miner = UnaryMiner(coord)
    await miner.register(slots=2)
    polls = [asyncio.ensure_future(miner.poll(max_jobs=1)) for _ in range(2)]
    await eventually(
        lambda: coord.coordinator.scheduler.by_miner["miner-00"].poll_waiting == 2, what="both waiting"
    )
    jobs = await coord.client().submit_many([{"n": 1}, {"n": 2}])
    answers = await asyncio.gather(*polls)
    assert [len(r.assignments) for r in answers] == [1, 1]
    assert sorted(r.assignments[0].job.job_id for r in answers) == sorted(j.job_id for j in jobs)


async def test_a_unary_miner_draining_on_its_own_hears_the_cancel_of_its_last_job(coord: Harness) -> None:
    """The miner asked to drain (Drain), then the client canceled its last job: the session used to end at once,
    the cancel with it (the miner ran on, its result refused SESSION_NOT_FOUND)."""
    client = coord.client()
    miner = UnaryMiner(coord)
    await miner.register()
    job = await client.submit({"n": 1})
    [a] = (await miner.poll()).assignments
    drain = mpb.DrainRequest(session_id=miner.session_id, reason="SIGTERM")
    assert (await miner.stub.Drain(drain, metadata=MD)).running_jobs == 1
    await client.cancel(job.job_id, "no longer needed")
    hb = await miner.heartbeat(((job.job_id, a.attempt),))
    assert [(c.job_id, c.reason) for c in hb.cancels] == [(job.job_id, "CANCELED_BY_CLIENT")] and hb.draining
    expect_drained(await rpc_error(miner.heartbeat()), "MINER_REQUESTED")
