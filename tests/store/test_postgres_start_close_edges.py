"""Three edges of the PostgreSQL store's life cycle (helper pg-edges):

(a) A start that fails part way leaves the database as it found it. The migrations ran one transaction each (and
    the schema was created before them, on its own): a connection lost (or a stop signal) during the second left
    the schema and the first migration's tables; a start that failed after migrating (its read pool not connecting; a later step, a
    port in use, refusing it: close_unused) left the whole new store, its keys and holder epoch. Now every
    pending migration and the epoch's bump are one transaction, and a start refused after it drops the store it
    made (and its schema, if it made it); a store it did not make is kept.
(b) close() during the settling of an in-doubt COMMIT (the probe that reads back whether the group landed, asked
    again until the server answers) ended only once the probe's own try did (CONNECT_TIMEOUT_S, 10 s, after the
    10 s close() first gave the writer): now close() ends the probe at once, and the unit fails as the store
    unreachable (its outcome unknown; the next start reads what landed).
(c) A connect cancelled a moment after its TCP connection was made (a stop during start; a read's task
    cancelled while its pool connection was being made) left asyncpg's SSL-probe future failed and unread:
    "Future exception was never retrieved" in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import coordinator.store.postgres as pg
from coordinator.config import SettingsError
from coordinator.server import start
from coordinator.store.base import store_unreachable
from coordinator.store.postgres import PostgresStore
from tests.tcp_relay import DOWN, UP, Link

from .pg_relay import PgRelay
from .store_support import create_schema, drop_schema, pg_admin, pg_url
from .test_postgres_chaos import settings as coordinator_settings
from .test_postgres_commit_reply_error import submit_unit


async def tables_in(schema: str) -> set[str] | None:
    """The tables of schema; None when there is no such schema."""
    admin = await pg_admin()
    try:
        if not await admin.fetchval("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema):
            return None
        rows = await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        return {r[0] for r in rows}
    finally:
        await admin.close()


async def functions_in(schema: str) -> set[str]:
    admin = await pg_admin()
    try:
        rows = await admin.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
            schema,
        )
        return {r[0] for r in rows}
    finally:
        await admin.close()


@pytest.fixture(params=["schema made by the start", "schema there, empty"])
async def place(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, bool]]:
    """(a schema name, whether it existed before the start): the store goes there."""
    if request.param == "schema made by the start":
        name = f"store_test_{secrets.token_hex(6)}"
        existed = False
    else:
        name = await create_schema()
        existed = True
    try:
        yield name, existed
    finally:
        await drop_schema(name)


async def assert_left_as_found(schema: str, existed: bool) -> None:
    tables = await tables_in(schema)
    if existed:
        assert tables == set(), f"the failed start left tables in {schema}: {sorted(tables or ())}"
        assert await functions_in(schema) == set(), "the failed start left its function"
    else:
        assert tables is None, f"the failed start left schema {schema} (tables: {sorted(tables or ())})"


async def a_working_store(url: str) -> None:
    """The next start, on the same place: it migrates from scratch and works."""
    store = PostgresStore(url)
    await store.open()
    try:
        await store.commit(submit_unit("job-after"))
        assert await store.get_job("job-after") is not None
    finally:
        await store.close()


# ------------------------------------------------------------------------------------------------ (a)
class CutAtMigration(PgRelay):
    """Resets the writer's link (the relay's first) as the second migration's script goes up."""

    half_close = False

    def __init__(self) -> None:
        super().__init__()
        self.cut_done = False

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and link.first and b"CREATE TABLE receipts" in data:
            self.cut_done = True
            link.reset()
            return None
        return data


async def test_a_start_whose_connection_is_lost_during_migration_leaves_nothing(
    place: tuple[str, bool],
) -> None:
    schema, existed = place
    relay = CutAtMigration()
    await relay.start()
    try:
        with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await PostgresStore(relay.url(schema)).open()
        assert relay.cut_done, "the connection was cut during the migration (the situation under test)"
    finally:
        await relay.close()
    await assert_left_as_found(schema, existed)
    await a_working_store(pg_url(schema))


class StopAtMigration(PgRelay):
    """Cancels `starting` (a stop signal during start) as the second migration's script goes up."""

    def __init__(self) -> None:
        super().__init__()
        self.starting: asyncio.Future[None] | None = None

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and b"CREATE TABLE receipts" in data and self.starting is not None:
            self.starting.cancel()
            self.starting = None
        return data


