"""A miner given a channel that sends more than open_channel's 8 MiB, with `max_result_bytes` raised to
match, sends a 9 MiB result the coordinator allows (MAX_PAYLOAD_BYTES 16 MiB) instead of failing it
RESULT_TOO_LARGE. (Review round 9, helper-30: the limit was a constant.)"""

from __future__ import annotations

import grpc
import pytest
from coord_support import COMPLETED, Harness, sdk_miner


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0,
                         max_payload_bytes=16 << 20, max_message_bytes=32 << 20)  # fmt: skip
async def test_a_result_the_channel_and_coordinator_carry_is_not_failed_too_large(coord: Harness) -> None:
    from aitbc.miner import Outcome

    alice = coord.client("alice")
    channel = grpc.aio.insecure_channel(coord.address, options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])  # fmt: skip

    async def runner(job):  # type: ignore[no-untyped-def]
        return Outcome(b"x" * (9 << 20), units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner, channel=channel, max_result_bytes=32 << 20)
    coord.run_miner(miner)
    try:
        job = await alice.submit({"big": True})
        done = await coord.finished(alice, job.job_id, within=10.0)
        events = [e["reason"] for e in coord.db.events(job.job_id)]
        assert done.state == COMPLETED, (
            f"a 9 MiB result on a channel sending up to 64 MiB, to a coordinator taking results up to 16 MiB, "
            f"was failed for good by the SDK: events {events}"
        )
    finally:
        miner.stop()
        await channel.close()
