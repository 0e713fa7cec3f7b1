"""A command job's runner returns only once its command has ended: canceled (a miner stopping gives its jobs back)
or timed out, the job may start on another miner the moment the runner returns, and must not run here still.

SIGKILL is not the end: the process runs on until the kernel ends it. Before the runner waited for that, 20 of 30
commands were still running right after their runner's cancellation returned (checked at once, as the miner then
gives the job back), and a stopped miner's job ran on two miners at once under load
(test_miner_sdk_stop_gives_jobs_back, flaky)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import JobFailed, subprocess_runner
from coord_support import eventually, gone

ROUNDS = 30


async def started_pid(pids: Path, job_id: str) -> int:
    marker = pids / job_id
    await eventually(lambda: marker.exists() and marker.read_text().strip(), what="the command started")
    return int(marker.read_text())


def writing_its_pid(pids: Path) -> list[str]:
    return ["sh", "-c", f'echo $$ > "{pids}/$AITBC_JOB_ID"; exec sleep 60']


async def test_a_canceled_runner_returns_once_its_command_is_gone(tmp_path: Path) -> None:
    run = subprocess_runner(writing_its_pid(tmp_path))
    running_on = []
    for i in range(ROUNDS):
        job = job_pb2.Job(job_id=f"job-{i}", payload_bytes=b"x")
        task = asyncio.create_task(run(job))
        pid = await started_pid(tmp_path, job.job_id)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if not gone(pid):  # at once: what the miner does next is give the job back
            running_on.append(job.job_id)
    assert running_on == []


async def test_a_timed_out_command_is_gone_when_its_failure_is_reported(tmp_path: Path) -> None:
    run = subprocess_runner(writing_its_pid(tmp_path), timeout_s=0.2)
    running_on = []
    for i in range(5):
        job = job_pb2.Job(job_id=f"late-{i}", payload_bytes=b"x")
        with pytest.raises(JobFailed, match="ran longer"):
            await run(job)
        if not gone(int((tmp_path / job.job_id).read_text())):
            running_on.append(job.job_id)
    assert running_on == []
