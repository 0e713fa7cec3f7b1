"""Miner.stop() leaves the stream as a miner leaving on purpose (`_leave`): its side closed, the coordinator's end
waited for (LEAVE_GRACE_S at most), then the call canceled and every task of the session ended. What may happen
meanwhile: a second stop() (Ctrl-C twice, stop() then drain()), run() canceled (a supervisor's timeout), a stale
connection (the coordinator's end never comes), a stop() before the welcome, with a result awaiting its ack, or
while the miner waits to reconnect. The coordinator must be left with no stream of the stopped miner, and every job
completed once or run again, never held by a miner that is gone."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.miner import LEAVE_GRACE_S, Outcome, echo_runner, job_input
from coord_support import COMPLETED, QUEUED, Harness, eventually, sdk_miner
from muting_relay import relayed
from test_miner_sdk_backoff import waits
from test_miner_sdk_tasks_end_with_session import SESSION_TASKS, pending
from test_shutdown_disconnect_reason import disconnect_reasons

from tests.tcp_relay import DOWN, Relay

GUARD_S = 30.0  # a guard against a hang, not a speed


@pytest.mark.coordinator(heartbeat_timeout_seconds=30.0, lease_seconds=30.0)
async def test_a_second_stop_while_leaving_still_ends_the_stream_for_the_coordinator(coord: Harness) -> None:
    # a channel of the caller's (run() leaves it open): nothing but the miner ends the stream on it
    channel = coord.channel(own_connection=True)
    miner = sdk_miner(coord.address, echo_runner, channel=channel)
    task = asyncio.create_task(miner.run())
    await eventually(lambda: miner.connects == 1, what="the miner welcomed")

    miner.stop()
    await asyncio.sleep(0)  # (the session is in its finally: ending its sender, heartbeat and reporter)
    miner.stop()  # Ctrl-C twice; stop() then drain() with nothing left to run
    await asyncio.wait_for(task, GUARD_S)

    alice = coord.client("alice")
    job = await alice.submit({"n": 1})
    await asyncio.sleep(0.5)  # (a dispatch is immediate; the stopped miner would drop the assignment unread)
    assert (await alice.get(job.job_id)).state == QUEUED, "a job was assigned to the stopped miner"
    assert await coord.admin().miners() == {}, "the coordinator still lists the stopped miner"
    assert pending(SESSION_TASKS) == [], "a task of the session outlived run()"


async def test_run_canceled_while_leaving_a_stale_stream_leaves_no_reader_behind(coord: Harness) -> None:
    relay, channel = await relayed(coord.coordinator.port)
    try:
        miner = sdk_miner(f"127.0.0.1:{relay.port}", echo_runner, channel=channel)
        task = asyncio.create_task(miner.run())
        await eventually(lambda: miner.connects == 1, what="the miner welcomed")
        # the coordinator's end of the stream will not come: the leave waits its grace
        assert relay.mute() == 1
        miner.stop()
        await asyncio.sleep(LEAVE_GRACE_S / 3)
        task.cancel()  # a supervisor's timeout, a task group ending
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, GUARD_S)
        assert pending(SESSION_TASKS) == [], "a task of the session outlived run()"
    finally:
        await relay.close()
        await channel.close()


async def test_a_miner_stopped_before_its_welcome_is_logged_as_having_ended_its_stream(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    channel = open_channel(f"127.0.0.1:{relay.port}", own_connection=True)
    try:
        await asyncio.wait_for(channel.channel_ready(), GUARD_S)
        relay.stall(DOWN)  # the hello reaches the coordinator; its welcome is held back
        miner = sdk_miner(f"127.0.0.1:{relay.port}", echo_runner, channel=channel)
        with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
            task = asyncio.create_task(miner.run())
            await eventually(coord.admin().miners, what="the coordinator's session for the hello")
            miner.stop()
            await asyncio.sleep(LEAVE_GRACE_S / 5)
            relay.heal()  # the welcome comes while the miner leaves
            await asyncio.wait_for(task, GUARD_S)
            await eventually(lambda: disconnect_reasons(caplog), what="the disconnect line")
        assert miner.connects == 0
        assert disconnect_reasons(caplog) == ["STREAM_CLOSED"]
    finally:
        await relay.close()
        await channel.close()


async def test_stop_on_a_stale_stream_returns_within_the_leave_grace_and_leaves_the_callers_channel_open(
    coord: Harness,
) -> None:
    relay, channel = await relayed(coord.coordinator.port)
    try:
        miner = sdk_miner(f"127.0.0.1:{relay.port}", echo_runner, channel=channel)
        task = asyncio.create_task(miner.run())
        await eventually(lambda: miner.connects == 1, what="the miner welcomed")
        assert relay.mute() == 1  # nothing of the leave gets through, nor the coordinator's end
        started = time.monotonic()
        miner.stop()
        await asyncio.wait_for(task, GUARD_S)
        # the bound itself: the leave waits LEAVE_GRACE_S at most, then the call is canceled (margin: a busy box)
        assert time.monotonic() - started < LEAVE_GRACE_S + 2.0
        assert pending((*SESSION_TASKS, "Miner._watch_connection")) == []
        assert channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN, "the caller's channel was closed"
    finally:
        await relay.close()
        await channel.close()


class HeldByNumber:
    """A runner holding each job (input {"n": N}) until release(N), recording the attempts it ran per N."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.runs: dict[int, list[int]] = {}

    def release(self, n: int) -> None:
        self.gates.setdefault(n, asyncio.Event()).set()

    async def __call__(self, job: Any) -> Outcome:
        n = int(job_input(job)["n"])
        self.runs.setdefault(n, []).append(job.attempt)
        await self.gates.setdefault(n, asyncio.Event()).wait()
        return Outcome(job_input(job), units="1", unit_type="jobs")


