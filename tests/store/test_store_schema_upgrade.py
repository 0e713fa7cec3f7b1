"""A store written before fencing (schema version 2: no store_holder) opens with today's code: migration 3
adds the holder record, the process bumps its epoch (SQLite: with its first commit), and what the store held
reads back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.store import open_store
from coordinator.store.base import UnitOfWork
from coordinator.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS

from .store_support import (
    create_schema,
    drop_schema,
    make_job,
    pg_admin,
    pg_url,
    postgres_schema_of_version,
    sqlite_store_of_version,
    submitted_event,
)


async def test_sqlite_store_of_schema_version_2_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite_store_of_version(path, 2).close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        await store.commit(_unit())
        assert await store.get_job("job-old-1") is not None
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT epoch FROM store_holder").fetchall() == [(1,)]
    conn.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        await store.commit(_unit("job-old-2"))
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT epoch FROM store_holder").fetchall() == [(2,)]
    conn.close()


async def test_postgres_store_of_schema_version_2_opens() -> None:
    schema = await create_schema()
    try:
        await (await postgres_schema_of_version(schema, 2)).close()
        for expected in (1, 2):
            store = open_store(pg_url(schema))
            await store.open()
            try:
                await store.commit(_unit(f"job-old-{expected}"))
                assert await store.get_job(f"job-old-{expected}") is not None
            finally:
                await store.close()
            admin = await pg_admin()
            try:
                assert await admin.fetchval(f'SELECT epoch FROM "{schema}".store_holder') == expected
                assert await admin.fetchval(f'SELECT max(version) FROM "{schema}".schema_version') == len(
                    POSTGRES_MIGRATIONS
                )
            finally:
                await admin.close()
    finally:
        await drop_schema(schema)


def _unit(job_id: str = "job-old-1") -> UnitOfWork:
    job = make_job(job_id)
    unit = UnitOfWork()
    unit.add_new_job(job)
    unit.add_event(submitted_event(job))
    return unit
