"""A python callable stuck for good, its job canceled (its execution timeout): the thread runs on, and the slot it
holds is not free. The SDK miner never runs more callables than its slots: it offers the coordinator the slots
it has left (a Capacity message on its live stream), all of them again once the callable returns, and, with every
slot stuck, drains and ends with RunnersStuck (`aitbc miner run` exits 1) for a supervisor to start it again.
(Review round 28: the slot counted free at the cancel; the coordinator filled it, and a miner of 2 slots ran 3
callables, then 4, as more got stuck.) Review round 32: a reject with no stream, many runners returning at once;
and (capacity on the live stream, which replaced a new stream per change) a stuck runner across a reconnect.
More in test_miner_capacity.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from aitbc.miner import RunnersStuck, echo_runner, python_runner
from coord_support import COMPLETED, FAILED, QUEUED, Harness, eventually, sdk_miner
from test_miner_sdk_backoff import waits

from tests.tcp_relay import Relay


class Callables:
    """A callable for python_runner: {"stuck": true} blocks until `release` is set, any other job until
    `go` is set; records how many calls run at once (the most, in `peak`)."""

    def __init__(self) -> None:
        self.release, self.go = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def __call__(self, data: Any) -> Any:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            (self.release if data.get("stuck") else self.go).wait()
            return data
        finally:
            with self.lock:
                self.now -= 1


async def offers(coord: Harness, slots: int) -> bool:
    """Whether miner-00 is online offering `slots` slots (ListMiners; its hello's count stays its ceiling)."""
    info = (await coord.admin().miners()).get("miner-00")
    return info is not None and info.status == 1 and info.offered_slots == slots  # (1: ONLINE)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_a_stuck_callable_keeps_its_slot_until_it_returns(coord: Harness) -> None:
    calls = Callables()
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, python_runner(calls), slots=2)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        stuck = await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0)
        assert (await coord.finished(alice, stuck.job_id)).state == FAILED  # canceled; its thread runs on
        jobs = [await alice.submit({"n": n}, max_attempts=1) for n in range(3)]
        await eventually(lambda: calls.now >= 2, what="a second callable running")
        await eventually(lambda: offers(coord, 1), within=10.0, what="the miner offering 1 slot")
        await asyncio.sleep(0.5)  # (the coordinator holds two more jobs: none may start)
        assert calls.peak == 2, f"{calls.peak} callables ran at once on a miner of 2 slots"
        calls.release.set()  # the stuck callable returns: its slot is offered again
        await eventually(lambda: offers(coord, 2), within=10.0, what="the miner offering 2 slots again")
        calls.go.set()
        for job in jobs:
            done = await coord.finished(alice, job.job_id)
            assert (done.state, done.attempt) == (COMPLETED, 1), (done.terminal_reason, done.terminal_message)
        assert calls.peak == 2
    finally:
        calls.release.set()
        calls.go.set()


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_a_miner_whose_every_slot_is_stuck_drains_and_ends_for_a_restart(coord: Harness) -> None:
    calls = Callables()
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, python_runner(calls), slots=1, stuck_timeout_s=2.0)
    task = coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        stuck = await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0)
        assert (await coord.finished(alice, stuck.job_id)).state == FAILED
        later = await alice.submit({"n": 1}, max_attempts=1)
        with pytest.raises(RunnersStuck, match=r"every slot \(1\) was held .* for 2 s"):
            await asyncio.wait_for(asyncio.shield(task), 10.0)
        assert calls.peak == 1
        assert coord.db.job_state(later.job_id) in (
            1,
            2,
        )  # QUEUED (the miner offering no slot), or held (ASSIGNED) until its lease: never run
    finally:
        calls.release.set()
        calls.go.set()


