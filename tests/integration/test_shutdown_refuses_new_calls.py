"""A stopping coordinator takes no new call once it has told its miners to go away.

Bench scenario 5 (10,000 miner streams, coordinator restarted): a miner reconnects 1 s after its go-away,
over the connection it already had. The go-aways to 10,000 streams took longer than that to send, and gRPC
went on taking calls until they were all sent, so thousands of Connects per restart reached the stopping
process and were cut off as it stopped (INTERNAL "Failed execute_batch", CANCELLED, UNAVAILABLE). Now gRPC
stops taking calls (an HTTP/2 GOAWAY on every connection, the listeners closed) before the first go-away:
a reconnecting miner's channel waits for the next coordinator instead.
"""

from __future__ import annotations

import asyncio

import grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from aitbc.miner import coordinator_reason
from coord_support import Harness, capabilities, miner_key
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


async def _check(stub: health_pb2_grpc.HealthStub) -> str:
    """The health status's name, or the code the call ended with."""
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _connect(channel: grpc.aio.Channel, name: str) -> str:
    """A miner's Connect and hello: what ended it (the coordinator's reason when it answered)."""
    call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(
        metadata=(("x-api-key", miner_key(name)),), timeout=2
    )
    try:
        await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities())))
        first = await call.read()
        return "answered: " + (first.WhichOneof("message") if first is not grpc.aio.EOF else "EOF")
    except grpc.aio.AioRpcError as exc:
        reason = coordinator_reason(exc)
        return f"{exc.code().name} {reason}" if reason else f"{exc.code().name} (not the coordinator's)"
    finally:
        call.cancel()


async def test_no_call_is_taken_once_miners_are_told_to_go_away(coord: Harness) -> None:
    miner = await coord.stream_miner("miner-00")
    # connections open before the stop, as a reconnecting miner's is
    health_channel, miner_channel = coord.channel(own_connection=True), coord.channel(own_connection=True)
    health = health_pb2_grpc.HealthStub(health_channel)
    assert await _check(health) == "SERVING"
    await asyncio.wait_for(miner_channel.channel_ready(), 5)

    assert coord.coordinator is not None
    # miner-00 keeps its stream open: the old coordinator stays in its grace while the test calls it
    stopping = asyncio.ensure_future(coord.coordinator.stop(grace=3.0))
    go_away = await miner.next("go_away")
    assert go_away.reason == "SHUTTING_DOWN"

    checked, connected = await asyncio.gather(_check(health), _connect(miner_channel, "miner-01"))
    still_stopping = not stopping.done()
    # not answered by the stopping coordinator (it answered NOT_SERVING, and SHUTTING_DOWN to the Connect)
    assert checked == "UNAVAILABLE", checked
    assert "answered" not in connected and "SHUTTING_DOWN" not in connected, connected
    assert still_stopping  # (the calls above were made while it stopped, not after)

    await miner.close()  # its stream ends: the stop completes before the grace
    await asyncio.wait_for(stopping, 5)
    coord.coordinator = None