async def test_a_start_stopped_during_migration_leaves_nothing(place: tuple[str, bool]) -> None:
    schema, existed = place
    relay = StopAtMigration()
    await relay.start()
    try:
        starting = relay.starting = asyncio.ensure_future(PostgresStore(relay.url(schema)).open())
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert relay.starting is None, "stopped during the migration (the situation under test)"
    finally:
        await relay.close()
    await assert_left_as_found(schema, existed)
    await a_working_store(pg_url(schema))


class WriterOnly(PgRelay):
    """Relays the first connection (the writer's) and refuses every other one (the read pool's)."""

    def accepting(self) -> bool:
        return self.accepted == 0


async def test_a_start_whose_read_pool_cannot_connect_leaves_nothing(place: tuple[str, bool]) -> None:
    schema, existed = place
    relay = WriterOnly()
    await relay.start()
    try:
        with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await PostgresStore(relay.url(schema)).open()
    finally:
        await relay.close()
    await assert_left_as_found(schema, existed)
    await a_working_store(pg_url(schema))


async def test_a_start_refused_after_opening_removes_the_store_it_made(place: tuple[str, bool]) -> None:
    schema, existed = place
    store = PostgresStore(pg_url(schema))
    await store.open()
    await store.commit(submit_unit("job-of-the-refused-start"))  # (a start writes its keys before serving)
    await store.close_unused()  # this start is refused (a port in use, say)
    await assert_left_as_found(schema, existed)
    await a_working_store(pg_url(schema))


async def test_a_refused_start_keeps_a_store_it_did_not_make(place: tuple[str, bool]) -> None:
    schema, _ = place
    first = PostgresStore(pg_url(schema))
    await first.open()
    await first.commit(submit_unit("job-kept"))
    await first.close()
    refused = PostgresStore(pg_url(schema))
    await refused.open()
    await refused.close_unused()
    kept = PostgresStore(pg_url(schema))
    await kept.open()
    try:
        assert await kept.get_job("job-kept") is not None
    finally:
        await kept.close()


async def test_a_coordinator_refused_for_a_port_in_use_leaves_no_postgres_store_behind(
    place: tuple[str, bool],
) -> None:
    schema, existed = place
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        settings = dataclasses.replace(coordinator_settings(pg_url(schema)), app_port=busy)
        with pytest.raises(SettingsError, match="APP_PORT"):
            await start(settings)
    await assert_left_as_found(schema, existed)


# ------------------------------------------------------------------------------------------------ (b)
class CommitAnswerLostThenSilent(PgRelay):
    """Armed: the answer to the writer's next COMMIT is swallowed and its link reset (the COMMIT landed, the
    writer cannot tell); from then on every new link (the settling probe's) is silent."""

    half_close = False

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.answer_cut = asyncio.Event()
        self.silent_links: list[Link] = []

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if self.answer_cut.is_set() and link.notes.get("new"):
            if link not in self.silent_links:
                self.silent_links.append(link)
            await asyncio.Event().wait()  # (held back for good: the relay's close cuts it)
        if direction == UP and link.first and self.armed and b"COMMIT" in data:
            self.armed = False
            link.notes["swallow"] = True
        elif direction == DOWN and link.notes.pop("swallow", False):
            self.answer_cut.set()
            link.reset()
            return None
        return data

    def accepting(self) -> bool:
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        before = set(self.links)
        await super()._accept(reader, writer)
        for link in set(self.links) - before:
            link.notes["new"] = self.answer_cut.is_set()


async def test_close_ends_the_settling_of_an_in_doubt_commit_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each try of the probe, and close()'s wait for the writer, would last an hour: only close() ending the probe
    # lets close() return while the probe's path is still silent.
    monkeypatch.setattr(pg, "CONNECT_TIMEOUT_S", 3600.0)
    schema = await create_schema()
    try:
        await close_during_settling(schema)
        again = PostgresStore(pg_url(schema))  # the next start reads what landed
        await again.open()
        try:
            assert await again.get_job("job-in-doubt") is not None
        finally:
            await again.close()
    finally:
        await drop_schema(schema)


