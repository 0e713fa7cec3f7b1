"""The chaos tests' bounded wait for every job to end (tests/chaos_support.until_terminal): when jobs stay stuck it
fails naming the seed to replay, how many jobs are stuck, the first five, the caller's detail and the actions
taken; when they end, it returns."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.chaos_support import until_terminal


async def test_stuck_jobs_fail_the_wait_naming_the_seed_the_jobs_and_the_actions() -> None:
    rows = [(f"job-{i}", 2, 1, "miner-10") for i in range(7)]

    async def stuck() -> list[tuple]:  # (async, as PostgreSQL's is)
        return rows

    with pytest.raises(AssertionError) as failed:
        await until_terminal(stuck, seed=4242, bound_s=0.0, actions=Counter({"cut-rst": 3}),
                             detail=lambda rows: f"events of the first: {rows[0][0]}")  # fmt: skip
    message = str(failed.value)
    assert message.startswith("seed 4242: 7 jobs not terminal 0 s after the network healed: "), message
    assert str(rows[:5]) in message and "job-5" not in message
    assert "; events of the first: job-0; actions {'cut-rst': 3}" in message


async def test_the_wait_returns_once_no_job_is_stuck() -> None:
    left = [[("job-1", 3, 1, "miner-10")], []]
    took = await until_terminal(lambda: left.pop(0), seed=1, bound_s=30.0, actions=Counter())
    assert took >= 0 and not left
