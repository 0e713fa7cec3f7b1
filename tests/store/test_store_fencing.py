"""Fencing of the store's single writer: every process that takes a store bumps its holder epoch
(store_holder); a PostgreSQL writer that takes the store back after losing its connection reads the epoch,
and if another process held the store meanwhile (a second coordinator, `keys rotate`), it writes no more
(StoreFenced) and its coordinator stops serving. (It used to take the lock back without knowing, and went on
with jobs, keys, receipt log and balances in memory that no longer matched the store.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from aitbc.client import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.receipts.keyring import rotate
from coordinator.server import start
from coordinator.store.base import StoreFenced, StoreInUse
from coordinator.store.postgres import PostgresStore

from .store_support import PG_URL, Backend, create_schema, drop_schema, pg_admin, pg_url
from .test_coordinator_on_postgres import CLIENT, settings
from .test_postgres_store_lock import key_unit
from .test_postgres_writer_lock import HalfOpenProxy

ROOT = Path(__file__).resolve().parents[2]


async def epoch_of(backend: Backend) -> int:
    rows = await backend.raw_fetch("SELECT epoch FROM store_holder")
    assert len(rows) == 1, rows
    return rows[0][0]


async def test_every_open_of_the_store_bumps_its_holder_epoch(backend: Backend) -> None:
    """SQLite and PostgreSQL: each process that takes the store and writes (a coordinator, a key rotation)
    bumps the epoch, in a committed write of its own as it opens the store (PostgreSQL), or with its first
    commit (SQLite: its lock cannot be lost, and a start must not wait for another connection's write lock)."""
    for expected in (1, 2):
        store = backend.new_store()
        await store.open()
        await store.commit(key_unit(expected))
        await store.close()
        assert await epoch_of(backend) == expected
    store = backend.new_store()
    await store.open()
    try:
        await rotate(store, "coordinator")
    finally:
        await store.close()
    assert await epoch_of(backend) == 3


async def end_backend(pid: int | None) -> None:
    """What the server does to a lost client's backend (TCP keepalive reaps it): end it, and wait until it
    is gone with its lock."""
    assert pid is not None
    admin = await pg_admin()
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"backend {pid} still alive")
    finally:
        await admin.close()


async def cut_writer(proxy: HalfOpenProxy, store: PostgresStore) -> None:
    """The writer's connection is cut on its side (a NAT entry dropped); then the server reaps its backend."""
    proxy.cut()
    await end_backend(store._writer_pid)


def through(proxy_port: int, schema: str) -> str:
    parts = urlsplit(PG_URL)
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return parts._replace(netloc=f"{netloc}127.0.0.1:{proxy_port}").geturl() + f"?schema={schema}"


async def test_a_writer_whose_store_another_process_held_meanwhile_writes_no_more() -> None:
    schema = await create_schema()
    proxy = HalfOpenProxy()
    store = PostgresStore(through(await proxy.start(), schema))
    await store.open()
    try:
        await store.commit(key_unit(0))
        await cut_writer(proxy, store)
        other = PostgresStore(pg_url(schema), lock_wait_s=0)  # (as `keys rotate` opens it)
        await other.open()  # takes the schema: bumps the epoch
        await other.commit(key_unit(100))
        await other.close()
        # the writer reconnects, takes the lock back, and finds it was not the last holder
        with pytest.raises(StoreFenced, match="another process") as refused:
            await asyncio.wait_for(store.commit(key_unit(1)), 30)
        assert isinstance(refused.value, StoreInUse)
        # every later unit is refused too, at once, and none was written
        started = time.monotonic()
        later = [store.enqueue(key_unit(n)) for n in range(2, 6)]
        outcomes = await asyncio.wait_for(asyncio.gather(*later, return_exceptions=True), 30)
        assert all(isinstance(o, StoreFenced) for o in outcomes), outcomes
        assert time.monotonic() - started < 5
        admin = await pg_admin()
        try:
            written = await admin.fetch(f'SELECT key_id FROM "{schema}".signing_keys ORDER BY key_id')
        finally:
            await admin.close()
        assert [r[0] for r in written] == ["r13-key-0", "r13-key-100"]
        # the fenced writer does not keep the store: the next process takes it at once
        after = PostgresStore(pg_url(schema), lock_wait_s=0)
        await after.open()
        await after.close()
    finally:
        await store.close()
        await proxy.close()
        await drop_schema(schema)


