"""The scan of stored idempotency keys (Store.idempotency_keys_after, read into the filter of stored keys at
start) over keys and client ids of every shape the coordinator accepts: the longest keys, keys that differ by
case, accents composed or not, trailing spaces, characters outside the BMP, keys that are prefixes of others.
Pages follow the unique index's order with a keyset condition evaluated by the database itself, so they never
skip a key nor return one twice, whatever the collation: SQLite's byte order, PostgreSQL's database default
and an ICU collation whose order is nothing like the bytes'. A skipped key would be a "surely new" answer for a
stored key: a second job under it, refused by the unique index as its group commit lands."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.domain.validation import Limits
from coordinator.scheduler.stored_keys import StoredKeys
from coordinator.store import Store

from .store_support import Backend
from .test_stored_keys import store_keys

LONGEST = Limits().max_short_string  # the longest idempotency key a submit may carry (characters)

CLIENTS = [
    "alice",
    "Alice",
    "ALICE",
    "alice ",
    "a",
    "bob",
    "é",
    "e\u0301",
    "z",
    "Z",
    "😀",
    "\U0010ffff",
    "_",
    "-",
]
KEYS = [
    "k", "K", "k ", " k", "k\t", "kk", "k-", "k_", "é", "e\u0301", "ß", "ss", "SS", "ǅ", "İ", "i\u0307", "\u00a0",
    "0", "00", "0 ", "~", "\uffff", "😀" * LONGEST, "x" * LONGEST, "x" * (LONGEST - 1), "a" * (LONGEST - 1) + "😀",
]  # fmt: skip


def every_key() -> list[tuple[str, str]]:
    # each client its own share of the keys (and some all of them), so that pages end at odd places
    return [(c, k) for n, c in enumerate(CLIENTS) for i, k in enumerate(KEYS) if (i + n) % 3 or n % 4 == 0]


async def scan(store: Store, page: int, bound: int) -> list[tuple[str, str]]:
    """Every page, as StoredKeys reads them; fails instead of looping past bound pages."""
    seen: list[tuple[str, str]] = []
    after = None
    for _ in range(bound):
        keys = await store.idempotency_keys_after(after, page)
        seen.extend(keys)
        if len(keys) < page:
            return seen
        after = keys[-1]
    raise AssertionError(f"the scan went on past {bound} pages of {page}: it loops")


async def every_page_size_reads_each_key_once(store: Store, stored: list[tuple[str, str]]) -> None:
    assert await store.count_idempotency_keys() == len(stored)
    for page in (1, 2, 3, 7, len(stored), len(stored) + 1):
        seen = await scan(store, page, bound=len(stored) // page + 2)
        assert len(seen) == len(set(seen)), f"pages of {page}: a key read twice"
        assert set(seen) == set(stored), f"pages of {page}: missed {set(stored) - set(seen)}"


async def test_every_stored_key_is_read_once_in_pages_of_any_size(store: Store) -> None:
    stored = every_key()
    await store_keys(store, stored, "job")
    await every_page_size_reads_each_key_once(store, stored)
    keys = StoredKeys(store, list, min_capacity=1_000, page=3)
    keys.start()
    try:
        for _ in range(500):
            if keys.complete:
                break
            await asyncio.sleep(0.01)
        assert keys.complete
        assert [k for k in stored if not keys.may_hold(k)] == []
    finally:
        await keys.stop()


async def test_an_icu_collation_unlike_byte_order_neither_skips_nor_loops(
    backend: Backend, store: Store
) -> None:
    """A PostgreSQL database whose default collation is a linguistic one (case and accents ordered apart from
    the bytes, e.g. "Alice" between "alice" and "ALICE"): its index, its ORDER BY and its keyset condition all
    follow it, so the scan agrees with itself."""
    if backend.name != "postgres":
        pytest.skip("collations are PostgreSQL's")
    for column in ("client_id", "idempotency_key"):
        await backend.raw_execute(f'ALTER TABLE jobs ALTER COLUMN {column} TYPE text COLLATE "en-x-icu"')
    stored = every_key()
    await store_keys(store, stored, "job")
    order = await backend.raw_fetch(
        "SELECT client_id, idempotency_key FROM jobs ORDER BY client_id, idempotency_key"
    )
    assert [tuple(r) for r in order] != sorted(stored)  # the collation does not follow the bytes
    await every_page_size_reads_each_key_once(store, stored)
