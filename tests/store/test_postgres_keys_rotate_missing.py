"""`keys rotate --database postgresql://...?schema=NAME` naming no store is refused (exit 2, "no store at"), as a
SQLite path naming no file is, and makes nothing. (Review round 26: it created the schema and a store in it, and
reported the key of that empty store 'retired', exit 0: a mistyped schema, and the coordinator's key never
rotated.)"""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

from coordinator.store.postgres import PostgresStore

from .store_support import create_schema, drop_schema, pg_admin, pg_url

ROOT = Path(__file__).resolve().parents[2]


async def keys_rotate(url: str) -> tuple[int, str]:
    rotation = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator", "keys", "rotate", "--database", url, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    said, _ = await asyncio.wait_for(rotation.communicate(), 60)
    assert rotation.returncode is not None
    return rotation.returncode, said.decode()


async def tables_in(schema: str) -> list[str]:
    admin = await pg_admin()
    try:
        rows = await admin.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        return [r["table_name"] for r in rows]
    finally:
        await admin.close()


async def schema_exists(schema: str) -> bool:
    admin = await pg_admin()
    try:
        return await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 1
    finally:
        await admin.close()


async def test_keys_rotate_refuses_a_schema_that_does_not_exist() -> None:
    schema = f"typo_{secrets.token_hex(6)}"
    try:
        code, said = await keys_rotate(pg_url(schema))
        assert code == 2 and "no store at" in said and "Traceback" not in said, (code, said)
        assert not await schema_exists(schema), "keys rotate made the schema"
    finally:
        await drop_schema(schema)


async def test_keys_rotate_refuses_a_schema_holding_no_store() -> None:
    schema = await create_schema()  # (empty: no coordinator ever opened it)
    try:
        code, said = await keys_rotate(pg_url(schema))
        assert code == 2 and "no store at" in said and "Traceback" not in said, (code, said)
        assert await tables_in(schema) == [], "keys rotate made a store"
    finally:
        await drop_schema(schema)


async def test_keys_rotate_rotates_the_key_of_a_store_that_exists() -> None:
    schema = await create_schema()
    try:
        store = PostgresStore(pg_url(schema))  # (as a coordinator opens it: the store is made)
        await store.open()
        await store.close()
        code, said = await keys_rotate(pg_url(schema))
        assert code == 0 and "new active coordinator key" in said, (code, said)
    finally:
        await drop_schema(schema)
