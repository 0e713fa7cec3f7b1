"""One timer heap for every deadline (leases, TTL, execution timeouts, backoff, grace periods).

No task per job: one task sleeps until the earliest deadline. Entries are never removed; a fired entry
whose owner moved on (lease renewed, job finished) is recognised as stale by its handler and ignored.
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


class TimerHeap:
    def __init__(self, handler: Handler) -> None:
        self._heap: list[tuple[int, int, str, tuple]] = []
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
