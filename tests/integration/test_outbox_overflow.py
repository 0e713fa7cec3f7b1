"""A miner reading its stream more slowly than the coordinator queues messages for it: once more than the outbox's
limit wait, the stream ends UNAVAILABLE (`OUTBOX_OVERFLOW`, ErrorInfo), after what was already written; it ended with
status OK, which tells a miner (a Node, Go or Rust one) nothing and looks like an orderly close. No job is lost: the
assignments the miner read stay its own for the reconnect grace, and those that never left go back to the queue.

Real coordinator on loopback, real SQLite, real gRPC flow control: the miner is a Connect call that stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from coord_support import Harness, details_of, eventually, expect_error, miner_key

from coordinator.domain.clock import now_us
from coordinator.domain.model import JobState

MD = (("x-api-key", miner_key("miner-00")),)
LIMIT = 3  # messages waiting in the outbox (the default, 10,000, takes a long test to pass)
BIG = 900_000  # a few of these fill HTTP/2 flow control's window of a reader that does not read


@pytest.mark.coordinator(heartbeat_timeout_seconds=30.0, lease_seconds=60.0, reconnect_grace_seconds=30.0)
async def test_a_miner_reading_too_slowly_is_ended_unavailable_and_keeps_or_gives_back_its_jobs(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.scheduler")
    scheduler = coord.coordinator.scheduler  # type: ignore[union-attr]
    scheduler.settings = dataclasses.replace(scheduler.settings, outbox_limit=LIMIT)
    channel = grpc.aio.insecure_channel(coord.address, options=[("grpc.use_local_subchannel_pool", 1)])
    coord.channels.append(channel)
    call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(metadata=MD)
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=100))))
    assert (await call.read()).WhichOneof("message") == "welcome"
    session = scheduler.by_miner["miner-00"]
    alice = coord.client()

    def blocked() -> bool:  # the stream's writer held by flow control (not a large write under way)
        since = session.write_blocked_since_us
        return bool(since) and now_us() - since > 100_000

    submitted = []
    for _ in range(60):  # (54 MB in all: far beyond any window gRPC grows to on loopback)
        submitted.append(await alice.submit(bytes(BIG)))
        await asyncio.sleep(0.05)
        if blocked():
            break
    await eventually(blocked, within=5.0, what="the stream's writer held by flow control")
    # each submit's assignment is a message of its own in the outbox while the writer waits
    for _ in range(LIMIT + 2):
        submitted.append(await alice.submit(b"small"))
    assert session.outbox.qsize() > LIMIT

    read: set[str] = set()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:  # the miner reads again: what was written arrives, then the stream's end
            message = await asyncio.wait_for(call.read(), 10)
            assert message is not grpc.aio.EOF, "the stream ended OK: the miner is not told why"
            if message.WhichOneof("message") == "assignments":
                read.update(a.job.job_id for a in message.assignments.assignments)
    expect_error(details_of(ended.value), grpc.StatusCode.UNAVAILABLE, "OUTBOX_OVERFLOW")
    assert session.closed
    await eventually(lambda: disconnect_reasons(caplog), what="the disconnect line")
    assert disconnect_reasons(caplog) == ["OUTBOX_OVERFLOW"]  # (its metric's label too: the same reason)

    ids = [job.job_id for job in submitted]
    assert read and read < set(ids), "the miner read some of its assignments, not all"

    def placed() -> bool:  # those it read wait for it (its grace), the others are queued again, unspent
        jobs = {row[0]: row for row in coord.db.not_terminal()}
        return all(jobs[i][1] == (int(JobState.ASSIGNED) if i in read else int(JobState.QUEUED)) for i in ids)

    await eventually(placed, within=5.0, what="every job kept for the miner or queued again")
    for job_id in set(ids) - read:  # never told: queued again with its attempt unspent
        last = coord.db.events(job_id)[-1]
        assert (last["reason"], last["attempt"], last["message"]) == (
            "MINER_GONE",
            0,
            "its stream never sent the assignment",
        ), last
    with contextlib.suppress(Exception):
        call.cancel()


def disconnect_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "reason", None) for r in caplog.records if r.getMessage() == "miner disconnected"]
