"""Results the SDK miner sends again after a lost stream never add up to a message over the coordinator's
limit: sent one by one, each fits. (Review round 7, helper-28: the resend packed up to 100 results in one
message; over the limit, the coordinator ended the stream RESOURCE_EXHAUSTED, the miner reconnected and sent
the same message again, for good.) Small limits here; with the defaults (1 MiB results, 8 MiB messages)
nine unacknowledged results did the same.
"""

from __future__ import annotations

import asyncio
import logging

from coord_support import COMPLETED, Harness, eventually
from test_failed_commit import held_lock
from test_miner_reconnect import down, running, sdk_miner  # noqa: F401  (down: the fixture)

PAD = "x" * 12_000  # one result: ~12 KB; three: over the 32 KB message limit


async def test_results_resent_after_a_lost_stream_land(down: Harness, caplog) -> None:  # noqa: F811
    from aitbc.miner import Outcome, job_input, probe_capabilities

    caplog.set_level(logging.INFO, logger="aitbc.miner")
    down.overrides.update(reconnect_grace_seconds=30.0, lease_seconds=30.0, heartbeat_timeout_seconds=5.0,
                          max_payload_bytes=16_384, max_message_bytes=32_768)  # fmt: skip
    await down.start()
    alice = down.client("alice")
    gates = {n: asyncio.Event() for n in range(3)}

    async def runner(job):  # type: ignore[no-untyped-def]
        await gates[job_input(job)["n"]].wait()
        return Outcome({"pad": PAD}, units="1", unit_type="jobs")

    miner = sdk_miner(down)
    miner.runner = runner
    miner.capabilities = probe_capabilities(slots=3)
    miner.backoff_max_s = 0.5
    async with running(miner):
        await eventually(lambda: miner.connects == 1)
        jobs = [await alice.submit({"n": n}) for n in range(3)]
        await eventually(lambda: len(miner.running) == 3, what="three jobs running")
        blocker = held_lock(down)  # no result is acknowledged meanwhile
        try:
            for n in range(3):  # each result leaves in its own message (~12 KB: within the limit)
                gates[n].set()
                await eventually(lambda n=n: len(miner.unacked) == n + 1, what=f"result {n} sent")
                await asyncio.sleep(0.1)
            await down.stop()  # the stream is lost before any ack
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert len(miner.unacked) == 3
        await down.start()
        alice = down.client("alice")
        try:
            for job in jobs:
                done = await down.finished(alice, job.job_id, within=8.0)
                assert (done.state, done.attempt) == (COMPLETED, 1)
        except AssertionError as exc:
            ended = [r.getMessage() for r in caplog.records if "session ended" in r.getMessage()]
            raise AssertionError(
                f"results resent after a lost stream never landed: the miner connected {miner.connects} times, "
                f"still unacked {len(miner.unacked)}; sessions ended: {ended[:3]}... ({len(ended)}); {exc}"
            ) from None
