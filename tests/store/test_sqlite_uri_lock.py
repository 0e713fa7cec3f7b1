"""The SQLite lock of a `file:` URI path is the file SQLite opens: percent-decoded, with a `localhost`
authority, and none for an in-memory database (review round 14, helper-36)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.store import open_store
from coordinator.store.base import StoreInUse


async def test_percent_escaped_uri_names_the_same_file_but_is_not_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = open_store("sqlite:///my db.db")
    await first.open()
    try:
        second = open_store("sqlite:///file:my%20db.db")  # SQLite opens "my db.db"
        try:
            with pytest.raises(StoreInUse):
                await second.open()
        finally:
            await second.close()
    finally:
        await first.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["my db.db"]


async def test_localhost_authority_uri_opens(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///file://localhost{tmp_path}/a.db")  # valid for SQLite
    await store.open()  # the lock is looked for at /localhost/...: FileNotFoundError
    await store.close()


async def test_in_memory_uris_of_two_stores_do_not_share_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = open_store("sqlite:///file:mem1?mode=memory&cache=shared")
    await first.open()
    try:
        # another process's in-memory database of that name is its own: nothing to lock against
        second = open_store("sqlite:///file:mem1?mode=memory&cache=shared")
        await second.open()  # StoreInUse: a lock file mem1.lock was taken for an in-memory database
        await second.close()
    finally:
        await first.close()
