"""Why a miner's stream ended, as a coordinator stop ends it: `miner disconnected ... reason=SHUTTING_DOWN`.

Every stream is told to go away (GoAway SHUTTING_DOWN) as the stop begins, and the SDK miner cancels its call as
soon as it reads that go-away. When the miner's cancel reached the coordinator before its handler had resumed
from the go-away's write, gRPC cancelled the handler and the line said `STREAM_CANCELLED` ("the connection
dropped"): an operator reading the log of a plain restart saw a network fault, and
`aitbc_miner_disconnections_total{reason="STREAM_CANCELLED"}` counted one per miner now and then (the ops doc
walk-through: 5 of 45 runs with three running side by side). So did a stream cut off as the stop's grace ran out.

Real coordinator on loopback, real SQLite, real gRPC calls. The cancels land at the points the race reaches:
by gRPC itself on a stream whose writes are held up (a miner that stopped reading: its write cannot finish, so
the cancel always comes first), and at the handler's task as gRPC cancels it, in the loop turn the go-away is
queued (the handler has not taken it yet), as test_stream_stalled_status does for the liveness check.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import Harness, capabilities, eventually, miner_key
from test_shutdown_assigns_nothing import stop_begun

from coordinator.scheduler.sessions import Session

QUIET = {"lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0, "reconnect_grace_seconds": 30.0}


def disconnect_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The reasons of the `miner disconnected` lines, as an operator reads them."""
    return [getattr(r, "reason", None) for r in caplog.records if r.getMessage() == "miner disconnected"]


async def stopped(coord: Harness, stopping: asyncio.Future) -> None:
    await stopping
    coord.coordinator = None  # (stopped here: the fixture has nothing left to stop)


async def a_miner_that_stopped_reading(coord: Harness):  # type: ignore[no-untyped-def]
    """A stream whose miner reads nothing after its welcome, and the session: its writes stay held up."""
    call = coord.miner_stub().Connect(metadata=(("x-api-key", miner_key("miner-00")),))
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(slots=100))))
    assert (await call.read()).WhichOneof("message") == "welcome"
    session: Session = coord.coordinator.scheduler.by_miner["miner-00"]
    alice = coord.client("alice")
    for _ in range(16):  # 14 MB: far more than HTTP/2 flow control lets through to a reader that never reads
        await alice.submit(bytes(900_000))
    await eventually(lambda: session.write_blocked_since_us, what="a write held up")
    return call, session


@pytest.mark.coordinator(**QUIET)
async def test_a_miner_that_cancels_its_stream_as_the_coordinator_stops_is_logged_shutting_down(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    call, session = await a_miner_that_stopped_reading(coord)
    with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
        stopping = await stop_begun(coord)
        call.cancel()  # the miner leaves (the SDK cancels its call once it reads its go-away)
        await eventually(lambda: session.closed, what="the session closed")
        await stopped(coord, stopping)
    assert disconnect_reasons(caplog) == ["SHUTTING_DOWN"]


@pytest.mark.coordinator(**QUIET)
async def test_a_stream_cut_off_when_the_shutdown_grace_runs_out_is_logged_shutting_down(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    _, session = await a_miner_that_stopped_reading(coord)
    with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
        stopping = await stop_begun(coord)
        await stopped(coord, stopping)  # its write still held up as the grace ends: gRPC cancels the call
    assert session.closed
    assert disconnect_reasons(caplog) == ["SHUTTING_DOWN"]


@pytest.mark.coordinator(**QUIET)
async def test_a_stream_cancelled_before_its_handler_takes_the_go_away_is_logged_shutting_down(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await coord.stream_miner("miner-00", slots=1, heartbeat=False)
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
        stopping = await stop_begun(coord)
        assert session.outbox.qsize() == 1 and not session.closed  # the go-away queued, not taken yet
        session.stream_task.cancel()  # what gRPC does as the miner's cancel reaches the coordinator
        await stopped(coord, stopping)
    assert disconnect_reasons(caplog) == ["SHUTTING_DOWN"]


async def test_a_miner_gone_while_the_coordinator_serves_is_not_logged_shutting_down(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """(The miner gone while the coordinator serves: the reason stays what it was, as test_ops_logs reads it.)"""
    miner = await coord.stream_miner("miner-00", slots=1, heartbeat=False)
    session = coord.coordinator.scheduler.by_miner["miner-00"]
    with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
        await miner.kill()
        await eventually(lambda: session.closed, what="the session closed")
    assert disconnect_reasons(caplog) in (["STREAM_CANCELLED"], ["STREAM_CLOSED"])
