"""WatchJob ends on the terminal state even when the job finishes while its first snapshot is being sent
(the SDK's `wait` and every operator tool built on it rely on that)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ops_support import COMPLETED, running


async def test_wait_always_returns_the_terminal_job(tmp_path: Path) -> None:
    async with running(tmp_path) as ops:
        await ops.miner(slots=8)
        client = ops.client()
        for _ in range(5):
            jobs = await client.submit_many([{"i": i} for i in range(16)])
            done = await asyncio.wait_for(asyncio.gather(*(client.wait(j.job_id) for j in jobs)), 30)
            assert [j.state for j in done] == [COMPLETED] * len(jobs)
