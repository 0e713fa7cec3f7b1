"""The PostgreSQL store's lock on its schema, at its edges (review round 13, helper-35): close() while the writer
waits for the lock or for the read pool; a store with no schema named; a group refused because another process
holds the store."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from urllib.parse import urlsplit

import asyncpg
import pytest

from coordinator.store.base import KeyRow, StoreInUse, UnitOfWork
from coordinator.store.postgres import PostgresStore

from .store_support import PG_URL, create_schema, drop_schema, pg_admin, pg_url


def key_unit(n: int) -> UnitOfWork:
    unit = UnitOfWork()
    unit.keys.append(KeyRow(f"r13-key-{n}", "miner", "active", b"k" * 32, None, 1, None, "miner-x"))
    return unit


async def test_close_does_not_wait_out_lock_wait_s_while_the_writer_reconnects() -> None:
    """The writer's connection is lost and another session holds the store lock when it reconnects: close()
    stops the writer's wait for the lock (it waited out lock_wait_s, 30 s, without looking at _closing)."""
    admin = await pg_admin()
    schema = await create_schema()
    store = PostgresStore(pg_url(schema))
    holder = await pg_admin()
    await store.open()
    try:
        await store.commit(key_unit(0))
        pid = store._conn.get_server_pid()
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        # another session takes the store (waits until the terminated backend is gone)
        await holder.execute("SELECT pg_advisory_lock(hashtext($1)::bigint)", f"aitbc-store:{schema}")
        write = asyncio.ensure_future(store.commit(key_unit(1)))
        await asyncio.sleep(1.5)  # the writer is now in _hold_lock's wait loop
        started = time.monotonic()
        await asyncio.wait_for(store.close(), 60)
        took = time.monotonic() - started
        with contextlib.suppress(Exception):
            await write
        assert took < 15, f"close() took {took:.1f} s: it waited out the writer's lock wait (30 s)"
    finally:
        await store.close()
        await holder.close()
        await admin.close()
        await drop_schema(schema)


async def test_schema_none_locks_the_schema_it_really_writes() -> None:
    """schema=None: the tables go to current_schema() (search_path "$user", public: a schema named after the
    user, PostgreSQL's recommended secure pattern, comes first), and the lock is on that schema. (It was on
    "public": a second coordinator naming the "$user" schema explicitly was let in, two writers on one set of
    tables.)"""
    admin = await pg_admin()
    db = f"r13_{secrets.token_hex(5)}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    parts = urlsplit(PG_URL)
    db_url = parts._replace(path=f"/{db}", query="").geturl()
    a = b = None
    try:
        conn = await asyncpg.connect(db_url, timeout=5)
        user = await conn.fetchval("SELECT current_user")
        await conn.execute(f'CREATE SCHEMA "{user}"')
        a = PostgresStore(db_url, lock_wait_s=1)
        await a.open()
        where = await conn.fetchval(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'schema_version'"
        )
        assert where == user, where  # the store without a schema writes to the "$user" schema
        await conn.close()
        b = PostgresStore(f"{db_url}?schema={user}", lock_wait_s=1)
        with pytest.raises(StoreInUse):
            await b.open()  # the same tables are open in `a`
    finally:
        for s in (a, b):
            if s is not None:
                with contextlib.suppress(Exception):
                    await s.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


async def test_a_group_refused_store_in_use_waits_lock_wait_s_once_not_once_per_unit() -> None:
    """The writer reconnects while another session holds the store: the group is refused StoreInUse after one
    wait of lock_wait_s. (_write_group took it for a unit's fault and committed each unit alone, each waiting
    lock_wait_s again: (N + 1) x lock_wait_s, 30 s each by default, for a group of up to 2,000 units.)"""
    admin = await pg_admin()
    schema = await create_schema()
    store = PostgresStore(pg_url(schema), lock_wait_s=2)
    holder = await pg_admin()
    await store.open()
    try:
        await store.commit(key_unit(0))
        await admin.execute("SELECT pg_terminate_backend($1)", store._conn.get_server_pid())
        await holder.execute("SELECT pg_advisory_lock(hashtext($1)::bigint)", f"aitbc-store:{schema}")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        futures = [store.enqueue(key_unit(n)) for n in range(1, 5)]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60)
        took = time.monotonic() - started
        assert all(isinstance(r, StoreInUse) for r in results), results
        assert took < 7, (
            f"4 units refused StoreInUse took {took:.1f} s (lock_wait_s=2; one wait per unit: 10 s)"
        )
    finally:
        await store.close()
        await holder.close()
        await admin.close()
        await drop_schema(schema)


async def test_close_is_not_held_by_landed_waiting_for_a_busy_read_pool() -> None:
    """_landed ends the stale backend and probes within CONNECT_TIMEOUT_S per try (through the read pool then; on
    a connection of its own since round 26): with every pool connection busy (here a read blocked by a lock; on a
    silent server, any read in flight), close() still ends. (Without that bound the writer waited in the pool's
    acquire for good, and close() with it.)"""
    admin = await pg_admin()
    locker = await pg_admin()
    schema = await create_schema()
    store = PostgresStore(pg_url(schema), pool_size=1)
    await store.open()
    tx = None
    reader = None
    try:
        await store.commit(key_unit(0))
        await locker.execute(f'SET search_path = "{schema}"')
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE job_events IN ACCESS EXCLUSIVE MODE")
        reader = asyncio.ensure_future(store.get_events("job-r13"))  # holds the only pool connection, blocked
        unit = UnitOfWork()
        unit.events.append(("job-r13", 1, None, 1, 0, "", "SUBMITTED", "", 1))
        write = store.enqueue(unit)  # blocked in its INSERT, inside the transaction
        await asyncio.sleep(1.0)
        await admin.execute("SELECT pg_terminate_backend($1)", store._conn.get_server_pid())
        await asyncio.sleep(1.0)  # the writer is in _landed now
        started = time.monotonic()
        closing = asyncio.ensure_future(store.close())
        done, _ = await asyncio.wait({closing}, timeout=30)  # (its probe 10 s at most, the pool's close 10 s)
        took = time.monotonic() - started
        await tx.rollback()  # let everything go
        tx = None
        await asyncio.wait_for(closing, 30)
        with contextlib.suppress(BaseException):
            await write
        assert done, f"close() still waiting after {took:.1f} s (the writer waits for a read pool connection)"
    finally:
        if tx is not None:
            await tx.rollback()
        if reader is not None:
            with contextlib.suppress(BaseException):
                await reader
        await store.close()
        await locker.close()
        await admin.close()
        await drop_schema(schema)
