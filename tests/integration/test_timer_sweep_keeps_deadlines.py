"""The timer heap's sweep (TimerHeap._sweep, judged by Scheduler._timer_live) drops only entries that would do
nothing when they fire: every deadline still due for live work fires though sweeps run all along.

A wrong "stale" verdict is a deadline that never fires. Here sweeps are forced (SWEEP_MIN of 1: the heap is swept
each time it doubles from one entry) while clients submit and cancel jobs, each cancel leaving stale timers behind,
and the deadlines whose owner is not a job in memory or an open session must still fire: a miner's grace period
(orphans of a miner away), an operator's drain reloaded at a start for a miner that never comes back, a queued
job's time to live.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from coord_support import COMPLETED, EXPIRED, Harness, eventually

from coordinator.scheduler import timers

CHURN_JOBS = 40  # jobs submitted and cancelled while a deadline is pending: their timers go stale, sweeps run


@pytest.fixture
async def swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Harness, list[int]]]:
    """A coordinator whose timer heap is swept as often as it doubles from one entry, and the count of sweeps."""
    sweeps = [0]
    sweep = timers.TimerHeap._sweep

    async def counted(heap: timers.TimerHeap, live: timers.Live) -> None:
        sweeps[0] += 1
        await sweep(heap, live)

    monkeypatch.setattr(timers, "SWEEP_MIN", 1)
    # each sweep spread over loop turns, entries firing between its slices
    monkeypatch.setattr(timers, "SWEEP_SLICE", 2)
    monkeypatch.setattr(timers.TimerHeap, "_sweep", counted)
    marker = request.node.get_closest_marker("coordinator")
    harness = Harness(tmp_path, dict(marker.kwargs) if marker else {})
    await harness.start()
    try:
        yield harness, sweeps
    finally:
        await harness.stop()


async def churn(coord: Harness, sweeps: list[int]) -> None:
    """Jobs no miner takes (a region nobody serves), submitted then cancelled: stale timers, and sweeps of them."""
    client = coord.client("bob")
    before = sweeps[0]
    for i in range(CHURN_JOBS):
        job = await client.submit({"churn": i}, constraints={"region": "nowhere"}, ttl_s=3600)
        await client.cancel(job.job_id, reason="churn")
    assert sweeps[0] > before, "no sweep ran during the churn"


async def test_orphans_of_a_miner_away_are_requeued_after_its_grace_period(
    swept: tuple[Harness, list[int]],
) -> None:
    coord, sweeps = swept
    client = coord.client()
    away = await coord.stream_miner("miner-00")
    job = await client.submit({"n": 1})
    a = await away.next("assignment")
    await (
        away.kill()
    )  # gone for good: its job waits out the grace period (0.5 s) as an orphan, then is requeued
    await churn(coord, sweeps)
    other = await coord.stream_miner("miner-01")
    b = await other.next("assignment", within=5.0)
    assert (b.job.job_id, b.attempt) == (job.job_id, a.attempt + 1)
    other.result(b.job.job_id, b.attempt)
    assert (await coord.finished(client, job.job_id)).state == COMPLETED


@pytest.mark.coordinator(reconnect_grace_seconds=2.0)
async def test_a_drain_reloaded_at_start_ends_when_its_miner_stays_away(
    swept: tuple[Harness, list[int]],
) -> None:
    coord, sweeps = swept
    client = coord.client()
    miner = await coord.stream_miner("miner-00")
    job = await client.submit({"n": 1})
    await miner.next("assignment")
    await coord.admin().drain("miner-00")  # (it holds a job: the drain waits for it, stored)
    await miner.kill()
    await client.cancel(
        job.job_id, reason="no longer needed"
    )  # the miner is away with nothing: its drain alone
    await (
        coord.restart()
    )  # a start reloads the drain; the miner never comes back: it ends with the grace period
    assert coord.db.query("SELECT miner_id FROM operator_drains") == [("miner-00",)]
    await churn(coord, sweeps)
    await eventually(lambda: not coord.db.query("SELECT miner_id FROM operator_drains"),
                     what="the drain's row deleted once its grace period ended", within=6.0)  # fmt: skip
    assert coord.coordinator.scheduler.drains_pending() == {}


async def test_a_queued_job_expires_at_its_time_to_live(swept: tuple[Harness, list[int]]) -> None:
    coord, sweeps = swept
    client = coord.client()
    job = await client.submit({"n": 1}, constraints={"region": "nowhere"}, ttl_s=1)
    await churn(coord, sweeps)
    assert (await coord.finished(client, job.job_id, within=5.0)).state == EXPIRED
