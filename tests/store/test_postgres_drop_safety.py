"""A refused PostgreSQL start drops the store it made (close_unused, _remove_made): it must never drop a store
that holds another process' data, nor leave part of one (helper pg-drop-review). What failed before the fixes:

- The store this start made was told from another by the holder epoch alone: a counter, which a store made anew
  starts again at 1. A start whose migration COMMIT was lost before it landed took the epoch it had written (1)
  for its own; another process that made the store meanwhile, wrote a job and stopped, wrote epoch 1 too, and
  the first start's cleanup dropped that store, job and all (so too after the schema was emptied by hand and the
  store made anew). Now the whole holder row (epoch, holder, taken_us) must be the one this start wrote.
- A cleanup cancelled (a second stop signal) left the writer's connection open, holding the store's lock.
- A COMMIT whose answer was lost on a path cut on this side only (the backend living on, holding the lock), or
  a stop signal as the COMMIT went up (asyncpg then refuses a transaction on that connection), left the whole
  store made behind. Now the cleanup ends this start's own earlier session, as the writer does on reconnecting.

The other cases pass as they are; they pin what the cleanup must keep (the user's objects, public, a view over
the store, a store being rotated, the other of two starts at once) and that a failed migration changes nothing.

What is dropped is what the start's migration transaction made, as the catalog records it (helper h3; before, a
regex over the migrations' text): the objects another session made in the schema meanwhile are kept, the store's
tables altered since by the user are dropped all the same, and a schema named with capitals is no obstacle.
"""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import quote

import asyncpg
import pytest

import coordinator.store.postgres as pg
from coordinator.store.postgres import PostgresStore
from tests.tcp_relay import DOWN, UP, Link

from .pg_relay import PgRelay
from .store_support import PG_INSERT_JOB, PG_URL, create_schema, drop_schema, pg_admin, pg_url
from .test_postgres_commit_reply_error import submit_unit
from .test_postgres_keys_rotate_missing import keys_rotate
from .test_postgres_start_close_edges import tables_in


class CommitLostThenCleanupHeld(PgRelay):
    """The writer's first COMMIT (the migration's) never reaches the server: its link is reset as it goes up
    (nothing landed; the start cannot tell). The start's cleanup, on a new link, is held back until `release`."""

    half_close = False

    def __init__(self) -> None:
        super().__init__()
        self.commit_cut = asyncio.Event()
        self.release = asyncio.Event()

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and link.first and not self.commit_cut.is_set() and b"COMMIT" in data:
            self.commit_cut.set()
            link.reset()
            return None
        if direction == UP and not link.first and self.commit_cut.is_set():
            await self.release.wait()
        return data


async def test_a_start_whose_commit_was_lost_keeps_the_store_another_made_since(schema: str) -> None:
    relay = CommitLostThenCleanupHeld()
    await relay.start()
    try:
        starting = asyncio.ensure_future(PostgresStore(relay.url(schema)).open())
        await asyncio.wait_for(relay.commit_cut.wait(), 30)
        # another coordinator takes the empty schema (the lost start's backend is gone), makes the store
        # (holder epoch 1, as the lost start wrote), writes a job and stops
        other = PostgresStore(pg_url(schema))
        await other.open()
        try:
            await other.commit(submit_unit("job-of-the-other"))
        finally:
            await other.close()
        relay.release.set()  # the lost start's cleanup goes on
        with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await starting
    finally:
        await relay.close()
    assert "jobs" in (await tables_in(schema) or set()), "the other process' store was dropped"
    kept = PostgresStore(pg_url(schema))
    await kept.open()
    try:
        assert await kept.get_job("job-of-the-other") is not None
    finally:
        await kept.close()


