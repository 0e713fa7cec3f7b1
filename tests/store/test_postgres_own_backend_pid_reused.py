"""A backend the writer once had, ended, and its pid given to another session since (PostgreSQL's pids are the
operating system's, reused once free): that session is not the writer's own. (Review round 23: cd0cbc5 kept
the pids of every reconnect that did not take the store, until one did, and took any of them holding the store
for the writer's own: it ended that other session and wrote while the other held the store.)

The test makes the operating system give a freed pid to a new backend (/proc/sys/kernel/ns_last_pid: root, on
the server's host); it is skipped where that cannot be done."""

from __future__ import annotations

import asyncio
import contextlib
import os

import asyncpg
import pytest

from coordinator.store.base import StoreInUse
from coordinator.store.postgres import PostgresStore

from .store_support import PG_URL, create_schema, drop_schema, pg_admin, pg_url
from .test_postgres_writer_lock import key_unit

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


async def _gone(admin: asyncpg.Connection, pid: int) -> None:
    for _ in range(200):
        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {pid} still there")


def _next_pid(pid: int) -> None:
    with open(NS_LAST_PID, "w") as f:
        f.write(str(pid - 1))


async def _connect_as(pid: int) -> asyncpg.Connection | None:
    """A new session whose backend gets pid (the next pid the system hands out set just before it forks)."""
    for _ in range(50):
        try:
            _next_pid(pid)
        except OSError:  # (writable to root only where the namespace allows it)
            return None
        conn = await asyncpg.connect(PG_URL, timeout=5)
        if conn.get_server_pid() == pid:
            return conn
        await conn.close()
        await asyncio.sleep(0.02)
    return None


async def test_a_session_given_the_pid_of_a_failed_reconnect_is_not_the_writers() -> None:
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("cannot choose the next pid here")
    admin = await pg_admin()
    schema = await create_schema()
    store = PostgresStore(pg_url(schema), lock_wait_s=1.5)
    await store.open()
    holder = other = None
    try:
        await store.commit(key_unit(0))
        key = await admin.fetchval("SELECT hashtext($1)::bigint", f"aitbc-store:{schema}")
        writer = await admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid::bigint = $1 AND objid::bigint = $2",
            (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF,
        )  # fmt: skip
        await admin.execute("SELECT pg_terminate_backend($1)", writer)  # the writer's connection ended
        await _gone(admin, writer)
        holder = await asyncpg.connect(PG_URL, timeout=5)
        await holder.execute("SELECT pg_advisory_lock($1)", key)  # another session takes the store meanwhile
        # the writer reconnects, finds the store held, and gives up after lock_wait_s: that backend ends
        commit = asyncio.ensure_future(store.commit(key_unit(1)))
        attempt = None
        while attempt is None and not commit.done():
            connecting = store._connecting  # (the writer's reconnect, waiting for the store)
            attempt = None if connecting is None else connecting.get_server_pid()
            await asyncio.sleep(0.02)
        with pytest.raises(StoreInUse):
            await asyncio.wait_for(commit, 30)
        assert attempt is not None
        await holder.close()
        holder = None
        await _gone(admin, attempt)
        # the operating system gives that pid to a new backend: a session of another process, holding the store
        other = await _connect_as(attempt)
        if other is None:
            pytest.skip(f"pid {attempt} not handed out again (a busy host)")
        await other.execute("SELECT pg_advisory_lock($1)", key)
        # the writer tries again: the store is held by another session, as before
        with pytest.raises(StoreInUse):
            await asyncio.wait_for(store.commit(key_unit(2)), 30)
        assert await other.fetchval("SELECT 1") == 1, "the other session was ended"
    finally:
        for conn in (holder, other):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        await store.close()
        await admin.close()
        await drop_schema(schema)
