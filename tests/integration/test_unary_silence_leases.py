"""What a unary miner's silence does not excuse. A handed-out job's lease that runs out while its unary miner is
silent waits for the liveness check (the session then closes HEARTBEAT_TIMEOUT and its jobs wait out the
reconnect grace). But a miner that still heartbeats without listing the job dropped it, one that keeps calling
(polls, results of other jobs) without heartbeats stopped renewing it, and an execution timeout or a client's
cancel is not the lease's business: each still takes the job at once, once."""

from __future__ import annotations

import asyncio

import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    CANCELED,
    COMPLETED,
    QUEUED,
    Harness,
    capabilities,
    eventually,
    miner_key,
    struct,
)


class Unary:
    """A miner on the unary path over generated stubs: each call is one the test makes, nothing in between."""

    def __init__(self, coord: Harness, name: str = "miner-00") -> None:
        self.stub = coord.miner_stub()
        self.md = (("x-api-key", miner_key(name)),)
        self.session_id = ""

    async def register(self, running: tuple[tuple[str, int], ...] = (), slots: int = 1) -> mpb.Welcome:
        hello = mpb.Hello(capabilities=capabilities(slots=slots),
                          running_jobs=[mpb.RunningJob(job_id=j, attempt=a) for j, a in running])  # fmt: skip
        welcome = (
            await self.stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=self.md)
        ).welcome
        self.session_id = welcome.session_id
        return welcome

    async def heartbeat(self, running: tuple[tuple[str, int], ...] = ()) -> mpb.HeartbeatResponse:
        return await self.stub.Heartbeat(mpb.HeartbeatRequest(session_id=self.session_id, running_jobs=[
            mpb.RunningJob(job_id=j, attempt=a) for j, a in running]), metadata=self.md)  # fmt: skip

    async def poll(self, max_jobs: int = 1, deadline_s: float = 5.0) -> mpb.PollJobResponse:
        return await self.stub.PollJob(mpb.PollJobRequest(session_id=self.session_id, max_jobs=max_jobs),
                                       metadata=self.md, timeout=deadline_s)  # fmt: skip

    async def result(self, job_id: str, attempt: int) -> mpb.ResultAck:
        r = mpb.Result(
            job_id=job_id, attempt=attempt, result=struct({"ok": True}), units="1", unit_type="jobs"
        )
        request = mpb.SubmitResultRequest(session_id=self.session_id, result=r)
        return (await self.stub.SubmitResult(request, metadata=self.md)).ack


async def holding(coord: Harness, n: int = 1) -> tuple[Unary, list[str]]:
    """miner-00 on the unary path, registered with n slots, holding n jobs (attempt 1) it has heartbeated for:
    the miner, and the jobs' ids."""
    miner, alice = Unary(coord), coord.client("alice")
    await miner.register(slots=n)
    jobs = [(await alice.submit({"n": i})).job_id for i in range(n)]
    got = (await miner.poll(max_jobs=n)).assignments
    assert sorted((a.job.job_id, a.attempt) for a in got) == sorted((j, 1) for j in jobs)
    await miner.heartbeat(tuple((j, 1) for j in jobs))
    return miner, jobs


async def silenced(coord: Harness, miner: Unary) -> None:
    """The miner makes no call until its session is closed (for silence, or a drain then silence)."""
    scheduler = coord.coordinator.scheduler
    await eventually(
        lambda: miner.session_id not in scheduler.sessions, within=10.0, what="the silent session closed"
    )


def requeues(coord: Harness, job_id: str) -> list[tuple[str, int]]:
    """(reason, the attempt it left) of each time the job went back to the queue."""
    return [
        (e["reason"], e["attempt"])
        for e in coord.db.events(job_id)
        if e["to_state"] == QUEUED and e["from_state"]
    ]


# lease 1 s, the liveness check 4 s: a lease runs out well before a silent session closes
SILENCE = {"lease_seconds": 1.0, "heartbeat_timeout_seconds": 4.0, "reconnect_grace_seconds": 30.0}


