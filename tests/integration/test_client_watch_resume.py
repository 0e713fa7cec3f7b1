"""WatchJob resumed after a cut (review round 33): each message carries the sequence of the last change it
reflects, and `after_sequence` resumes after it, replaying from the job's stored history what the watcher
missed, none twice. The SDK's watch() and wait() resume by themselves. (A cut watch was lost: the SDK raised
UNAVAILABLE, and a new watch started over with a snapshot, the changes in between missed.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.client import Client, RetryPolicy
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from coord_support import (
    ASSIGNED,
    CLIENT_KEYS,
    COMPLETED,
    RUNNING,
    Harness,
    eventually,
    expect_error,
    rpc_error,
)

from tests.tcp_relay import Relay

FAST_RETRY = RetryPolicy(attempts=100, backoff_s=0.05, backoff_max_s=0.2)
ALICE = (("x-api-key", CLIENT_KEYS["alice"]),)


class Gate(Relay):
    """A relay that can refuse new connections (the coordinator out of reach)."""

    open = True

    def accepting(self) -> bool:
        return self.open


@pytest.fixture
async def gate(coord: Harness) -> AsyncIterator[Gate]:
    relay = Gate("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def watch_all(stub, job_id: str, after: int = 0) -> list[jpb.WatchJobResponse]:  # type: ignore[no-untyped-def]
    call = stub.WatchJob(jpb.WatchJobRequest(job_id=job_id, after_sequence=after), metadata=ALICE, timeout=5)
    return [m async for m in call]


async def test_a_watch_cut_while_the_job_moves_on_resumes_without_missing_or_repeating_a_change(
    coord: Harness, gate: Gate
) -> None:
    miner = await coord.stream_miner("miner-00")
    job = await coord.client().submit({"x": 1})
    a = await miner.next("assignment")
    channel = open_channel(f"127.0.0.1:{gate.port}")
    coord.channels.append(channel)
    client = Client(f"127.0.0.1:{gate.port}", CLIENT_KEYS["alice"], channel=channel, retry=FAST_RETRY)
    seen: list[jpb.WatchJobResponse] = []
    first = asyncio.Event()

    async def watch() -> None:
        async for update in client.watch(job.job_id):
            seen.append(update)
            first.set()

    watching = asyncio.create_task(watch())
    await asyncio.wait_for(first.wait(), 5)
    gate.open = False
    gate.cut("rst")  # the watch is cut, and cannot come back for now
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="RUNNING")
    miner.result(a.job.job_id, a.attempt)
    await eventually(lambda: coord.db.job_state(job.job_id) == COMPLETED, what="COMPLETED")
    gate.open = True
    await asyncio.wait_for(watching, 15)
    got = [(u.sequence, u.job.state, u.event.to_state if u.HasField("event") else None) for u in seen]
    assert got == [(2, ASSIGNED, None), (3, RUNNING, RUNNING), (4, COMPLETED, COMPLETED)], got


async def test_after_sequence_replays_the_stored_changes_of_a_finished_job(coord: Harness) -> None:
    miner = await coord.stream_miner("miner-00")
    job = await coord.client().submit({"x": 1})
    a = await miner.next("assignment")
    miner.result(a.job.job_id, a.attempt)  # implies the accept: RUNNING and COMPLETED in one commit
    await coord.finished(coord.client(), job.job_id)
    stub = coord.jobs_stub()
    whole = await watch_all(stub, job.job_id)
    assert [(m.sequence, m.HasField("event")) for m in whole] == [
        (4, False)
    ]  # the snapshot of a finished job
    resumed = await watch_all(stub, job.job_id, after=1)
    assert [(m.sequence, m.event.sequence, m.job.state) for m in resumed] == [
        (2, 2, ASSIGNED), (3, 3, RUNNING), (4, 4, COMPLETED)
    ]  # fmt: skip
    assert not resumed[1].job.HasField("finished_at")  # each as of its change
    assert await watch_all(stub, job.job_id, after=4) == []  # it had everything: nothing, and the end
    past = await rpc_error(watch_all(stub, job.job_id, after=5))
    expect_error(past, grpc.StatusCode.OUT_OF_RANGE, "SEQUENCE_OUT_OF_RANGE")  # (past the end: not malformed)
    assert [f for f, _ in past.violations] == ["after_sequence"]


async def test_many_watchers_of_one_job_each_see_every_change_once(coord: Harness) -> None:
    miner = await coord.stream_miner("miner-00")
    client = coord.client()
    job = await client.submit({"x": 1})
    started = [asyncio.Event() for _ in range(8)]

    async def follow(i: int) -> list[int]:
        out = []
        async for update in client.watch(job.job_id):
            out.append(update.sequence)
            started[i].set()
        return out

    watchers = [asyncio.create_task(follow(i)) for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 5)
    a = await miner.next("assignment")
    miner.accept(a)
    miner.result(a.job.job_id, a.attempt)
    sequences = await asyncio.wait_for(asyncio.gather(*watchers), 10)
    for seq in sequences:
        assert seq == sorted(set(seq)) and seq[-1] == 4, sequences


async def test_a_watch_resumes_across_a_coordinator_restart_with_its_sequence_numbering_intact(
    coord: Harness, gate: Gate
) -> None:
    """The sequence is the job's stored event number: a new coordinator on the same store goes on from it (the
    changes made while the watcher was away, the restart's own included, replayed once each)."""
    miner = await coord.stream_miner("miner-00")
    job = await coord.client().submit({"x": 1})
    await miner.next("assignment")
    channel = open_channel(f"127.0.0.1:{gate.port}")
    client = Client(f"127.0.0.1:{gate.port}", CLIENT_KEYS["alice"], channel=channel, retry=FAST_RETRY)
    seen: list[jpb.WatchJobResponse] = []
    first = asyncio.Event()

    async def watch() -> None:
        async for update in client.watch(job.job_id):
            seen.append(update)
            first.set()

    watching = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(first.wait(), 5)
        gate.open = False
        await coord.restart()  # the miner's stream goes with it
        gate.target = ("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
        gate.cut("rst")
        after_restart = await coord.stream_miner("miner-01")
        a = await after_restart.next("assignment")
        gate.open = True
        after_restart.result(a.job.job_id, a.attempt)
        await asyncio.wait_for(watching, 15)
    finally:
        watching.cancel()
        await channel.close()
    sequences = [u.sequence for u in seen]
    assert sequences == list(range(2, sequences[-1] + 1)), sequences  # none missed, none twice
    assert seen[-1].job.state == COMPLETED
    stored = coord.db.events(job.job_id)
    assert len(stored) == sequences[-1], stored
