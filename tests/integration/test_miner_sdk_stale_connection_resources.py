"""What the stream miner's stale-connection watch (`_watch_connection`, `connection_stale`) leaves behind and what it
takes for stale (review helper-112).

- Connections found stale one after the other: each one the miner opened in place of the last is closed when it
  is replaced in turn (its TCP connection ends), the caller's channel is left open, and a session leaves its watch
  and opening behind it no more than its other tasks.
- A probe answered with any status is a connection carrying calls: a coordinator whose health says NOT_SERVING
  (stopping, its store lost) or a server without grpc.health.v1 (UNIMPLEMENTED) is not stale, so the miner never
  reconnects in a loop over them."""

from __future__ import annotations

import asyncio
import time

import grpc
from aitbc.channel import open_channel
from aitbc.miner import connection_stale
from coord_support import Harness, eventually, gated_sdk_miner
from grpc_health.v1 import health_pb2
from muting_relay import relayed
from test_miner_sdk_tasks_end_with_session import SESSION_TASKS, pending

GUARD_S = 60.0  # a guard against a hang, not a speed
STALE_IN_A_ROW = 3
WATCH_TASKS = ("Miner._watch_connection", "Miner._opening")


async def test_connections_found_stale_in_a_row_are_each_closed_once_replaced(coord: Harness) -> None:
    # the caller's connection and the miner's next two are muted from their first byte; the fourth serves
    relay, channel = await relayed(coord.coordinator.port, mute_next=STALE_IN_A_ROW)
    try:
        miner, _ = gated_sdk_miner(
            f"127.0.0.1:{relay.port}", channel=channel, backoff_max_s=0.5, welcome_timeout_s=1.0
        )
        task = coord.run_miner(miner)
        await eventually(lambda: miner.connects, within=GUARD_S, what="a welcome on the fourth connection")
        assert relay.accepted == STALE_IN_A_ROW + 1
        # the caller's (left open for the caller) and the live one; the two the miner opened and replaced: closed
        await eventually(
            lambda: len(relay.links) == 2, what="the replaced connections of the miner's own closed"
        )
        assert channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN, "the caller's channel was closed"
        assert pending(WATCH_TASKS) == ["Miner._watch_connection"], (
            "a stale session's watch or opening lives on"
        )

        miner.stop()
        await asyncio.wait_for(task, GUARD_S)
        assert pending(SESSION_TASKS + WATCH_TASKS) == []
        await eventually(lambda: len(relay.links) == 1, what="the miner's last connection closed by run()")
    finally:
        await relay.close()
        await channel.close()


async def test_a_probe_answered_not_serving_is_a_live_connection(coord: Harness) -> None:
    assert coord.coordinator is not None
    # as the coordinator says once it stops or loses its store
    await coord.coordinator.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    channel = coord.channel(own_connection=True)
    started = time.monotonic()
    assert not await connection_stale(channel, 5.0)
    assert time.monotonic() - started < 4.0, "the answer was not taken as one"


async def test_a_probe_answered_unimplemented_by_a_server_without_health_is_a_live_connection() -> None:
    server = grpc.aio.server()  # serves no service at all: every call is answered UNIMPLEMENTED
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}", own_connection=True)
    try:
        started = time.monotonic()
        assert not await connection_stale(channel, 5.0)
        assert time.monotonic() - started < 4.0, "the answer was not taken as one"
    finally:
        await channel.close()
        await server.stop(None)
