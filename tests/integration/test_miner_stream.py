"""The Connect stream and the scheduler's rules over it: push, slots, leases and fencing, lost and stalled
miners, reconnects, drain, retries with backoff and execution timeouts."""

from __future__ import annotations

import asyncio
import time

import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.miner import JobFailed, Miner, Outcome, echo_runner
from coord_support import (
    ADMIN_KEY,
    ASSIGNED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    Harness,
    capabilities,
    eventually,
    miner_key,
)


def runtime(coord: Harness, name: str, runner=echo_runner, slots: int = 1) -> Miner:  # type: ignore[no-untyped-def]
    miner = Miner(coord.address, miner_key(name), runner, capabilities(slots=slots), own_connection=True)
    coord.run_miner(miner)
    return miner


async def test_push_to_an_idle_miner(coord: Harness) -> None:
    alice = coord.client("alice")
    # the miner sends hello and then nothing at all: no poll, no heartbeat
    miner = await coord.stream_miner("miner-00", heartbeat=False)
    job = await alice.submit({"x": 1})
    # the hand-off rides in the submit's commit: the job is ASSIGNED when the call returns
    assert (await alice.get(job.job_id)).state == ASSIGNED
    a = await miner.next("assignment", within=2)
    assert a.job.job_id == job.job_id and a.attempt == 1
    assert a.job.payload.fields["x"].number_value == 1
    lease = a.lease_deadline.ToMicroseconds() - a.job.updated_at.ToMicroseconds()
    assert 0.9e6 <= lease <= 1.1e6  # lease_seconds = 1
    assert a.execution_deadline.ToMicroseconds() > a.lease_deadline.ToMicroseconds()


async def test_never_more_jobs_out_than_slots(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=2)
    jobs = await alice.submit_many([{"n": i} for i in range(5)])
    first = await miner.assignments(2)
    assert {a.job.job_id for a in first} == {j.job_id for j in jobs[:2]}
    states = [(await alice.get(j.job_id)).state for j in jobs]
    assert states == [ASSIGNED, ASSIGNED, QUEUED, QUEUED, QUEUED]
    admin = coord.admin()
    assert (await admin.miners())["miner-00"].running_jobs == 2
    # a bounded look for a third assignment (none may come while both slots are held)
    await asyncio.sleep(0.3)
    assert miner.pending("assignment") == 0

    miner.result(first[0].job.job_id, first[0].attempt)
    [third] = await miner.assignments(1)
    assert third.job.job_id == jobs[2].job_id
    for a in (first[1], third):
        miner.result(a.job.job_id, a.attempt)
    rest = await miner.assignments(2)
    assert {a.job.job_id for a in rest} == {jobs[3].job_id, jobs[4].job_id}
    # over the whole exchange the miner never held more than its 2 slots (a slot frees when it answers)
    assert miner.peak_held == 2


async def test_killed_miner_job_finishes_on_another_miner_with_attempt_2(coord: Harness) -> None:
    alice = coord.client("alice")
    doomed = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await doomed.assignments(1)
    doomed.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")
    rescuer = runtime(coord, "miner-01")
    await eventually(lambda: rescuer.session_id, what="second miner connected")

    await doomed.kill()  # the process dies: its channel and TCP connection close mid-job
    final = await coord.finished(alice, job.job_id, 10)
    assert (final.state, final.attempt, final.miner_id) == (COMPLETED, 2, "miner-01")
    events = coord.db.events(job.job_id)
    assert [(e["reason"], e["attempt"], e["miner_id"]) for e in events] == [
        ("SUBMITTED", 0, ""), ("ASSIGNED", 1, "miner-00"), ("ACCEPTED", 1, "miner-00"),
        ("MINER_GONE", 1, "miner-00"), ("ASSIGNED", 2, "miner-01"), ("ACCEPTED", 2, "miner-01"),
        ("COMPLETED", 2, "miner-01"),
    ]  # fmt: skip
    assert coord.db.query("SELECT attempt FROM receipts WHERE job_id = ?", (job.job_id,)) == [(2,)]


