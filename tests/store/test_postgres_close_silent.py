"""close() while a group is on its way over a silent path (no FIN, no reset) is bounded: the writer is given
CONNECT_TIMEOUT_S, then its connection is abandoned and the group failed (the next start reads what landed).
(Review round 22: close() waited for the statement's timeout, WRITE_TIMEOUT_S, 60 s, and a coordinator's stop
with it.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from coordinator.store.postgres import PostgresStore

from .store_support import create_schema, drop_schema
from .test_postgres_chaos import PgProxy
from .test_postgres_writer_lock import key_unit


async def test_close_with_a_commit_on_a_silent_path_is_bounded() -> None:
    schema = await create_schema()
    proxy = PgProxy()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        await store.commit(key_unit(0))
        proxy.stall()  # the path goes silent (no FIN, no reset)
        pending = store.enqueue(key_unit(1))
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(store.close(), 40)
        except TimeoutError:
            pytest.fail("close() still waiting 40 s later")
        took = time.monotonic() - t0
        assert pending.done() and pending.exception() is not None  # failed: closing, its outcome unknown
        assert took < 25, f"close() took {took:.1f} s"  # (writer 10 s, then the pool 10 s at most)
    finally:
        proxy.heal()
        await store.close()
        await proxy.close()
        await drop_schema(schema)
