"""A group refused for one unit's rows, and the connection lost once as the writer tries a unit alone: the server
is reachable (the writer had connected), so the units after it are tried too. (Review round 23: cd0cbc5 took any
lost connection of a unit alone for an unreachable server, and failed every unit after it in the group without
trying them: up to MAX_GROUP commits refused for one blip.)"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from coordinator.store.base import KeyRow, UnitOfWork
from coordinator.store.postgres import PostgresStore

from .store_support import PG_URL, create_schema, drop_schema


def unit(key_id: str, role: str | None = "miner") -> UnitOfWork:
    u = UnitOfWork()
    u.keys.append(KeyRow(key_id, role, "active", b"k" * 32, None, 1, None, "miner-x"))  # type: ignore[arg-type]
    return u


class CutOnSecondSight:
    """A TCP proxy to PostgreSQL that resets the connection carrying `marker` towards the server the second time
    it passes (the first: in the group; the second: in its unit tried alone)."""

    def __init__(self, marker: bytes) -> None:
        t = urlsplit(PG_URL)
        self.target = (t.hostname or "127.0.0.1", t.port or 5432)
        self.marker = marker
        self.seen = 0
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        parts = urlsplit(PG_URL)
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return parts._replace(netloc=f"{netloc}127.0.0.1:{port}").geturl()

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)
        self.writers += [down_w, up_w]

        async def up() -> None:
            with contextlib.suppress(Exception):
                while data := await down_r.read(65536):
                    if self.marker in data:
                        self.seen += 1
                        if self.seen == 2:
                            return  # (not forwarded: both sides reset below)
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
        for t in tasks:
            t.cancel()
        down_w.transport.abort()
        up_w.transport.abort()

    async def close(self) -> None:
        self.server.close()
        for t in self.tasks:
            t.cancel()
        for w in self.writers:
            w.transport.abort()


async def test_one_blip_as_a_unit_is_tried_alone_does_not_fail_the_rest_of_the_group() -> None:
    schema = await create_schema()
    proxy = CutOnSecondSight(b"zz-key-A")
    url = await proxy.start()
    store = PostgresStore(f"{url}?schema={schema}", lock_wait_s=5)
    await store.open()
    try:
        futures = [store.enqueue(u) for u in (unit("zz-key-A"), unit("zz-key-bad", None), unit("zz-key-B"))]
        await asyncio.wait(futures, timeout=60)
        outcomes = [f.exception() for f in futures]
        assert proxy.seen == 2, "the connection was not cut as the first unit was tried alone"
        assert (
            outcomes[0] is not None
        )  # its own connection lost, and its outcome not told by its rows: failed
        assert outcomes[1] is not None  # (role NULL)
        assert outcomes[2] is None, f"a unit that would have been written failed: {outcomes[2]!r}"
    finally:
        await store.close()
        await proxy.close()
        await drop_schema(schema)
