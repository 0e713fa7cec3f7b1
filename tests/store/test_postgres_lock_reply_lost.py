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
from tests.tcp_relay import DOWN, Link

from .pg_relay import PgRelay
from .store_support import PG_URL, pg_admin
from .test_postgres_writer_lock import key_unit


class LockReplyProxy(PgRelay):
    """A relay to PostgreSQL. Armed, it passes the writer's next pg_try_advisory_lock on, drops the server's
    answer (the lock granted), and 0.2 s later closes the client's side, PostgreSQL's left open: its backend,
    holding the lock, lives on."""

    half_close = False

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == DOWN:
            return b"" if link.notes.get("cut") else data
        if self.armed and link.notes.get("parsed") and data[:1] == b"B":  # the statement's execution
            self.armed = False
            link.notes["cut"] = True  # the server's answer (granted) never comes back
            asyncio.get_running_loop().call_later(0.2, link.drop_client_side)  # (the server has granted it)
        elif self.armed and b"pg_try_advisory_lock" in data:
            link.notes["parsed"] = True  # (prepared first: Parse, Describe; then Bind, Execute)
        return data

    def reset_all(self) -> None:
        self.cut("rst")


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
