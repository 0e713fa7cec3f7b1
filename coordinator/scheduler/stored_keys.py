"""Which idempotency keys the store may hold, so that a submit under a key never used skips the store read.

Every SDK submit carries a key (a generated one when the caller gave none), and the keys of finished jobs
live only in the store: without this, each unary submit paid one store read to learn that its new key was
new. A Bloom filter of every (client, key) stored or being stored answers "surely not stored" (no false
negatives) or "maybe" (about 1 in 1,000 new keys: read the store, as before).

Complete only once the keys stored before this process began are read in (a scan in the background, so a
start with millions of finished jobs serves at once): until then every key is a "maybe". A filter filled
past its size answers "maybe" more and more often: it is rebuilt, larger, by a new scan, while the old one
keeps answering. Keys whose insert is being written when a scan begins are added to the new filter by hand:
the scan might pass their place before their write lands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from rbloom import Bloom

log = logging.getLogger(__name__)

FALSE_POSITIVE_RATE = 0.001  # 14.4 bits a key: 1.8 MB for a million keys
MIN_CAPACITY = 1_000_000
RETRY_AFTER_S = 30.0  # a scan the store refused is tried again (meanwhile: every key is a "maybe")
# Keys a page. SQLite serves every read on one connection: each page holds it, so other reads (a submit's
# lookup of its key among them, while the filter is incomplete) wait for the page in progress. 1M keys:
# pages of 10,000 took ~45 ms each and the scan ~4.5 s; pages of 1,000 ~2 ms and ~2.4 s (PostgreSQL: ~5 s).
PAGE = 1_000

Key = tuple[str, str]  # (client_id, idempotency_key)


class KeySource(Protocol):
    """The store's side: how many keys it holds, and all of them, a page at a time."""

    async def count_idempotency_keys(self) -> int: ...

    async def idempotency_keys_after(self, after: Key | None, limit: int) -> list[Key]: ...


class StoredKeys:
    """The filter of stored keys (see the module). add() each key before its write is queued; being_written()
    names the keys whose write is queued and has not landed (a scan may pass their place before it does)."""

    def __init__(
        self,
        source: KeySource,
        being_written: Callable[[], Iterable[Key]],
        *,
        min_capacity: int = MIN_CAPACITY,
        page: int = PAGE,
    ) -> None:
        self._source = source
        self._being_written = being_written
        self._min_capacity = min_capacity
        self._page = page
        self._live: Bloom | None = None  # None: not complete yet, every key is a "maybe"
        self._capacity = 0
        self._count = 0  # keys added to the live filter (scanned or new): past capacity, it is rebuilt
        self._building: Bloom | None = None
        self._added_while_building = 0
        self._task: asyncio.Task | None = None
        self._stopped = False
        self.skipped = 0  # lookups answered "surely not stored"
        self.read = 0  # lookups that went to the store
        self.builds = 0

    @property
    def complete(self) -> bool:
        return self._live is not None

    def start(self) -> None:
        self._rebuild()

    async def stop(self) -> None:
        # For good: submits admitted before the stop still add keys, and a scan begun then would outlive it.
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def add(self, key: Key) -> None:
        """key is about to be written (call before its write is queued: a scan must never miss it)."""
        if self._building is not None:
            self._building.add(key)
            self._added_while_building += 1
        if self._live is not None:
            self._live.add(key)
            self._count += 1
            if self._count > self._capacity:
                self._rebuild()

    def may_hold(self, key: Key) -> bool:
        held = self._live is None or key in self._live
        if held:
            self.read += 1
        else:
            self.skipped += 1
        return held

    def _rebuild(self) -> None:
        if self._stopped:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._build_until_done())

    async def _build_until_done(self) -> None:
        while True:
            try:
                await self._build()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the stored idempotency keys failed: every key is looked up until a "
                              "later try succeeds (in %.0f s)", RETRY_AFTER_S)  # fmt: skip
            finally:
                self._building = None
            await asyncio.sleep(RETRY_AFTER_S)

    async def _build(self) -> None:
        began = time.monotonic()
        count = await self._source.count_idempotency_keys()
        capacity = max(self._min_capacity, 2 * count)
        building = self._building = Bloom(capacity, FALSE_POSITIVE_RATE)
        # From here on add() puts every new key in it too; those added before whose writes have not landed
        # (they may land after the scan passed their place) are put in now. Those landed, the scan reads.
        self._added_while_building = 0
        building.update(self._being_written())
        scanned, after = 0, None
        while True:
            keys = await self._source.idempotency_keys_after(after, self._page)
            building.update(keys)
            scanned += len(keys)
            if len(keys) < self._page:
                break
            after = keys[-1]
        # A key added while scanning may be scanned too: counted twice, it only brings the next rebuild sooner.
        self._live, self._capacity = building, capacity
        self._count = scanned + self._added_while_building
        self.builds += 1
        log.info("idempotency keys read: %d stored keys in %.2f s (filter for %d keys)", scanned,
                 time.monotonic() - began, capacity)  # fmt: skip
