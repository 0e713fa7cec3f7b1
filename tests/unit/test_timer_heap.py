"""The timer heap stops when told to, whatever its task was waiting for at that moment.

On Python 3.11, asyncio.wait_for swallows a cancellation that arrives as the awaited future completes: the
heap's task, waiting that way, then went on forever and Coordinator.stop hung (seen about one restart in ten
in an integration test). Stopping at every point of a wake-up, 300 times, must always finish.
"""

from __future__ import annotations

import asyncio

from coordinator.domain.clock import now_us
from coordinator.scheduler.timers import SWEEP_MIN, TimerHeap


async def test_stop_ends_the_timer_task_at_any_point_of_a_wake_up() -> None:
    fired: list[str] = []
    for i in range(300):
        heap = TimerHeap(lambda kind, args: fired.append(kind))
        heap.start()
        heap.schedule(now_us() + 2_000, "later")
        await asyncio.sleep(0)
        heap.schedule(now_us(), "now")  # an earlier deadline wakes the waiting task...
        for _ in range(i % 4):
            await asyncio.sleep(0)  # ...and the stop comes at any point of that wake-up
        await asyncio.wait_for(heap.stop(), 2)
    assert "now" in fired  # the heap did fire while running


async def test_a_stopped_heap_fires_nothing_more() -> None:
    fired: list[str] = []
    heap = TimerHeap(lambda kind, args: fired.append(kind))
    heap.start()
    heap.schedule(now_us() + 20_000, "after the stop")
    await heap.stop()
    await asyncio.sleep(0.05)
    assert fired == []


async def test_a_sweep_keeps_every_live_entry_and_the_earliest_of_a_renewing_chain() -> None:
    """Stale entries go (the owner's test says so), duplicates go, a renewing kind keeps its earliest entry per
    args; every live entry stays, and fires, in order."""
    fired: list[tuple[str, tuple]] = []
    dead = {f"gone-{i}" for i in range(400)}
    heap = TimerHeap(lambda kind, args: fired.append((kind, args)),
                     lambda at, kind, args: args[0] not in dead, renewing=frozenset({"lease"}))  # fmt: skip
    heap.start()  # (a heap is swept once started: before, its owner's start reloads live work only)
    now = now_us() + 200_000  # (everything due after the scheduling is done)
    for i in range(400):
        heap.schedule(now + 10_000 + i, "ttl", f"gone-{i}")
    for n in range(3):  # a chain scheduled again and again: only its earliest entry needs to stay
        heap.schedule(now + 5_000 + n, "lease", "job-1", 1)
    heap.schedule(now + 7_000, "exec", "job-1", 1)
    heap.schedule(now + 7_000, "exec", "job-1", 1)  # the same entry twice
    heap.schedule(now + 8_000, "ttl", "job-1")
    for i in range(300):  # past the next doubling: a second sweep
        heap.schedule(now + 10_000 + i, "ttl", f"gone-{i}")
    assert len(heap) <= SWEEP_MIN  # 700 dead entries scheduled: swept each time the heap reached the bound
    await asyncio.sleep(0.35)
    await heap.stop()
    live = [(kind, args) for kind, args in fired if args[0] not in dead]  # (dead ones not yet swept fire too)
    assert live == [("lease", ("job-1", 1)), ("exec", ("job-1", 1)), ("ttl", ("job-1",))]
