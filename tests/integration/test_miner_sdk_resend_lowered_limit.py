"""Results awaiting their acks when the coordinator restarts with lower limits (MAX_PAYLOAD_BYTES,
MAX_MESSAGE_BYTES): the SDK checks them against the new welcome before sending them again. One that no longer
fits is reported as a RESULT_TOO_LARGE failure at once, on the first new stream; the others are sent in
messages under the new limit. (Review round 28: the resend sent every result as it was; the coordinator ended
the stream for the one too large, three streams running, before the SDK dropped it, and its job waited for
its lease.)"""

from __future__ import annotations

import asyncio

from coord_support import COMPLETED, FAILED, Harness, eventually
from test_failed_commit import held_lock
from test_miner_reconnect import down, running, sdk_miner  # noqa: F401  (down: the fixture)

SMALL, BIG = 2_000, 24_000  # result sizes: BIG fits the first coordinator's limits, not the second's


async def test_a_resent_result_over_a_lowered_limit_fails_at_once_and_the_rest_land(down: Harness) -> None:  # noqa: F811
    from aitbc.miner import Outcome, job_input, probe_capabilities

    down.overrides.update(reconnect_grace_seconds=30.0, lease_seconds=30.0, heartbeat_timeout_seconds=5.0,
                          max_payload_bytes=64 << 10, max_message_bytes=64 << 10)  # fmt: skip
    await down.start()
    alice = down.client("alice")

    gate = asyncio.Event()

    async def runner(job):  # type: ignore[no-untyped-def]
        await gate.wait()
        return Outcome(b"r" * int(job_input(job)["size"]), units="1", unit_type="jobs")

    miner = sdk_miner(down)
    miner.runner = runner
    miner.capabilities = probe_capabilities(slots=3)
    async with running(miner):
        await eventually(lambda: miner.connects == 1)
        jobs = [await alice.submit({"size": size}, max_attempts=1) for size in (BIG, SMALL, SMALL)]
        await eventually(lambda: len(miner.running) == 3, what="three jobs running")
        blocker = held_lock(down)  # no result is acknowledged before the restart
        try:
            gate.set()
            await eventually(lambda: len(miner.unacked) == 3, what="three results sent")
            await asyncio.sleep(0.1)
            await down.stop()
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert len(miner.unacked) == 3
        down.overrides.update(max_payload_bytes=16 << 10, max_message_bytes=16 << 10)
        await down.start()
        alice = down.client("alice")
        big = await down.finished(alice, jobs[0].job_id, within=10.0)
        assert (big.state, big.terminal_reason) == (FAILED, "RESULT_TOO_LARGE"), (
            big.terminal_reason, big.terminal_message, [e["reason"] for e in down.db.events(big.job_id)]
        )  # fmt: skip
        for job in jobs[1:]:
            done = await down.finished(alice, job.job_id, within=10.0)
            assert (done.state, done.attempt) == (COMPLETED, 1)
        await eventually(lambda: not miner.unacked, what="every report acknowledged")
        # no stream was ended for a message the coordinator could not take
        assert miner.connects == 2, f"{miner.connects} streams"
