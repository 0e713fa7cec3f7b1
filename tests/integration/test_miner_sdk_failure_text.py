"""A runner's failure whose text protobuf refuses fails its job, and the miner goes on (both transports).

A JobFailed message holding a lone surrogate (a file name os.fsdecode could not decode: `surrogateescape`), or a code
that is not a str (an HTTP status), raised from building the Failure message: on the stream, in the task reporting
every finished job, which died while the stream went on (its next jobs ran, their results never sent, held by
heartbeats for good); on the poll transport, out of run(). The text is now made what a string field takes."""

from __future__ import annotations

import os

import pytest
from aitbc.miner import JobFailed, Outcome, job_input
from coord_support import COMPLETED, FAILED, Harness, sdk_miner

UNDECODABLE = os.fsdecode(b"input-\xff.bin")  # 'input-\udcff.bin'


async def failing_first(job) -> Outcome:  # type: ignore[no-untyped-def]
    """Fails job n=1 with unencodable text, n=2 with an int code; echoes the others."""
    n = job_input(job)["n"]
    if n == 1:
        raise JobFailed("FILE_UNREADABLE", f"cannot read {UNDECODABLE}\x00", retryable=False)
    if n == 2:
        raise JobFailed(404, "no such model", retryable=False)  # type: ignore[arg-type]
    return Outcome(job_input(job), units="1", unit_type="jobs")


@pytest.mark.parametrize("transport", ["stream", "poll"])
async def test_a_failure_with_text_protobuf_refuses_fails_its_job_and_the_miner_goes_on(
    coord: Harness, transport: str
) -> None:
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, failing_first, transport=transport, poll_wait_s=1.0)
    task = coord.run_miner(miner)
    first = await alice.submit({"n": 1})
    assert (await coord.finished(alice, first.job_id)).state == FAILED, coord.db.events(first.job_id)
    second = await alice.submit({"n": 2})
    assert (await coord.finished(alice, second.job_id)).state == FAILED, coord.db.events(second.job_id)
    third = await alice.submit({"n": 3})
    assert (await coord.finished(alice, third.job_id)).state == COMPLETED, coord.db.events(third.job_id)
    assert not task.done(), task

    one, two = await alice.get(first.job_id), await alice.get(second.job_id)
    assert one.terminal_reason == "FILE_UNREADABLE" and "cannot read input-?.bin" in one.terminal_message, one
    assert two.terminal_reason == "404" and "no such model" in two.terminal_message, two
    assert miner.connects == 1  # the same stream, or poll session, all along
