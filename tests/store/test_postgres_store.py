"""What only the PostgreSQL store has: URL options, the schema_version table and its migration lock,
TRUNCATE refused on append-only tables, and a writer that survives losing its connection."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest

from coordinator.store import open_store
from coordinator.store.base import DrainRow, StoreInUse, UnitOfWork
from coordinator.store.postgres import PostgresStore, parse_url
from coordinator.store.schema import APPEND_ONLY, POSTGRES_MIGRATIONS
from tests.tcp_relay import DOWN, UP, Link

from .pg_relay import PgRelay
from .store_support import PG_URL, drop_schema, make_job, pg_admin, pg_url
from .test_store_contract import new_jobs_unit, receipt


def test_open_store_selects_postgres_for_both_schemes() -> None:
    for url in ("postgres://u@db:5432/x?schema=s1", "postgresql://u:pw@db/x?sslmode=disable&schema=s1"):
        store = open_store(url)
        assert isinstance(store, PostgresStore) and store.schema == "s1"
    assert parse_url("postgresql://u:pw@db:5432/x?sslmode=require&schema=abc") == (
        "postgresql://u:pw@db:5432/x?sslmode=require",
        "abc",
    )
    assert parse_url("postgresql://db/x") == ("postgresql://db/x", None)
    for bad in ("a-b", "x;drop", "", "1abc", 'q"uote'):
        with pytest.raises(ValueError, match="schema"):
            open_store(f"postgresql://db/x?schema={bad}")
    with pytest.raises(ValueError, match="postgresql://"):
        open_store("mysql://db/x")


async def test_migrations_are_recorded_once_and_one_store_opens_when_several_open_together(
    schema: str,
) -> None:
    """Three processes opening one schema at once: the migrations run once (an advisory lock serializes them);
    then one holds the schema and the others are refused StoreInUse (two coordinators on one schema would both
    schedule its jobs), until it closes."""
    stores = [PostgresStore(pg_url(schema), lock_wait_s=0.5) for _ in range(3)]
    outcomes = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
    opened = [s for s, o in zip(stores, outcomes, strict=True) if o is None]
    assert len(opened) == 1 and all(isinstance(o, StoreInUse) for o in outcomes if o is not None), outcomes
    await opened[0].close()
    again = PostgresStore(pg_url(schema))
    await again.open()  # free again once the holder closed
    await again.close()
    conn = await pg_admin()
    try:
        versions = await conn.fetch(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
        assert [r[0] for r in versions] == list(range(1, len(POSTGRES_MIGRATIONS) + 1))
        tables = {
            r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        }
        assert tables >= {"jobs", "job_events", "job_results", "signing_keys", "schema_version", *APPEND_ONLY}
    finally:
        await conn.close()


async def test_a_schema_newer_than_the_code_is_refused(schema: str) -> None:
    store = PostgresStore(pg_url(schema))
    await store.open()
    await store.close()
    conn = await pg_admin()
    try:
        await conn.execute(f'INSERT INTO "{schema}".schema_version VALUES (99, 0)')
    finally:
        await conn.close()
    with pytest.raises(RuntimeError, match="schema version 99 is newer"):
        await PostgresStore(pg_url(schema)).open()


async def test_the_schema_is_created_when_missing() -> None:
    name = f"store_test_{secrets.token_hex(6)}"  # not created beforehand: the store creates it
    store = PostgresStore(f"{PG_URL}?schema={name}")
    try:
        await store.open()
        await store.commit(new_jobs_unit(make_job("job-1")))
        assert await store.get_job("job-1") is not None
        await store.close()
    finally:
        await drop_schema(name)


async def test_append_only_tables_refuse_truncate(schema: str) -> None:
    store = PostgresStore(pg_url(schema))
    await store.open()
    await store.close()
    conn = await pg_admin()
    try:
        for table in APPEND_ONLY:
            with pytest.raises(Exception, match=f"{table} is append-only"):
                await conn.execute(f'TRUNCATE "{schema}".{table}')
        await conn.execute(f'TRUNCATE "{schema}".jobs')  # not append-only
    finally:
        await conn.close()


async def test_the_writer_reconnects_after_losing_its_connection(schema: str) -> None:
    store = PostgresStore(pg_url(schema))
    await store.open()
    try:
        await store.commit(new_jobs_unit(make_job("job-before")))
        pid = store._conn.get_server_pid()  # type: ignore[union-attr]
        conn = await pg_admin()
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        await asyncio.sleep(0.1)
        await store.commit(new_jobs_unit(make_job("job-after")))
        assert await store.get_job("job-after") is not None
        assert store._conn.get_server_pid() != pid  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_commit_after_close_is_refused(schema: str) -> None:
    store = PostgresStore(pg_url(schema))
    await store.open()
    await store.close()
    with pytest.raises(RuntimeError, match="store not open"):
        await store.commit(new_jobs_unit(make_job("job-late")))


class CommitCutter(PgRelay):
    """A relay to PostgreSQL. Armed, it lets the next COMMIT through, and when the server answers (it has
    committed) cuts the connection instead of passing the answer on: the outcome the client sees is unknown."""

    half_close = False

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.cuts = 0

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and self.armed and b"COMMIT" in data:
            self.armed = False
            link.notes["cut"] = True
        elif direction == DOWN and link.notes.get("cut"):
            self.cuts += 1  # the COMMIT's answer: it is done on the server, and never reaches the client
            link.reset()
            return None
        return data


async def test_a_commit_cut_off_after_the_server_committed_is_reported_as_landed(schema: str) -> None:
    """The connection is lost after the server carried out the COMMIT: retried, the group would fail on its
    own rows (duplicate keys) and be reported failed, though it is stored; the coordinator would then drop
    a stored job from memory, or give its receipt's place in the log to the next one."""
    proxy = CommitCutter()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        proxy.armed = True
        unit = new_jobs_unit(make_job("job-cut"))
        unit.receipts.append(dataclasses.replace(receipt("rc-cut", "job-cut", 1, 0), leaf_index=-1))
        await store.commit(unit)  # raised UniqueViolation before
        assert proxy.cuts == 1
        assert await store.get_job("job-cut") is not None
        assert unit.receipts[0].leaf_index == 0  # the place it holds in the stored log
        after = new_jobs_unit(make_job("job-after"))
        after.receipts.append(dataclasses.replace(receipt("rc-after", "job-after", 1, 1), leaf_index=-1))
        await store.commit(after)
        assert after.receipts[0].leaf_index == 1
        assert [r.receipt_id for r in await store.get_receipts("job-cut")] == ["rc-cut"]
    finally:
        await store.close()
        await proxy.close()


