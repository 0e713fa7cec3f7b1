"""A miner's Capacity message on its live stream: how many jobs it takes at once from now on (0 to its hello's
slot count), in place of a new stream whose hello offers fewer. Raw stubs drive the protocol (lower, raise,
above the hello's count, 0, a reconnect); the SDK miner uses it for a canceled python callable that keeps
running (a thread cannot be stopped): one stream and session, fewer slots offered, all again once it returns.
Real coordinator on loopback, real SQLite."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.miner import python_runner
from coord_support import (
    ADMIN_KEY,
    COMPLETED,
    FAILED,
    QUEUED,
    Harness,
    StreamMiner,
    capabilities,
    details_of,
    eventually,
    miner_key,
    sdk_miner,
)

ONLINE = admin_service_pb2.MINER_STATUS_ONLINE


async def offered(coord: Harness, miner_id: str = "miner-00") -> int | None:
    """The slots the miner offers now (ListMiners' offered_slots), None when it is not listed."""
    info = (await coord.admin().miners()).get(miner_id)
    return None if info is None else info.offered_slots


async def capacity(coord: Harness, sm: StreamMiner, slots: int) -> None:
    """Send Capacity and wait until the coordinator took it (its messages are handled in order)."""
    sm.send(capacity=mpb.Capacity(slots=slots))
    await eventually(lambda: _offers(coord, slots), what=f"the coordinator taking capacity {slots}")


async def _offers(coord: Harness, slots: int) -> bool:
    return await offered(coord) == slots


def states(coord: Harness, jobs: list[Any]) -> list[int | None]:
    return [coord.db.job_state(j.job_id) for j in jobs]


# ---------------------------------------------------------------------------------------------- the protocol
async def test_the_welcome_of_a_stream_says_it_takes_capacity_and_a_unary_one_does_not(
    coord: Harness,
) -> None:
    sm = await coord.stream_miner(slots=2)
    assert sm.welcome is not None and sm.welcome.capacity_updates
    assert await offered(coord) == 2  # the hello's count, until a Capacity says otherwise
    unary = await coord.miner_stub().RegisterMiner(
        mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=2))),
        metadata=(("x-api-key", miner_key("miner-01")),),
    )
    assert not unary.welcome.capacity_updates  # (PollJob's max_jobs asks for what it takes)


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_lowered_capacity_assigns_nothing_beyond_it_and_keeps_the_jobs_held(coord: Harness) -> None:
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=3)
    first = [await alice.submit({"n": n}) for n in range(3)]
    held = await sm.assignments(3)
    await capacity(coord, sm, 1)  # below the 3 it holds: they stay its own
    later = [await alice.submit({"n": n}) for n in range(3, 5)]
    assert states(coord, later) == [QUEUED, QUEUED]  # (a submit decides at once: no slot for them)
    for a in held[:2]:
        sm.result(a.job.job_id, a.attempt)
        assert (await sm.next("result_ack")).accepted
    assert states(coord, later) == [QUEUED, QUEUED]  # 1 held: not fewer than the 1 offered
    assert sm.pending("assignment") == 0
    sm.result(held[2].job.job_id, held[2].attempt)
    assert (await sm.next("result_ack")).accepted
    [a] = await sm.assignments(1)  # none held: one slot offered, one job
    [other] = [j for j in later if j.job_id != a.job.job_id]
    assert coord.db.job_state(other.job_id) == QUEUED
    assert sm.peak_held == 3 and not sm.closed.is_set()
    for job in first:
        assert (await coord.finished(alice, job.job_id)).state == COMPLETED


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_raised_capacity_fills_the_freed_slots_at_once(coord: Harness) -> None:
    """Raising capacity dispatches queued work to the slots it frees, as a finished job's slot is refilled:
    nothing else happens on the stream meanwhile (no result, no submit) that could fill them."""
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=3)
    await capacity(coord, sm, 1)
    jobs = [await alice.submit({"n": n}) for n in range(3)]
    [first] = await sm.assignments(1)
    assert sorted(states(coord, jobs)).count(QUEUED) == 2
    sm.send(capacity=mpb.Capacity(slots=3))
    more = await sm.assignments(2)
    assigned = {first.job.job_id} | {a.job.job_id for a in more}
    assert assigned == {j.job_id for j in jobs}
    assert sm.peak_held == 3


