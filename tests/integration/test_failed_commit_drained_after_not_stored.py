"""A miner told NOT_STORED about a job (its failure report's write failed three times) no longer runs it; the
job's requeue (MINER_LOST_JOB) then keeps failing, so the store holds it as the miner's, RUNNING at that
attempt, with no write of it waiting while it waits out the write backoff. An operator's drain of the miner
then ends its stream with GoAway DRAINED at once: nothing is the miner's any more. The chaos test's check
(HandMiner._observed) counted the stored row as held for the stream and failed, about 1 run in 100 (seed
166001811); it exempted such a job in memory only.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from coord_support import COMPLETED, RUNNING, Harness, eventually
from test_failed_commit import allow, fail_a_cancel, running_job
from test_failed_commit_chaos import Book, HandMiner, Phase


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_drain_ends_the_stream_while_a_dropped_jobs_requeue_waits(coord: Harness) -> None:
    alice, miner, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    check = HandMiner(coord, miner.name, 1, random.Random(0), Phase(), Book())
    miner.on_message = check._observed  # the chaos test's check, as the stream reads its GoAway
    blocker = await fail_a_cancel(coord, job.job_id)  # out of memory; its read-back waits for the lock
    try:
        blocker.execute(
            f"CREATE TRIGGER test_refuse_job_events BEFORE INSERT ON job_events WHEN NEW.job_id = "
            f"'{job.job_id}' AND NEW.reason IN ('FLAKY', 'MINER_LOST_JOB') "
            "BEGIN SELECT RAISE(ABORT, 'test: refused'); END"
        )
        miner.failure(job.job_id, a.attempt, retryable=True, code="FLAKY")
        await asyncio.sleep(0.2)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    ack = await miner.next("result_ack", within=20.0)
    assert (ack.job_id, ack.attempt, ack.accepted, ack.reason) == (job.job_id, a.attempt, False, "NOT_STORED")

    def waiting_out_the_backoff() -> bool:
        held = scheduler.orphans.get(miner.name, {}).get(job.job_id)
        return held is not None and held.lost == "MINER_LOST_JOB" and job.job_id not in scheduler._unsettled

    await eventually(waiting_out_the_backoff, within=10.0, what="the dropped job's requeue failed, waiting")
    assert coord.db.query("SELECT state, attempt, miner_id FROM jobs WHERE job_id = ?", (job.job_id,)) == [
        (RUNNING, a.attempt, miner.name)
    ]
    await coord.admin().drain(miner.name)
    go_away = await miner.next("go_away")
    assert go_away.reason == "DRAINED"
    assert not check.book.violations, check.book.violations

    allow(coord, "job_events")  # the requeue lands after its backoff; the job runs again elsewhere
    other = await coord.stream_miner("miner-01", slots=1)
    [again] = await other.assignments(1, within=40.0)
    assert (again.job.job_id, again.attempt) == (job.job_id, a.attempt + 1)
    other.result(job.job_id, again.attempt)
    assert (await other.next("result_ack")).accepted
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