async def test_stop_with_a_result_unacked_and_a_job_running_leaves_each_job_completed_once(
    coord: Harness,
) -> None:
    """The result that landed (its ack lost to the stop) completes its job once; the job still running when the
    miner stopped is given back (its attempt unspent) and runs again on the next miner. Neither is held for good."""
    alice = coord.client("alice")
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    runner = HeldByNumber()
    try:
        miner = sdk_miner(f"127.0.0.1:{relay.port}", runner, slots=2)
        task = asyncio.create_task(miner.run())
        running, finished = await alice.submit({"n": 1}), await alice.submit({"n": 2})
        await eventually(lambda: len(miner.running) == 2, what="both jobs running")
        relay.stall(DOWN)  # the ack of the result below is held back
        runner.release(2)
        await eventually(lambda: coord.db.job_state(finished.job_id) == COMPLETED, what="the result landed")
        assert finished.job_id in miner.unacked

        miner.stop()
        await asyncio.wait_for(task, GUARD_S)
        relay.heal()

        runner.release(1)
        coord.run_miner(sdk_miner(coord.address, runner))  # the next miner (same identity, back after stop)
        assert (await coord.finished(alice, running.job_id, within=GUARD_S)).state == COMPLETED
        assert (await alice.get(finished.job_id)).attempt == 1
        assert runner.runs == {1: [1, 1], 2: [1]}
        assert [coord.db.count("receipts", j.job_id) for j in (finished, running)] == [1, 1]
        assert coord.db.not_terminal() == []
    finally:
        await relay.close()


async def test_stop_while_waiting_to_reconnect_returns_at_once(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    miner = sdk_miner(coord.address, echo_runner, backoff_base_s=10.0)
    task = asyncio.create_task(miner.run())
    await eventually(lambda: miner.connects == 1, what="the miner welcomed")
    await coord.stream_miner("miner-00")  # takes the session: go-away SESSION_REPLACED
    ended = await eventually(lambda: waits(caplog), what="the miner's wait to reconnect")
    assert ended[0][1] >= 5.0  # (a stream ended soon after its welcome: half the backoff at least)
    started = time.monotonic()
    miner.stop()
    await asyncio.wait_for(task, GUARD_S)
    assert time.monotonic() - started < 2.0, "stop() waited out the backoff"
    assert miner.connects == 1
