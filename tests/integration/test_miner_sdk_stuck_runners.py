"""A python callable stuck for good, its job canceled (its execution timeout): the thread runs on, and the slot it
holds is not free. The SDK miner never runs more callables than its slots: it offers the coordinator the slots
it has left (a new stream whose hello says so), all of them again once the callable returns, and, with every
slot stuck, drains and ends with RunnersStuck (`aitbc miner run` exits 1) for a supervisor to start it again.
(Review round 28: the slot counted free at the cancel; the coordinator filled it, and a miner of 2 slots ran 3
callables, then 4, as more got stuck.)"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aitbc.miner import RunnersStuck, python_runner
from coord_support import COMPLETED, FAILED, Harness, eventually, sdk_miner


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
    """Whether miner-00 is online offering `slots` slots (ListMiners)."""
    info = (await coord.admin().miners()).get("miner-00")
    return info is not None and info.status == 1 and info.capabilities.slots == slots  # (1: ONLINE)


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
        )  # QUEUED, or held (ASSIGNED) until its lease: never run
    finally:
        calls.release.set()
        calls.go.set()
