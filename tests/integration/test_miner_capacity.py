"""A miner's Capacity message on its live stream: how many jobs it takes at once from now on (0 to its hello's
slot count), in place of a new stream whose hello offers fewer. Raw stubs drive the protocol (lower, raise,
above the hello's count, 0, a reconnect); the SDK miner uses it for a canceled python callable that keeps
running (a thread cannot be stopped): one stream and session, fewer slots offered, all again once it returns.
Real coordinator on loopback, real SQLite."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitbc import cli
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
    struct,
)
from test_miner_sdk_stuck_runners import Refusing

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


# ------------------------------------------------------------------------------- the hello's capacity (gap a)
async def connect_raw(coord: Harness, hello: mpb.Hello, name: str = "miner-00") -> tuple[Any, mpb.Welcome]:
    """A Connect stream of a hand-made hello (its capacity set), up to its welcome."""
    call = coord.miner_stub().Connect(metadata=(("x-api-key", miner_key(name)),))
    await call.write(mpb.ConnectRequest(hello=hello))
    first = await call.read()
    assert first is not grpc.aio.EOF and first.WhichOneof("message") == "welcome", first
    return call, first.welcome


async def read_assigned(call: Any, n: int) -> list[mpb.Assignment]:
    """The next n assignments on a raw stream (nothing else is sent to it meanwhile here)."""
    got: list[mpb.Assignment] = []
    while len(got) < n:
        msg = await asyncio.wait_for(call.read(), 5)
        assert msg is not grpc.aio.EOF and msg.WhichOneof("message") == "assignments", msg
        got.extend(msg.assignments.assignments)
    assert len(got) == n, got
    return got


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_the_hellos_capacity_is_applied_before_the_first_fill(coord: Harness) -> None:
    """Work queued when the miner connects: the hello's capacity bounds the fill at the welcome. (Gap: the
    coordinator filled every slot of the hello, and read the Capacity sent after the welcome only then: a
    miner whose slots were held by stuck runners rejected those assignments 1 s later.)"""
    alice = coord.client("alice")
    jobs = [await alice.submit({"n": n}) for n in range(3)]
    call, welcome = await connect_raw(
        coord, mpb.Hello(capabilities=capabilities(slots=3), capacity=mpb.Capacity(slots=1))
    )
    assert welcome.capacity_updates
    [first] = await read_assigned(call, 1)
    assert await offered(coord) == 1
    assert sorted(states(coord, jobs)).count(QUEUED) == 2  # 1 offered: not the hello's 3
    await call.write(
        mpb.ConnectRequest(capacity=mpb.Capacity(slots=3))
    )  # the hello's count stays the ceiling
    more = await read_assigned(call, 2)
    assert {a.job.job_id for a in [first, *more]} == {j.job_id for j in jobs}
    call.cancel()


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_hello_of_capacity_0_keeps_its_listed_jobs_and_takes_nothing_new(coord: Harness) -> None:
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=2)
    job = await alice.submit({"held": True})
    [a] = await sm.assignments(1)
    await sm.kill()
    waiting = await alice.submit({"waiting": True})  # no live session: queued
    call, welcome = await connect_raw(coord, mpb.Hello(
        capabilities=capabilities(slots=2), capacity=mpb.Capacity(slots=0),
        running_jobs=[mpb.RunningJob(job_id=a.job.job_id, attempt=a.attempt)],
    ))  # fmt: skip
    assert [(j.job_id, j.attempt) for j in welcome.resumed_jobs] == [(job.job_id, a.attempt)]
    info = (await coord.admin().miners())["miner-00"]
    assert (info.status, info.offered_slots, info.running_jobs) == (ONLINE, 0, 1)
    await call.write(mpb.ConnectRequest(results=mpb.Results(results=[mpb.Result(
        job_id=a.job.job_id, attempt=a.attempt, result=struct({"ok": True}), units="1", unit_type="jobs")])))  # fmt: skip
    msg = await asyncio.wait_for(call.read(), 5)  # its result is taken; the freed slot is not offered
    assert msg.WhichOneof("message") in ("result_ack", "result_acks"), msg
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    assert coord.db.job_state(waiting.job_id) == QUEUED
    await call.write(mpb.ConnectRequest(capacity=mpb.Capacity(slots=1)))
    [b] = await read_assigned(call, 1)
    assert b.job.job_id == waiting.job_id
    call.cancel()


async def test_a_hellos_capacity_above_its_slots_is_refused_and_replaces_no_session(coord: Harness) -> None:
    sm = await coord.stream_miner(slots=2)
    call = coord.miner_stub().Connect(metadata=(("x-api-key", miner_key("miner-00")),))
    await call.write(mpb.ConnectRequest(
        hello=mpb.Hello(capabilities=capabilities(slots=2), capacity=mpb.Capacity(slots=3))))  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [f for f, _ in details.violations] == ["hello.capacity.slots"], details.violations
    info = (await coord.admin().miners())["miner-00"]  # refused before the live session was replaced
    assert (info.status, info.session_id) == (ONLINE, sm.welcome.session_id)
    assert not sm.closed.is_set() and sm.pending("go_away") == 0


async def test_the_unary_path_ignores_the_hellos_capacity(coord: Harness) -> None:
    """RegisterMiner takes no Capacity later (PollJob's max_jobs asks): a hello's capacity there would lower
    the session for good; it is ignored, as the welcome's capacity_updates (false) says."""
    unary = await coord.miner_stub().RegisterMiner(
        mpb.RegisterMinerRequest(
            hello=mpb.Hello(capabilities=capabilities(slots=2), capacity=mpb.Capacity(slots=0))
        ),
        metadata=(("x-api-key", miner_key("miner-01")),),
    )
    assert not unary.welcome.capacity_updates
    assert await offered(coord, "miner-01") == 2


# ---------------------------------------------------------------------------------------------- dispatch
@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_a_new_job_goes_to_the_miner_least_loaded_by_the_slots_it_offers(coord: Harness) -> None:
    """Load is held jobs over the slots offered now, not over the hello's: a miner of 8 slots offering 2 and
    holding 1 is half loaded (it went first, as an eighth loaded, over a miner of 4 holding 1)."""
    alice = coord.client("alice")
    a = await coord.stream_miner("miner-00", slots=8)
    await alice.submit({"n": 1})
    await a.assignments(1)
    await capacity(coord, a, 2)
    b = await coord.stream_miner("miner-01", slots=4)
    await alice.submit({"n": 2})  # b is idle: it goes there
    await b.assignments(1)
    third = await alice.submit({"n": 3})  # a: 1 of 2 offered; b: 1 of 4
    [got] = await b.assignments(1)
    assert got.job.job_id == third.job_id and a.pending("assignment") == 0


# ---------------------------------------------------------------------------------------------- abuse
@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_capacity_flapping_assigns_nothing_beyond_the_jobs_held(coord: Harness) -> None:
    """A miner flapping its capacity (0, all, 0, all, ...) with work queued: every raise finds its slots held
    (lowering takes no job back), so nothing more is assigned, nothing written; the stream lives on."""
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=2)
    jobs = [await alice.submit({"n": n}) for n in range(4)]
    held = await sm.assignments(2)
    assigned_before = coord.db.scalar("SELECT COUNT(*) FROM job_events WHERE reason = 'ASSIGNED'")
    for _ in range(300):
        sm.send(capacity=mpb.Capacity(slots=0))
        sm.send(capacity=mpb.Capacity(slots=2))
    await capacity(coord, sm, 1)  # (handled in order: every flap before it was taken)
    assert coord.db.scalar("SELECT COUNT(*) FROM job_events WHERE reason = 'ASSIGNED'") == assigned_before
    assert sm.pending("assignment") == 0 and not sm.closed.is_set()
    assert sorted(states(coord, jobs)).count(QUEUED) == 2
    for a in held:
        sm.result(a.job.job_id, a.attempt)
    [nxt] = await sm.assignments(1)  # 1 offered: one of the queued two
    assert nxt.job.job_id in {j.job_id for j in jobs} - {a.job.job_id for a in held}
    assert sm.peak_held == 2


