"""The SQLite store's lock covers every path SQLite opens the same file by: a `file:` URI (SQLite opens the file
it names, percent-decoded, also with a `localhost` authority), and none is taken for an in-memory database.
(Review round 13, helper-35: no lock was taken for `file:` paths, so two coordinators could write one file
through sqlite:///x.db and sqlite:///file:x.db; round 14, helper-36: the URI's raw text was taken for the name.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.store import open_store
from coordinator.store.base import StoreInUse


async def refused_while_held(held: str, other: str) -> None:
    """With a store open on `held`, one on `other` (the same file) is refused."""
    first = open_store(held)
    await first.open()
    try:
        second = open_store(other)
        try:
            with pytest.raises(StoreInUse):
                await second.open()
        finally:
            await second.close()
    finally:
        await first.close()


@pytest.mark.parametrize(
    ("held", "other", "file"),
    [
        ("sqlite:///lock.db", "sqlite:///file:lock.db", "lock.db"),
        ("sqlite:///my db.db", "sqlite:///file:my%20db.db", "my db.db"),  # SQLite opens "my db.db"
    ],
)
async def test_a_file_uri_finds_the_lock_of_the_file_it_opens(
    held: str, other: str, file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    await refused_while_held(held, other)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == [file]


async def test_a_uri_with_a_localhost_authority_opens(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///file://localhost{tmp_path}/a.db")  # valid for SQLite
    await store.open()  # (the lock was looked for at /localhost/...: FileNotFoundError)
    await store.close()


async def test_in_memory_databases_take_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = open_store("sqlite:///file:mem1?mode=memory&cache=shared")
    await first.open()
    try:
        # another process's in-memory database of that name is its own: nothing to lock against
        second = open_store("sqlite:///file:mem1?mode=memory&cache=shared")
        await second.open()  # (a lock file mem1.lock was taken, and this one refused StoreInUse)
        await second.close()
    finally:
        await first.close()
    assert not list(tmp_path.glob("*.lock"))
