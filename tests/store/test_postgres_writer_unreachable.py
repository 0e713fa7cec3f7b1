"""The writer cannot reach PostgreSQL (its connection lost, the path silent): a group fails within two connect
timeouts (the group's, then one unit alone: a blip gets a second chance), not one more per unit. (Review round
22: each unit was tried alone, each waiting CONNECT_TIMEOUT_S: 10 s per unit, up to 2,000 units a group, every
commit behind it waiting.)"""

from __future__ import annotations

import asyncio
import time

from coordinator.store.postgres import CONNECT_TIMEOUT_S, PostgresStore

from .store_support import create_schema, drop_schema
from .test_postgres_chaos import PgProxy
from .test_postgres_writer_lock import key_unit


async def test_a_group_the_writer_cannot_send_fails_at_once() -> None:
    schema = await create_schema()
    proxy = PgProxy()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        await store.commit(key_unit(0))
        proxy.cut("rst")  # the writer must reconnect...
        proxy.stall()  # ...over a silent path
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        group = [store.enqueue(key_unit(n)) for n in range(1, 4)]
        done, _ = await asyncio.wait(group, timeout=CONNECT_TIMEOUT_S * 4 + 5)
        took = time.monotonic() - t0
        assert len(done) == 3 and all(f.exception() is not None for f in done)
        assert took < 2 * CONNECT_TIMEOUT_S + 5, f"the group of 3 took {took:.1f} s to fail"
        proxy.heal()
        await asyncio.wait_for(store.commit(key_unit(9)), 15)  # and the writer writes again once it can
    finally:
        proxy.heal()
        await store.close()
        await proxy.close()
        await drop_schema(schema)
