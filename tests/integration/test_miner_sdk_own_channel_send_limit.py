"""A miner given a channel of its own that sends less (grpc.max_send_message_length) than the miner's
`max_result_bytes`: a result over the channel's limit is reported failed, RESULT_TOO_LARGE, for good, on both
transports, and the miner goes on with its other jobs. (helper-101, after helper-99: on the stream, gRPC refused
the write in the miner's own process, reported as INTERNAL "Internal error from Core" or RESOURCE_EXHAUSTED
"CLIENT: Sent message larger than max"; the miner took it for a lost connection, or for the coordinator refusing
the message, and sent the result again on stream after stream, the job held ASSIGNED.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from coord_support import COMPLETED, FAILED, Harness, eventually, sdk_miner

SEND_LIMIT = (
    1 << 20
)  # the miner's channel; the miner's max_result_bytes stays at its default (8 MiB less 64 KiB)
# the coordinator takes results far larger than the channel sends: only the channel stands in the way
LARGE_COORDINATOR = {"lease_seconds": 30.0, "heartbeat_timeout_seconds": 5.0, "reconnect_grace_seconds": 30.0,
                     "max_payload_bytes": 16 << 20, "max_message_bytes": 32 << 20}  # fmt: skip


def small_channel(coord: Harness, limit: int = SEND_LIMIT) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(coord.address, options=[("grpc.max_send_message_length", limit)])
    coord.channels.append(channel)  # (closed with the coordinator)
    return channel


async def sized_runner(job: Any) -> Any:
    """A result of the job's `size` bytes."""
    from aitbc.miner import Outcome, job_input

    return Outcome(b"x" * int(job_input(job)["size"]), units="1", unit_type="jobs")


@pytest.mark.parametrize("transport", ["stream", "poll"])
@pytest.mark.coordinator(**LARGE_COORDINATOR)
async def test_a_result_over_the_channels_send_limit_fails_too_large_at_once(
    coord: Harness, transport: str
) -> None:
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, sized_runner, channel=small_channel(coord), transport=transport,
                      backoff_base_s=0.05, backoff_max_s=0.2)  # fmt: skip
    coord.run_miner(miner)
    for n in (1, 2):  # the second after the limit is known: failed without a try
        big = await alice.submit({"size": 2 << 20})
        done = await coord.finished(alice, big.job_id, within=10.0)
        events = coord.db.events(big.job_id)
        assert (done.state, done.attempt) == (FAILED, 1), f"big job {n}: {events}"
        assert events[-1]["reason"] == "RESULT_TOO_LARGE", events
        assert "channel" in events[-1]["message"], events[-1]
    small = await alice.submit({"size": 1000})
    assert (await coord.finished(alice, small.job_id, within=10.0)).state == COMPLETED
    assert not miner.unacked, miner.unacked


@pytest.mark.coordinator(**LARGE_COORDINATOR)
async def test_results_finished_together_are_batched_under_the_channels_send_limit(coord: Harness) -> None:
    """Six results of 100 kB, each within a 256 KiB channel, finished together: the stream's batch (up to 1 MiB)
    is over the channel's limit. Once the limit is known, they go in smaller batches and every job completes."""
    alice = coord.client("alice")
    gate = asyncio.Event()

    async def gated(job: Any) -> Any:
        await gate.wait()
        return await sized_runner(job)

    miner = sdk_miner(coord.address, gated, slots=6, channel=small_channel(coord, 256 << 10),
                      backoff_base_s=0.05, backoff_max_s=0.2)  # fmt: skip
    coord.run_miner(miner)
    jobs = [await alice.submit({"size": 100_000}) for _ in range(6)]
    await eventually(lambda: len(miner.running) == 6, what="six jobs running")
    gate.set()
    for job in jobs:
        done = await coord.finished(alice, job.job_id, within=10.0)
        assert done.state == COMPLETED, coord.db.events(job.job_id)
