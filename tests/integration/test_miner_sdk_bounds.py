"""The SDK miner keeps what it sends within the coordinator's bounds, and a stream the coordinator ends for one
message it cannot take costs that message, not the miner.

(Review round 11, helper-33: a runner's failure message over 4,096 characters, or an Outcome's unit_type over 64,
made the coordinator end the stream INVALID_ARGUMENT, and the SDK took INVALID_ARGUMENT for a wrong hello and
raised it from run(): the miner process ended, cancelling its other jobs, and the job, requeued, ended the next
miner in turn.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aitbc.miner
import pytest
from aitbc.miner import JobFailed, Miner, Outcome, job_input
from coord_support import COMPLETED, FAILED, Harness, eventually, sdk_miner

ENDED_INVALID = "miner session ended (INVALID_ARGUMENT)"


def two_slot_miner(coord: Harness, runner: Any) -> Miner:
    return sdk_miner(coord.address, runner, slots=2, backoff_base_s=0.05, backoff_max_s=0.2)


async def bad_then_good(coord: Harness, runner: Any) -> tuple[Any, asyncio.Task]:
    """Run the miner on a job the runner answers badly, then on a good one: (the bad job as finished, run())."""
    alice = coord.client("alice")
    miner = two_slot_miner(coord, runner)
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    bad = await alice.submit({"bad": True}, max_attempts=1)
    bad_done = await coord.finished(alice, bad.job_id, within=10.0)
    assert not task.done(), f"miner.run() ended: {task.exception()!r}"
    good = await alice.submit({"bad": False})
    assert (await coord.finished(alice, good.job_id, within=10.0)).state == COMPLETED
    assert not task.done()
    return bad_done, task


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_failure_message_over_the_coordinators_bound_is_cut_not_refused(coord: Harness) -> None:
    async def runner(job):  # type: ignore[no-untyped-def]
        if job_input(job).get("bad"):
            raise JobFailed("BAD_INPUT_" + "C" * 100, "the input is wrong: " + "x" * 5000, retryable=False)
        return job_input(job)

    bad, _ = await bad_then_good(coord, runner)
    assert bad.state == FAILED
    assert bad.terminal_reason == "BAD_INPUT_" + "C" * 54  # cut to 64 characters
    assert bad.terminal_message.startswith("the input is wrong: xxx")


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_unit_type_over_the_coordinators_bound_fails_its_job(coord: Harness) -> None:
    async def runner(job):  # type: ignore[no-untyped-def]
        if job_input(job).get("bad"):
            return Outcome({"ok": True}, units="1", unit_type="gpu_seconds_on_" + "a" * 64)
        return job_input(job)

    bad, _ = await bad_then_good(coord, runner)
    assert (bad.state, bad.terminal_reason) == (FAILED, "INVALID_RESULT")
    assert "unit_type is 79 characters; at most 64" in bad.terminal_message


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_stream_ended_invalid_argument_after_its_welcome_does_not_end_the_miner(
    coord: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever else the coordinator refuses at the stream's level (here a Reject whose reason is over its bound,
    512 characters, that the SDK is made to send once; a failure's text, the example until helper-132, is now cut,
    not refused): the stream ends, the miner reconnects, sends the reject again (its own reason) and goes on."""
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    reject_message, start = aitbc.miner._reject_message, Miner._start
    rejected: list[str] = []  # the jobs given back so (the first "bad" one only)
    long_reasons: list[str] = []  # the rejects sent with a reason over the bound (the first only)

    def reject_bad_once(self: Miner, assignment: Any) -> None:
        if job_input(assignment.job).get("bad") and not rejected:
            rejected.append(assignment.job.job_id)
            self._reject(assignment.job.job_id, assignment.attempt, "not now")
            return
        start(self, assignment)

    def over_its_bound_once(job_id: str, attempt: int, reason: str) -> Any:
        if not long_reasons:
            long_reasons.append(job_id)
            reason = "r" * 513
        return reject_message(job_id, attempt, reason)

    async def runner(job):  # type: ignore[no-untyped-def]
        return job_input(job)

    monkeypatch.setattr(Miner, "_start", reject_bad_once)
    monkeypatch.setattr(aitbc.miner, "_reject_message", over_its_bound_once)
    alice = coord.client("alice")
    miner = two_slot_miner(coord, runner)
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    bad = await alice.submit({"bad": True})
    ended = lambda: sum(r.getMessage().startswith(ENDED_INVALID) for r in caplog.records)  # noqa: E731
    await eventually(
        lambda: ended() == 1 or task.done(), within=10.0, what="the stream carrying the reject ended"
    )
    assert not task.done(), f"miner.run() ended: {task.exception()!r}"
    assert rejected == long_reasons == [bad.job_id]
    # the job given back (on the next stream, its reason within the bound) is offered again, and runs
    assert (await coord.finished(alice, bad.job_id, within=10.0)).state == COMPLETED
    good = await alice.submit({"bad": False})
    assert (await coord.finished(alice, good.job_id, within=10.0)).state == COMPLETED
    assert not task.done() and ended() == 1 and miner.connects >= 2


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_nul_characters_in_a_failure_are_dropped_not_refused(coord: Harness) -> None:
    """The coordinator refuses text with U+0000 (PostgreSQL cannot store it): the SDK leaves them out."""

    async def runner(job):  # type: ignore[no-untyped-def]
        if job_input(job).get("bad"):
            raise JobFailed("BAD\x00INPUT", "the\x00 input", retryable=False)
        return job_input(job)

    bad, _ = await bad_then_good(coord, runner)
    assert (bad.state, bad.terminal_reason, bad.terminal_message) == (FAILED, "BADINPUT", "the input")
