"""The SDK miner's wait between streams (review round 28): what it chooses, read from its log line
("miner session ended (REASON); reconnecting in X s"), never timed.

- A go-away's reconnect_after is the least the coordinator allows ("wait at least this long"): the jitter used
  to take up to half of it off.
- A stream ended by an error after it had served a while starts the backoff over: the failures of a miner
  whose connection drops once a day used to add up, and after ten such drops it waited the longest backoff.
- A stream ended before its welcome (a proxy, a server that is not a coordinator) backs off as a failure: it
  used to reset the backoff, and the miner came back at the shortest wait, for good.
"""

from __future__ import annotations

import asyncio
import logging
import re

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from aitbc.miner import echo_runner
from coord_support import Harness, eventually, sdk_miner
from test_miner_reconnect import down, running  # noqa: F401  (down: the fixture)

from tests.tcp_relay import Relay

ENDED = re.compile(r"miner session ended \((\w+)\); reconnecting in ([0-9.]+) s")


def waits(caplog: pytest.LogCaptureFixture) -> list[tuple[str, float]]:
    """(reason, wait) of each stream the miner saw end, in order."""
    found = (ENDED.match(r.getMessage()) for r in caplog.records if r.name == "aitbc.miner")
    return [(m[1], float(m[2])) for m in found if m]


async def test_a_go_aways_reconnect_after_is_waited_at_least(
    down: Harness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    await down.start()
    miner = sdk_miner(f"127.0.0.1:{down.overrides['app_port']}", echo_runner)
    async with running(miner):
        await eventually(lambda: miner.connects == 1)
        for n in range(2, 5):
            await down.stop()  # go-away SHUTTING_DOWN, reconnect_after 1 s
            await down.start()
            await eventually(lambda n=n: miner.connects == n, within=15.0, what=f"stream {n}")
    asked = [wait for reason, wait in waits(caplog) if reason == "SHUTTING_DOWN"]
    assert len(asked) == 3 and min(asked) >= 1.0, f"waits after a go-away asking for 1 s: {asked}"


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_a_stream_that_served_a_while_starts_the_backoff_over(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    miner = sdk_miner(f"127.0.0.1:{relay.port}", echo_runner, backoff_base_s=0.05, backoff_max_s=0.4)
    coord.run_miner(miner)
    try:
        for n in range(1, 7):
            await eventually(lambda n=n: miner.connects == n, within=15.0, what=f"stream {n}")
            await asyncio.sleep(0.5)  # served longer than the longest backoff
            relay.cut("rst")  # the stream ends UNAVAILABLE
            await eventually(lambda n=n: len(waits(caplog)) == n, what=f"stream {n} ended")
    finally:
        await relay.close()
    chosen = [wait for _, wait in waits(caplog)]
    assert max(chosen) <= 0.1, f"waits after streams that each served 0.5 s: {chosen}"


class NotACoordinator(miner_service_pb2_grpc.MinerServiceServicer):
    """Ends every Connect at once, with no welcome and status OK (a server that is not a coordinator)."""

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return
        yield


async def test_streams_ended_before_their_welcome_back_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    server = grpc.aio.server()
    miner_service_pb2_grpc.add_MinerServiceServicer_to_server(NotACoordinator(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    miner = sdk_miner(f"127.0.0.1:{port}", echo_runner, backoff_base_s=0.01, backoff_max_s=0.2)
    async with running(miner):
        await eventually(lambda: len(waits(caplog)) >= 6, what="six streams ended")
    await server.stop(0)
    chosen = [wait for reason, wait in waits(caplog)]
    assert {reason for reason, _ in waits(caplog)} == {"NO_WELCOME"}
    assert max(chosen[4:6]) > 0.01, f"waits after streams that each ended before their welcome: {chosen}"
