"""Operators' drains in the store (table operator_drains, migration 4), on SQLite and PostgreSQL: a drain stored
is loaded by the next open; a drain over deletes only its own row (a later drain of the same miner, written
meanwhile, stays); a store of schema version 3 (before the table) opens with today's code and keeps its jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.store import Store, open_store
from coordinator.store.base import DrainRow, UnitOfWork
from coordinator.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS

from .store_support import (
    Backend,
    create_schema,
    drop_schema,
    make_job,
    pg_admin,
    pg_url,
    postgres_schema_of_version,
    sqlite_store_of_version,
    submitted_event,
)

T0 = 1_750_000_000_000_000


def stored(*rows: DrainRow) -> UnitOfWork:
    unit = UnitOfWork()
    unit.drains.extend(rows)
    return unit


def over(*rows: DrainRow) -> UnitOfWork:
    unit = UnitOfWork()
    unit.drains_over.extend(rows)
    return unit


async def test_drains_are_kept_across_opens_and_each_end_deletes_its_own_row(backend: Backend) -> None:
    a1, b1 = DrainRow("gpu-a", "ADMIN", T0), DrainRow("gpu-b", "ADMIN", T0 + 1)
    a2 = DrainRow("gpu-a", "ADMIN", T0 + 5)  # gpu-a drained again after its first drain
    store = backend.new_store()
    await store.open()
    try:
        assert await store.load_drains() == []
        await store.commit(stored(a1, b1))
        assert await store.load_drains() == [a1, b1]
        # a2 written, then the end of a1 (an earlier drain of the same miner) arrives: a2 stays
        await store.commit(stored(a2))
        await store.commit(over(a1))
        assert await store.load_drains() == [a2, b1]
    finally:
        await store.close()
    store = backend.new_store()
    await store.open()
    try:
        assert await store.load_drains() == [a2, b1]
        await store.commit(over(b1))
        await store.commit(over(b1))  # (an end written again, a retry: nothing more)
        assert await store.load_drains() == [a2]
        # in one group (queued together): a new drain of gpu-b, and the end of gpu-a's
        b2 = DrainRow("gpu-b", "ADMIN", T0 + 9)
        await _together(store, stored(b2), over(a2))
        assert await store.load_drains() == [b2]
    finally:
        await store.close()


async def _together(store: Store, *units: UnitOfWork) -> None:
    futures = [
        store.enqueue(u) for u in units
    ]  # (queued in one loop turn: the writer takes them as one group)
    for f in futures:
        await f


async def test_sqlite_store_of_schema_version_3_opens_with_no_drains(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    sqlite_store_of_version(path, 3).close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        assert await store.load_drains() == []
        await store.commit(_job_unit("job-v3"))
        await store.commit(stored(DrainRow("gpu-a", "ADMIN", T0)))
        assert await store.get_job("job-v3") is not None
        assert await store.load_drains() == [DrainRow("gpu-a", "ADMIN", T0)]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 4
    conn.close()


async def test_postgres_store_of_schema_version_3_opens_with_no_drains() -> None:
    schema = await create_schema()
    try:
        await (await postgres_schema_of_version(schema, 3)).close()
        store = open_store(pg_url(schema))
        await store.open()
        try:
            assert await store.load_drains() == []
            await store.commit(_job_unit("job-v3"))
            await store.commit(stored(DrainRow("gpu-a", "ADMIN", T0)))
            assert await store.get_job("job-v3") is not None
            assert await store.load_drains() == [DrainRow("gpu-a", "ADMIN", T0)]
        finally:
            await store.close()
        admin = await pg_admin()
        try:
            version = await admin.fetchval(f'SELECT max(version) FROM "{schema}".schema_version')
            assert version == len(POSTGRES_MIGRATIONS) >= 4
        finally:
            await admin.close()
    finally:
        await drop_schema(schema)


def _job_unit(job_id: str) -> UnitOfWork:
    job = make_job(job_id)
    unit = UnitOfWork()
    unit.add_new_job(job)
    unit.add_event(submitted_event(job))
    return unit
