"""A result no message can carry does not wedge the SDK miner. One over the channel's 8 MiB limit, or over the
coordinator's MAX_MESSAGE_BYTES (its welcome says), is reported as a failure (RESULT_TOO_LARGE) instead, and the
miner goes on with its other jobs.
(Review round 8, helper-29: the SDK kept such a result until acked and sent it first on every new stream,
which ended each stream again: the miner reconnected in a loop and did nothing else.)
"""

from __future__ import annotations

from typing import Any

import pytest
from coord_support import COMPLETED, FAILED, Harness, eventually, sdk_miner


async def big_then_small(coord: Harness, big_size: int) -> tuple[str, bool, Any]:
    """An SDK miner (2 slots) given a job whose result is big_size bytes, then a small job. Returns the big
    job's id, whether the small one completed within 8 s, and the miner."""
    from aitbc.miner import Outcome, job_input

    alice = coord.client("alice")

    async def runner(job):  # type: ignore[no-untyped-def]
        if job_input(job).get("big"):
            return Outcome(b"x" * big_size, units="1", unit_type="jobs")
        return Outcome(job_input(job), units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner, slots=2, backoff_base_s=0.05, backoff_max_s=0.2)
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    big = await alice.submit({"big": True})
    # (not `in miner.unacked`: a failure report in its place may be acked before a poll sees it there)
    await eventually(lambda: miner.completed == 1, what="the big result sent")
    small = await alice.submit({"big": False})
    try:
        ok = (await coord.finished(alice, small.job_id, within=8.0)).state == COMPLETED
    except AssertionError:
        ok = False
    return big.job_id, ok, miner


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_an_oversized_result_does_not_wedge_the_miner(coord: Harness) -> None:
    """Over the channel's 8 MiB: reported as a failure (RESULT_TOO_LARGE), the job FAILED."""
    big, ok, miner = await big_then_small(coord, 9 << 20)
    assert ok and big not in miner.unacked, (miner.connects, big in miner.unacked)
    assert [e["reason"] for e in coord.db.events(big)][-1] == "RESULT_TOO_LARGE"


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0,
                         max_payload_bytes=16_384, max_message_bytes=16_384)  # fmt: skip
async def test_a_result_within_the_result_limit_but_over_the_message_limit_does_not_wedge_the_miner(
    coord: Harness,
) -> None:
    """A result the coordinator itself allows (MAX_PAYLOAD_BYTES), in a message just over MAX_MESSAGE_BYTES
    (its framing): the welcome said so, and the SDK reports it failed (RESULT_TOO_LARGE) without sending it. It
    used to send it: RESOURCE_EXHAUSTED (MESSAGE_TOO_LARGE) ended each stream carrying it, the miner dropped it
    after three, and the job ran again on the next miner, for the same end, until its attempts were spent."""
    big, ok, miner = await big_then_small(coord, 16_384)
    assert ok and miner.connects == 1, (miner.connects, big in miner.unacked)
    done = await coord.finished(coord.client("alice"), big, within=10.0)
    assert (done.state, done.attempt) == (FAILED, 1)
    assert [e["reason"] for e in coord.db.events(big)][-1] == "RESULT_TOO_LARGE"