@pytest.mark.coordinator(**SILENCE)
async def test_a_unary_miner_heartbeating_without_the_job_loses_it_at_its_lease(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = Unary(coord)
    await miner.register()
    job = await alice.submit({"n": 1})
    [a] = (await miner.poll()).assignments
    assert a.attempt == 1
    cancels: list[mpb.Cancel] = []

    async def cancelled() -> bool:  # heartbeats that do not list the job: the miner dropped it
        cancels.extend((await miner.heartbeat()).cancels)
        return bool(cancels)

    # (long before the 4 s liveness check could close the session, which the heartbeats keep open anyway)
    await eventually(cancelled, within=10.0, interval=0.2, what="the job's lease expired")
    assert [(c.job_id, c.attempt, c.reason) for c in cancels] == [(job.job_id, 1, "LEASE_EXPIRED")]
    assert requeues(coord, job.job_id) == [("LEASE_EXPIRED", 1)]
    assert miner.session_id in coord.coordinator.scheduler.sessions  # still open: it was never silent


@pytest.mark.coordinator(**SILENCE)
async def test_a_unary_miner_calling_without_heartbeats_loses_the_job_at_its_lease(coord: Harness) -> None:
    """Polls and a result of another job, no heartbeat: the miner is there, not renewing the job's lease."""
    alice = coord.client("alice")
    miner = Unary(coord)
    await miner.register(slots=2)
    first, second = await alice.submit({"n": 1}), await alice.submit({"n": 2})
    got = (await miner.poll(max_jobs=2)).assignments
    assert sorted(a.job.job_id for a in got) == sorted([first.job_id, second.job_id])
    assert (await miner.result(second.job_id, 1)).accepted
    cancels: list[mpb.Cancel] = []

    async def cancelled() -> bool:
        cancels.extend((await miner.poll(deadline_s=0.4)).cancels)  # short polls: nothing else to hand out
        return bool(cancels)

    await eventually(cancelled, within=10.0, interval=0.05, what="the first job's lease expired")
    assert [(c.job_id, c.attempt, c.reason) for c in cancels] == [(first.job_id, 1, "LEASE_EXPIRED")]
    assert requeues(coord, first.job_id) == [("LEASE_EXPIRED", 1)]
    assert (await alice.get(second.job_id)).state == COMPLETED


@pytest.mark.coordinator(lease_seconds=1.0, heartbeat_timeout_seconds=4.0, reconnect_grace_seconds=30.0,
                         job_max_attempts=3)  # fmt: skip
async def test_an_execution_timeout_passing_while_a_unary_miner_is_silent_times_the_job_out_once(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    miner = Unary(coord)
    await miner.register()
    job = await alice.submit({"n": 1}, execution_timeout_s=2.0)
    assert len((await miner.poll()).assignments) == 1
    await miner.heartbeat(((job.job_id, 1),))
    # silent from now on: its lease runs out at about 1 s (waiting for the liveness check), its execution time at 2 s
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: requeues(coord, job.job_id), within=10.0, what="the execution timeout")
    assert requeues(coord, job.job_id) == [("EXECUTION_TIMEOUT", 1)]
    await silenced(coord, miner)
    assert "miner-00" not in scheduler.orphans  # nothing of it left waiting for the miner

    other = await coord.stream_miner("miner-01")
    [b] = await other.assignments(1, within=10.0)
    assert (b.job.job_id, b.attempt) == (job.job_id, 2)
    other.accept(b)
    other.result(job.job_id, 2)
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2)
    assert requeues(coord, job.job_id) == [("EXECUTION_TIMEOUT", 1)]  # once


@pytest.mark.coordinator(**SILENCE)
async def test_a_client_cancel_while_a_unary_miner_is_silent_reaches_it(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, [job_id] = await holding(coord)
    await asyncio.sleep(1.5)  # silent past its lease: the job waits for the liveness check
    assert (await alice.get(job_id)).attempt == 1 and not requeues(coord, job_id)

    assert (await alice.cancel(job_id)).state == CANCELED
    # back before its session closed: its next call hears of the cancel
    hb = await miner.heartbeat(((job_id, 1),))
    assert [(c.job_id, c.attempt, c.reason) for c in hb.cancels] == [(job_id, 1, "CANCELED_BY_CLIENT")]
    assert not requeues(coord, job_id)


@pytest.mark.coordinator(lease_seconds=2.0, heartbeat_timeout_seconds=6.0, reconnect_grace_seconds=30.0)
async def test_a_unary_miner_back_from_silence_before_its_session_closed_keeps_its_job(
    coord: Harness,
) -> None:
    """Silent past its job's lease but not its session's liveness check, the miner comes back: its first call (a
    poll; its heartbeat, retried on its own backoff, comes later) must not lose the job a heartbeat then lists.
    Back after its session closed, it would have kept it (test_unary_session_timeout_grace): sooner cannot be
    worse. (The job was lost LEASE_EXPIRED at the lease check after the poll, within a second of it.)"""
    alice = coord.client("alice")
    miner, [job_id] = await holding(coord)
    await asyncio.sleep(3.0)  # silent past its 2 s lease, within the 6 s liveness check
    assert not requeues(coord, job_id)

    assert not (await miner.poll(deadline_s=0.3)).cancels
    await asyncio.sleep(1.5)  # the lease is checked again meanwhile (once a second while it waits)
    hb = await miner.heartbeat(((job_id, 1),))
    assert not hb.cancels, hb
    assert (await miner.result(job_id, 1)).accepted
    done = await coord.finished(alice, job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert not requeues(coord, job_id)


@pytest.mark.coordinator(lease_seconds=2.0, heartbeat_timeout_seconds=6.0, reconnect_grace_seconds=30.0)
async def test_a_unary_miner_back_from_silence_not_listing_its_job_loses_it(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, [job_id] = await holding(coord)
    await asyncio.sleep(3.0)  # silent past its lease

    cancels: list[mpb.Cancel] = []

    async def cancelled() -> bool:  # back, heartbeating without the job: it dropped it
        cancels.extend((await miner.heartbeat()).cancels)
        return bool(cancels)

    await eventually(cancelled, within=3.0, interval=0.1, what="the job's lease expired")
    assert [(c.job_id, c.attempt, c.reason) for c in cancels] == [(job_id, 1, "LEASE_EXPIRED")]
    assert requeues(coord, job_id) == [("LEASE_EXPIRED", 1)]
    assert (await alice.get(job_id)).attempt == 1  # queued again (its next assignment is attempt 2)
