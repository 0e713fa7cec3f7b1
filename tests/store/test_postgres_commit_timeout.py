"""A COMMIT past its timeout (a silent path, a slow synchronous standby), the connection still open here: the
writer's backend is ended before asking whether the group landed, so the answer is final. (Review round 14,
helper-36: the probe ran with the backend alive and its COMMIT on the way, said "not landed", the unit was
reported failed, and then its rows landed.)"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import pytest

from coordinator.store import postgres as pgmod
from coordinator.store.base import UnitOfWork
from coordinator.store.postgres import PostgresStore
from tests.store.store_support import PG_URL, create_schema, drop_schema, pg_admin


class HoldingProxy:
    """A TCP proxy to PostgreSQL. Armed, it holds back (buffers) what the first connection (the writer's)
    sends from a COMMIT on, as a congested or partitioned path does; release() delivers it. The client closing
    its side does not close the server's side (the server never hears of it)."""

    def __init__(self) -> None:
        t = urlsplit(PG_URL)
        self.target = (t.hostname or "127.0.0.1", t.port or 5432)
        self.armed = False
        self.held: list[bytes] = []
        self.writer_up: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task] = set()
        self.ups: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)
        self.ups.append(up_w)
        first = self.writer_up is None
        if first:
            self.writer_up = up_w

        async def up() -> None:
            with contextlib.suppress(Exception):
                while data := await down_r.read(65536):
                    if first and (self.held or (self.armed and b"COMMIT" in data)):
                        self.held.append(data)
                        continue
                    up_w.write(data)
                    await up_w.drain()

        async def down() -> None:
            with contextlib.suppress(Exception):
                while data := await up_r.read(65536):
                    down_w.write(data)
                    await down_w.drain()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        self.tasks.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        down_w.transport.abort()
        if not first:
            up_w.close()

    async def release(self) -> None:
        assert self.writer_up is not None
        for data in self.held:
            self.writer_up.write(data)
        self.held = []
        await self.writer_up.drain()

    async def close(self) -> None:
        self.server.close()
        for t in self.tasks:
            t.cancel()
        for w in self.ups:
            w.close()


async def test_a_unit_reported_failed_after_a_commit_timeout_does_not_land(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = await pg_admin()
    schema = await create_schema()
    proxy = HoldingProxy()
    port = await proxy.start()
    parts = urlsplit(PG_URL)
    url = (
        parts._replace(netloc=parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}").geturl()
        + f"?schema={schema}"
    )
    monkeypatch.setattr(pgmod, "WRITE_TIMEOUT_S", 3.0)  # (60 s in production; the path is silent that long)
    store = PostgresStore(url)
    await store.open()
    try:
        unit = UnitOfWork()
        unit.events.append(("job-r14", 1, None, 1, 0, "", "SUBMITTED", "", 1))
        proxy.armed = True
        failed = None
        try:
            await asyncio.wait_for(store.commit(unit), 30)
        except Exception as exc:  # the store says: not written
            failed = exc
        assert proxy.held, "the COMMIT was held back (the situation under test)"
        with contextlib.suppress(ConnectionError):  # (the backend was ended: nothing takes the held bytes)
            await proxy.release()  # the delayed COMMIT would reach the server, had its backend not been ended
        await asyncio.sleep(1.0)
        rows = await admin.fetch(f'SELECT 1 FROM "{schema}".job_events WHERE job_id = $1', "job-r14")
        assert failed is None or not rows, f"the store reported {failed!r}, yet the unit's rows landed"
    finally:
        await store.close()
        await proxy.close()
        await asyncio.sleep(0.2)
        await admin.close()
        await drop_schema(schema)
