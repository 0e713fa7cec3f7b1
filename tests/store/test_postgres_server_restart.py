"""PostgreSQL restarting (or failing over): its backends are ended, and until it is up again every new connection
is refused with FATAL 57P03 "the database system is starting up". A write or a read then fails as the store
unreachable (the RPC answers UNAVAILABLE STORE_UNAVAILABLE, retry), and the writer writes again once the server
is back. (Review round 26: CannotConnectNowError was taken for an error of the unit's rows: every unit of the
group was tried alone in turn, and the calls were answered INTERNAL, "unexpected error".)"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from coordinator.store.base import store_unreachable
from coordinator.store.postgres import PostgresStore

from .store_support import create_schema, drop_schema
from .test_postgres_chaos import PgProxy
from .test_postgres_writer_lock import key_unit

_SSL_REQUEST = 80877103


def starting_up_error() -> bytes:
    """The ErrorResponse a starting server answers a connection's startup with."""
    fields = b"SFATAL\x00VFATAL\x00C57P03\x00Mthe database system is starting up\x00\x00"
    return b"E" + struct.pack("!I", 4 + len(fields)) + fields


class RestartingProxy(PgProxy):
    """PgProxy; while `starting_up`, it answers each new connection as a starting PostgreSQL does."""

    starting_up = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.starting_up:
            await super()._accept(reader, writer)
            return
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            length, code = struct.unpack("!II", await reader.readexactly(8))
            if code == _SSL_REQUEST:
                writer.write(b"N")  # (no SSL), then the startup message
                length, _ = struct.unpack("!II", await reader.readexactly(8))
            await reader.readexactly(length - 8)
            writer.write(starting_up_error())
            await writer.drain()
        writer.close()

    def restart(self) -> None:
        """The server's backends end (their connections reset); new ones are refused until `up()`."""
        self.starting_up = True
        self.cut("rst")

    def up(self) -> None:
        self.starting_up = False


async def test_writes_and_reads_during_a_server_restart_fail_as_the_store_unreachable() -> None:
    schema = await create_schema()
    proxy = RestartingProxy()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        await store.commit(key_unit(0))
        proxy.restart()
        await asyncio.sleep(0.1)
        group = [store.enqueue(key_unit(n)) for n in range(1, 4)]
        await asyncio.wait(group, timeout=60)
        for future in group:
            assert future.done() and future.exception() is not None, "a write while the server is down"
            assert store_unreachable(future.exception()), f"not taken as unreachable: {future.exception()!r}"
        with pytest.raises(Exception) as read:
            await asyncio.wait_for(store.get_job("no-such-job"), 60)
        assert store_unreachable(read.value), f"a read not taken as unreachable: {read.value!r}"
        proxy.up()
        await asyncio.wait_for(store.commit(key_unit(9)), 30)  # the writer writes again once it is back
        assert await asyncio.wait_for(store.get_job("no-such-job"), 30) is None
    finally:
        proxy.up()
        await store.close()
        await proxy.close()
        await drop_schema(schema)
