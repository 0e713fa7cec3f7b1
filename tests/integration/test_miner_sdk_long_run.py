"""The SDK miner over days of churn: what grows with each job, how it backs off from streams that
end at once and from refusals that say when to come back, and what stop() leaves behind.

- The set of job ids whose results went on the current stream was never trimmed on their acks: one more id for
  each job a stream carried, for as long as the stream lasted (days).
- A stream welcomed and then ended at once by the coordinator (EOF, a go-away) reset the backoff: two miners
  of one identity, each taking the session from the other, came back every 1 to 1.5 s for good.
- A refusal's RetryInfo (a rate limit) was ignored: the miner came back on its own short backoff, refused each
  time until the delay had passed.
- stop() returned with its jobs' tasks still pending: a command's workspace still there, its task unfinished.

Waits are read from the miner's log line ("miner session ended (REASON); reconnecting in X s"), never timed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest
from aitbc.miner import echo_runner, python_runner, subprocess_runner
from coord_support import Harness, eventually, sdk_miner
from test_miner_sdk_backoff import waits

from tests.tcp_relay import Relay


async def test_a_long_stream_keeps_no_trace_of_the_jobs_it_acked(coord: Harness) -> None:
    miner = sdk_miner(coord.address, echo_runner, slots=4)
    coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    client = coord.client()
    for i in range(150):
        await client.submit({"i": i})
    await eventually(lambda: miner.acked == 150, within=30.0, what="150 results acked")
    assert miner.connects == 1, "one stream carried every job"
    assert not miner.unacked and not miner.running
    assert len(miner._on_stream) == 0, f"{len(miner._on_stream)} acked jobs still tracked on the stream"


async def test_miners_of_one_identity_taking_the_session_from_each_other_back_off(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    # streams last about a second, far less than the longest backoff: none served a while
    first = sdk_miner(coord.address, echo_runner, backoff_base_s=1.0, backoff_max_s=60.0)
    second = sdk_miner(coord.address, echo_runner, backoff_base_s=1.0, backoff_max_s=60.0)
    coord.run_miner(first)
    await eventually(lambda: first.connects == 1)
    coord.run_miner(second)
    replaced = lambda: [w for reason, w in waits(caplog) if reason == "SESSION_REPLACED"]  # noqa: E731
    await eventually(lambda: len(replaced()) >= 3, within=20.0, what="three sessions replaced")
    # a go-away's reconnect_after (1 s) allows 1 to 1.5 s; the first miner, replaced a second time, waits longer
    assert max(replaced()[:3]) > 1.5, f"waits after sessions replaced one after the other: {replaced()}"


@pytest.mark.coordinator(rate_limits="miner=0.5/s:burst=1", lease_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_rate_limited_reconnect_waits_out_its_retry_info(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    miner = sdk_miner(f"127.0.0.1:{relay.port}", echo_runner, backoff_base_s=0.05, backoff_max_s=15.0)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        relay.cut("rst")  # the next Connect comes within the 2 s the one token takes to come back
        await eventually(lambda: miner.connects == 2, within=15.0, what="the second stream")
    finally:
        await relay.close()
    refused = [w for reason, w in waits(caplog) if reason == "RESOURCE_EXHAUSTED"]
    assert len(refused) == 1, f"Connects refused RATE_LIMITED before one was let in (their waits): {refused}"


async def test_stop_returns_once_its_jobs_ended(coord: Harness, tmp_path: Path) -> None:
    started = tmp_path / "started"
    runner = subprocess_runner(["sh", "-c", f'echo "$AITBC_WORKSPACE" > {started}; exec sleep 60'])
    miner = sdk_miner(coord.address, runner)
    task = asyncio.create_task(miner.run())
    await eventually(lambda: miner.connects == 1)
    await coord.client().submit({"x": 1})
    await eventually(lambda: started.exists() and started.read_text().strip(), what="the command started")
    workspace = Path(started.read_text().strip())
    job_tasks = [r.task for r in miner.running.values()]
    assert workspace.is_dir() and job_tasks
    miner.stop()
    await asyncio.wait_for(task, 10.0)
    assert all(t.done() for t in job_tasks), "a job's task still pending after run() returned"
    assert not workspace.exists(), "the command's workspace outlived run()"


async def test_stop_returns_though_a_python_callable_never_does(coord: Harness) -> None:
    release, entered = threading.Event(), threading.Event()

    def stuck(_: object) -> dict:
        entered.set()
        release.wait()
        return {}

    miner = sdk_miner(coord.address, python_runner(stuck))
    task = asyncio.create_task(miner.run())
    try:
        await eventually(lambda: miner.connects == 1)
        await coord.client().submit({"x": 1})
        await eventually(entered.is_set, what="the callable running")
        job_tasks = [r.task for r in miner.running.values()]
        miner.stop()
        await asyncio.wait_for(task, 10.0)  # (its thread cannot be stopped: given up on, not waited for)
        assert all(t.done() for t in job_tasks)
    finally:
        release.set()