async def test_stale_attempt_result_is_refused_and_changes_nothing(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a1] = await miner.assignments(1)
    miner.accept(a1)
    del miner.held[job.job_id]  # heartbeats keep flowing but stop renewing this lease
    cancel = await miner.next("cancel", within=5)
    assert (cancel.job_id, cancel.attempt, cancel.reason) == (job.job_id, 1, "LEASE_EXPIRED")
    [a2] = await miner.assignments(1)  # the same (only) miner gets the job again, attempt 2
    assert (a2.job.job_id, a2.attempt) == (job.job_id, 2)
    snapshot = (coord.db.events(job.job_id), coord.db.count("job_results", job.job_id))

    miner.result(job.job_id, 1, {"stale": True})
    ack = await miner.next("result_ack")
    assert (ack.accepted, ack.reason, ack.attempt) == (False, "STALE_ATTEMPT", 1)
    assert (coord.db.events(job.job_id), coord.db.count("job_results", job.job_id)) == snapshot
    got = await alice.get(job.job_id)
    assert (got.state, got.attempt) == (ASSIGNED, 2)

    miner.result(job.job_id, 2, {"fresh": True})
    ack = await miner.next("result_ack")
    assert ack.accepted and ack.receipt_id
    result = await alice.result(job.job_id, wait=True, deadline_s=5)
    assert result.result.attempt == 2 and result.result.result.fields["fresh"].bool_value


