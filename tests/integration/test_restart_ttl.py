"""A job held by a miner when the coordinator restarted had no time-to-live timer in the new process (a start
scheduled one only for queued jobs): requeued once its miner failed to come back, before its TTL, it then waited
in the queue for ever instead of expiring. Real coordinator on loopback, restarted on its SQLite file."""

from __future__ import annotations

import pytest
from coord_support import EXPIRED, Harness


@pytest.mark.coordinator(reconnect_grace_seconds=0.5)
async def test_a_job_held_across_a_restart_expires_once_requeued(coord: Harness) -> None:
    sm = await coord.stream_miner(slots=1)
    job = await coord.client("alice").submit({"n": 1}, ttl_s=3)
    [a] = await sm.assignments(1)
    sm.accept(a)
    await (
        coord.restart()
    )  # no miner comes back: after the grace the job is queued again, with no miner to take it
    final = await coord.finished(coord.client("alice"), job.job_id, within=10.0)
    assert final.state == EXPIRED and final.terminal_reason == "TTL_EXPIRED", coord.db.events(job.job_id)
