"""An operator's drain (DrainMiner) is the miner identity's, and outlives its stream (review round 21, after
a359bd5 and 906d13b), for the grace period (or while jobs of the miner wait for it), no longer:

- when the miner held no job at the drop: its last result was being written, which keeps a draining session
  open (a359bd5 kept the drain only for a session holding jobs; the miner came back and took new work, and a
  session made draining at its open never ended once that write landed);
- when its stream ended HEARTBEAT_TIMEOUT (a half-open connection), not only when it dropped;
- when the miner had asked to drain first (SIGTERM): the operator's drain, coming second, was ignored, and a
  process started in its place took new work."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import Harness, eventually, rpc_error
from test_failed_commit import held_lock


@pytest.mark.coordinator(reconnect_grace_seconds=5.0, lease_seconds=30.0, heartbeat_timeout_seconds=5.0)
async def test_an_operator_drain_outlives_a_blip_while_its_last_result_is_written(coord: Harness) -> None:
    client = coord.client()
    scheduler = coord.coordinator.scheduler
    miner = await coord.stream_miner("miner-00", slots=1)
    await client.submit({"n": 1})
    a = await miner.next("assignment")
    miner.accept(a)
    session = scheduler.by_miner["miner-00"]
    await eventually(lambda: session.held[a.job.job_id].job.state.name == "RUNNING", what="running")
    # (drained first: the drain is stored before it takes effect, and its write would wait behind the lock)
    await coord.admin().drain("miner-00")
    await eventually(lambda: session.draining, what="draining")
    blocker = held_lock(coord)
    try:
        miner.result(a.job.job_id, a.attempt)
        await eventually(lambda: not session.held, what="the result decided, its write waiting")
        assert not session.closed
        await miner.kill()
        await eventually(lambda: session.closed, what="the stream's session closed")
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await miner.connect()
    await client.submit({"n": 2})
    await asyncio.sleep(0.5)
    assert miner.pending("assignment") == 0, "the operator's drain was forgotten at the blip"
    await miner.next("go_away")  # nothing left to it: drained


# (a grace of 1 s, not 0.3: the drain is checked to be kept right after the session closed, within the grace)
@pytest.mark.coordinator(reconnect_grace_seconds=1.0)
async def test_a_drain_is_over_once_the_miner_stayed_away_past_the_grace_period(coord: Harness) -> None:
    client = coord.client()
    scheduler = coord.coordinator.scheduler
    miner = await coord.stream_miner("miner-00", slots=1)
    await client.submit({"n": 1})
    a = await miner.next("assignment")
    miner.accept(a)
    await coord.admin().drain("miner-00")
    await miner.next("drain")
    session = scheduler.by_miner["miner-00"]
    await miner.kill()
    await eventually(lambda: session.closed, what="the stream's session closed")
    assert "miner-00" in scheduler._drains
    await eventually(lambda: "miner-00" not in scheduler._drains, what="the drain forgotten after the grace")
    await miner.connect()
    assert (await miner.next("assignment")).job.job_id == a.job.job_id  # requeued, and taken again


async def test_an_operator_drain_of_a_miner_already_draining_on_its_own_outlives_it(coord: Harness) -> None:
    """The miner asked to drain (SIGTERM), then the operator drained it too: the operator's drain is the
    identity's, so a process started in its place takes no new job (the miner's reason hid the operator's)."""
    from aitbc.coordinator.v1 import admin_service_pb2 as apb
    from aitbc.coordinator.v1 import miner_service_pb2 as mpb

    client = coord.client()
    old = await coord.stream_miner("miner-00", slots=2)
    first = await client.submit({"n": 1})
    a = await old.next("assignment")
    old.accept(a)
    old.send(drain=mpb.MinerDrain(reason="SIGTERM"))
    await eventually(lambda: coord.coordinator.scheduler.by_miner["miner-00"].draining, what="draining")
    await coord.admin().drain("miner-00")

    new = await coord.stream_miner("miner-00", slots=2, running_jobs=((first.job_id, a.attempt),))
    await client.submit({"n": 2})
    await asyncio.sleep(0.5)
    assert new.pending("assignment") == 0, "the operator's drain was lost with the process that asked first"
    assert (await coord.admin().miners())["miner-00"].status == apb.MINER_STATUS_DRAINING


@pytest.mark.coordinator(
    reconnect_grace_seconds=5.0, lease_seconds=30.0
)  # (a lost lease would end the drain)
async def test_an_operator_drain_outlives_a_heartbeat_timeout(coord: Harness) -> None:
    """A half-open connection: the miner's heartbeats stop reaching the coordinator, which ends its session
    (HEARTBEAT_TIMEOUT, its job requeued); back within the grace period, the miner is still drained."""
    client = coord.client()
    scheduler = coord.coordinator.scheduler
    miner = await coord.stream_miner("miner-00", slots=1, heartbeat=False)
    await client.submit({"n": 1})
    a = await miner.next("assignment")
    miner.accept(a)
    await coord.admin().drain("miner-00")
    await miner.next("drain")
    session = scheduler.by_miner["miner-00"]
    await eventually(lambda: session.closed, what="the session ended HEARTBEAT_TIMEOUT")
    assert "miner-00" in scheduler._drains
    await miner.kill()
    await miner.connect()
    await asyncio.sleep(0.5)
    assert miner.pending("assignment") == 0, "the operator's drain was forgotten at the heartbeat timeout"


@pytest.mark.coordinator(reconnect_grace_seconds=30.0, lease_seconds=30.0)
async def test_an_operator_can_drain_a_miner_that_is_away_and_sees_the_drain_pending(coord: Harness) -> None:
    """A miner disconnected within its grace period (its job waiting for it) is drained when it comes back, and
    ListMiners shows the drain pending. DrainMiner used to answer MINER_NOT_FOUND, though ListMiners listed the
    miner as DISCONNECTED, and a remembered drain was invisible: an operator saw no reason why the miner, back,
    took no work and stopped."""
    client = coord.client()
    miner = await coord.stream_miner("miner-00", slots=2)
    first = await client.submit({"n": 1})
    a = await miner.next("assignment")
    miner.accept(a)
    await miner.kill()
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: "miner-00" not in scheduler.by_miner, what="the miner away")

    drained = (await coord.admin().drain("miner-00")).miner
    assert (drained.status, drained.drain_pending) == (apb.MINER_STATUS_DISCONNECTED, True), drained
    listed = (await coord.admin().miners())["miner-00"]
    assert (listed.status, listed.drain_pending, listed.running_jobs) == (
        apb.MINER_STATUS_DISCONNECTED,
        True,
        1,
    )

    await miner.connect(running_jobs=((first.job_id, a.attempt),))
    assert (await coord.admin().miners())["miner-00"].status == apb.MINER_STATUS_DRAINING
    await client.submit({"n": 2})
    await asyncio.sleep(0.5)
    assert miner.pending("assignment") == 0, "a drained miner got new work"
    miner.result(a.job.job_id, a.attempt)
    assert (await miner.next("go_away")).reason == "DRAINED"


async def test_draining_a_miner_that_is_neither_connected_nor_away_is_not_found(coord: Harness) -> None:
    err = await rpc_error(coord.admin().drain("miner-07"))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "MINER_NOT_FOUND")
