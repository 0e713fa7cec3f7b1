"""A poll miner (`transport="poll"`) stopped on purpose (`Miner.stop()`, Ctrl-C) gives back the jobs it will not
finish, as a stream miner does: a Drain (nothing new assigned), then a RejectJob per job held, its attempt unspent,
once its runners are canceled (commands killed). The coordinator queues each at once for another miner. It used to
leave them to the session's heartbeat timeout and then the reconnect grace (30 s and 30 s by default): a fleet of
poll miners restarted without draining delayed every running job by a minute. A coordinator that answers nothing
holds stop() no longer than the stream's leave (LEAVE_GRACE_S). (That results awaiting their answers are not given
back is held for both transports in test_miner_sdk_stop_gives_jobs_back.py.)"""

from __future__ import annotations

import asyncio
import logging

import pytest
from coord_support import COMPLETED, QUEUED, Harness, eventually, gated_sdk_miner
from muting_relay import relayed
from test_miner_sdk_stop_gives_jobs_back import (
    LONG_GRACE,
    POLL,
    REQUEUED_WITHIN_S,
    given_back,
    other_miner,
    stopped_within_the_leave_grace,
)
from test_shutdown_disconnect_reason import disconnect_reasons

from tests.tcp_relay import Relay

GUARD_S = 30.0  # a guard against a hang, not a speed
# LONG_GRACE: a job left to the coordinator waits 30 s (heartbeat timeout) and then 60 s (grace); given back, it is
# queued within a second or two


@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stopped_poll_miner_gives_its_running_job_back_at_once_with_its_attempt_unspent(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address, **POLL)
    task = asyncio.create_task(miner.run())
    job = await alice.submit({"n": 1})
    await eventually(lambda: runner.runs == [1], what="the job running")

    with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
        await stopped_within_the_leave_grace(miner, task)
        await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                         what="the job queued again (not left to the heartbeat timeout and the grace)")  # fmt: skip
        # the session ends with its last job (drained), not at its heartbeat timeout
        await eventually(
            lambda: disconnect_reasons(caplog), within=REQUEUED_WITHIN_S, what="the disconnect line"
        )
    assert disconnect_reasons(caplog) == ["DRAINED"]
    [back] = given_back(coord, job.job_id)
    assert back["message"] == "miner stopping"

    coord.run_miner(other_miner(coord.address))
    done = await coord.finished(alice, job.job_id, within=REQUEUED_WITHIN_S)
    assert (done.state, done.attempt, done.miner_id) == (COMPLETED, 1, "miner-01")  # its attempt unspent
    assert coord.db.count("receipts", job.job_id) == 1
    assert runner.runs == [1]


@pytest.mark.coordinator(**LONG_GRACE)
async def test_stop_of_a_poll_miner_with_a_running_job_on_a_stale_connection_returns_within_the_leave_grace(
    coord: Harness,
) -> None:
    """Nothing of the leave gets through a muted connection (keepalive's pings still answered): stop() returns
    within LEAVE_GRACE_S all the same (the job is then the coordinator's timers', as before)."""
    relay, channel = await relayed(coord.coordinator.port)
    try:
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", channel=channel, **POLL)
        task = asyncio.create_task(miner.run())
        alice = coord.client("alice")
        job = await alice.submit({"n": 1})
        await eventually(lambda: runner.runs == [1], what="the job running")
        assert relay.mute() == 1
        await stopped_within_the_leave_grace(miner, task)
        assert coord.db.job_state(job.job_id) != QUEUED  # (nothing got through)
    finally:
        await relay.close()
        await channel.close()


@pytest.mark.coordinator(**LONG_GRACE)
async def test_stop_of_a_poll_miner_whose_coordinator_is_gone_returns_within_the_leave_grace(
    coord: Harness,
) -> None:
    """Every connection to the coordinator dropped and refused: the leave's calls fail at once."""
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    try:
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", **POLL)
        task = asyncio.create_task(miner.run())
        await coord.client("alice").submit({"n": 1})
        await eventually(lambda: runner.runs == [1], what="the job running")
        await relay.close()  # (its port closed: connections refused)
        await stopped_within_the_leave_grace(miner, task)
    finally:
        await relay.close()
