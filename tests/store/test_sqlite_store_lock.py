"""The SQLite store's lock covers a `file:` URI path too: SQLite opens it as the ordinary file it names, and no
lock was taken for it, so two coordinators could write one file through sqlite:///x.db and sqlite:///file:x.db.
(Review round 13, helper-35.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.store import open_store
from coordinator.store.base import StoreInUse


async def test_a_file_colon_path_is_locked_like_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = open_store("sqlite:///lock.db")
    await first.open()
    try:
        second = open_store("sqlite:///file:lock.db")
        try:
            with pytest.raises(StoreInUse):
                await second.open()
        finally:
            await second.close()
    finally:
        await first.close()
