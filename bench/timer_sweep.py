"""`python -m bench.timer_sweep [--entries N]`: how long one sweep of the scheduler's timer heap holds the loop.

Not a scenario of the suite (no gRPC): a TimerHeap of N entries (none, half or all of them live) is swept while
a task counts loop turns; the longest gap between two turns is how long the sweep held the loop at once. An idle
loop's longest gap over the same time is printed first: on a shared machine that is the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from coordinator.domain.clock import now_us
from coordinator.scheduler.timers import TimerHeap

HOUR_US = 3_600_000_000


async def longest_gap_while(busy: asyncio.Future) -> tuple[float, int]:
    """The longest time (s) between two loop turns until busy is done, and the turns counted."""
    longest, turns, last = 0.0, 0, time.perf_counter()
    while not busy.done():
        await asyncio.sleep(0)
        now = time.perf_counter()
        longest, turns, last = max(longest, now - last), turns + 1, now
    return longest, turns


async def idle_floor(seconds: float) -> float:
    return (await longest_gap_while(asyncio.ensure_future(asyncio.sleep(seconds))))[0]


async def sweep_once(entries: int, live_share: float) -> tuple[float, float, int]:
    """Longest loop hold (s) and duration (s) of the sweep of a heap of entries, and the entries kept."""
    live_ids = {f"job-{i:012d}" for i in range(int(entries * live_share))}
    heap = TimerHeap(lambda kind, args: None, lambda at, kind, args: args[0] in live_ids)
    heap.start()
    later = now_us() + HOUR_US
    heap._sweep_at = entries + 1  # filled first, swept once: as when the heap reaches twice the last sweep's
    for i in range(entries):
        heap.schedule(later + random.randrange(HOUR_US), "ttl" if i % 2 else "exec", f"job-{i:012d}")
    started = time.perf_counter()
    heap.schedule(later, "ttl", "the one that starts the sweep")
    sweep = heap._sweeper
    assert sweep is not None
    longest, _ = await longest_gap_while(sweep)
    took = time.perf_counter() - started
    kept = len(heap)
    await heap.stop()
    return longest, took, kept


async def main(entries: int) -> None:
    print(f"idle loop, longest gap over 1 s: {await idle_floor(1.0) * 1e3:.1f} ms")
    for share in (0.0, 0.5, 1.0):
        longest, took, kept = await sweep_once(entries, share)
        print(
            f"{entries:,} entries, {share:.0%} live: longest loop hold {longest * 1e3:.1f} ms, "
            f"sweep {took * 1e3:.0f} ms, {kept:,} kept"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=300_000)
    asyncio.run(main(parser.parse_args().entries))