async def test_a_refused_start_keeps_the_users_own_objects(schema: str) -> None:
    """Objects of the user's own in the store's schema (put there while the start ran) survive its cleanup: a
    table and a function beside the store, and a view over its jobs (which keeps the whole store)."""
    store = PostgresStore(pg_url(schema))
    await store.open()
    admin = await pg_admin()
    try:
        await admin.execute(f'CREATE TABLE "{schema}".mine (x int)')
        await admin.execute(f'INSERT INTO "{schema}".mine VALUES (7)')
        await admin.execute(
            f'CREATE FUNCTION "{schema}".aitbc_append_only(x int) RETURNS int LANGUAGE sql AS $$ SELECT x $$'
        )
        await store.close_unused()
        assert await tables_in(schema) == {"mine"}
        assert await admin.fetchval(f'SELECT x FROM "{schema}".mine') == 7
        assert await admin.fetchval(f'SELECT "{schema}".aitbc_append_only(3)') == 3
        # a view over the store's jobs: dropping the store would need CASCADE; it is kept whole
        again = PostgresStore(pg_url(schema))
        await again.open()
        await admin.execute(f'CREATE VIEW "{schema}".my_jobs AS SELECT job_id FROM "{schema}".jobs')
        await again.close_unused()
        assert {"jobs", "store_holder", "schema_version", "mine"} <= (await tables_in(schema) or set())
        assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".my_jobs') == 0
    finally:
        await admin.close()


