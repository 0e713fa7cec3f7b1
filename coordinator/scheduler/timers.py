"""One timer heap for every deadline (leases, TTL, execution timeouts, backoff, grace periods).

No task per job: one task sleeps until the earliest deadline. An entry is not removed when its owner moves on
(lease renewed, job finished): fired, it is recognised as stale by its handler and ignored. Until then it is
swept: whenever the heap has doubled since the last sweep (and holds SWEEP_MIN entries at least), the entries
the owner's `live` test calls stale go, and so do duplicates (a self-renewing kind keeps its earliest entry of
each args, an entry identical to another goes). Without it the heap grew with traffic, not with live work: a
job finished in a second kept its TTL and its execution deadline (up to a week each) in the heap until due.
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
SWEEP_MIN = 256  # entries before the first sweep (amortized: one sweep per doubling)


class TimerHeap:
    def __init__(
        self, handler: Handler, live: Live | None = None, renewing: frozenset[str] = frozenset()
    ) -> None:
        """live: the owner's test of an entry (None: nothing is swept). renewing: kinds whose handler, fired
        early, schedules the entry again for when it is due: of those, the earliest entry of each args suffices."""
        self._heap: list[tuple[int, int, str, tuple]] = []
        self._live = live
        self._renewing = renewing
        self._sweep_at = SWEEP_MIN
        self._seq = itertools.count()
        self._handler = handler
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at_us: int, kind: str, *args: object) -> None:
        first = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (at_us, next(self._seq), kind, args))
        if first is None or at_us < first:
            self._wake.set()
        # (not before start: what a start schedules, reloading live work, is live; sweeping it slowed the start)
        if self._live is not None and self._task is not None and len(self._heap) >= self._sweep_at:
            self._sweep(self._live)

    def _sweep(self, live: Live) -> None:
        """Drop the entries that would do nothing when they fire (see the module). O(n), once per doubling."""
        # of each renewing (kind, args): its first (at, seq)
        earliest: dict[tuple[str, tuple], tuple[int, int]] = {}
        for at, seq, kind, args in self._heap:
            if kind in self._renewing:
                key = (kind, args)
                if earliest.get(key, (at, seq)) >= (at, seq):
                    earliest[key] = (at, seq)
        seen: set[tuple[int, str, tuple]] = set()
        kept = []
        for entry in self._heap:
            at, seq, kind, args = entry
            if kind in self._renewing and earliest[(kind, args)] != (at, seq):
                continue
            if (at, kind, args) in seen or not live(at, kind, args):
                continue
            seen.add((at, kind, args))
            kept.append(entry)
        heapq.heapify(kept)
        self._heap[:] = kept  # (in place: the running loop reads the same list)
        self._sweep_at = max(SWEEP_MIN, 2 * len(kept))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timer-heap")

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            delay = (self._heap[0][0] - now_us()) / MICROS
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
            while self._heap and self._heap[0][0] <= now:
                _, _, kind, args = heapq.heappop(self._heap)
                try:
                    self._handler(kind, args)
                except Exception:  # one bad handler must not stop every other deadline
                    log.exception("timer %s%r failed", kind, args)
            await asyncio.sleep(0)
