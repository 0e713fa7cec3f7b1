"""What a miner stream holds is let go of when its session ends, even when its miner stopped reading it.

A closed session's stream ends with the GoAway queued behind whatever its writer is writing. A miner that stopped
reading (its process hung, its transport still answering HTTP/2 keepalive pings) never lets that write finish:
while the session is open the liveness check ends such a stream (STREAM_STALLED), but a session closed by the
scheduler (replaced by its identity's new stream, timed out, drained) is out of that check. Its Connect handler,
its outbox (the assignments in it, payloads and all) and its identity's count of open streams (MAX_STREAMS per
identity, then TOO_MANY_STREAMS) were held until the miner's side ended the call, if ever. Real coordinator on
loopback, real SQLite, real gRPC flow control: the old stream is a Connect call that never reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from coord_support import Harness, eventually, miner_key

from coordinator.domain.clock import now_us
from coordinator.scheduler.sessions import Session

MD = (("x-api-key", miner_key("miner-00")),)
TIMEOUT_S = 2.0  # HEARTBEAT_TIMEOUT_SECONDS here
JOB_BYTES = (
    900_000  # payloads that fill HTTP/2 flow control's window of a reader that never reads in a few jobs
)
BLOCKED_S = 0.3  # a write waiting this long is held by flow control, not just a large write under way


@contextlib.asynccontextmanager
async def stream_that_stopped_reading(coord: Harness) -> AsyncIterator[grpc.aio.StreamStreamCall]:
    """miner-00's stream, welcomed, then never read again: its writes block once flow control's window is full.
    It heartbeats on (the application sees it alive), so only a blocked write gives it away. Cancelled at the end."""
    channel = grpc.aio.insecure_channel(coord.address, options=[("grpc.use_local_subchannel_pool", 1)])
    coord.channels.append(channel)
    call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(metadata=MD)
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=100))))
    assert (await call.read()).WhichOneof("message") == "welcome"

    async def heartbeat() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            while True:
                await call.write(mpb.ConnectRequest(heartbeat=mpb.MinerHeartbeat()))
                await asyncio.sleep(0.1)

    beats = asyncio.create_task(heartbeat())
    try:
        yield call
    finally:
        beats.cancel()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats


@pytest.mark.coordinator(
    heartbeat_timeout_seconds=TIMEOUT_S, lease_seconds=30.0, reconnect_grace_seconds=30.0
)
async def test_a_stream_cut_off_for_not_reading_lets_go_of_its_session_and_its_identitys_stream_count(
    coord: Harness,
) -> None:
    """The liveness check ends a stream whose writes stay blocked (STREAM_STALLED): its handler ends with that status,
    which gRPC cannot send either, behind the blocked write. The interceptor waited for it, holding the identity's
    stream count (and, through the error's traceback, the handler's session and outbox) until the miner's side
    ended the call."""
    usage = coord.coordinator.keyring.state("miner", "miner-00").usage  # type: ignore[union-attr]
    async with stream_that_stopped_reading(coord):
        session_id = await stalled_and_cut_off(coord)
        await eventually(
            lambda: usage.streams == 0, within=TIMEOUT_S, what="the identity's stream count freed"
        )
        gc.collect()
        kept = [o for o in gc.get_objects() if isinstance(o, Session) and o.session_id == session_id]
        assert not kept, "the cut-off session (its outbox of jobs, payloads and all) is still referenced"


async def stalled_and_cut_off(coord: Harness) -> str:
    """miner-00's session stalled, then ended by the liveness check; its id (the test keeps no reference to it)."""
    session = coord.coordinator.scheduler.by_miner["miner-00"]  # type: ignore[union-attr]
    await stall(coord, session)
    await eventually(lambda: session.closed, within=2 * TIMEOUT_S, what="the liveness check ending it")
    assert session.end_reason == "STREAM_STALLED"
    return session.session_id


@pytest.mark.coordinator(
    heartbeat_timeout_seconds=TIMEOUT_S, lease_seconds=30.0, reconnect_grace_seconds=30.0
)
async def test_a_replaced_stream_whose_miner_stopped_reading_ends_and_frees_its_identitys_stream_count(
    coord: Harness,
) -> None:
    scheduler = coord.coordinator.scheduler
    usage = coord.coordinator.keyring.state("miner", "miner-00").usage  # type: ignore[union-attr]
    async with stream_that_stopped_reading(coord):
        old = scheduler.by_miner["miner-00"]
        await stall(coord, old)
        assert usage.streams == 1
        # the identity comes back on a new stream (the hung process restarted elsewhere, say): the old session ends
        await coord.stream_miner("miner-00", slots=1)
        assert old.closed and scheduler.by_miner["miner-00"] is not old
        assert usage.streams == 2
        # the old stream's handler ends within a heartbeat timeout of its write blocking (1.5 times it: margin)
        await eventually(lambda: usage.streams == 1, within=1.5 * TIMEOUT_S, what="the old stream's end")


async def stall(coord: Harness, session: Session) -> None:
    """Submit large jobs until the session's stream writer is held by flow control."""
    alice = coord.client()

    def blocked(for_s: float) -> bool:
        since = session.write_blocked_since_us
        return bool(since) and now_us() - since > for_s * 1_000_000

    for _ in range(60):  # (54 MB in all: far beyond any window gRPC grows to on loopback)
        await alice.submit(bytes(JOB_BYTES))
        await asyncio.sleep(0.05)
        if blocked(0.03):  # (not a large write under way: one takes about a millisecond here)
            break
    await eventually(lambda: blocked(BLOCKED_S), within=5.0, what="the stream's writer held by flow control")
