"""A job's time to live is timed only while it waits for a miner: a job assigned at submit has no TTL timer
(one heap entry less per job for the sweep to drop), and gets one the first time it waits, whichever way it
comes back: its miner gone, a retryable failure waiting out its backoff. Real coordinator on loopback, SQLite
file; what the store says is what counts."""

from __future__ import annotations

import pytest
from coord_support import EXPIRED, QUEUED, Harness, eventually

TTL_S = 2


def ttl_entries(coord: Harness) -> list[tuple]:
    heaps = coord.coordinator.scheduler.timers._heaps  # (the scheduler's one heap set: what it will fire)
    return [args for heap in heaps for _, _, kind, args in heap if kind == "ttl"]


def expired_at_its_ttl(coord: Harness, job_id: str, created_us: int) -> None:
    [event] = [e for e in coord.db.events(job_id) if e["to_state"] == EXPIRED]
    assert event["reason"] == "TTL_EXPIRED" and event["from_state"] == QUEUED, coord.db.events(job_id)
    assert event["occurred_us"] >= created_us + TTL_S * 1_000_000
    # at its TTL, not when something else came due (a backoff of 30 s, a grace of 1 s after a later kill)
    assert event["occurred_us"] < created_us + (TTL_S + 1.5) * 1_000_000, event


async def test_only_waiting_jobs_have_a_ttl_timer(coord: Harness) -> None:
    client = coord.client()
    miner = await coord.stream_miner(slots=4)
    assigned = await client.submit_many([{"i": i} for i in range(4)])
    await miner.assignments(4)
    waiting = await client.submit({"i": "waits"})  # no free slot: queued
    assert ttl_entries(coord) == [(waiting.job_id,)], [j.job_id for j in assigned]


@pytest.mark.coordinator(reconnect_grace_seconds=0.3)
async def test_a_job_assigned_at_submit_expires_at_its_ttl_once_its_miner_is_gone(coord: Harness) -> None:
    client = coord.client()
    miner = await coord.stream_miner(slots=1)
    job = await client.submit({"n": 1}, ttl_s=TTL_S)
    [a] = await miner.assignments(1)
    miner.accept(a)
    assert ttl_entries(coord) == []
    await miner.kill()  # back to the queue after the grace, and no miner to take it
    await eventually(lambda: coord.db.job_state(job.job_id) == EXPIRED, within=TTL_S + 5, what="expired")
    expired_at_its_ttl(coord, job.job_id, job.created_at.ToMicroseconds())


@pytest.mark.coordinator(retry_backoff_base_seconds=30.0, retry_backoff_max_seconds=30.0)
async def test_a_job_waiting_out_a_retry_backoff_expires_at_its_ttl(coord: Harness) -> None:
    client = coord.client()
    miner = await coord.stream_miner(slots=1)
    job = await client.submit({"n": 1}, ttl_s=TTL_S, max_attempts=3)
    [a] = await miner.assignments(1)
    miner.accept(a)
    miner.failure(a.job.job_id, a.attempt, retryable=True)  # queued again, not before 30 s from now
    await eventually(lambda: coord.db.job_state(job.job_id) == EXPIRED, within=TTL_S + 5, what="expired")
    expired_at_its_ttl(coord, job.job_id, job.created_at.ToMicroseconds())