# ------------------------------------------------------------------------------ the SDK across a reconnect
class Held(Callables):
    """Callables as above, whose {"hold": true} calls block until `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def __call__(self, data: Any) -> Any:
        if data.get("hold"):
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            try:
                self.go.wait()
                return data
            finally:
                with self.lock:
                    self.now -= 1
        return super().__call__(data)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_the_sdk_miners_hello_offers_the_slots_left_by_a_stuck_callable(coord: Harness) -> None:
    """A stream lost while a callable is stuck, work queued meanwhile: the next hello offers the slots left
    (Hello.capacity), so the coordinator assigns nothing the miner must reject. (Gap: the hello offered every
    slot and the Capacity after the welcome came after the fill: the queued job was assigned to the stuck slot
    and rejected 1 s later.)"""
    calls = Held()
    alice = coord.client("alice")
    assert coord.coordinator is not None
    relay = Refusing("127.0.0.1", coord.coordinator.port)
    await relay.start()
    miner = sdk_miner(f"127.0.0.1:{relay.port}", python_runner(calls), slots=2)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        stuck = await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0)
        assert (await coord.finished(alice, stuck.job_id)).state == FAILED  # canceled; its thread runs on
        await eventually(lambda: _offers(coord, 1), what="the miner offering 1 slot")
        held = await alice.submit({"hold": True}, max_attempts=1)  # the slot left
        await eventually(lambda: held.job_id in miner.running, what="the held job running")
        relay.refuse = True
        relay.cut()
        await eventually(lambda: miner._outbox is None, what="the stream's end")
        waiting = await alice.submit({"n": 1}, max_attempts=1)  # no live session: queued
        relay.refuse = False
        await eventually(lambda: miner.connects == 2, within=15.0, what="the miner's next stream")
        info = (await coord.admin().miners())["miner-00"]
        assert (info.offered_slots, info.running_jobs, info.capabilities.slots) == (1, 1, 2)
        assert coord.db.job_state(waiting.job_id) == QUEUED  # its slot is the stuck one: not assigned
        calls.release.set()  # the stuck callable returns: 2 offered, the waiting job runs
        done = await coord.finished(alice, waiting.job_id)
        assert (done.state, done.attempt) == (COMPLETED, 1), (done.terminal_reason, done.terminal_message)
        assert "REJECTED" not in [e["reason"] for e in coord.db.events(waiting.job_id)]
        calls.go.set()
        assert (await coord.finished(alice, held.job_id)).state == COMPLETED
        assert calls.peak <= 2 and miner.connects == 2
    finally:
        calls.release.set()
        calls.go.set()
        await relay.close()


# ---------------------------------------------------------------------------------------------- the CLI
async def aitbc_cli(*argv: str) -> tuple[int, str, str]:
    """`aitbc ARGV` in-process (in a thread: the CLI runs its own event loop): exit code, stdout, stderr."""

    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


async def test_admin_miners_shows_the_slots_offered_when_fewer_than_the_hellos(coord: Harness) -> None:
    sm = await coord.stream_miner("miner-00", slots=4)
    await coord.stream_miner("miner-01", slots=2)
    auth = ("--address", coord.address, "--api-key", ADMIN_KEY)
    await capacity(coord, sm, 1)
    code, out, err = await aitbc_cli("admin", "miners", "--json", *auth)
    assert code == 0, err
    by_id = {m["miner_id"]: m for m in json.loads(out)}
    assert (by_id["miner-00"]["slots"], by_id["miner-00"]["offered_slots"]) == (4, 1)
    assert (by_id["miner-01"]["slots"], by_id["miner-01"]["offered_slots"]) == (2, 2)
    code, out, err = await aitbc_cli("admin", "miners", *auth)
    assert code == 0, err
    header, *rows = out.splitlines()
    slots_at = header.index("SLOTS")
    cells = {row.split()[0]: row[slots_at:].split("  ")[0].strip() for row in rows}
    assert cells == {"miner-00": "1 of 4", "miner-01": "2"}, out


# ------------------------------------------------------------------------------- drains, batches of messages
@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_an_operators_drain_at_capacity_0_ends_once_the_held_job_is_done_and_a_raise_takes_nothing(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=2)
    held = await alice.submit({"held": True})
    [a] = await sm.assignments(1)
    await capacity(coord, sm, 0)
    waiting = await alice.submit({"waiting": True})
    await coord.admin().drain("miner-00")
    assert (await sm.next("drain")).reason == "ADMIN"
    sm.send(capacity=mpb.Capacity(slots=2))  # raised while draining: still nothing new
    await eventually(lambda: _offers(coord, 2), what="the raise taken")
    assert sm.pending("assignment") == 0 and coord.db.job_state(waiting.job_id) == QUEUED
    sm.result(a.job.job_id, a.attempt)
    assert (await sm.next("go_away")).reason == "DRAINED"
    assert (await coord.finished(alice, held.job_id)).state == COMPLETED
    assert coord.db.job_state(waiting.job_id) == QUEUED and sm.pending("assignment") == 0


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_a_capacity_read_before_results_in_one_batch_bounds_the_refill(coord: Harness) -> None:
    """Capacity 1, then the results of both jobs held, written back to back: the coordinator reads them in
    order, so the slots the results free are refilled up to 1, not 2 (the SDK sends a lowered Capacity before
    the reject or result that frees a slot, for this)."""
    alice = coord.client("alice")
    sm = await coord.stream_miner(slots=2)
    jobs = [await alice.submit({"n": n}) for n in range(4)]
    held = await sm.assignments(2)
    sm.send(capacity=mpb.Capacity(slots=1))
    sm.send(results=mpb.Results(results=[
        mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result=struct({"ok": True}), units="1", unit_type="jobs")
        for a in held
    ]))  # fmt: skip
    for a in held:
        sm.held.pop(a.job.job_id, None)
    [nxt] = await sm.assignments(1)
    for job in [a.job for a in held]:
        assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    assert await offered(coord) == 1 and sm.pending("assignment") == 0
    assert sorted(states(coord, jobs)).count(QUEUED) == 1 and nxt.job.job_id in {j.job_id for j in jobs}
