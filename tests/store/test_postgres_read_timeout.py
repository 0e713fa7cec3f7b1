"""A PostgreSQL read that gets no answer (its pool connection blackholed: no FIN, no RST; a table locked by
maintenance) ends within its timeout, is asked once more on a fresh connection, and else fails as the store
unreachable (callers answer UNAVAILABLE); the silent connection is dropped, never handed to another read, and a
read's backend waiting on a lock gives up as well. Every connection of the store has TCP keepalive. (Review
round 34: reads had no timeout and no keepalive: GetJob, ListJobs, GetJobResult... hung until the kernel gave the
connection up, ~15 minutes.)"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

from coordinator.store import UnitOfWork, open_store
from coordinator.store.base import JobFilter, store_unreachable
from coordinator.store.postgres import KEEPALIVE_IDLE_S, PostgresStore, StoreReadTimeout

from .pg_silent_reads_support import SilentReadsRelay
from .store_support import make_job, pg_admin, pg_url, submitted_event

HANG_GUARD_S = 60.0  # far past any timeout of the store's: a read still pending then hangs


@pytest.fixture
async def relay() -> AsyncIterator[SilentReadsRelay]:
    relay = SilentReadsRelay()
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def commit_job(store: PostgresStore, job_id: str) -> None:
    job = make_job(job_id)
    unit = UnitOfWork()
    unit.add_new_job(job)
    unit.add_event(submitted_event(job))
    await store.commit(unit)


async def outcome(read: asyncio.Future) -> object:
    """What the read ended with (its result or its error); fails the test if it hangs."""
    done, _ = await asyncio.wait({read}, timeout=HANG_GUARD_S)
    assert done, "the read hangs (no answer, and no timeout)"
    return read.exception() or read.result()


async def test_a_read_on_blackholed_connections_is_answered_on_a_fresh_one(
    relay: SilentReadsRelay, schema: str
) -> None:
    store = PostgresStore(relay.url(schema), pool_size=2, read_timeout_s=1.0)
    await store.open()
    try:
        await commit_job(store, "job-1")
        both = [await store._pool.acquire() for _ in range(2)]  # the pool's two connections open, then idle
        for conn in both:
            await store._pool.release(conn)
        assert relay.silence_read_links() == 2  # (the path they share went dead)
        job = await outcome(asyncio.ensure_future(store.get_job("job-1")))
        assert getattr(job, "job_id", job) == "job-1"
        # the silent connections were dropped: reads go on, as many at once as the pool holds and more
        jobs = await outcome(
            asyncio.ensure_future(asyncio.gather(*(store.get_job("job-1") for _ in range(5))))
        )
        assert [j.job_id for j in jobs] == ["job-1"] * 5
    finally:
        await store.close()


async def test_a_read_never_answered_fails_as_the_store_unreachable_and_reads_resume(
    relay: SilentReadsRelay, schema: str
) -> None:
    store = PostgresStore(relay.url(schema), pool_size=3, read_timeout_s=0.5)
    await store.open()
    try:
        await commit_job(store, "job-1")
        relay.silence_reads("FROM jobs WHERE job_id")  # on every connection, the fresh ones too
        reads = [asyncio.ensure_future(store.get_job("job-1")) for _ in range(3)]
        errors = [await outcome(r) for r in reads]
        assert all(isinstance(e, Exception) and store_unreachable(e) for e in errors), errors
        assert relay.silenced > len(reads)  # asked once more, on a fresh connection
        await commit_job(store, "job-2")  # the writer, on its own connection, writes on meanwhile
        relay.silence_reads("", times=0)  # the path heals
        jobs = await outcome(
            asyncio.ensure_future(asyncio.gather(*(store.get_job("job-2") for _ in range(4))))
        )
        assert [j.job_id for j in jobs] == ["job-2"] * 4
        assert [j.job_id for j in (await store.list_jobs(JobFilter(), 10, None)).jobs] == ["job-2", "job-1"]
    finally:
        await store.close()


async def test_a_start_load_never_answered_is_asked_again_then_fails_as_unreachable(
    relay: SilentReadsRelay, schema: str
) -> None:
    store = PostgresStore(relay.url(schema), read_timeout_s=0.1)  # (bulk reads: 24 times as long)
    await store.open()
    try:
        await commit_job(store, "job-1")
        relay.silence_reads("WHERE state IN (1, 2, 3)", times=1)
        jobs = await outcome(asyncio.ensure_future(store.load_active_jobs()))
        assert [j.job_id for j in jobs] == ["job-1"], jobs  # (asked again on a fresh connection)
        relay.silence_reads("WHERE state IN (1, 2, 3)")
        error = await outcome(asyncio.ensure_future(store.load_active_jobs()))
        assert isinstance(error, StoreReadTimeout) and store_unreachable(error), error
    finally:
        await store.close()


_WAITING_ON_A_LOCK = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = to_regclass($1)"


async def test_a_read_waiting_on_a_table_locked_by_maintenance_fails_as_unreachable(schema: str) -> None:
    store = PostgresStore(pg_url(schema), read_timeout_s=0.5)
    await store.open()
    admin = await pg_admin()
    try:
        await commit_job(store, "job-1")
        lock = admin.transaction()
        await lock.start()
        await admin.execute(f'LOCK TABLE "{schema}".jobs IN ACCESS EXCLUSIVE MODE')  # a VACUUM FULL, say
        try:
            error = await outcome(asyncio.ensure_future(store.get_job("job-1")))
            assert isinstance(error, Exception) and store_unreachable(error), error
            # and the server gave the read up too: no backend of the store's is left waiting on the lock (else
            # reads asked again and again during maintenance would pile up backends up to max_connections)
            for _ in range(200):
                if not await admin.fetchval(_WAITING_ON_A_LOCK, f'"{schema}".jobs'):
                    break
                await asyncio.sleep(0.05)
            assert not await admin.fetchval(_WAITING_ON_A_LOCK, f'"{schema}".jobs'), (
                "a read's backend waits on"
            )
        finally:
            await lock.rollback()
        assert (await store.get_job("job-1")) is not None
    finally:
        await admin.close()
        await store.close()


def keepalive_of(conn: asyncpg.Connection) -> tuple[int, int]:
    sock = conn._transport.get_extra_info("socket")  # (the store sets it there: asyncpg has no option)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), sock.getsockopt(
        socket.IPPROTO_TCP, socket.TCP_KEEPIDLE
    )


async def test_the_writers_and_the_pools_connections_have_tcp_keepalive_and_the_pool_its_size(
    schema: str,
) -> None:
    store = open_store(pg_url(schema), pool_size=3)
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        assert store._conn is not None and store._pool is not None
        assert store._pool.get_max_size() == 3
        assert keepalive_of(store._conn) == (1, KEEPALIVE_IDLE_S)
        async with store._pool.acquire() as proxy:
            assert keepalive_of(proxy._con) == (1, KEEPALIVE_IDLE_S)
    finally:
        await store.close()


async def test_a_read_finding_every_connection_busy_leaves_the_healthy_connections_open(schema: str) -> None:
    """A read that got no free connection in time (every one busy with another read: a healthy server under load)
    is no sign of a silent path: the busy connections are kept, not reopened as they are given back. (They were
    all expired: under load, each read's timeout on the pool reopened every connection.)"""
    store = PostgresStore(pg_url(schema), pool_size=1, read_timeout_s=0.2)
    await store.open()
    try:
        assert store._pool is not None
        busy = await store._pool.acquire()  # (the one connection, held as a long read holds it)
        pid = busy.get_server_pid()
        try:
            refused = await outcome(asyncio.ensure_future(store.get_job("j")))
            assert isinstance(refused, StoreReadTimeout) and store_unreachable(refused), refused
        finally:
            await store._pool.release(busy)
        same = await store._pool.acquire()
        try:
            assert same.get_server_pid() == pid, "a healthy connection was reopened"
        finally:
            await store._pool.release(same)
        assert await store.get_job("j") is None  # reads go on
    finally:
        await store.close()