class DownAfterCut(CommitCutter):
    """After the cut, the server is unreachable until `refusing` (a restart, a failover)."""

    refusing = 0.0

    def accepting(self) -> bool:
        return not (self.cuts and asyncio.get_running_loop().time() < self.refusing)


async def test_a_cut_commit_is_looked_up_until_the_server_answers_again(schema: str) -> None:
    """After the cut the server is unreachable for a while (a restart, a failover): "cannot tell" is not
    "did not land". The group, stored, was reported failed."""

    proxy = DownAfterCut()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        proxy.refusing = asyncio.get_running_loop().time() + 1.0
        proxy.armed = True
        await store.commit(new_jobs_unit(make_job("job-cut")))
        assert proxy.cuts == 1 and await store.get_job("job-cut") is not None
    finally:
        await store.close()
        await proxy.close()


async def test_a_cut_commit_of_a_drain_alone_is_looked_up_too(schema: str) -> None:
    """An operator's drain is a group of its own (DrainMiner's write): with no job event to look up, a cut
    commit of it counted as not landed, and with the server away for a moment its retry failed too: the drain
    was reported failed though stored (the next start applied it)."""

    proxy = DownAfterCut()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        proxy.refusing = asyncio.get_running_loop().time() + 1.0
        proxy.armed = True
        unit = UnitOfWork()
        unit.drains.append(DrainRow("gpu-cut", "ADMIN", 1_750_000_000_000_000))
        await store.commit(unit)
        assert proxy.cuts == 1 and await store.load_drains() == unit.drains
    finally:
        await store.close()
        await proxy.close()
