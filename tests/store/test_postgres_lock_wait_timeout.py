"""A group waiting on a table lock past a timeout (the writer's own, WRITE_TIMEOUT_S; or the server's
statement_timeout or lock_timeout, as a DBA may set them) while maintenance (VACUUM FULL, ALTER TABLE, a forgotten
psql transaction) holds the table: its units fail as the store unreachable (retry), after the group and one unit
alone have waited, not each unit of the group in turn. (Review round 26: a timed-out unit alone, its connection up,
counted as a blip, and the server's cancel as an error of the unit's rows: every unit waited in turn, 60 s each
for the writer's timeout, up to 2,000 units a group, every commit behind it waiting; the server's answered
INTERNAL.)"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from asyncpg.transaction import Transaction

from coordinator.store import postgres as pgmod
from coordinator.store.base import UnitOfWork, store_unreachable
from coordinator.store.postgres import PostgresStore

from .store_support import create_schema, drop_schema, pg_admin, pg_url


def event_unit(job_id: str) -> UnitOfWork:
    unit = UnitOfWork()
    unit.events.append((job_id, 1, None, 1, 0, "", "SUBMITTED", "", 1))
    return unit


async def backends_waiting_on_a_lock(admin: asyncpg.Connection) -> set[tuple]:
    rows = await admin.fetch(
        "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = 'aitbc-coordinator' "
        "AND wait_event_type = 'Lock'"
    )
    return {tuple(r) for r in rows}


@pytest.mark.parametrize("which", ["the writer's", "statement_timeout", "lock_timeout"])
async def test_a_group_waiting_on_a_locked_table_fails_after_two_waits_not_one_per_unit(
    which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, maintenance = await pg_admin(), await pg_admin()
    schema = await create_schema()
    url = pg_url(schema)
    if which == "the writer's":
        monkeypatch.setattr(pgmod, "WRITE_TIMEOUT_S", 1.0)  # (60 s in production)
    else:  # the server's, as a DBA may set it for the role or the database (here: the URL's, to asyncpg)
        url += f"&{which}=1000"
    store = PostgresStore(url)
    await store.open()
    locked: Transaction | None = maintenance.transaction()
    try:
        await locked.start()
        await maintenance.execute(f'LOCK TABLE "{schema}".job_events IN EXCLUSIVE MODE')  # (reads still go)
        group = [store.enqueue(event_unit(f"job-{n}")) for n in range(5)]
        waited: set[tuple] = set()  # the writer's backends seen waiting on the lock (one per try)
        while not all(f.done() for f in group):  # (sampling the server meanwhile)
            waited |= await backends_waiting_on_a_lock(admin)
            await asyncio.sleep(0.05)
        for future in group:
            assert future.exception() is not None and store_unreachable(future.exception()), future
        assert len(waited) <= 2, f"{len(waited)} tries waited on the lock in turn (the group, then each unit)"
        await locked.rollback()
        locked = None
        await asyncio.wait_for(store.commit(event_unit("job-after")), 30)  # the lock gone, the writer writes
    finally:
        if locked is not None:
            await locked.rollback()
        await store.close()
        await admin.close()
        await maintenance.close()
        await drop_schema(schema)
