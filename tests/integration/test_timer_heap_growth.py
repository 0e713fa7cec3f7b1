"""The scheduler's timer heap must hold what live work needs, not what traffic left behind.

A job waiting for a miner has its TTL timed, every assignment its lease and execution deadline, every session a
liveness check, and TimerHeap never removes an entry before it is due (a stale one is ignored when it fires).
A job that finishes in a second leaves its TTL (15 minutes by default, up to 7 days) and its execution
deadline (1 hour by default, up to 7 days) in the heap until then: a coordinator running jobs constantly held
a few hundred bytes per job of the past week. A miner that reconnects while holding a long job added one
execution-deadline entry and one lease entry (renewed for as long as the job runs) per reconnect.

Churn here drives a real coordinator: hundreds of jobs with week-long TTL and execution timeout submitted
and finished, then a miner reconnecting hundreds of times while it runs one job. Once the churn is over, the
heap's size must be back within a bound that does not grow with the number of jobs or reconnects.
"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import COMPLETED, MINER_NAMES, Harness, eventually

WEEK_S = 7 * 86400
JOBS = 600  # each left 2 entries (TTL, execution deadline) in the heap for a week
RECONNECTS = 300  # each left an execution-deadline entry and a lease chain while the job ran
# At most this many timers once the churn is over: the live work needs a handful; the sweep of stale entries
# runs whenever the heap doubles from 256, so stale ones never pass that.
BOUND = 300


# (600 jobs in about a second from one key: past the default submit limit, 400 at once then 200/s, on a fast host)
@pytest.mark.coordinator(rate_limits="submit=off")
async def test_finished_jobs_leave_no_timers_behind(coord: Harness) -> None:
    client = coord.client()
    miner = await coord.stream_miner(MINER_NAMES[0], slots=20)
    scheduler = coord.coordinator.scheduler
    for batch in range(JOBS // 20):
        jobs = await client.submit_many(
            [{"batch": batch, "i": i} for i in range(20)], ttl_s=WEEK_S, execution_timeout_s=WEEK_S
        )
        for a in await miner.assignments(20):
            miner.result(a.job.job_id, a.attempt)
        for job in jobs:
            assert (await coord.finished(client, job.job_id)).state == COMPLETED
    await eventually(lambda: not scheduler.jobs, what="every job forgotten once finished")
    assert len(scheduler.timers) <= BOUND, (
        f"{len(scheduler.timers)} timers left after {JOBS} jobs finished, with no job left"
    )


async def test_reconnects_of_a_busy_miner_leave_no_timers_behind(coord: Harness) -> None:
    client = coord.client()
    scheduler = coord.coordinator.scheduler
    miner = await coord.stream_miner(MINER_NAMES[1], slots=1)
    job = await client.submit({"long": True}, ttl_s=WEEK_S, execution_timeout_s=WEEK_S)
    a = await miner.next("assignment")
    held = ((a.job.job_id, a.attempt),)
    for _ in range(RECONNECTS):
        await miner.kill()  # a flaky network: the stream drops, the miner is back within the grace period
        welcome = await miner.connect(held)
        assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == list(held)
    await asyncio.sleep(0.3)  # a lease period's renewals go by: every lease timer left has fired once
    assert len(scheduler.timers) <= BOUND, (
        f"{len(scheduler.timers)} timers for one running job after {RECONNECTS} reconnects of its miner"
    )
    miner.result(a.job.job_id, a.attempt)
    assert (await coord.finished(client, job.job_id)).state == COMPLETED
