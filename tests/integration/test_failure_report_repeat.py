"""A failure report sent again, whose first sending had landed (its ack lost with the stream, as the SDK miner
resends every unacknowledged report on its next stream), is acknowledged as a repeat, like a repeated result.
It was refused (JOB_NOT_HELD or STALE_ATTEMPT): "result refused" in the miner's log for a report that landed.
"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import FAILED, QUEUED, Harness, eventually
from test_failed_commit import held_lock, running_job


@pytest.mark.parametrize("retryable", [True, False])
@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_failure_report_sent_again_after_its_ack_was_lost_is_acked(
    coord: Harness, retryable: bool
) -> None:
    _, miner, job, a = await running_job(coord)
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)  # the report's write waits: the stream breaks before its ack can leave
    try:
        miner.failure(job.job_id, a.attempt, retryable=retryable, code="FLAKY")
        await eventually(lambda: job.job_id in scheduler._unsettled, what="the report's write queued")
        await miner.kill()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    stored = QUEUED if retryable else FAILED
    await eventually(lambda: coord.db.job_state(job.job_id) == stored, what="the report recorded")
    assert not [b for kind, b in miner.log if kind == "result_ack"]  # its ack was lost
    # The miner comes back listing the job (its report unacknowledged) and sends the report again.
    back = await coord.stream_miner("miner-00", slots=1, running_jobs=((job.job_id, a.attempt),))
    back.failure(job.job_id, a.attempt, retryable=retryable, code="FLAKY")
    ack = await back.next("result_ack")
    assert (ack.job_id, ack.attempt, ack.accepted, ack.reason) == (job.job_id, a.attempt, True, ""), ack
    await asyncio.sleep(0.2)
    reasons = [e["reason"] for e in coord.db.events(job.job_id)]
    assert reasons.count("FLAKY") == 1, reasons  # recorded once
    # and a report about that attempt that was not recorded (another code) is still refused
    back.failure(job.job_id, a.attempt, retryable=True, code="OTHER")
    other = await back.next("result_ack")
    assert not other.accepted and other.reason in ("JOB_NOT_HELD", "STALE_ATTEMPT"), other
