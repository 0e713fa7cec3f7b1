"""StoredKeys over a real store (SQLite and PostgreSQL): which idempotency keys may be stored, read in from
the store by pages, kept up to date by the submits' own keys, rebuilt larger once full. It may say "maybe"
for a key never stored (rarely), never "no" for a stored one: a "no" skips the store read of a submit, and a
wrong one would make a second job under a key already used."""

from __future__ import annotations

import asyncio

from coordinator.scheduler.stored_keys import StoredKeys
from coordinator.store import Store, UnitOfWork

from .store_support import make_job, submitted_event


async def store_keys(store: Store, keys: list[tuple[str, str]], tag: str) -> None:
    unit = UnitOfWork()
    for n, (client, key) in enumerate(keys):
        job = make_job(f"{tag}-{n:05d}", client, idempotency_key=key)
        unit.add_new_job(job)
        unit.add_event(submitted_event(job))
    await store.commit(unit)


async def until(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def fresh_keys(n: int) -> list[tuple[str, str]]:
    return [("alice", f"never-stored-{i}") for i in range(n)]


def surely_new(keys: StoredKeys, candidates: list[tuple[str, str]]) -> int:
    return sum(not keys.may_hold(k) for k in candidates)


async def test_every_stored_key_is_a_maybe_and_new_keys_are_not(store: Store) -> None:
    stored = [(client, f"k-{i}") for i in range(23) for client in ("alice", "bob")]  # pages of 5: many pages
    await store_keys(store, stored, "a")
    await store_keys(store, [], "none")  # the pages skip keyless jobs
    keys = StoredKeys(store, list, min_capacity=100, page=5)
    assert keys.may_hold(("alice", "anything"))  # not complete: every key is looked up
    keys.start()
    try:
        await until(lambda: keys.complete, "the stored keys read in")
        assert all(keys.may_hold(k) for k in stored)
        assert surely_new(keys, fresh_keys(200)) >= 190  # false positives: about 1 in 1,000
        assert ("bob", "k-0") in stored and surely_new(keys, [("carol", "k-0")]) == 1  # keys are per client
    finally:
        await keys.stop()


async def test_keys_being_written_when_the_scan_begins_are_not_missed(store: Store) -> None:
    """A key whose insert is queued but not landed when the scan passes its place: added by hand."""
    in_flight = [("alice", "writing-1"), ("bob", "writing-2")]
    keys = StoredKeys(store, lambda: list(in_flight), min_capacity=100)
    keys.start()
    try:
        await until(lambda: keys.complete, "the (empty) store read in")
        assert all(keys.may_hold(k) for k in in_flight)
        assert surely_new(keys, fresh_keys(100)) >= 95
    finally:
        await keys.stop()


async def test_a_full_filter_is_rebuilt_larger_and_keeps_every_key(store: Store) -> None:
    first = [("alice", f"old-{i}") for i in range(30)]
    await store_keys(store, first, "b")
    writing: set[tuple[str, str]] = set()
    keys = StoredKeys(store, lambda: list(writing), min_capacity=40, page=7)
    keys.start()
    try:
        await until(lambda: keys.complete, "the stored keys read in")
        assert keys.builds == 1
        later = [("alice", f"new-{i}") for i in range(60)]
        for k in later:  # as submits do: added, and being written until their write lands
            keys.add(k)
            writing.add(k)
        await store_keys(store, later, "c")
        writing.clear()
        await until(lambda: keys.builds == 2, "a rebuild of the full filter")
        assert all(keys.may_hold(k) for k in first + later)
        assert surely_new(keys, fresh_keys(200)) >= 190  # the new filter is sized for what it holds
    finally:
        await keys.stop()


async def test_a_scan_the_store_refuses_leaves_every_key_a_maybe(store: Store) -> None:
    await store_keys(store, [("alice", "k")], "d")
    await store.close()  # reads fail now
    keys = StoredKeys(store, list, min_capacity=10)
    keys.start()
    try:
        await asyncio.sleep(0.1)
        assert not keys.complete
        assert keys.may_hold(("alice", "k")) and keys.may_hold(("alice", "new"))
    finally:
        await keys.stop()


def scans_running() -> list[asyncio.Task]:
    """The event loop's tasks that run a StoredKeys scan (or wait to try one again)."""
    return [
        t for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "").startswith("StoredKeys.")
    ]  # fmt: skip


async def test_keys_added_after_the_stop_start_no_scan(store: Store) -> None:
    """Scheduler.stop stops the filter while the server's calls run on for the grace: a submit that passed the
    stopping check before still claims its keys (add). A full filter must not start a scan then: it would
    outlive the stop, read a store being closed, and try again every 30 s for as long as the process lives."""
    await store_keys(store, [("alice", f"k-{i}") for i in range(5)], "a")
    keys = StoredKeys(store, list, min_capacity=10)
    keys.start()
    await until(lambda: keys.complete, "the stored keys read in")
    await keys.stop()
    for i in range(20):  # past the filter's capacity (10)
        keys.add(("alice", f"late-{i}"))
    leaked = scans_running()
    for task in leaked:
        task.cancel()
    assert leaked == []
    assert keys.may_hold(("alice", "late-3")) and keys.may_hold(("alice", "k-3"))  # it still answers