async def test_a_refused_start_in_public_keeps_the_schema_and_the_users_tables() -> None:
    """No ?schema=: the store goes to public (the search path's first schema); ?schema=public the same. The
    cleanup drops its own tables, never public nor what the user keeps there."""
    database = f"aitbc_drop_{secrets.token_hex(4)}"
    admin = await pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        url = PG_URL.rsplit("/", 1)[0] + "/" + database
        user = await asyncpg.connect(url)
        try:
            await user.execute("CREATE TABLE public.mine (x int); INSERT INTO public.mine VALUES (7)")
            for store_url in (url, f"{url}?schema=public"):
                store = PostgresStore(store_url)
                await store.open()
                await store.commit(submit_unit("job-of-the-refused-start"))
                await store.close_unused()
                assert await tables_in_db(user, "public") == {"mine"}, store_url
                assert await user.fetchval("SELECT x FROM public.mine") == 7
        finally:
            await user.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def tables_in_db(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    return {r[0] for r in rows}


async def end_writer_backend(store: PostgresStore) -> None:
    """The store's writer connection ended by the server (pg_terminate_backend): its lock on the store is free."""
    assert store._conn is not None
    pid = store._conn.get_server_pid()
    admin = await pg_admin()
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(200):
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


@pytest.mark.parametrize("made_anew", [False, True], ids=["store taken", "store emptied and made anew"])
async def test_a_refused_start_keeps_the_store_another_process_took_and_wrote(
    schema: str, made_anew: bool
) -> None:
    """A start made the store, lost its connection (and the store's lock); another process took the store (or,
    the schema emptied by hand meanwhile, made it anew: epoch 1 again), wrote a job and stopped; then the first
    start is refused: its cleanup keeps the store."""
    first = PostgresStore(pg_url(schema))
    await first.open()
    try:
        await end_writer_backend(first)
        if made_anew:
            await drop_schema(schema)
        other = PostgresStore(pg_url(schema))
        await other.open()
        try:
            await other.commit(submit_unit("job-of-the-other"))
        finally:
            await other.close()
    finally:
        await first.close_unused()
    kept = PostgresStore(pg_url(schema))
    await kept.open()
    try:
        assert await kept.get_job("job-of-the-other") is not None
    finally:
        await kept.close()


async def objects_in(schema: str) -> list[str]:
    """Every relation (table, index, sequence, view), function and type in schema, as `kind name`."""
    admin = await pg_admin()
    try:
        rows = await admin.fetch(
            "SELECT 'rel ' || c.relkind::text || ' ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
            "c.relnamespace WHERE n.nspname = $1 UNION ALL SELECT 'proc ' || p.proname FROM pg_proc p JOIN "
            "pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 UNION ALL SELECT 'type ' || t.typname "
            "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1",
            schema,
        )
        return sorted(r[0] for r in rows)
    finally:
        await admin.close()


async def store_tables() -> set[str]:
    """The tables of a new store (made in a schema of its own, dropped again)."""
    schema = await create_schema()
    try:
        store = PostgresStore(pg_url(schema))
        await store.open()
        await store.close()
        return await tables_in(schema) or set()
    finally:
        await drop_schema(schema)


async def noted_as_made(store: PostgresStore) -> set[str]:
    """What the store's start noted it made (to drop again if refused), by qualified name."""
    assert store._made is not None, "the start made no store"
    admin = await pg_admin()
    try:
        rows = await admin.fetch(
            "SELECT i.identity FROM unnest($1::oid[], $2::oid[]) m (c, o), LATERAL pg_identify_object(m.c, m.o, 0) i",
            [c for c, _ in store._made.objects],
            [o for _, o in store._made.objects],
        )
        return {r[0] for r in rows}
    finally:
        await admin.close()


async def test_a_start_notes_exactly_what_its_migrations_made(schema: str) -> None:
    """What a start notes it made (read from the catalog in its migration transaction, for a refused start to drop
    it again) is every object of the new store that stands alone: its tables and its function, nothing of the
    user's (a table there before it); dropped, they leave nothing behind (no index, sequence, row type)."""
    admin = await pg_admin()
    try:
        await admin.execute(f'CREATE TABLE "{schema}".mine (x int)')
        store = PostgresStore(pg_url(schema))
        await store.open()
        noted = await noted_as_made(store)
        tables = (await tables_in(schema) or set()) - {"mine"}
        await store.close_unused()
        assert noted == {f"{schema}.{t}" for t in tables} | {f"{schema}.aitbc_append_only()"}
        assert tables == await store_tables() and "jobs" in tables
        assert await objects_in(schema) == ["rel r mine", "type _mine", "type mine"], "part of the store left"
    finally:
        await admin.close()


class UserMakesObjectsDuringMigration(PgRelay):
    """As the second migration's script goes up (the migration transaction open), a session of the user's makes a
    table and a function in the store's schema, and commits, before the script goes on."""

    def __init__(self, schema: str) -> None:
        super().__init__()
        self.schema = schema
        self.made = False

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and b"CREATE TABLE receipts" in data and not self.made:
            user = await pg_admin()
            try:
                await user.execute(
                    f'CREATE TABLE "{self.schema}".made_meanwhile (x int); '
                    f'INSERT INTO "{self.schema}".made_meanwhile VALUES (7); '
                    f'CREATE FUNCTION "{self.schema}".also_meanwhile() RETURNS int LANGUAGE sql AS $$ SELECT 7 $$'
                )
            finally:
                await user.close()
            self.made = True
        return data


async def test_a_refused_start_keeps_what_another_session_made_while_it_migrated(schema: str) -> None:
    """Objects another session made in the store's schema while the start's migration transaction was open (and
    committed before it) are the user's, not the start's: its cleanup keeps them, and drops the rest."""
    relay = UserMakesObjectsDuringMigration(schema)
    await relay.start()
    try:
        store = PostgresStore(relay.url(schema))
        await store.open()
        assert relay.made, "made during the migration (the situation under test)"
        await store.close_unused()
    finally:
        await relay.close()
    assert await objects_in(schema) == [
        "proc also_meanwhile",
        "rel r made_meanwhile",
        "type _made_meanwhile",
        "type made_meanwhile",
    ]
    admin = await pg_admin()
    try:
        assert await admin.fetchval(f'SELECT x FROM "{schema}".made_meanwhile') == 7
    finally:
        await admin.close()


async def test_a_refused_start_drops_its_tables_the_user_altered_since(schema: str) -> None:
    """The store's tables, altered since by the user (a column added, a grant, a comment, an index: their catalog
    rows written anew by other transactions), are still the start's own: all dropped."""
    store = PostgresStore(pg_url(schema))
    await store.open()
    admin = await pg_admin()
    try:
        await admin.execute(
            f'ALTER TABLE "{schema}".jobs ADD COLUMN note text; GRANT SELECT ON "{schema}".receipts TO PUBLIC; '
            f"COMMENT ON TABLE \"{schema}\".checkpoints IS 'x'; "
            f'CREATE INDEX ON "{schema}".job_events (reason); ANALYZE "{schema}".jobs'
        )
    finally:
        await admin.close()
    await store.close_unused()
    assert await objects_in(schema) == []


class CancelAtDrop(PgRelay):
    """Cancels `closing` (a second stop signal) as the cleanup's DROP goes up."""

    def __init__(self) -> None:
        super().__init__()
        self.closing: asyncio.Future[None] | None = None

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and b"DROP TABLE" in data and self.closing is not None:
            self.closing.cancel()
            self.closing = None
        return data


async def test_a_cleanup_cancelled_lets_the_store_go_whole(schema: str) -> None:
    """close_unused cancelled during its drop: the drop is rolled back (the store whole, not half dropped), and
    the writer's connection is closed all the same (it held the store's lock: the next start would be refused)."""
    relay = CancelAtDrop()
    await relay.start()
    try:
        store = PostgresStore(relay.url(schema))
        await store.open()
        await store.commit(submit_unit("job-of-the-refused-start"))
        closing = relay.closing = asyncio.ensure_future(store.close_unused())
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert relay.closing is None, "cancelled during the drop (the situation under test)"
        assert store._conn is None or store._conn.is_closed(), "the writer's connection (and lock) left open"
    finally:
        await relay.close()
    tables = await tables_in(schema) or set()
    assert tables in (set(), await store_tables()), f"half dropped: {sorted(tables)}"
    after = PostgresStore(pg_url(schema), lock_wait_s=0)
    await after.open()  # (the lock is free)
    await after.close()


async def test_keys_rotate_against_a_store_being_made(schema: str) -> None:
    """`keys rotate` on a store a start made and still holds is refused (it writes nothing there), and the start's
    cleanup drops the whole store; a rotation that got in while the start's lock was lost (its connection ended)
    wrote a key: that store is kept."""
    first = PostgresStore(pg_url(schema))
    await first.open()
    try:
        code, said = await keys_rotate(pg_url(schema))
        assert code == 2 and "open in another process" in said, said
    finally:
        await first.close_unused()
    assert await objects_in(schema) == []
    second = PostgresStore(pg_url(schema))
    await second.open()
    try:
        await end_writer_backend(second)
        code, said = await keys_rotate(pg_url(schema))
        assert code == 0, said
    finally:
        await second.close_unused()
    admin = await pg_admin()
    try:
        assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".signing_keys') >= 1
    finally:
        await admin.close()


@pytest.mark.parametrize("winner_refused", [False, True], ids=["winner serves", "winner refused"])
async def test_two_starts_at_once_on_a_schema_not_there(winner_refused: bool) -> None:
    """Two starts at once on a schema that does not exist yet: one takes the store and makes it (and the schema);
    the other waits for it. The winner serves (writes a job, stops) and the loser, refused, keeps its store; or
    the winner is refused and drops what it made, and the loser makes the store anew."""
    schema = f"store_test_{secrets.token_hex(6)}"
    try:
        stores = [PostgresStore(pg_url(schema)) for _ in range(2)]
        opening = {asyncio.ensure_future(s.open()): s for s in stores}
        done, waiting = await asyncio.wait(opening, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(waiting) == 1, "one start holds the store, the other waits"
        (won,) = done
        (lost,) = waiting
        won.result()
        winner, loser = opening[won], opening[lost]
        await winner.commit(submit_unit("job-of-the-winner"))
        if winner_refused:
            await winner.close_unused()
        else:
            await winner.close()
        await lost
        await loser.close_unused()
        if winner_refused:
            assert await tables_in(schema) is None, "the loser's refused start left the store it made"
        else:
            kept = PostgresStore(pg_url(schema))
            await kept.open()
            try:
                assert await kept.get_job("job-of-the-winner") is not None
            finally:
                await kept.close()
    finally:
        await drop_schema(schema)


async def test_a_migration_that_fails_changes_nothing(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration refused part way (here the 4th: the user keeps a table operator_drains of their own in the
    store's schema) leaves version, tables and holder epoch as they were; on a new store (the 2nd: a table
    receipts of the user's), no table is left; the user's tables keep their rows."""
    monkeypatch.setattr(pg, "POSTGRES_MIGRATIONS", pg.POSTGRES_MIGRATIONS[:3])
    old = PostgresStore(pg_url(schema))  # a store of the code before migration 4
    await old.open()
    await old.close()
    monkeypatch.undo()
    admin = await pg_admin()
    try:
        # a job it held (written as it would have: today's writer also keeps tables of later migrations)
        await admin.execute(f'SET search_path = "{schema}"')
        await admin.executemany(PG_INSERT_JOB, submit_unit("job-kept").new_jobs)
        holder = await admin.fetchrow(f'SELECT * FROM "{schema}".store_holder')
        await admin.execute(
            f'CREATE TABLE "{schema}".operator_drains (mine int); INSERT INTO "{schema}".operator_drains VALUES (7)'
        )
        with pytest.raises(asyncpg.DuplicateTableError):
            await PostgresStore(pg_url(schema)).open()
        assert await admin.fetchval(f'SELECT max(version) FROM "{schema}".schema_version') == 3
        assert await admin.fetchrow(f'SELECT * FROM "{schema}".store_holder') == holder
        assert await admin.fetchval(f'SELECT mine FROM "{schema}".operator_drains') == 7
        assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".jobs') == 1
        fresh = await create_schema()
        try:
            await admin.execute(
                f'CREATE TABLE "{fresh}".receipts (mine int); INSERT INTO "{fresh}".receipts VALUES (7)'
            )
            with pytest.raises(asyncpg.DuplicateTableError):
                await PostgresStore(pg_url(fresh)).open()
            assert await tables_in(fresh) == {"receipts"}
            assert await admin.fetchval(f'SELECT mine FROM "{fresh}".receipts') == 7
        finally:
            await drop_schema(fresh)
    finally:
        await admin.close()


class CommitAnswerLost(PgRelay):
    """The writer's first COMMIT (the migration's) lands, and its answer is lost: the link dropped on this side
    only ("half": the server's backend lives on, idle, holding the store's lock, until keepalive reaps it) or
    reset ("rst")."""

    half_close = False

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.cut_done = False

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and link.first and not self.cut_done and b"COMMIT" in data:
            link.notes["swallow"] = True
        elif direction == DOWN and link.notes.pop("swallow", False):
            self.cut_done = True
            link.drop_client_side() if self.how == "half" else link.reset()
            return None
        return data


@pytest.mark.parametrize("how", ["half", "rst"])
async def test_a_start_whose_commit_answer_was_lost_removes_the_store_it_made(schema: str, how: str) -> None:
    relay = CommitAnswerLost(how)
    await relay.start()
    try:
        with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await PostgresStore(relay.url(schema)).open()
        assert relay.cut_done, "the COMMIT's answer was lost (the situation under test)"
        assert await objects_in(schema) == [], "the start left the store it made"
    finally:
        await relay.close()
    after = PostgresStore(pg_url(schema), lock_wait_s=0)  # (and nothing holds the store)
    await after.open()
    await after.close()


class StopAtCommit(PgRelay):
    """Cancels `starting` (a stop signal during start) as the migration's COMMIT goes up (it lands)."""

    def __init__(self) -> None:
        super().__init__()
        self.starting: asyncio.Future[None] | None = None

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and link.first and b"COMMIT" in data and self.starting is not None:
            self.starting.cancel()
            self.starting = None
        return data


async def test_a_start_stopped_as_its_migration_commits_removes_the_store_it_made(schema: str) -> None:
    relay = StopAtCommit()
    await relay.start()
    try:
        starting = relay.starting = asyncio.ensure_future(PostgresStore(relay.url(schema)).open())
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert relay.starting is None, "stopped as the migration committed (the situation under test)"
    finally:
        await relay.close()
    assert await objects_in(schema) == [], "the stopped start left the store it made"
    after = PostgresStore(pg_url(schema), lock_wait_s=0)
    await after.open()
    await after.close()


async def test_a_cleanup_that_cannot_lock_a_table_keeps_the_store_whole(schema: str) -> None:
    """A session of the user's reading the new store's jobs (its transaction open) holds the drop up past the
    cleanup's lock_timeout: nothing is dropped (not the tables it could lock either), the lock is let go."""
    store = PostgresStore(pg_url(schema))
    await store.open()
    reader = await pg_admin()
    try:
        await reader.execute(f'BEGIN; SELECT count(*) FROM "{schema}".jobs')
        await store.close_unused()
        assert await tables_in(schema) == await store_tables()
        await reader.execute("ROLLBACK")
    finally:
        await reader.close()
    after = PostgresStore(pg_url(schema), lock_wait_s=0)
    await after.open()
    await after.close()


async def test_a_refused_start_drops_its_store_in_a_schema_named_with_capitals() -> None:
    """A schema named with capitals (?schema=, or the search path's first schema): quoted, by the catalog too, in
    the names the cleanup drops; the refused start drops its store there all the same, and keeps the schema it did
    not make. (A name with a double quote: tests/integration/test_zz_repro_pg_cleanup_drift.py.)"""
    name = f"Store_Test_{secrets.token_hex(4)}"
    admin = await pg_admin()
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        search_path = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={quote(chr(34) + name + chr(34))}"
        for url in (pg_url(name), search_path):
            store = PostgresStore(url)
            await store.open()
            assert store._made is not None and store._made.schema == name, "made in that schema"
            await store.close_unused()
            assert await objects_in(name) == [], f"the refused start left the store it made ({url})"
            assert await tables_in(name) == set(), "the schema it did not make is kept"
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await admin.close()
