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
from tests.store.pg_relay import PgRelay
from tests.store.store_support import PG_URL, create_schema, drop_schema, pg_admin
from tests.tcp_relay import UP, Link


class HoldingProxy(PgRelay):
    """A relay to PostgreSQL. Armed, it holds back (buffers) what the first connection (the writer's) sends from a
    COMMIT on, as a congested or partitioned path does; release() delivers it. The client closing its side does
    not close the server's side (the server never hears of it)."""

    half_close = False

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.held: list[bytes] = []
        self.writer_link: Link | None = None

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if link.first and self.writer_link is None:
            self.writer_link = link
            self.kept_open.append(link.up_w)  # (the server's side outlives the client's)
        if direction == UP and link.first and (self.held or (self.armed and b"COMMIT" in data)):
            self.held.append(data)
            return b""
        return data

    async def release(self) -> None:
        assert self.writer_link is not None
        up = self.writer_link.up_w
        for data in self.held:
            up.write(data)
        self.held = []
        await up.drain()


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
