"""A poll miner draining while its coordinator is unreachable (every connection refused), its calls (PollJob,
Heartbeat, Drain, SubmitResult) failing UNAVAILABLE and waiting for the connection: with nothing awaiting an ack the
drain ends at once; with a result unacked it waits drain_ack_timeout_s for the ack, then gives the result up, saying
so (the coordinator runs the job again). The poll waiting to be made again holds neither, nor, once the connection
is back, a drain whose last ack came while that poll waited: no job is decided for a poll not in flight."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aitbc.channel import open_channel
from coord_support import COMPLETED, Harness, eventually, gated_sdk_miner

from tests.tcp_relay import Relay

GUARD_S = 30.0  # a guard against a hang, not a speed


class RefusingRelay(Relay):
    """down(): every link cut with a reset, every new connection refused (the coordinator's host unreachable)."""

    refusing = False

    def accepting(self) -> bool:
        return not self.refusing

    def down(self) -> int:
        self.refusing = True
        return self.cut("rst")


async def draining_while_down(
    coord: Harness, *, finish_first: bool
) -> tuple[Any, Any, asyncio.Task, RefusingRelay]:
    """A poll miner (2 slots: a poll in flight beside its job) whose coordinator then goes unreachable."""
    relay = RefusingRelay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll", slots=2, poll_wait_s=5.0,
                                    backoff_max_s=1.0, drain_ack_timeout_s=2.0)  # fmt: skip
    task = coord.run_miner(miner)
    await coord.client("alice").submit({"n": 1})
    await eventually(lambda: miner.running, what="the job running on the poll miner")
    if finish_first:
        runner.gate.set()
        await eventually(lambda: miner.acked == 1, what="the result acknowledged")
    await eventually(lambda: miner._session_task is not None and relay.links, what="a connection")
    assert relay.down() >= 1
    return miner, runner, task, relay


async def test_a_drain_with_nothing_unacked_ends_at_once_though_the_coordinator_is_unreachable(
    coord: Harness,
) -> None:
    miner, _, task, relay = await draining_while_down(coord, finish_first=True)
    try:
        miner.drain()
        await asyncio.wait_for(task, GUARD_S)
        assert miner.stopped.is_set() and not miner.unacked and miner.acked == 1
    finally:
        await relay.close()


async def test_a_drain_gives_up_a_result_it_cannot_deliver_after_drain_ack_timeout_and_says_so(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aitbc.miner")
    miner, runner, task, relay = await draining_while_down(coord, finish_first=False)
    try:
        miner.drain()
        runner.gate.set()  # its result cannot be sent: kept unacked
        await asyncio.wait_for(task, GUARD_S)
        [job_id] = list(miner.unacked)
        given_up = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drained: giving up")]
        assert given_up and job_id in given_up[0], [r.getMessage() for r in caplog.records]
    finally:
        await relay.close()


# the coordinator keeps the job through the miner's long backoff (its heartbeats wait as long as its poll)
@pytest.mark.coordinator(heartbeat_timeout_seconds=600.0, lease_seconds=600.0)
async def test_a_drain_whose_last_ack_comes_while_the_poll_waits_to_be_made_again_ends_at_that_ack(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    alice = coord.client("alice")
    relay = RefusingRelay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    channel = open_channel(f"127.0.0.1:{relay.port}", own_connection=True)
    try:
        # a failed call waits 300 to 600 s before its next try, and the drain 600 s for its last ack: a drain held
        # by the poll waiting to be made again outlasts the guard below
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll", slots=2, channel=channel,
                                        poll_wait_s=5.0, backoff_base_s=300.0, backoff_max_s=600.0,
                                        drain_ack_timeout_s=600.0)  # fmt: skip
        task = coord.run_miner(miner)
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running on the poll miner")

        # down until the poll beside the job and a heartbeat have failed: both wait to be made again (a heartbeat
        # made meanwhile would be answered SESSION_DRAINED once the drain is done, ending the session so)
        assert relay.down() == 1
        await eventually(lambda: "PollJob failed" in caplog.text, what="the poll failed")
        await eventually(lambda: "Heartbeat failed" in caplog.text, what="a heartbeat failed")
        relay.refusing = False
        await asyncio.wait_for(channel.channel_ready(), GUARD_S)
        miner.drain()
        runner.gate.set()  # its result is sent on the connection back, and acknowledged

        await asyncio.wait_for(task, GUARD_S)  # (a guard against a hang, not a speed)
        assert not miner.unacked and miner.acked == 1
        assert not miner.stopped.is_set(), "the drain ended by its timer, not at its last ack"
        assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    finally:
        await relay.close()
        await channel.close()
