"""A group refused for one unit's rows, and the connection lost once as the writer tries a unit alone: the server
is reachable (the writer had connected), so the units after it are tried too. (Review round 23: cd0cbc5 took any
lost connection of a unit alone for an unreachable server, and failed every unit after it in the group without
trying them: up to MAX_GROUP commits refused for one blip.)"""

from __future__ import annotations

import asyncio

from coordinator.store.base import KeyRow, UnitOfWork
from coordinator.store.postgres import PostgresStore
from tests.tcp_relay import UP, Link

from .pg_relay import PgRelay
from .store_support import create_schema, drop_schema


def unit(key_id: str, role: str | None = "miner") -> UnitOfWork:
    u = UnitOfWork()
    u.keys.append(KeyRow(key_id, role, "active", b"k" * 32, None, 1, None, "miner-x"))  # type: ignore[arg-type]
    return u


class CutOnSecondSight(PgRelay):
    """A relay to PostgreSQL that resets the connection carrying `marker` towards the server the second time it
    passes (the first: in the group; the second: in its unit tried alone)."""

    half_close = False

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker
        self.seen = 0

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and self.marker in data:
            self.seen += 1
            if self.seen == 2:  # not passed on: both sides reset
                link.reset()
                return None
        return data


async def test_one_blip_as_a_unit_is_tried_alone_does_not_fail_the_rest_of_the_group() -> None:
    schema = await create_schema()
    proxy = CutOnSecondSight(b"zz-key-A")
    await proxy.start()
    url = proxy.url()
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