async def test_a_writer_that_finds_another_process_holding_its_store_is_fenced_at_once() -> None:
    """The other process still holds the store as the writer reconnects (a second coordinator started
    meanwhile): the writer is fenced as soon as it sees the other's epoch, without waiting out lock_wait_s (and
    then refusing each group StoreInUse, serving on, for as long as the other runs)."""
    schema = await create_schema()
    proxy = HalfOpenProxy()
    store = PostgresStore(through(await proxy.start(), schema))  # lock_wait_s: 30 s
    other = PostgresStore(pg_url(schema), lock_wait_s=0)
    try:
        await store.open()
        await store.commit(key_unit(0))
        await cut_writer(proxy, store)
        await other.open()
        started = time.monotonic()
        with pytest.raises(StoreFenced):
            await asyncio.wait_for(store.commit(key_unit(1)), 60)
        assert time.monotonic() - started < 10, "the writer waited out lock_wait_s before refusing"
        await other.commit(key_unit(2))  # the other process writes on, unharmed
    finally:
        await store.close()
        await other.close()
        await proxy.close()
        await drop_schema(schema)


async def test_a_writer_that_reconnects_with_nobody_in_between_writes_on() -> None:
    """No false alarm: the writer's connection is cut, nobody else takes the store, the writer reconnects,
    finds its own epoch and writes on (units queued while it was away included)."""
    schema = await create_schema()
    proxy = HalfOpenProxy()
    store = PostgresStore(through(await proxy.start(), schema))
    await store.open()
    backend = Backend("postgres", pg_url(schema), schema=schema)
    try:
        await store.commit(key_unit(0))
        assert await epoch_of(backend) == 1  # (bumped as it opened)
        await cut_writer(proxy, store)
        queued = [store.enqueue(key_unit(n)) for n in range(1, 4)]
        await asyncio.wait_for(asyncio.gather(*queued), 30)
        await asyncio.wait_for(store.commit(key_unit(4)), 30)
        assert await epoch_of(backend) == 1  # (the writer took the store back; nobody else took it)
        rows = await backend.raw_fetch("SELECT count(*) FROM signing_keys")
        assert rows == [(5,)]
    finally:
        await store.close()
        await proxy.close()
        await drop_schema(schema)


async def health_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return answer.status


async def test_a_fenced_coordinator_stops_serving() -> None:
    """The coordinator's writer finds that `keys rotate` held the store while it was disconnected: the write
    is refused, health turns NOT_SERVING, and the coordinator reports it lost the store (serve() ends)."""
    schema = await create_schema()
    proxy = HalfOpenProxy()
    coordinator = await start(settings(through(await proxy.start(), schema)))
    try:
        client = Client(f"127.0.0.1:{coordinator.port}", CLIENT)
        await client.submit({"n": 1})
        assert await health_status(coordinator.port) == health_pb2.HealthCheckResponse.SERVING
        await cut_writer(proxy, coordinator.scheduler.store)  # type: ignore[arg-type]
        rotation = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coordinator", "keys", "rotate", "--database", pg_url(schema), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        said, _ = await asyncio.wait_for(rotation.communicate(), 60)
        assert rotation.returncode == 0, said.decode()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.submit({"n": 2})
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value  # retry, elsewhere or later
        lost = await asyncio.wait_for(asyncio.shield(coordinator.store_lost), 10)
        assert isinstance(lost, StoreFenced)
        deadline = time.monotonic() + 10
        while await health_status(coordinator.port) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health still SERVING after the store was lost"
            await asyncio.sleep(0.1)
        await client.close()
    finally:
        await asyncio.wait_for(coordinator.stop(grace=0.2), 30)
        await proxy.close()
        await drop_schema(schema)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_exits_non_zero_when_its_store_was_taken_meanwhile(tmp_path: Path) -> None:
    """`aitbc-coordinator serve` whose store another process held while its writer was disconnected: it
    says why on stderr and exits 3 (a supervisor restarts it, and it reloads its state from the store)."""
    admin = await pg_admin()
    schema = await create_schema()
    port = free_port()
    env_file = tmp_path / "coord.env"
    env_file.write_text(f"DATABASE_URL={pg_url(schema)}\nCLIENT_API_KEYS=alice:{CLIENT}\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEYS", "_API_KEYS_FILE"))}
    env.pop("DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator", "serve", "--env-file", str(env_file), "--host", "127.0.0.1",
        "--port", str(port), cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                if await health_status(port) == health_pb2.HealthCheckResponse.SERVING:
                    break
            assert proc.returncode is None and time.monotonic() < deadline, "the coordinator did not start"
            await asyncio.sleep(0.2)
        key = await admin.fetchval("SELECT hashtext($1)::bigint", f"aitbc-store:{schema}")
        writer = await admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid::bigint = $1 AND objid::bigint = $2",
            (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF,
        )  # fmt: skip
        await end_backend(writer)
        other = PostgresStore(pg_url(schema), lock_wait_s=0)
        await other.open()
        await other.close()
        client = Client(f"127.0.0.1:{port}", CLIENT)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.submit({"n": 1})
        await client.close()
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
        err = err_bytes.decode()
        assert proc.returncode == 3, err[-3000:]
        assert "another process" in err, err[-3000:]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 15)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await admin.close()
        await drop_schema(schema)
