"""A read on its way as its pool connection is lost (a network blip, a PostgreSQL restart or failover) is asked
again on another connection. (Review round 22: it failed with ConnectionDoesNotExistError or ConnectionResetError,
which the RPCs answered INTERNAL, "unexpected error" logged: SubmitJob with an idempotency key, GetJob...)"""

from __future__ import annotations

import asyncio

from coordinator.store.base import JobFilter
from coordinator.store.postgres import PostgresStore

from .store_support import create_schema, drop_schema
from .test_postgres_chaos import PgProxy


async def test_reads_after_the_pools_connections_were_cut_are_answered() -> None:
    schema = await create_schema()
    proxy = PgProxy()
    await proxy.start()
    store = PostgresStore(proxy.url(schema), pool_size=4)
    await store.open()
    try:
        # every pool connection opened and idle
        await asyncio.gather(*(store.list_jobs(JobFilter(), 10, None) for _ in range(8)))
        for how in ("rst", "fin", "half"):
            proxy.stall()
            reads = [asyncio.ensure_future(store.get_job("no-such-job")) for _ in range(3)]
            await asyncio.sleep(0.2)
            proxy.cut(how)  # the connections lost with the reads on their way
            proxy.heal()
            # a read is safe to ask again: lost with its connection, it is answered on another
            assert await asyncio.gather(*reads) == [None] * 3
    finally:
        await store.close()
        await proxy.close()
        await drop_schema(schema)