class Refusing(Relay):
    """A relay whose network can be taken away: cut() ends the links so far, and while `refuse` is set every
    new connection is reset (the miner waits, between streams, for its channel to connect again)."""

    refuse = False

    def accepting(self) -> bool:
        return not self.refuse


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_a_job_rejected_for_a_stuck_slot_between_streams_keeps_its_attempt(coord: Harness) -> None:
    """The reject of a job that found its slot held (a stuck callable) while the miner had no stream: it is
    listed in the next hello and sent on that stream, and its attempt goes back unspent. (Review round 32: it
    was dropped, and the next hello did not list the job: lost by the miner, its only attempt was spent.)"""
    calls = Callables()
    alice = coord.client("alice")
    relay = Refusing("127.0.0.1", coord.coordinator.port)
    await relay.start()
    miner = sdk_miner(f"127.0.0.1:{relay.port}", python_runner(calls), slots=1)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        stuck = await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0)
        assert (await coord.finished(alice, stuck.job_id)).state == FAILED  # canceled; its thread runs on
        later = await alice.submit({"n": 1}, max_attempts=1)  # the slot the coordinator counts free
        await eventually(lambda: later.job_id in miner.running, what="the job assigned, waiting for its slot")
        relay.refuse = True
        relay.cut()
        await eventually(lambda: later.job_id not in miner.running, what="the job rejected, with no stream")
        relay.refuse = False
        await eventually(lambda: miner.connects == 2, within=15.0, what="a new stream")
        await eventually(lambda: "REJECTED" in [e["reason"] for e in coord.db.events(later.job_id)],
                         what="the reject, on the new stream")  # fmt: skip
        miner.stop()  # (a rejected job goes to another miner first: the next session of miner-00 here)
        coord.run_miner(sdk_miner(coord.address, echo_runner))
        done = await coord.finished(alice, later.job_id, within=15.0)
        assert (done.state, done.attempt) == (COMPLETED, 1), (done.terminal_reason, done.terminal_message)
    finally:
        calls.release.set()
        calls.go.set()
        await relay.close()


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=30.0)
async def test_a_callable_stuck_across_a_reconnect_is_offered_less_on_the_new_stream_and_then_all(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream ends (here a go-away: another session of the miner) while a callable is stuck: the new hello
    offers every slot (its count is the stream's ceiling) and, in its capacity, those left; once the callable
    returns, all again on that stream, with no other stream."""
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    calls = Callables()
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, python_runner(calls), slots=2)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        stuck = await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0)
        assert (await coord.finished(alice, stuck.job_id)).state == FAILED  # canceled; its thread runs on
        await eventually(lambda: offers(coord, 1), what="the miner offering 1 slot")
        hand = await coord.stream_miner("miner-00", slots=1)  # replaces it: go-away SESSION_REPLACED, 1 s
        await eventually(lambda: waits(caplog), what="the stream's end")
        assert waits(caplog)[0][0] == "SESSION_REPLACED" and waits(caplog)[0][1] >= 1.0, waits(caplog)
        await eventually(lambda: miner.connects == 2, within=10.0, what="the miner's next stream")
        await hand.close()
        await eventually(lambda: offers(coord, 1), what="the new stream offering 1 slot")
        info = (await coord.admin().miners())["miner-00"]
        assert (info.session_id, info.capabilities.slots) == (miner.session_id, 2)
        queued = [await alice.submit({"n": n}, max_attempts=1) for n in range(2)]
        calls.release.set()
        await eventually(lambda: offers(coord, 2), what="the miner offering 2 slots again")
        calls.go.set()
        for job in queued:
            done = await coord.finished(alice, job.job_id)
            assert (done.state, done.attempt) == (COMPLETED, 1), (done.terminal_reason, done.terminal_message)
        assert miner.connects == 2 and calls.peak == 2
    finally:
        calls.release.set()
        calls.go.set()


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
async def test_stuck_callables_returning_one_after_another_keep_one_stream(coord: Harness) -> None:
    """Eight canceled callables return one after another, within moments: the miner offers its slots again on
    the same stream, ending at all 8 (review round 32: a stream each, so a mass cancel on a miner of many slots
    opened as many streams, each a new session for the coordinator; then one a second at most)."""
    calls = OneByOne()
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, python_runner(calls), slots=8)
    coord.run_miner(miner)
    try:
        await eventually(lambda: miner.connects == 1)
        stuck = [
            await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0) for _ in range(8)
        ]
        for job in stuck:
            assert (await coord.finished(alice, job.job_id)).state == FAILED  # canceled; its thread runs on
        await eventually(lambda: offers(coord, 0), within=15.0, what="the miner offering no slot")
        queued = await alice.submit({"n": 1}, max_attempts=1)
        assert coord.db.job_state(queued.job_id) == QUEUED
        for left in range(7, -1, -1):
            calls.release_one()
            await eventually(lambda left=left: len(miner._canceled) == left, what=f"{left} callables stuck")
        await eventually(lambda: offers(coord, 8), within=15.0, what="the miner offering 8 slots again")
        assert miner.connects == 1, f"{miner.connects} streams for 8 callables returning"
        calls.go.set()
        done = await coord.finished(alice, queued.job_id)
        assert (done.state, done.attempt) == (COMPLETED, 1), (done.terminal_reason, done.terminal_message)
    finally:
        for _ in range(8):
            calls.release_one()
        calls.release.set()
        calls.go.set()