async def test_cancel_reaches_the_miner_on_its_stream(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")
    sent = time.monotonic()
    await alice.cancel(job.job_id, reason="stop")
    cancel = await miner.next("cancel", within=2)
    assert (cancel.job_id, cancel.attempt, cancel.reason) == (job.job_id, 1, "CANCELED_BY_CLIENT")
    assert time.monotonic() - sent < 1.0  # at once, not at the next heartbeat or lease check
    assert (await coord.admin().miners())["miner-00"].running_jobs == 0


async def test_admin_drain_finishes_running_jobs_then_closes_the_stream(coord: Harness) -> None:
    alice = coord.client("alice")
    admin = coord.admin()
    miner = await coord.stream_miner("miner-00", slots=2)
    running = await alice.submit({"n": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)

    resp = await admin.drain("miner-00")
    assert resp.miner.status == apb.MINER_STATUS_DRAINING and resp.miner.running_jobs == 1
    drain = await miner.next("drain")
    assert drain.reason == "ADMIN"
    later = await alice.submit({"n": 2})
    assert (await alice.get(later.job_id)).state == QUEUED  # a free slot, but no new work while draining
    assert (await admin.miners())["miner-00"].status == apb.MINER_STATUS_DRAINING
    assert not miner.closed.is_set()

    watch = alice.watch(running.job_id)
    assert (await anext(watch)).job.state == RUNNING  # the watch is open before the result
    miner.result(running.job_id, a.attempt)
    ack = await miner.next("result_ack")
    assert ack.accepted  # the running job finished normally
    assert (await asyncio.wait_for(anext(watch), 5)).job.state == COMPLETED  # and its watchers heard of it
    await watch.aclose()
    go_away = await miner.next("go_away")
    assert go_away.reason == "DRAINED"
    await miner.wait_closed()
    assert miner.end_status is None  # closed cleanly (status OK)
    assert (await alice.get(running.job_id)).state == COMPLETED
    assert (await alice.get(later.job_id)).state == QUEUED
    assert "miner-00" not in await admin.miners()
    assert miner.pending("assignment") == 0


async def test_miner_runtime_drain_finishes_its_job_and_ends(coord: Harness) -> None:
    release, started = asyncio.Event(), asyncio.Event()

    async def slow(job) -> Outcome:  # type: ignore[no-untyped-def]
        started.set()
        await release.wait()
        return Outcome({"done": True}, units="1")

    alice = coord.client("alice")
    miner = Miner(coord.address, miner_key("miner-03"), slow, capabilities(slots=2), own_connection=True)
    run = coord.run_miner(miner)
    await eventually(lambda: miner.session_id, what="miner connected")
    job = await alice.submit({"x": 1})
    await asyncio.wait_for(started.wait(), 5)
    miner.drain()  # what SIGTERM does
    await eventually(lambda: _status(coord, "miner-03", apb.MINER_STATUS_DRAINING), what="miner draining")
    later = await alice.submit({"x": 2})
    assert (await alice.get(later.job_id)).state == QUEUED
    release.set()
    assert (await coord.finished(alice, job.job_id, 5)).state == COMPLETED
    await asyncio.wait_for(run, 5)  # run() returns by itself once drained
    assert (await alice.get(later.job_id)).state == QUEUED


async def _status(coord: Harness, miner_id: str, status: int) -> bool:
    info = (await coord.admin().miners()).get(miner_id)
    return info is not None and info.status == status


@pytest.mark.coordinator(lease_seconds=3.0)  # longer than the heartbeat timeout: liveness must catch it
async def test_stalled_stream_is_detected_and_its_jobs_requeued(coord: Harness) -> None:
    alice = coord.client("alice")
    stalled = await coord.stream_miner("miner-00", heartbeat=False)
    job = await alice.submit({"x": 1})
    [a] = await stalled.assignments(1)
    stalled.accept(a)  # ... and then silence, with the stream (and TCP connection) left open
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")
    rescuer = runtime(coord, "miner-01")
    await eventually(lambda: rescuer.session_id, what="second miner connected")
    accepted_at = time.monotonic()

    go_away = await stalled.next("go_away", within=5)
    assert go_away.reason == "HEARTBEAT_TIMEOUT"
    assert time.monotonic() - accepted_at < 2.5  # caught by the 1 s heartbeat timeout, not the 3 s lease
    await stalled.wait_closed()
    final = await coord.finished(alice, job.job_id, 10)
    assert (final.state, final.attempt, final.miner_id) == (COMPLETED, 2, "miner-01")
    requeue = [e for e in coord.db.events(job.job_id) if e["to_state"] == QUEUED and e["from_state"]]
    assert [(e["reason"], e["attempt"]) for e in requeue] == [("HEARTBEAT_TIMEOUT", 1)]


@pytest.mark.coordinator(reconnect_grace_seconds=3.0)
async def test_reconnect_within_grace_keeps_the_job(coord: Harness) -> None:
    alice = coord.client("alice")
    admin = coord.admin()
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")

    await miner.kill()  # the connection drops; the job keeps running on the miner
    await eventually(lambda: _status(coord, "miner-00", apb.MINER_STATUS_DISCONNECTED),
                     what="coordinator saw the disconnect")  # fmt: skip
    assert (await admin.miners())["miner-00"].running_jobs == 1
    welcome = await miner.connect(running_jobs=((job.job_id, 1),))
    assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == [(job.job_id, 1)]
    assert (await alice.get(job.job_id)).state == RUNNING

    miner.result(job.job_id, 1, {"survived": True})
    ack = await miner.next("result_ack")
    assert ack.accepted and ack.receipt_id
    final = await alice.get(job.job_id)
    assert (final.state, final.attempt, final.miner_id) == (COMPLETED, 1, "miner-00")
    reasons = [e["reason"] for e in coord.db.events(job.job_id)]
    assert reasons == ["SUBMITTED", "ASSIGNED", "ACCEPTED", "COMPLETED"]


async def test_reconnect_after_grace_loses_the_job(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")
    await miner.kill()
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="requeued after the grace period")

    welcome = await miner.connect(running_jobs=((job.job_id, 1),))
    assert list(welcome.resumed_jobs) == []
    cancel = await miner.next("cancel")
    assert (cancel.job_id, cancel.attempt, cancel.reason) == (job.job_id, 1, "NOT_HELD")
    [again] = await miner.assignments(1)
    assert (again.job.job_id, again.attempt) == (job.job_id, 2)
    miner.result(job.job_id, 1)
    assert (await miner.next("result_ack")).reason == "STALE_ATTEMPT"


@pytest.mark.coordinator(retry_backoff_base_seconds=30, retry_backoff_max_seconds=60)
async def test_canceling_a_job_in_backoff_keeps_the_queue_depth_exact(coord: Harness) -> None:
    """A job waiting out a retry backoff is QUEUED but not in the ready queues: canceling it must not count
    it out of them (the depth went to -1, and stayed there)."""
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    waiting = await alice.submit({"x": 1}, max_attempts=3)
    assert len(await miner.assignments(1)) == 1
    miner.failure(waiting.job_id, 1, retryable=True, code="CUDA_OOM")
    assert (await miner.next("result_ack")).accepted
    await alice.cancel(waiting.job_id)
    queues = coord.coordinator.scheduler.queues
    assert (queues.depth, queues.depth_by_priority()) == (0, {})
    md = (("x-api-key", ADMIN_KEY),)
    stats = await coord.admin().stub.GetStats(apb.GetStatsRequest(), metadata=md)
    assert stats.queue_depth == 0


@pytest.mark.coordinator(retry_backoff_base_seconds=0.3, retry_backoff_max_seconds=1.0)
async def test_retryable_failure_requeues_with_backoff_then_attempt_2(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")
    job = await alice.submit({"x": 1}, max_attempts=3)
    [a1] = await miner.assignments(1)
    miner.accept(a1)
    miner.failure(job.job_id, 1, retryable=True, code="CUDA_OOM")
    ack = await miner.next("result_ack")
    acked = time.monotonic()
    assert ack.accepted and ack.attempt == 1
    got = await alice.get(job.job_id)
    assert (got.state, got.attempt) == (QUEUED, 1)  # waiting out its backoff, the miner is idle
    [a2] = await miner.assignments(1)
    assert time.monotonic() - acked >= 0.2
    assert (a2.job.job_id, a2.attempt) == (job.job_id, 2)
    events = coord.db.events(job.job_id)
    requeued = [e for e in events if e["to_state"] == QUEUED and e["from_state"]]
    assert [(e["reason"], e["attempt"]) for e in requeued] == [("CUDA_OOM", 1)]
    gap_us = events[-1]["occurred_us"] - requeued[0]["occurred_us"]
    assert gap_us >= 290_000, f"reassigned {gap_us} us after the failure: no backoff"
    miner.result(job.job_id, 2)
    final = await coord.finished(alice, job.job_id, 5)
    assert (final.state, final.attempt) == (COMPLETED, 2)


async def test_final_failure_and_spent_attempts_end_failed(coord: Harness) -> None:
    alice = coord.client("alice")
    attempts: dict[str, int] = {}

    async def flaky(job) -> Outcome:  # type: ignore[no-untyped-def]
        attempts[job.job_id] = attempts.get(job.job_id, 0) + 1
        if job.payload.fields["fatal"].bool_value:
            raise JobFailed("BAD_INPUT", "cannot parse", retryable=False)
        raise JobFailed("FLAKY_GPU", "try again", retryable=True)

    runtime(coord, "miner-00", flaky, slots=2)
    fatal = await alice.submit({"fatal": True}, max_attempts=3)
    spent = await alice.submit({"fatal": False}, max_attempts=2)
    f = await coord.finished(alice, fatal.job_id, 10)
    assert (f.state, f.attempt, f.terminal_reason) == (FAILED, 1, "BAD_INPUT")
    s = await coord.finished(alice, spent.job_id, 10)
    assert (s.state, s.attempt, s.terminal_reason) == (FAILED, 2, "ATTEMPTS_EXHAUSTED")
    assert "FLAKY_GPU" in s.terminal_message
    assert attempts == {fatal.job_id: 1, spent.job_id: 2}


async def test_execution_timeout_cancels_the_run_then_retries_or_fails(coord: Harness) -> None:
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00")  # heartbeats keep the lease: only the timeout can end it
    job = await alice.submit({"x": 1}, execution_timeout_s=1, max_attempts=2)
    [a1] = await miner.assignments(1)
    miner.accept(a1)
    c1 = await miner.next("cancel", within=5)
    assert (c1.job_id, c1.attempt, c1.reason) == (job.job_id, 1, "EXECUTION_TIMEOUT")
    events = coord.db.events(job.job_id)
    [assigned] = [e for e in events if e["reason"] == "ASSIGNED"]
    [timed_out] = [e for e in events if e["reason"] == "EXECUTION_TIMEOUT"]
    assert timed_out["occurred_us"] - assigned["occurred_us"] >= 1_000_000  # not before its 1 s
    [a2] = await miner.assignments(1)  # retried
    assert a2.attempt == 2
    miner.accept(a2)
    c2 = await miner.next("cancel", within=5)
    assert (c2.attempt, c2.reason) == (2, "EXECUTION_TIMEOUT")
    final = await coord.finished(alice, job.job_id, 5)
    assert (final.state, final.attempt, final.terminal_reason) == (FAILED, 2, "ATTEMPTS_EXHAUSTED")
    assert "EXECUTION_TIMEOUT" in final.terminal_message
    # a late result for the timed-out run is refused
    miner.result(job.job_id, 2)
    assert (await miner.next("result_ack")).accepted is False