async def test_capacity_above_the_hellos_slots_ends_the_stream_invalid_argument(coord: Harness) -> None:
    call = coord.miner_stub().Connect(metadata=(("x-api-key", miner_key("miner-00")),))
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(slots=2))))
    first = await call.read()
    assert first.WhichOneof("message") == "welcome" and first.welcome.capacity_updates
    await call.write(mpb.ConnectRequest(capacity=mpb.Capacity(slots=2)))  # the hello's count: taken
    await call.write(mpb.ConnectRequest(capacity=mpb.Capacity(slots=3)))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        while await call.read() is not grpc.aio.EOF:
            pass
    details = details_of(raised.value)
    assert (details.code, details.reason, details.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "coordinator.aitbc",
    )  # fmt: skip
    assert [f for f, _ in details.violations] == ["capacity.slots"], details.violations


async def test_capacity_messages_are_counted_by_their_type(tmp_path: Path) -> None:
    with socket.socket() as sock:  # (a free port for /metrics, which counts only when it is on)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    coord = await Harness(tmp_path, {"metrics_port": port}).start()
    try:
        assert coord.coordinator is not None and coord.coordinator.observability is not None
        assert coord.coordinator.observability.metrics is not None
        registry = coord.coordinator.observability.metrics.registry  # (what /metrics serves)

        def received(kind: str) -> float | None:
            return registry.get_sample_value("aitbc_stream_messages_received_total", {"type": kind})

        sm = await coord.stream_miner(slots=2)
        await capacity(coord, sm, 1)
        await capacity(coord, sm, 2)
        assert (received("capacity"), received("empty")) == (2, 0)  # (not counted as an empty message)
    finally:
        await coord.stop()


async def test_a_hello_of_0_slots_offers_1_and_takes_capacity_up_to_1(coord: Harness) -> None:
    sm = await coord.stream_miner(slots=0)  # (0 means 1)
    assert await offered(coord) == 1
    await capacity(coord, sm, 0)
    await capacity(coord, sm, 1)
    sm.send(capacity=mpb.Capacity(slots=2))
    await sm.wait_closed()
    assert sm.end_status == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=1.0)
async def test_capacity_0_takes_nothing_new_but_keeps_the_stream_and_its_jobs(coord: Harness) -> None:
    alice = coord.client("alice")
    admin = coord.admin()
    sm = await coord.stream_miner(slots=2)
    held = await alice.submit({"held": True})
    [a] = await sm.assignments(1)
    sm.accept(a)
    await capacity(coord, sm, 0)
    waiting = await alice.submit({"waiting": True})
    assert coord.db.job_state(waiting.job_id) == QUEUED
    stats = await admin.stub.GetStats(
        admin_service_pb2.GetStatsRequest(), metadata=(("x-api-key", ADMIN_KEY),)
    )
    assert (stats.slots_free, stats.slots_busy, stats.miners_draining) == (0, 1, 0)
    await asyncio.sleep(1.5)  # longer than the heartbeat timeout: the stream lives on (heartbeats), no drain
    info = (await admin.miners())["miner-00"]
    assert (info.status, info.session_id, info.offered_slots) == (ONLINE, sm.welcome.session_id, 0)
    assert not sm.closed.is_set() and sm.pending("drain") == 0 and sm.pending("go_away") == 0
    sm.result(a.job.job_id, a.attempt)  # the job it held: its result is taken
    assert (await sm.next("result_ack")).accepted
    assert (await coord.finished(alice, held.job_id)).state == COMPLETED
    assert coord.db.job_state(waiting.job_id) == QUEUED and sm.pending("assignment") == 0
    await capacity(coord, sm, 1)  # work again, on the same stream
    [b] = await sm.assignments(1)
    assert b.job.job_id == waiting.job_id


