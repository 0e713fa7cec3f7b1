"""The server's idle_session_timeout (a DBA's setting for the role or the database; here the URL's) does not end
the writer's idle connection: that connection holds the store's lock, and ended, it let a second coordinator or
`keys rotate` take the store while this one ran (which then found itself fenced at its next write, and stopped).
(Review round 26.)"""

from __future__ import annotations

import asyncio

import pytest

from coordinator.store.base import StoreInUse
from coordinator.store.postgres import PostgresStore

from .store_support import create_schema, drop_schema, pg_url
from .test_postgres_writer_lock import key_unit


async def test_the_writer_keeps_the_store_through_the_servers_idle_session_timeout() -> None:
    schema = await create_schema()
    store = PostgresStore(pg_url(schema) + "&idle_session_timeout=300")
    await store.open()
    try:
        await store.commit(key_unit(0))
        await asyncio.sleep(1.0)  # idle, past the server's idle_session_timeout
        other = PostgresStore(pg_url(schema), lock_wait_s=0)  # (as `keys rotate` opens it)
        with pytest.raises(StoreInUse):
            await other.open()
            await other.close()
        await asyncio.wait_for(store.commit(key_unit(1)), 30)  # neither fenced nor lost
    finally:
        await store.close()
        await drop_schema(schema)
