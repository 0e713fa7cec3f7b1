"""A stream the liveness check ends (the miner stopped reading it: STREAM_STALLED) ends for the miner too,
with UNAVAILABLE. (Review round 7, helper-28: cancelling the Connect handler closed the session but left the
miner's call open with no status, on a stream nobody served, for good.)
"""

from __future__ import annotations

import asyncio

import grpc
from coord_support import Harness


async def test_a_stream_ended_by_the_liveness_check_ends_for_the_miner(coord: Harness) -> None:
    miner = await coord.stream_miner("miner-00", slots=1)
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    session.end_reason = "STREAM_STALLED"
    session.stream_task.cancel()  # what _on_timer("liveness") does to a stream whose writes stay blocked
    await asyncio.wait_for(miner.closed.wait(), 5.0)  # (it stayed open, with no status, for good)
    assert session.closed
    assert miner.end_status == grpc.StatusCode.UNAVAILABLE
