"""The writer settles an in-doubt COMMIT on a connection of its own, not one of the read pool's: with every pool
connection taken by reads that wait (on a table locked by maintenance, VACUUM FULL or ALTER TABLE; or on a path
gone silent, where a read has no timeout), the writer still learns that its group landed and writes on.
(Review round 26: the probe, and the ending of the writer's previous backend, waited for a pool connection: the
writer, and every commit behind it, stalled for as long as the reads did.)"""

from __future__ import annotations

import asyncio

import asyncpg

from coordinator.store.base import UnitOfWork
from coordinator.store.postgres import PostgresStore

from .store_support import create_schema, drop_schema, pg_admin
from .test_postgres_commit_reply_error import CommitReplyProxy


def events_only_unit(job_id: str) -> UnitOfWork:
    unit = UnitOfWork()  # (writes no jobs row: the locked table is not its)
    unit.events.append((job_id, 1, None, 1, 0, "", "SUBMITTED", "", 1))
    return unit


async def reads_waiting_on_a_lock(admin: asyncpg.Connection, count: int) -> None:
    for _ in range(600):
        if (
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'aitbc-coordinator' "
                "AND wait_event_type = 'Lock'"
            )
            >= count
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {count} reads waiting on the lock")


async def test_an_in_doubt_commit_is_settled_while_reads_hold_every_pool_connection() -> None:
    admin, maintenance = await pg_admin(), await pg_admin()
    schema = await create_schema()
    proxy = CommitReplyProxy()
    await proxy.start()
    store = PostgresStore(proxy.url(schema), pool_size=2)
    await store.open()
    reads: list[asyncio.Future] = []
    locked = maintenance.transaction()
    try:
        await locked.start()
        await maintenance.execute(f'LOCK TABLE "{schema}".jobs IN ACCESS EXCLUSIVE MODE')
        reads = [asyncio.ensure_future(store.get_job(f"job-{n}")) for n in range(2)]
        await reads_waiting_on_a_lock(admin, 2)
        proxy.armed = True
        pending = store.enqueue(events_only_unit("job-in-doubt"))
        await asyncio.wait_for(proxy.swallowed.wait(), 30)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", store._writer_pid)
        await asyncio.wait_for(pending, 30)  # landed, and told so while the reads still wait
        await asyncio.wait_for(store.commit(events_only_unit("job-after")), 30)
        assert not any(r.done() for r in reads), "the reads waited all along (the situation under test)"
    finally:
        await locked.rollback()
        await asyncio.gather(*reads, return_exceptions=True)
        await store.close()
        await proxy.close()
        await admin.close()
        await maintenance.close()
        await drop_schema(schema)
