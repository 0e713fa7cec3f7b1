"""The PostgreSQL writer after losing its connection on its own side only (a NAT entry dropped, a partition, the
host's network restarted): the server's backend of the old connection lives on (until TCP keepalive reaps it)
and holds the store's advisory lock. The writer's reconnect ends its own previous backend and writes again.
(Review round 12, helper-34: it was refused StoreInUse, "open in another process", for good, and the coordinator
never wrote again though no other process had the store.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

from coordinator.store.base import KeyRow, UnitOfWork
from coordinator.store.postgres import PostgresStore

from .pg_relay import PgRelay

PG_URL = os.environ.get("AITBC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class HalfOpenProxy(PgRelay):
    """A relay to PostgreSQL; cut() closes the client side of every connection so far and keeps the server side
    open (what a dropped NAT entry looks like: the server never hears of it)."""

    half_close = False

    def cut(self, how: str = "half") -> int:
        return super().cut(how)


def key_unit(n: int) -> UnitOfWork:
    unit = UnitOfWork()
    unit.keys.append(KeyRow(f"repro-key-{n}", "miner", "active", b"k" * 32, None, 1, None, "miner-x"))
    return unit


async def test_a_writer_reconnecting_after_a_client_side_cut_can_write_again() -> None:
    try:
        admin = await asyncpg.connect(PG_URL, timeout=5)
    except Exception as exc:  # no PostgreSQL here
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    schema = f"lock_{uuid.uuid4().hex[:12]}"
    proxy = HalfOpenProxy()
    port = await proxy.start()
    parts = urlsplit(PG_URL)
    url = (
        parts._replace(netloc=parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}").geturl()
        + f"?schema={schema}"
    )
    store = PostgresStore(url)
    await store.open()
    try:
        await store.commit(key_unit(0))
        proxy.cut()
        await asyncio.sleep(0.2)
        holders = await admin.fetch("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
        assert holders, "the stale backend holds the lock (the situation under test)"
        # no other process has the schema: the writer writes again
        await asyncio.wait_for(store.commit(key_unit(1)), 10)
    finally:
        await store.close()
        await proxy.close()
        await asyncio.sleep(0.2)
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
