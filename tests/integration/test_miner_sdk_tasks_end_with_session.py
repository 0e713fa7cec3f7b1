"""Nothing the SDK miner starts outlives what started it, and a cancel of run() is not swallowed (helper h2).

A session's tasks (its sender, heartbeat, reporter and reader) were canceled when it ended but not waited for:
they ran on after it (an exception of one, such as a write on the ended call, never retrieved). The wait for the
channel to connect left its channel_ready task behind the same way. run(), canceled after stop(), returned as
if it had ended by itself."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest
from aitbc.miner import CoordinatorUnreachable, Miner, echo_runner
from coord_support import Harness, eventually, sdk_miner
from test_miner_sdk_backoff import waits

SESSION_TASKS = ("Miner._send", "Miner._heartbeat", "Miner._report", "Miner._read")


def pending(qualnames: tuple[str, ...]) -> list[str]:
    """The tasks not done yet whose coroutine is one of `qualnames`."""
    names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks() if not t.done()]
    return [name for name in names if name in qualnames]


class Watched(Miner):
    """The SDK miner, recording the session tasks still pending as each session ends, and the channel_ready
    tasks still pending as each wait for the channel ends."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.left_by_session: list[list[str]] = []
        self.left_by_wait: list[list[str]] = []

    async def _session(self, channel: grpc.aio.Channel) -> tuple[str, float]:
        try:
            return await super()._session(channel)
        finally:
            self.left_by_session.append(pending(SESSION_TASKS))

    async def _reachable(self, channel: grpc.aio.Channel) -> None:
        try:
            await super()._reachable(channel)
        finally:
            self.left_by_wait.append(pending(("Channel.channel_ready",)))


def watched(address: str, **options: Any) -> Watched:
    plain = sdk_miner(address, echo_runner, **options)
    return Watched(plain.address, plain.api_key, runner=echo_runner, capabilities=plain.capabilities,
                   own_connection=True, backoff_base_s=0.2, **options)  # fmt: skip


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_sessions_tasks_end_with_it(coord: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """A session ended by the coordinator (a go-away: another session of the miner), then one ended by stop()."""
    caplog.set_level("INFO", logger="aitbc.miner")
    miner = watched(coord.address)
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    job = await coord.client("alice").submit({"n": 1})
    await coord.finished(coord.client("alice"), job.job_id)
    hand = await coord.stream_miner("miner-00", slots=1)  # replaces it: go-away SESSION_REPLACED
    await eventually(lambda: waits(caplog), what="the first stream's end")
    await hand.close()
    await eventually(lambda: miner.connects == 2, within=10.0, what="the miner's next stream")
    miner.stop()
    await asyncio.wait_for(task, 10.0)
    assert len(miner.left_by_session) == 2
    assert miner.left_by_session == [[], []], f"tasks left running by the sessions: {miner.left_by_session}"


async def test_the_wait_for_an_unreachable_coordinator_leaves_no_task() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    miner = watched(f"127.0.0.1:{port}", unreachable_timeout_s=0.3)
    with pytest.raises(CoordinatorUnreachable):
        await asyncio.wait_for(miner.run(), 10.0)
    assert miner.left_by_wait == [[]], f"tasks left by the wait: {miner.left_by_wait}"


async def test_run_canceled_after_stop_ends_canceled(coord: Harness) -> None:
    """stop(), then a cancel of run() (a supervisor's timeout, a task group ending): run() ends canceled, as
    asyncio's callers expect (wait_for turns it into its TimeoutError), not as if it had ended by itself."""
    miner = sdk_miner(coord.address, echo_runner)
    task = asyncio.create_task(miner.run())
    await eventually(lambda: miner.connects == 1)
    miner.stop()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
