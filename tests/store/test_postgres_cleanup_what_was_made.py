"""A refused PostgreSQL start drops the store it made (close_unused): what it drops must be what its migration
transaction made (as the catalog records it), not names read out of the migrations' text. What failed when
they were (a regex over the SQL):

- The drop list came from a regex over the SQL text (`CREATE TABLE name`, `CREATE FUNCTION name(...)`): a
  migration that makes anything else (a view, a sequence, a type, a table written `create table` or quoted, a
  `CREATE OR REPLACE FUNCTION`) left that behind, and with it the schema the start made (DROP SCHEMA refused).
- A name in a comment of a migration (`-- was: CREATE TABLE mine`) was taken for a table of the store's: the
  cleanup dropped the user's own table of that name, rows and all.
- A store in a schema whose name holds a double quote (no ?schema=: the search path's first schema) was named
  unescaped in the cleanup's SQL: refused for its syntax, the cleanup left the whole store behind.

Real PostgreSQL (127.0.0.1:5432, database test), a schema per test.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote

import pytest

import coordinator.store.postgres as pg
from coordinator.store.postgres import PostgresStore

from .store_support import PG_URL, drop_schema, pg_admin, pg_url
from .test_postgres_drop_safety import objects_in

# Objects the regex did not see: lower case, quoted, IF NOT EXISTS, OR REPLACE, and kinds other than a table.
UNSEEN_BY_THE_REGEX = """
create table extra_lower (x bigint);
CREATE TABLE "Extra_Quoted" (x bigint);
CREATE TABLE IF NOT EXISTS extra_if_not_exists (x bigint);
CREATE SEQUENCE extra_sequence;
CREATE TYPE extra_mood AS ENUM ('calm', 'busy');
CREATE DOMAIN extra_positive AS bigint CHECK (VALUE > 0);
CREATE VIEW extra_queued AS SELECT job_id FROM jobs WHERE state = 1;
CREATE OR REPLACE FUNCTION extra_twice(x bigint) RETURNS bigint LANGUAGE sql AS $$ SELECT 2 * x $$;
"""

# A migration whose comment names a table of the user's (the table it replaced, say): it makes no such table.
NAMES_THE_USERS_TABLE = """
-- (the drains were kept in a table of their own before; was: CREATE TABLE mine (x int))
CREATE TABLE extra_notes (note TEXT NOT NULL);
"""


def with_one_more_migration(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """The store's migrations and one more, as a later version of the code would have them."""
    monkeypatch.setattr(pg, "POSTGRES_MIGRATIONS", [*pg.POSTGRES_MIGRATIONS, script])


async def test_a_refused_start_drops_everything_its_migrations_made(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_one_more_migration(monkeypatch, UNSEEN_BY_THE_REGEX)
    store = PostgresStore(pg_url(schema))
    await store.open()
    await store.close_unused()
    assert await objects_in(schema) == [], "the refused start left part of the store it made"


async def test_a_refused_start_that_made_the_schema_drops_it_whatever_its_migrations_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_one_more_migration(monkeypatch, UNSEEN_BY_THE_REGEX)
    schema = f"store_test_{secrets.token_hex(6)}"
    try:
        store = PostgresStore(pg_url(schema))
        await store.open()
        await store.close_unused()
        admin = await pg_admin()
        try:
            left = await admin.fetchval("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema)
        finally:
            await admin.close()
        assert not left, f"the refused start left the schema it made: {await objects_in(schema)}"
    finally:
        await drop_schema(schema)


async def test_a_refused_start_keeps_the_users_table_a_migrations_comment_names(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_one_more_migration(monkeypatch, NAMES_THE_USERS_TABLE)
    admin = await pg_admin()
    try:
        await admin.execute(f'CREATE TABLE "{schema}".mine (x int); INSERT INTO "{schema}".mine VALUES (7)')
        store = PostgresStore(pg_url(schema))
        await store.open()
        await store.close_unused()
        assert await objects_in(schema) == ["rel r mine", "type _mine", "type mine"], "not left as found"
        assert await admin.fetchval(f'SELECT x FROM "{schema}".mine') == 7
    finally:
        await admin.close()


async def test_a_refused_start_drops_its_store_in_a_schema_whose_name_needs_quoting() -> None:
    """No ?schema=: the store goes to the search path's first schema (here given as a server setting of the URL),
    whose name may hold a double quote. The cleanup quoted it as it was (`"h3 "odd""`): invalid name syntax, and
    the whole store made was left behind."""
    name = f'store_test_{secrets.token_hex(4)} "odd"'
    quoted = '"' + name.replace('"', '""') + '"'
    admin = await pg_admin()
    try:
        await admin.execute(f"CREATE SCHEMA {quoted}")
        store = PostgresStore(f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={quote(quoted)}")
        await store.open()
        assert store._made is not None and store._made.schema == name, "the store is made in that schema"
        await store.close_unused()
        assert await objects_in(name) == [], "the refused start left the store it made"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
        await admin.close()
