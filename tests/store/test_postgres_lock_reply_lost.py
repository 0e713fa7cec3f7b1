"""The answer to the writer's pg_try_advisory_lock lost as it reconnects (the link cut on the coordinator's side
after the server granted the lock): that backend, the writer's own, holds the store. The next reconnect ends it
and writes. (Review round 22: it was waited for as another process, and every commit refused StoreInUse, "open in
another process", until the server reaped that backend, or for good while its socket stayed open.)"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from urllib.parse import urlsplit

import pytest

from coordinator.store.postgres import PostgresStore

from .store_support import PG_URL, pg_admin
from .test_postgres_writer_lock import key_unit


class LockReplyProxy:
    def __init__(self) -> None:
        t = urlsplit(PG_URL)
        self.target = (t.hostname or "127.0.0.1", t.port or 5432)
        self.armed = False
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.kept: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)
        self.links.append((down_w, up_w))
        cut = asyncio.Event()
        parsed = False

        async def up() -> None:
            nonlocal parsed
            with contextlib.suppress(Exception):
                while data := await down_r.read(65536):
                    up_w.write(data)
                    await up_w.drain()
                    if self.armed and parsed and data[:1] == b"B":  # the statement's execution
                        self.armed = False
                        cut.set()  # the server's answer (granted) never comes back
                    if self.armed and b"pg_try_advisory_lock" in data:
                        parsed = True  # (prepared first: Parse, Describe; then Bind, Execute)

        async def down() -> None:
            with contextlib.suppress(Exception):
                while data := await up_r.read(65536):
                    if cut.is_set():
                        break
                    down_w.write(data)
                    await down_w.drain()

        tasks = [
            asyncio.ensure_future(up()),
            asyncio.ensure_future(down()),
            asyncio.ensure_future(cut.wait()),
        ]
        self.tasks.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if cut.is_set():
            await asyncio.sleep(0.2)  # (the server has granted the lock)
            self.kept.append(up_w)  # PostgreSQL's side stays open: its backend lives on
        down_w.transport.abort()
        if up_w not in self.kept:
            up_w.close()

    def reset_all(self) -> None:
        for down_w, up_w in self.links:
            down_w.transport.abort()
            up_w.transport.abort()

    async def close(self) -> None:
        self.server.close()
        for t in self.tasks:
            t.cancel()
        for w in self.kept:
            w.transport.abort()


async def test_writer_reconnects_when_the_reply_to_its_lock_was_lost() -> None:
    admin = await pg_admin()
    schema = f"lockreply_{uuid.uuid4().hex[:12]}"
    proxy = LockReplyProxy()
    port = await proxy.start()
    parts = urlsplit(PG_URL)
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = parts._replace(netloc=f"{netloc}127.0.0.1:{port}").geturl() + f"?schema={schema}"
    store = PostgresStore(url, lock_wait_s=4)
    await store.open()
    try:
        await store.commit(key_unit(0))
        proxy.armed = True
        proxy.reset_all()  # the writer's connection reset: its backend ends, and its lock goes
        await asyncio.sleep(0.5)
        # the next commit reconnects; the lock is granted but its answer lost; the writer tries again
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.commit(key_unit(1)), 15)
        assert not proxy.armed, "the lock's answer was dropped (the situation under test)"
        # no other process has the store: the writer writes again
        try:
            await asyncio.wait_for(store.commit(key_unit(2)), 15)
        except Exception as exc:
            pytest.fail(f"commit refused though no other process holds the store: {exc!r}")
    finally:
        await store.close()
        await proxy.close()
        await asyncio.sleep(0.2)
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
