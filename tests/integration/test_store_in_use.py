"""One process at a time writes a store (review round 10, helper-32): a second coordinator on the same SQLite
file would schedule its jobs too, and `keys rotate` under a running coordinator retired the key it went on
signing with, so the receipts it signed after that failed offline verification ("signed after key retired")."""

from __future__ import annotations

import asyncio
import sys

import pytest
from coord_support import Harness

from coordinator.server import start
from coordinator.store import open_store
from coordinator.store.base import StoreInUse


async def test_a_second_coordinator_on_the_same_file_is_refused(coord: Harness) -> None:
    with pytest.raises(StoreInUse, match="is open in another process"):
        await start(coord.settings.replace(app_port=0))
    await coord.client().submit({"n": 1})  # the first one is unharmed


async def test_the_store_is_free_again_once_its_holder_closed(coord: Harness) -> None:
    url = f"sqlite:///{coord.db_path}"
    with pytest.raises(StoreInUse):
        await open_store(url).open()
    await coord.stop()
    store = open_store(url)
    await store.open()
    await store.close()


async def rotate(coord: Harness) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator", "keys", "rotate", "--database", f"sqlite:///{coord.db_path}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, (out + err).decode()


async def test_keys_rotate_is_refused_while_a_coordinator_runs(coord: Harness) -> None:
    before = coord.db.query("SELECT key_id, status FROM signing_keys WHERE role = 'coordinator'")
    code, said = await rotate(coord)
    assert code == 2 and "is open in another process (a running coordinator?): stop it first" in said, said
    assert coord.db.query("SELECT key_id, status FROM signing_keys WHERE role = 'coordinator'") == before
    await coord.stop()
    code, said = await rotate(coord)
    assert code == 0 and "new active coordinator key" in said, said


async def test_another_path_to_the_same_file_finds_the_same_lock(coord: Harness) -> None:
    """The lock is taken by the file's real path (review round 12, helper-34: a symbolic link to the database
    file got a lock of its own, and a second coordinator through it was not refused)."""
    link = coord.db_path.parent / "link-to.db"
    link.symlink_to(coord.db_path)
    with pytest.raises(StoreInUse):
        await open_store(f"sqlite:///{link}").open()
