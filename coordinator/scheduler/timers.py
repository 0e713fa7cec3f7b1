"""One timer heap for every deadline (leases, TTL, execution timeouts, backoff, grace periods).

No task per job: one task sleeps until the earliest deadline. An entry is not removed when its owner moves on
(lease renewed, job finished): fired, it is recognised as stale by its handler and ignored. Until then it is
swept: whenever the heap has grown to SWEEP_GROWTH times what the last sweep kept (and holds SWEEP_MIN entries
at least), the entries the owner's `live` test calls stale go, and so do duplicates (a self-renewing kind keeps
its earliest entry of each args, an entry identical to another goes). Without it the heap grew with traffic,
not with live work: a job finished in a second kept its TTL and its execution deadline (up to a week each) in
the heap until due.

A sweep runs in slices of SWEEP_SLICE entries, one per loop turn: done at once, 300,000 entries held the event
loop 0.2-0.4 s. Meanwhile the heaps being swept (the sources) take no new entries, a new heap does, and the
timers keep firing from all of them, earliest first; the entries kept are pushed into a heap of their own,
which replaces the sources once the sweep is through (less what fired meanwhile). A verdict given during a
sweep holds until its end: an owner that comes back (a job read back, a miner reconnecting) schedules timers
of its own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable

from ..domain.clock import MICROS, now_us

log = logging.getLogger(__name__)

Handler = Callable[[str, tuple], None]
# (due at, kind, args) -> whether the entry may still act when it fires
Live = Callable[[int, str, tuple], bool]
Entry = tuple[
    int, int, str, tuple
]  # (due at, sequence, kind, args): ordered by due time, then scheduling order
SWEEP_MIN = 256  # entries before the first sweep
# A sweep once the heap has grown to this many times what the last one kept: each sweep judges every entry,
# live ones included, so at 3 (against 2) an entry dropped costs 1.5 entries judged (against 2), for a heap at
# most 3 times its live entries
SWEEP_GROWTH = 3
SWEEP_SLICE = 1024  # entries judged per loop turn while sweeping (about 1-2 ms)


class TimerHeap:
    def __init__(
        self, handler: Handler, live: Live | None = None, renewing: frozenset[str] = frozenset()
    ) -> None:
        """live: the owner's test of an entry (None: nothing is swept). renewing: kinds whose handler, fired
        early, schedules the entry again for when it is due: of those, the earliest entry of each args suffices."""
        # At rest one or two heaps (the last takes new entries); three during a sweep, the first ones its sources.
        self._heaps: list[list[Entry]] = [[]]
        self._live = live
        self._renewing = renewing
        self._sweep_at = SWEEP_MIN
        self._sweeper: asyncio.Task | None = None
        self._sources = 0  # while sweeping: how many of the first heaps are being swept
        self._fired_through: tuple[int, int] | None = None  # while sweeping: last (due, seq) fired from them
        self._seq = itertools.count()
        self._handler = handler
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopped = False

    def __len__(self) -> int:
        return sum(map(len, self._heaps))

    @property
    def sweeping(self) -> bool:
        return self._sweeper is not None

    def schedule(self, at_us: int, kind: str, *args: object) -> None:
        earliest = self._earliest()
        if earliest is None or at_us < earliest[0][0]:
            self._wake.set()  # (before the push: the earliest heap may be the one it goes to)
        heapq.heappush(self._heaps[-1], (at_us, next(self._seq), kind, args))
        # (not before start: what a start schedules, reloading live work, is live; sweeping it slowed the start)
        if (
            self._live is not None
            and self._task is not None
            and self._sweeper is None
            and not self._stopped
            and len(self) >= self._sweep_at
        ):
            self._sweeper = asyncio.create_task(self._sweep(self._live), name="timer-sweep")

    def _earliest(self) -> list[Entry] | None:
        """The heap whose first entry is due first (None: no entry at all)."""
        best = None
        for heap in self._heaps:
            if heap and (best is None or heap[0] < best[0]):
                best = heap
        return best

    async def _sweep(self, live: Live) -> None:
        """Drop the entries that would do nothing when they fire (see the module). O(n), once the heap has grown
        to SWEEP_GROWTH times what the last sweep kept, SWEEP_SLICE entries per loop turn."""
        try:
            sources = self._heaps
            self._heaps = [*sources, []]
            self._sources = len(sources)
            self._fired_through = None
            entries = list(itertools.chain.from_iterable(sources))  # (the sources change as entries fire)
            renewing = self._renewing
            seen: set[tuple[int, str, tuple]] = set()
            chains: dict[tuple[str, tuple], Entry] = {}  # of each renewing (kind, args): its earliest entry
            kept: list[Entry] = []
            for start in range(0, len(entries), SWEEP_SLICE):
                for entry in entries[start : start + SWEEP_SLICE]:
                    at, _, kind, args = entry
                    if kind in renewing:
                        first = chains.get((kind, args))
                        if first is None or entry < first:
                            chains[(kind, args)] = entry
                        continue
                    if (at, kind, args) in seen or not live(at, kind, args):
                        continue
                    seen.add((at, kind, args))
                    heapq.heappush(kept, entry)
                await asyncio.sleep(0)
            firsts = list(chains.values())
            for start in range(0, len(firsts), SWEEP_SLICE):
                for entry in firsts[start : start + SWEEP_SLICE]:
                    if live(entry[0], entry[2], entry[3]):
                        heapq.heappush(kept, entry)
                await asyncio.sleep(0)
            # The sources fire in order (they take no new entries): what fired meanwhile is all they held
            # up to the last entry fired from them.
            fired = self._fired_through
            while fired is not None and kept and (kept[0][0], kept[0][1]) <= fired:
                heapq.heappop(kept)
            self._heaps = [kept, *self._heaps[self._sources :]]
            self._sources = 0
            # Let go of the rest a slice at a time as well: freeing 300,000 entries at once held the loop 10-60 ms.
            for garbage in (*sources, entries, seen, chains, firsts):
                await self._let_go(garbage)
        finally:
            self._sources = 0
            self._fired_through = None
            self._sweeper = None
        self._sweep_at = max(SWEEP_MIN, SWEEP_GROWTH * len(self))

    @staticmethod
    async def _let_go(garbage: list | set | dict) -> None:
        """Empty garbage SWEEP_SLICE items per loop turn."""
        take = garbage.popitem if isinstance(garbage, dict) else garbage.pop
        while garbage:
            if isinstance(garbage, list):
                del garbage[-SWEEP_SLICE:]
            else:
                for _ in range(min(SWEEP_SLICE, len(garbage))):
                    take()
            await asyncio.sleep(0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timer-heap")

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        for task in (self._sweeper, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            self._wake.clear()
            heap = self._earliest()
            if heap is None:
                await self._wake.wait()
                continue
            delay = (heap[0][0] - now_us()) / MICROS
            if delay > 0:
                # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the wait
                # ends (the task then never stopped, and shutdown hung); it also costs a task per wait.
                alarm = loop.call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    alarm.cancel()
                continue
            now = now_us()
            while (heap := self._earliest()) is not None and heap[0][0] <= now:
                at, seq, kind, args = heapq.heappop(heap)
                if self._sources and any(heap is source for source in self._heaps[: self._sources]):
                    self._fired_through = (at, seq)
                try:
                    self._handler(kind, args)
                except Exception:  # one bad handler must not stop every other deadline
                    log.exception("timer %s%r failed", kind, args)
            await asyncio.sleep(0)