async def close_during_settling(schema: str) -> None:
    relay = CommitAnswerLostThenSilent()
    await relay.start()
    store = PostgresStore(relay.url(schema))
    await store.open()
    closing: asyncio.Future[None] | None = None
    try:
        relay.armed = True
        pending = store.enqueue(submit_unit("job-in-doubt"))
        await asyncio.wait_for(relay.answer_cut.wait(), 30)
        for _ in range(600):  # the probe's connection reached the relay, and is held there
            if relay.silent_links:
                break
            await asyncio.sleep(0.05)
        assert relay.silent_links, "the settling probe is on a silent path (the situation under test)"
        closing = asyncio.ensure_future(store.close())
        done, _ = await asyncio.wait({closing}, timeout=20)  # (a hang guard: an hour before the fix)
        assert done, "close() waits for the settling probe"
        await closing
        assert pending.done()
        error = pending.exception()
        assert error is not None and store_unreachable(error), repr(error)  # UNAVAILABLE: its outcome unknown
    finally:
        await relay.close()  # (the probe's path cut: a close() still waiting ends)
        if closing is None:
            await store.close()
        else:
            await asyncio.wait({closing}, timeout=20)


# ------------------------------------------------------------------------------------------------ (c)
class NoUnretrievedErrors:
    """Collects what the loop's exception handler is given (asyncio's 'Future exception was never retrieved',
    logged when such a future is collected)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.loop = asyncio.get_running_loop()

    def __enter__(self) -> NoUnretrievedErrors:
        self.loop.set_exception_handler(lambda _, context: self.seen.append(context))
        return self

    def __exit__(self, *exc: object) -> None:
        gc.collect()
        self.loop.set_exception_handler(None)

    def messages(self) -> list[str]:
        return [f"{c.get('message')}: {c.get('exception')!r}" for c in self.seen]


async def cancel_after(awaitable: Any, turns: int) -> Any:
    """awaitable's result, or None when it was cancelled after `turns` turns of the loop."""
    task = asyncio.ensure_future(awaitable)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return None
    finally:
        for _ in range(5):  # (the transport's last callbacks)
            await asyncio.sleep(0)
        gc.collect()


async def test_a_start_cancelled_while_connecting_logs_no_unretrieved_future() -> None:
    schema = await create_schema()
    try:
        with NoUnretrievedErrors() as errors:
            for turns in range(0, 40):  # every point of the writer's connect
                store = PostgresStore(pg_url(schema))
                if await cancel_after(store.open(), turns) is not None or store._conn is not None:
                    await store.close()
        assert errors.messages() == []
    finally:
        await drop_schema(schema)


async def test_a_read_cancelled_while_its_pool_connection_is_made_logs_no_unretrieved_future() -> None:
    schema = await create_schema()
    store = PostgresStore(pg_url(schema), pool_size=1)
    await store.open()
    try:
        await store.commit(submit_unit("job-1"))
        with NoUnretrievedErrors() as errors:
            for turns in range(0, 40):
                assert store._pool is not None
                await store._pool.expire_connections()  # (the next read makes a new connection)
                with contextlib.suppress(Exception):
                    await cancel_after(store.get_job("job-1"), turns)
        assert errors.messages() == []
        assert await store.get_job("job-1") is not None  # (the store still reads)
    finally:
        await store.close()
        await drop_schema(schema)


async def test_a_start_against_a_newer_store_changes_nothing_and_lets_it_go() -> None:
    """A store a newer version migrated further (a version this code does not know): the start is refused before
    it writes anything (no epoch bump, no migration, nothing dropped: it made no store), and lets the lock go, for
    the newer version to start at once."""
    schema = await create_schema()
    admin = await pg_admin()
    try:
        made = PostgresStore(pg_url(schema))
        await made.open()
        await made.commit(submit_unit("job-of-the-newer-version"))
        await made.close()
        await admin.execute(
            f'INSERT INTO "{schema}".schema_version VALUES ($1, 0)', len(pg.POSTGRES_MIGRATIONS) + 1
        )
        before = await holder_and_versions(admin, schema)
        older = PostgresStore(pg_url(schema))
        with pytest.raises(RuntimeError, match="is newer than this coordinator's"):
            await older.open()
        assert older._made is None and older._conn is None
        assert await holder_and_versions(admin, schema) == before
        assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".jobs') == 1
        # (the lock is free: a store of its own version would open at once)
        assert await admin.fetchval(
            "SELECT pg_try_advisory_lock(hashtext($1)::bigint)", f"aitbc-store:{schema}"
        )
    finally:
        await admin.close()
        await drop_schema(schema)


async def holder_and_versions(admin: asyncpg.Connection, schema: str) -> tuple[tuple, list[int]]:
    """The store's holder row (epoch, holder, taken_us) and the schema versions it records."""
    holder = await admin.fetchrow(f'SELECT epoch, holder, taken_us FROM "{schema}".store_holder')
    versions = await admin.fetch(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
    return tuple(holder), [r[0] for r in versions]