@pytest.mark.coordinator(lease_seconds=30.0, reconnect_grace_seconds=5.0)
async def test_capacity_lasts_until_the_stream_ends_the_next_hello_rules(coord: Harness) -> None:
    alice = coord.client("alice")
    old = await coord.stream_miner(slots=3)
    await capacity(coord, old, 1)
    await old.kill()
    new = await coord.stream_miner(slots=2)  # the same miner, a new stream: its hello's count, not the 1
    assert new.welcome is not None and new.welcome.session_id != old.welcome.session_id
    assert await offered(coord) == 2
    jobs = [await alice.submit({"n": n}) for n in range(3)]
    await new.assignments(2)
    assert sorted(states(coord, jobs)).count(QUEUED) == 1  # 2, the new hello's count: not 3, nor 1
    new.send(capacity=mpb.Capacity(slots=3))  # the old hello's 3 is no ceiling of this stream
    await new.wait_closed()
    assert new.end_status == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------------- the SDK miner
class Callables:
    """A callable for python_runner: {"stuck": true} blocks until `release` is set, any other job returns at
    once; records how many calls run at once (the most, in `peak`)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def __call__(self, data: Any) -> Any:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            if data.get("stuck"):
                self.release.wait()
            return data
        finally:
            with self.lock:
                self.now -= 1


async def session_id(coord: Harness) -> str:
    info = (await coord.admin().miners()).get("miner-00")
    return "" if info is None else info.session_id


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_the_sdk_miner_offers_fewer_slots_on_its_one_stream_while_a_callable_is_stuck(
    coord: Harness,
) -> None:
    calls = Callables()
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, python_runner(calls), slots=2)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        session = await session_id(coord)
        stuck = await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0)
        assert (await coord.finished(alice, stuck.job_id)).state == FAILED  # canceled; its thread runs on
        await eventually(lambda: _offers(coord, 1), what="the miner offering 1 slot")
        jobs = [await alice.submit({"n": n}, max_attempts=1) for n in range(4)]
        for job in jobs:  # the slot left runs them, one after another
            done = await coord.finished(alice, job.job_id)
            assert (done.state, done.attempt) == (COMPLETED, 1), (done.terminal_reason, done.terminal_message)
        assert calls.peak == 2, f"{calls.peak} callables ran at once on a miner of 2 slots"
        calls.release.set()  # the stuck callable returns: both slots offered again
        await eventually(lambda: _offers(coord, 2), what="the miner offering 2 slots again")
        info = (await coord.admin().miners())["miner-00"]
        assert (info.session_id, info.capabilities.slots) == (session, 2)  # one session throughout
        assert miner.connects == 1
        assert all("REJECTED" not in [e["reason"] for e in coord.db.events(j.job_id)] for j in jobs)
    finally:
        calls.release.set()


class OneByOne(Callables):
    """Callables whose stuck calls return one at a time: `release_one()` lets one go."""

    def __init__(self) -> None:
        super().__init__()
        self.one = threading.Semaphore(0)

    def __call__(self, data: Any) -> Any:
        if not data.get("stuck"):
            return super().__call__(data)
        with self.lock:
            self.now += 1
        try:
            self.one.acquire()
            return data
        finally:
            with self.lock:
                self.now -= 1

    def release_one(self) -> None:
        self.one.release()


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_every_slot_stuck_offers_none_and_each_return_offers_one_more_on_the_same_stream(
    coord: Harness,
) -> None:
    """Four callables stuck: the miner offers 0 slots (no assignment to reject meanwhile); as they return one
    by one it offers 1, 2, 3, 4 on the same stream, and the queued job runs as soon as there is one."""
    calls = OneByOne()
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, python_runner(calls), slots=4)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        session = await session_id(coord)
        stuck = [
            await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0) for _ in range(4)
        ]
        for job in stuck:
            assert (await coord.finished(alice, job.job_id)).state == FAILED  # canceled; its thread runs on
        await eventually(lambda: _offers(coord, 0), what="the miner offering no slot")
        queued = await alice.submit({"n": 1}, max_attempts=1)
        assert coord.db.job_state(queued.job_id) == QUEUED
        for n in range(1, 5):
            calls.release_one()
            await eventually(lambda n=n: _offers(coord, n), what=f"the miner offering {n} slots")
        done = await coord.finished(alice, queued.job_id)
        assert (done.state, done.attempt) == (COMPLETED, 1)
        assert "REJECTED" not in [e["reason"] for e in coord.db.events(queued.job_id)]
        assert miner.connects == 1 and await session_id(coord) == session
    finally:
        for _ in range(4):
            calls.release_one()
        calls.release.set()
