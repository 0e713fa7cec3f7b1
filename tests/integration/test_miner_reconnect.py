"""The miner runtime while its coordinator is down: it waits for the channel to connect again instead of
failing Connect after Connect, so its backoff does not grow and it is back soon after the coordinator.

The coordinator here listens on a port chosen in advance, so that a miner can be pointed at it before it
starts and find it again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aitbc.miner import CoordinatorUnreachable, Miner, probe_capabilities
from coord_support import GatedRunner, Harness, eventually, gated_sdk_miner, miner_key

ENDED = "miner session ended"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def down(tmp_path: Path) -> AsyncIterator[Harness]:
    """A coordinator not started yet, on a fixed port."""
    harness = Harness(tmp_path, {"app_port": free_port()})
    try:
        yield harness
    finally:
        await harness.stop()


@contextlib.asynccontextmanager
async def running(miner: Miner) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(miner.run())
    try:
        yield task
    finally:
        miner.stop()
        with contextlib.suppress(BaseException):
            await task


def failed_attempts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(ENDED)
            and "SHUTTING_DOWN" not in r.getMessage()]  # fmt: skip


def sdk_miner(harness: Harness) -> Miner:
    port = harness.overrides["app_port"]
    return Miner(f"127.0.0.1:{port}", miner_key("miner-00"), capabilities=probe_capabilities(slots=1),
                 own_connection=True, backoff_base_s=0.2)  # fmt: skip


@dataclass
class AwaitingAck:
    miner: Miner
    runner: GatedRunner
    task: asyncio.Task  # the miner's run()
    job: Any
    blocker: sqlite3.Connection  # holds the store's write lock until release()

    def release(self) -> None:
        with contextlib.suppress(sqlite3.ProgrammingError):  # (released already)
            self.blocker.execute("COMMIT")
            self.blocker.close()


@contextlib.asynccontextmanager
async def a_result_awaiting_its_ack(down: Harness, **options: Any) -> AsyncIterator[AwaitingAck]:
    """down started (with the default 30 s reconnect grace: the tests' 0.5 s is shorter than a restart) and a
    gated SDK miner running one job, whose result has been sent while the store's write lock is held. The
    lock is released by release() or on leaving, the miner stopped on leaving."""
    from test_failed_commit import held_lock

    down.overrides["reconnect_grace_seconds"] = 30.0
    await down.start()
    miner, runner = gated_sdk_miner(f"127.0.0.1:{down.overrides['app_port']}", **options)
    async with running(miner) as task:
        await eventually(lambda: miner.connects == 1)
        job = await down.client("alice").submit({"x": 1})
        await eventually(lambda: bool(miner.running), what="the job running")
        state = AwaitingAck(miner, runner, task, job, held_lock(down))
        try:
            runner.gate.set()
            await eventually(lambda: job.job_id in miner.unacked, what="the result sent")
            yield state
        finally:
            state.release()


async def test_a_miner_started_before_its_coordinator_waits_and_connects_once_it_serves(
    down: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    miner = sdk_miner(down)
    async with running(miner):
        await asyncio.sleep(2.5)  # nothing listens: each Connect would fail UNAVAILABLE at once
        assert miner.connects == 0
        assert failed_attempts(caplog) == []  # it waited for the channel, and did not try and fail
        await down.start()
        # the channel retries its connection within 5 s (open_channel's reconnect_max_s), with jitter
        await eventually(lambda: miner.connects == 1, within=10.0)
        assert failed_attempts(caplog) == []


async def test_after_a_restart_a_miner_is_back_without_having_failed_while_the_coordinator_was_down(
    down: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    await down.start()
    miner = sdk_miner(down)
    async with running(miner):
        await eventually(lambda: miner.connects == 1)
        await down.stop()  # go-away SHUTTING_DOWN to the miner, then the port closes
        await asyncio.sleep(3.0)  # down for a while: with a failing Connect every backoff step, about five
        await down.start()
        await eventually(lambda: miner.connects == 2, within=10.0)
        # At most one Connect may have reached the stopping coordinator before its port closed.
        assert len(failed_attempts(caplog)) <= 1, failed_attempts(caplog)


async def test_a_result_whose_ack_a_restart_lost_is_sent_again_and_lands_at_its_first_attempt(
    down: Harness,
) -> None:
    """The miner sends its result; the coordinator stops before the result's write can land (the store's
    write lock is held). Back on the restarted coordinator, the miner lists the job (its result awaits an
    ack) and sends the result again: the job completes at attempt 1 and ran once. (The SDK used to forget a
    job once its result was sent: the restarted coordinator, not hearing of it, ran it again.)"""
    from coord_support import COMPLETED

    async with a_result_awaiting_its_ack(down) as sent:
        await asyncio.sleep(0.2)
        await down.stop()  # its write fails (the lock stays held past the busy timeout), or never runs
        sent.release()
        miner, job = sent.miner, sent.job
        assert job.job_id in miner.unacked
        await down.start()
        done = await down.finished(down.client("alice"), job.job_id, within=20.0)
        assert (done.state, done.attempt) == (COMPLETED, 1)
        assert sent.runner.runs == [1]
        await eventually(lambda: not miner.unacked, what="the result acknowledged")


async def test_a_miner_given_a_limit_gives_up_when_the_coordinator_stays_unreachable(down: Harness) -> None:
    miner = sdk_miner(down)
    miner.unreachable_timeout_s = 1.0
    started = asyncio.get_running_loop().time()
    with pytest.raises(
        CoordinatorUnreachable, match=r"no connection to the coordinator at 127\.0\.0\.1:\d+ for 1 s"
    ):
        await asyncio.wait_for(miner.run(), timeout=30.0)
    assert asyncio.get_running_loop().time() - started >= 1.0
    assert miner.connects == 0


async def test_a_miner_given_a_limit_connects_when_the_coordinator_comes_within_it(down: Harness) -> None:
    miner = sdk_miner(down)
    miner.unreachable_timeout_s = 30.0
    async with running(miner) as task:
        await asyncio.sleep(1.0)
        await down.start()
        await eventually(lambda: miner.connects == 1, within=10.0)
        assert not task.done()


def test_the_cli_miner_exits_1_when_told_to_give_up(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "aitbc.cli", "miner", "run", "--address", f"127.0.0.1:{port}",
         "--api-key", "k", "--give-up-after", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"no connection to the coordinator at 127.0.0.1:{port}" in done.stderr


async def test_a_drain_while_the_coordinator_is_down_ends_cleanly_with_a_give_up_limit(down: Harness) -> None:
    """A drain asked for (SIGTERM) ends as drains end, giving up on the last acks, whichever runs out first: the
    give-up limit or drain_ack_timeout_s. (Review round 11, helper-33: with the limit shorter, run() raised
    CoordinatorUnreachable, and `aitbc miner run` exited 1 on an orderly stop.)"""
    async with a_result_awaiting_its_ack(down, unreachable_timeout_s=3.0, drain_ack_timeout_s=60.0) as sent:
        stopping = asyncio.create_task(down.stop())
        await eventually(lambda: down.coordinator is None or down.coordinator.scheduler.stopping)
        await asyncio.sleep(0.3)  # the go-away is out: the result's write may land now, its ack cannot
        sent.release()
        await stopping
        assert sent.job.job_id in sent.miner.unacked
        sent.miner.drain()  # SIGTERM, with the coordinator gone
        await asyncio.wait_for(asyncio.shield(sent.task), 15.0)  # returns: no CoordinatorUnreachable
        assert sent.miner.stopped.is_set()


def test_a_give_up_limit_must_be_positive() -> None:
    for wrong in (0, -1.0):
        with pytest.raises(ValueError, match="unreachable_timeout_s must be more than 0"):
            Miner("127.0.0.1:1", "k", unreachable_timeout_s=wrong)
