"""A result the SDK drops (its streams kept ending for a message the coordinator could not take) is dropped
before the next hello, which then does not list its job: the coordinator runs the job again at once.
(Review round 9, helper-30: the drop came after the hello had listed the job, and the job stayed with the
miner until its lease ran out.)"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import Harness, eventually, sdk_miner


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0,
                         max_payload_bytes=16_384, max_message_bytes=16_384)  # fmt: skip
async def test_a_dropped_result_does_not_leave_its_job_held_by_the_miner(
    coord: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aitbc.miner
    from aitbc.miner import Outcome, job_input

    # an SDK that misjudges what a message adds to its result (an older one did not count it at all): it sends the
    # big result, just over the coordinator's message limit, and the coordinator ends each stream carrying it
    monkeypatch.setattr(aitbc.miner, "MESSAGE_FRAMING_BYTES", -4096)

    alice = coord.client("alice")
    calls = 0

    async def runner(job):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:  # only the first run's result is too big for the coordinator's message limit
            return Outcome(b"x" * 16_384, units="1", unit_type="jobs")
        return Outcome(job_input(job), units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner, backoff_base_s=0.05, backoff_max_s=0.2)
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    big = await alice.submit({"big": True})
    await eventually(lambda: big.job_id in miner.unacked, what="the big result sent")
    await eventually(lambda: big.job_id not in miner.unacked and miner.connects > 1, within=10.0,
                     what="the big result dropped")  # fmt: skip
    dropped_at = asyncio.get_running_loop().time()
    scheduler = coord.coordinator.scheduler
    # The miner no longer answers for attempt 1 (not running, not unacked, not in its heartbeats); on a fast host
    # the coordinator may already have handed it attempt 2 ...
    assert miner._held().get(big.job_id) != 1
    await asyncio.sleep(3.0)  # several heartbeats later (heartbeat_timeout 5 s)
    session = scheduler.by_miner.get("miner-00")
    held = session is not None and big.job_id in session.held and session.held[big.job_id].attempt == 1
    # ... so the coordinator should have run it again (attempt 2), not keep it at attempt 1 until the lease ends.
    assert not held and calls >= 2, (
        f"{asyncio.get_running_loop().time() - dropped_at:.1f} s after the SDK dropped job {big.job_id}'s result, "
        f"the coordinator still holds attempt 1 for the miner (resumed from the hello that listed it), "
        f"runner calls={calls}; it waits for the 30 s lease"
    )
