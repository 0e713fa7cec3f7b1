"""Many jobs that differ only by their price limit (max_price), through a real coordinator: they share one
queue shape, go in priority order then FIFO to a miner whose price is within their limit, stay queued for
one that is not, and leave no shape and no per-constraint-set cache behind them."""

from __future__ import annotations

from decimal import Decimal

from coord_support import QUEUED, Harness
from test_matching import take


async def test_price_distinct_jobs_share_a_shape_keep_priority_and_fifo_and_leave_nothing(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    scheduler = coord.coordinator.scheduler
    jobs = []  # (job id, priority, limit), in submission order
    for i in range(60):
        limit = f"{1 + i / 100:.2f}"  # 1.00 .. 1.59: each job its own constraint set
        priority = (0, 5, 9)[i % 3]
        job = await alice.submit({"n": i}, priority=priority, constraints={"max_price": limit})
        jobs.append((job.job_id, priority, Decimal(limit)))
    assert scheduler.queues.depth == 60
    assert len(scheduler.queues.shapes) == 1  # one shape, whatever the limits

    dear = await coord.stream_miner("miner-00", slots=1, price="1.3")
    within = [(p, n, j) for n, (j, p, limit) in enumerate(jobs) if limit >= Decimal("1.3")]
    expected = [j for _, _, j in sorted(within, key=lambda t: (-t[0], t[1]))]
    assert await take(dear, len(expected)) == expected  # priority first, then submission order
    below = [j for j, _, limit in jobs if limit < Decimal("1.3")]
    for job_id in below:
        assert (await alice.get(job_id)).state == QUEUED  # beyond their limit: the dearer miner skips them

    cheap = await coord.stream_miner("miner-01", slots=1, price="0.5")
    rest = [(p, n, j) for n, (j, p, limit) in enumerate(jobs) if limit < Decimal("1.3")]
    assert await take(cheap, len(rest)) == [j for _, _, j in sorted(rest, key=lambda t: (-t[0], t[1]))]
    for job_id, _, _ in jobs:
        await coord.finished(alice, job_id)

    assert scheduler.queues.depth == 0
    assert scheduler.queues.shapes == {}  # no empty shape left behind
    for session in scheduler.sessions.values():
        assert len(session.eligibility) <= 1, len(session.eligibility)  # not one entry per price limit
