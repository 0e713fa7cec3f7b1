"""A refused start on SQLite removes what it made of the store (close_unused), and never a store it did not make.

Which files a start made was judged before it took the store's lock: another process could make the store,
serve it and stop in between, and the refused start then removed that store, its jobs and receipts with it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

import coordinator.store.sqlite as sqlite_store
from coordinator.store.base import UnitOfWork
from coordinator.store.sqlite import SqliteStore

from .store_support import make_job, submitted_event


async def make_store_with_a_job(path: Path) -> None:
    """Another process's whole life on the store: made, one job written, closed."""
    other = SqliteStore(str(path))
    await other.open()
    unit = UnitOfWork()
    job = make_job("job-of-the-other-process")
    unit.add_new_job(job)
    unit.add_event(submitted_event(job))
    await other.commit(unit)
    await other.close()


async def test_a_store_made_by_another_process_before_the_lock_is_taken_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.db"
    take_lock: Callable[[str], IO[str] | None] = sqlite_store._hold_lock

    def another_process_first(store_path: str) -> IO[str] | None:
        # the interleaving: this start found nothing at path; another process's whole life on the store runs
        # (on a loop and threads of its own) just before this start takes the lock
        monkeypatch.setattr(sqlite_store, "_hold_lock", take_lock)  # (the other's own start takes it at once)
        other = threading.Thread(target=asyncio.run, args=(make_store_with_a_job(path),))
        other.start()
        other.join()
        return take_lock(store_path)

    monkeypatch.setattr(sqlite_store, "_hold_lock", another_process_first)
    store = SqliteStore(str(path))
    await store.open()
    await store.close_unused()  # this start is refused (a port in use, say)

    assert path.exists(), "the refused start removed a store it did not make"
    kept = SqliteStore(str(path))
    await kept.open()
    try:
        assert await kept.get_job("job-of-the-other-process") is not None
    finally:
        await kept.close()


async def test_a_refused_start_of_a_new_store_leaves_no_file(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "store.db"))
    await store.open()
    await store.close_unused()
    assert os.listdir(tmp_path) == []
