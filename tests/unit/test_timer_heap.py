"""The timer heap stops when told to, whatever its task was waiting for at that moment.

On Python 3.11, asyncio.wait_for swallows a cancellation that arrives as the awaited future completes: the
heap's task, waiting that way, then went on forever and Coordinator.stop hung (seen about one restart in ten
in an integration test). Stopping at every point of a wake-up, 300 times, must always finish.
"""

from __future__ import annotations

import asyncio

from coordinator.domain.clock import now_us
from coordinator.scheduler.timers import SWEEP_SLICE, TimerHeap


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


async def settled(heap: TimerHeap) -> None:
    """Until the sweep under way (if any) is through."""
    for _ in range(10_000):
        if not heap.sweeping:
            return
        await asyncio.sleep(0)
    raise AssertionError("the sweep never ended")


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
    await settled(heap)
    assert len(heap) == 3  # 400 dead entries, 2 of a chain and a duplicate swept
    for i in range(300):  # past the next doubling (from the 3 entries kept): a second sweep
        heap.schedule(now + 10_000 + i, "ttl", f"gone-{i}")
    assert heap.sweeping
    await settled(heap)
    assert len(heap) == 3
    await asyncio.sleep(0.35)
    await heap.stop()
    assert fired == [("lease", ("job-1", 1)), ("exec", ("job-1", 1)), ("ttl", ("job-1",))]


async def test_a_sweep_lets_the_loop_run_between_slices() -> None:
    """A large heap is swept a slice at a time: other tasks run all along (done at once, 300,000 entries held the
    loop 0.2-0.4 s)."""
    heap = TimerHeap(lambda kind, args: None, lambda at, kind, args: args[0] % 2 == 0)
    heap.start()
    later = now_us() + 3_600 * 1_000_000
    entries = 20 * SWEEP_SLICE
    for i in range(entries - 1):
        heap.schedule(later + i, "ttl", i)
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    turns = 0
    heap.schedule(later + entries, "ttl", entries)  # the last one past the bound: a sweep begins
    assert heap.sweeping
    await settled(heap)
    ticking.cancel()
    await heap.stop()
    # two passes of 20 slices each over the entries: the ticker ran between them
    assert turns >= 2 * entries // SWEEP_SLICE, (
        f"the loop ran {turns} times while {entries} entries were swept"
    )
    assert len(heap) == entries // 2 + 1  # the even ones, 0 to entries


async def test_entries_due_or_scheduled_during_a_sweep_fire_once_each_and_in_order() -> None:
    """While a sweep runs, the entries it judges keep firing as they come due, and new ones are scheduled:
    each live entry fires once (not again from the swept heap), none is lost, the dead ones do not fire."""
    fired: list[int] = []
    heap = TimerHeap(lambda kind, args: fired.append(args[0]), lambda at, kind, args: args[0] >= 0)
    heap.start()
    start = now_us()
    dead = 8 * SWEEP_SLICE  # stale entries, due later than every live one: the sweep must reach past them
    for i in range(dead):
        heap.schedule(start + 10_000_000 + i, "ttl", -1 - i)
    live = list(range(0, 400, 2))  # live entries due while the sweep runs, from now on, 0.25 ms apart
    for n in live:
        heap.schedule(start + 250 * n, "ttl", n)
    # (the bound was passed: the sweep began) entries scheduled while it runs, earlier and later
    assert heap.sweeping
    added = list(range(1, 400, 2))
    for n in added:
        heap.schedule(start + 250 * n, "ttl", n)
        await asyncio.sleep(0)
    await settled(heap)
    await asyncio.sleep(0.15)
    await heap.stop()
    assert sorted(fired) == sorted(live + added), "an entry fired twice, or never"
    assert len(heap) == 0, "a dead entry was kept"


async def test_a_stop_during_a_sweep_ends_it_and_nothing_fires_after() -> None:
    fired: list[int] = []
    heap = TimerHeap(lambda kind, args: fired.append(args[0]), lambda at, kind, args: True)
    heap.start()
    # Due soon, but not before the sweep has begun: with 20 ms, scheduling 10,240 entries on a loaded machine took
    # longer, every entry fired before the sweep's first step, and the sweep, finding nothing, ended at once.
    soon = now_us() + 300_000
    for i in range(10 * SWEEP_SLICE):
        heap.schedule(soon + i, "ttl", i)
    await asyncio.sleep(0)
    assert heap.sweeping
    await asyncio.wait_for(heap.stop(), 2)
    assert not heap.sweeping
    last_due_s = (soon + 10 * SWEEP_SLICE - now_us()) / 1e6
    await asyncio.sleep(max(0.0, last_due_s) + 0.05)  # past every entry's time: none fires
    assert fired == []
