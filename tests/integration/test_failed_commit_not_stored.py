"""A result or failure report refused NOT_STORED (its own write failed three times while its job was read back
after a failed commit): the SDK miner drops it, and the job runs again at once, not once its lease runs out
(it stayed in the miner's session, unrenewed, for the whole lease: 30 s here).
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from coord_support import ASSIGNED, COMPLETED, Harness, eventually, gated_sdk_miner
from test_failed_commit import allow, fail_a_cancel, running_job


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_result_refused_not_stored_runs_its_job_again_at_once(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aitbc.miner")
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address)
    coord.run_miner(miner)
    job = await alice.submit({"n": 1})
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="ASSIGNED stored")
    await eventually(lambda: miner.running, what="the job running on the SDK miner")
    blocker = await fail_a_cancel(coord, job.job_id)  # out of memory; its read-back waits for the lock
    try:
        blocker.execute(
            f"CREATE TRIGGER test_refuse_receipts BEFORE INSERT ON receipts WHEN NEW.job_id = '{job.job_id}' "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
        runner.gate.set()  # attempt 1's result: answered once the job is back, and its write keeps failing
        await eventually(lambda: job.job_id in miner.unacked, what="attempt 1's result sent")
        runner.gate.clear()  # (a later attempt waits until its result can be stored)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(lambda: not miner.unacked, within=20.0, what="the result answered")
    refusals = [
        r.getMessage() for r in caplog.records if r.name == "aitbc.miner" and "NOT_STORED" in r.getMessage()
    ]
    assert refusals, [r.getMessage() for r in caplog.records]
    allow(coord, "receipts")
    # The miner dropped the result (it no longer lists the job): the job runs again now, at attempt 2.
    await eventually(lambda: runner.runs == [1, 2], within=5.0,
                     what=f"attempt 2 started (job {job.job_id}, lease 30 s; events "
                          f"{[(e['reason'], e['attempt']) for e in coord.db.events(job.job_id)]})")  # fmt: skip
    runner.gate.set()
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2)
    assert coord.db.count("receipts", job.job_id) == 1
    events = [(e["reason"], e["attempt"], e["miner_id"]) for e in coord.db.events(job.job_id)]
    assert events == [
        ("SUBMITTED", 0, ""),
        ("ASSIGNED", 1, "miner-00"),
        ("MINER_LOST_JOB", 1, "miner-00"),  # attempt 1 ended: its miner dropped it
        ("ASSIGNED", 2, "miner-00"),
        ("ACCEPTED", 2, "miner-00"),
        ("COMPLETED", 2, "miner-00"),
    ], events


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_a_failure_report_refused_not_stored_runs_its_job_again_at_once(coord: Harness) -> None:
    """The same for a failure report (a miner driven by hand: it drops the report, as the SDK miner does)."""
    alice, miner, job, a = await running_job(coord)
    blocker = await fail_a_cancel(coord, job.job_id)
    try:
        blocker.execute(
            f"CREATE TRIGGER test_refuse_job_events BEFORE INSERT ON job_events WHEN NEW.job_id = "
            f"'{job.job_id}' AND NEW.reason = 'FLAKY' BEGIN SELECT RAISE(ABORT, 'test: refused'); END"
        )
        miner.failure(job.job_id, a.attempt, retryable=True, code="FLAKY")
        await asyncio.sleep(0.2)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    ack = await miner.next("result_ack", within=20.0)
    assert (ack.job_id, ack.attempt, ack.accepted, ack.reason) == (job.job_id, a.attempt, False, "NOT_STORED")
    allow(coord, "job_events")
    again = await miner.next("assignment", within=5.0)  # (its lease: 30 s)
    assert (again.job.job_id, again.attempt) == (job.job_id, a.attempt + 1)
    miner.result(job.job_id, again.attempt)
    assert (await miner.next("result_ack")).accepted
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2)
    events = [(e["reason"], e["attempt"]) for e in coord.db.events(job.job_id)]
    assert events == [("SUBMITTED", 0), ("ASSIGNED", 1), ("ACCEPTED", 1), ("MINER_LOST_JOB", 1),
                      ("ASSIGNED", 2), ("ACCEPTED", 2), ("COMPLETED", 2)], events  # fmt: skip
