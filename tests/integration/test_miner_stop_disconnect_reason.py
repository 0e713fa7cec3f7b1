"""A miner stopped on purpose (`Miner.stop()`, Ctrl-C in `aitbc miner run`) ends its stream as a miner that leaves:
its side closed first, so the coordinator logs `miner disconnected ... reason=STREAM_CLOSED` ("the miner ended it").
It cancelled its call outright before, and every stop was logged and counted `STREAM_CANCELLED`, "the connection
dropped" (docs/operations.md): the demo's last line said so, and an alert on dropped connections fired on each
restart of a fleet. A connection that really drops is still STREAM_CANCELLED (test_shutdown_disconnect_reason)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aitbc.miner import echo_runner
from coord_support import COMPLETED, Harness, eventually, sdk_miner
from test_shutdown_disconnect_reason import disconnect_reasons


async def test_a_stopped_miner_is_logged_as_having_ended_its_stream(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    alice = coord.client("alice")
    miner = sdk_miner(f"127.0.0.1:{coord.coordinator.port}", echo_runner)
    task = coord.run_miner(miner)
    job = await alice.submit({"n": 1})
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    await eventually(lambda: not miner.unacked, what="the result acknowledged")

    with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
        miner.stop()
        await asyncio.wait_for(task, 30)  # (a guard against a hang, not a speed)
        await eventually(lambda: disconnect_reasons(caplog), what="the disconnect line")
    assert disconnect_reasons(caplog) == ["STREAM_CLOSED"]
