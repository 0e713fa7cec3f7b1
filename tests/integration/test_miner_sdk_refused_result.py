"""A result the coordinator cannot take fails its job at once, not when its lease runs out.

The welcome says what the coordinator takes (`max_result_bytes`, `max_message_bytes`), so the SDK miner reports a
larger result as a failure (RESULT_TOO_LARGE) without sending it; a result it sends and sees refused INVALID_RESULT
or BAD_MINER_SIGNATURE is followed by a failure report. The SDK used to drop such a result and leave the job held
until its lease ran out (30 s here), then run again on the next miner, for the same end, attempt after attempt.
"""

from __future__ import annotations

from typing import Any

import pytest
from coord_support import COMPLETED, FAILED, Harness, eventually, sdk_miner

# the lease is far longer than any bound below: a job that waits for it fails the test
LONG_LEASE = {"lease_seconds": 60.0, "heartbeat_timeout_seconds": 5.0, "reconnect_grace_seconds": 60.0}


async def run_one(coord: Harness, output: Any, **options: Any) -> tuple[Any, Any]:
    """An SDK miner whose runner answers a job {"bad": true} with output (and any other job with its input); one
    such job submitted. Returns the job, once terminal (within 15 s), and the miner."""
    from aitbc.miner import Outcome, job_input

    async def runner(job):  # type: ignore[no-untyped-def]
        if job_input(job).get("bad"):
            return Outcome(output, units="1", unit_type="jobs")
        return Outcome(job_input(job), units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner, slots=2, **options)
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    alice = coord.client("alice")
    job = await alice.submit({"bad": True})
    done = await coord.finished(alice, job.job_id, within=15.0)
    return done, miner


def reasons(coord: Harness, job_id: str) -> list[str]:
    return [e["reason"] for e in coord.db.events(job_id)]


@pytest.mark.coordinator(**LONG_LEASE, max_payload_bytes=16_384, max_message_bytes=1 << 20)
async def test_the_welcome_says_what_the_coordinator_takes(coord: Harness) -> None:
    welcome = (await coord.stream_miner()).welcome
    assert (welcome.max_result_bytes, welcome.max_message_bytes) == (16_384, 1 << 20)


@pytest.mark.coordinator(**LONG_LEASE, max_payload_bytes=16_384, max_message_bytes=1 << 20)
async def test_a_result_over_the_coordinators_result_limit_fails_its_job_without_being_sent(
    coord: Harness,
) -> None:
    done, miner = await run_one(coord, b"x" * 20_000)
    assert (done.state, done.attempt) == (FAILED, 1), reasons(coord, done.job_id)
    assert reasons(coord, done.job_id)[-1] == "RESULT_TOO_LARGE"
    assert "16384" in coord.db.events(done.job_id)[-1]["message"]
    assert miner.connects == 1 and not miner.unacked


@pytest.mark.coordinator(**LONG_LEASE, max_payload_bytes=64 << 10, max_message_bytes=64 << 10)
async def test_results_finished_together_are_sent_in_messages_the_coordinator_takes(coord: Harness) -> None:
    """Eight 12 KiB results finished together: the SDK's batches (1 MiB by default) stay under a 64 KiB limit."""
    from aitbc.miner import Outcome, job_input

    async def runner(job):  # type: ignore[no-untyped-def]
        return Outcome(b"y" * 12_000 + str(job_input(job)).encode(), units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner, slots=8)
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    alice = coord.client("alice")
    jobs = await alice.submit_many([{"n": i} for i in range(8)])
    for job in jobs:
        assert (await coord.finished(alice, job.job_id, within=15.0)).state == COMPLETED
    assert miner.connects == 1


@pytest.mark.coordinator(**LONG_LEASE)
async def test_a_result_refused_invalid_is_reported_failed_for_good(coord: Harness) -> None:
    """A NaN has no JSON form: the SDK (signing nothing) cannot know, sends it, and sees it refused."""
    done, miner = await run_one(coord, {"x": float("nan")})
    assert (done.state, done.attempt) == (FAILED, 1), reasons(coord, done.job_id)
    assert reasons(coord, done.job_id)[-1] == "INVALID_RESULT"
    await eventually(lambda: not miner.unacked, what="the failure report acked")
    assert miner.connects == 1


@pytest.mark.parametrize("kind", ["nested past protobuf's depth limit", "not JSON"])
@pytest.mark.coordinator(**LONG_LEASE)
async def test_a_result_no_message_can_carry_fails_its_job_and_the_miner_goes_on(
    coord: Harness, kind: str
) -> None:
    """The SDK's reporting task used to die on such an output (protobuf's DecodeError, or a TypeError): the job
    stayed held until its lease ran out, and no later job of the stream was ever reported."""
    output: Any = {"s": {1, 2}}
    if kind.startswith("nested"):
        output = {"leaf": 1}
        for _ in range(40):
            output = {"d": output}
    done, miner = await run_one(coord, output)
    assert (done.state, done.attempt) == (FAILED, 1), reasons(coord, done.job_id)
    assert reasons(coord, done.job_id)[-1] == "INVALID_RESULT"
    alice = coord.client("alice")
    after = await alice.submit({"bad": False})
    assert (await coord.finished(alice, after.job_id, within=10.0)).state == COMPLETED
    assert miner.connects == 1


@pytest.mark.coordinator(**LONG_LEASE, job_max_attempts=2)
async def test_a_result_refused_for_its_signature_is_reported_failed_and_runs_again(coord: Harness) -> None:
    """The miner signs with a key other than the one it registered: each attempt's result is refused
    BAD_MINER_SIGNATURE and reported failed, retryable, so the job runs again at once (here on the same miner,
    the only one), until its attempts are spent."""
    from aitbc.miner import echo_runner
    from aitbc.receipts.keys import Signer

    miner = sdk_miner(coord.address, echo_runner, signer=Signer.generate())
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    miner.signer = Signer.generate()  # after the hello: the coordinator holds the registered key
    alice = coord.client("alice")
    job = await alice.submit({"n": 1})
    done = await coord.finished(alice, job.job_id, within=15.0)
    assert (done.state, done.attempt) == (FAILED, 2), reasons(coord, done.job_id)
    events = coord.db.events(done.job_id)
    assert "BAD_MINER_SIGNATURE" in [e["reason"] for e in events]  # attempt 1's, retried
    assert "last: BAD_MINER_SIGNATURE" in events[-1]["message"]  # attempt 2's, the last
