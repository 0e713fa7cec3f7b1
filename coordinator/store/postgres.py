"""PostgreSQL store (asyncpg): one writer task committing in groups, a connection pool for reads.

The same design as the SQLite store. One writer task owns one connection; it takes every unit of work
queued since its last commit, writes each table with one executemany inside one transaction, commits once,
then wakes all waiters, so the round trips and the WAL flush of a commit are shared by the whole group. If
the group fails, each unit is retried alone in its own transaction: only the culprit fails. If the COMMIT
fails in any way once sent (its connection lost, its backend ended by a restart or pg_terminate_backend, an
error in place of its answer), the group may have landed: one of its own rows tells (read on a connection of
its own, not the read pool's), and then it is reported committed, not retried (the retry would fail on its own
rows).

Reads run on a pool (DATABASE_POOL_SIZE), each within a timeout (DATABASE_READ_TIMEOUT_SECONDS; a start's bulk
reads get LOAD_TIMEOUT_FACTOR times as long): one past it has its connection dropped and is asked once more on a
fresh one, then fails as the store unreachable (StoreReadTimeout: UNAVAILABLE). Every connection has TCP keepalive.

DATABASE_URL is a libpq-style URL, `postgresql://user:password@host:5432/dbname`, with one option of ours:
`?schema=NAME` puts every table in that schema (created if missing; the connections' search_path is set to
it), so several coordinators or test runs can share a database without seeing each other. Other query
parameters (sslmode, ...) go to asyncpg as they are.

Durability: `commit` returns after PostgreSQL acknowledged the COMMIT; with the server's default
`synchronous_commit = on` that means the WAL is flushed (SQLITE_SYNCHRONOUS does not apply here).

One writer per schema: the writer's connection holds a session advisory lock on it (_hold_lock), and the
process bumps the holder epoch (table store_holder) right after taking it. The lock goes with a lost connection:
when the writer takes it back, it reads the epoch; another one than its own means another process held (and
may have written) the store meanwhile, and this one's state in memory may be stale: the writer then refuses
every unit, for good (StoreFenced), frees the lock, and tells on_lost (the coordinator stops serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .base import (
    JOB_COLUMNS,
    LOAD_DRAINS,
    DrainRow,
    FailedUnits,
    ReceiptRow,
    StoreFenced,
    StoreInUse,
    StoreMissing,
    StoreUnusable,
    UnitOfWork,
    assign_leaves,
    balance_rows,
    register_unreachable,
    state_count_rows,
    unplace,
)
from .schema import BUMP_EPOCH, POSTGRES_MIGRATIONS, holder_name
from .sql_reads import SqlReads, numbered

log = logging.getLogger(__name__)

MAX_GROUP = 2000  # units per transaction: bounds a group's latency
_STOP = object()
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
POOL_SIZE = 10  # read connections (DATABASE_POOL_SIZE)
# One read of a call (a job, a page of jobs, a result), a free connection included (DATABASE_READ_TIMEOUT_SECONDS):
# with its one retry, well below a client's deadline (30 s by default), so that a silent path or a table locked
# by maintenance is answered UNAVAILABLE (retry later), not a hang until TCP gives up (~15 minutes).
READ_TIMEOUT_S = 5.0
READ_TIMEOUT_ATTEMPTS = 2  # a read past its time is asked once more, on a fresh connection
# a start's bulk reads (every live job, the receipt log) may take this many times longer
LOAD_TIMEOUT_FACTOR = 24
# TCP keepalive, on both sides of every connection: a dead path (no FIN, no RST: a NAT entry dropped, a host
# gone) is found in ~25 s even while the connection is idle
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 10, 5, 3


def parse_url(url: str) -> tuple[str, str | None]:
    """(the DSN for asyncpg, the schema named by `?schema=`, if any)."""
    parts = urlsplit(url)
    schema = None
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"DATABASE_URL: schema {schema!r} must be a plain identifier (letters, digits, _; 63 at most)"
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


# a backend, named by its pid and its start (a pid alone may be another session's since: see _own_backends)
Backend = tuple[int, datetime | None]


class PostgresStore(SqlReads):
    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = POOL_SIZE,
                 read_timeout_s: float = READ_TIMEOUT_S, lock_wait_s: float | None = None,
                 must_exist: bool = False) -> None:  # fmt: skip
        self.dsn, url_schema = parse_url(url)
        self.schema = schema or url_schema
        if self.schema is not None and not _SCHEMA_NAME.fullmatch(self.schema):
            raise ValueError(f"schema {self.schema!r} must be a plain identifier")
        self.pool_size = pool_size
        self.read_timeout_s = read_timeout_s  # a call's read (bulk reads: LOAD_TIMEOUT_FACTOR times)
        self.lock_wait_s = LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        self.must_exist = must_exist  # open a store that is there, never make one (StoreMissing)
        self._queue: asyncio.Queue[Any] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._connecting: asyncpg.Connection | None = None  # the writer's next connection, taking the store
        self._pool: asyncpg.Pool | None = None
        self._closing = False
        self._writer_pid: int | None = None  # the backend of the writer's connection holding the store's lock
        self._writer_backend: Backend | None = None  # the same, named (a pid may be reused)
        # the backends of the writer's connections since it last took the store: any may hold its lock (one whose
        # grant was sent, and its answer lost with the connection), none is another process. Named by pid and
        # start: a pid is the operating system's, handed to another session once its backend is gone
        self._own_backends: set[Backend] = set()
        self._epoch: int | None = None  # the holder epoch this process wrote as it took the store
        self._fenced: StoreFenced | None = None  # another process held the store meanwhile: no more writes
        self.commit_observer: Callable[[int, float], None] | None = None  # (group size, seconds)
        self._next_leaf: int | None = None  # the receipt log's next free place; None: read it from the log
        self._failed = FailedUnits()  # the writer's own
        self._close_asked: asyncio.Event | None = None  # set by close(): ends an in-doubt commit's settling
        self._made: _Made | None = None  # the store this open made, if it did: close_unused drops it again

    # --- life cycle -------------------------------------------------------------------------------
    def _settings(self, read_only: bool = False) -> dict[str, str]:
        # the server reaps a backend whose client is gone in ~25 s (a lost writer's: and its lock)
        settings = {"application_name": "aitbc-coordinator", "tcp_keepalives_idle": str(KEEPALIVE_IDLE_S),
                    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL_S),
                    "tcp_keepalives_count": str(KEEPALIVE_PROBES)}  # fmt: skip
        if self.schema is not None:
            settings["search_path"] = f'"{self.schema}"'
        if read_only:
            settings["default_transaction_read_only"] = "on"
        return settings

    async def _connect(self) -> asyncpg.Connection:
        conn = await _connect_whole(self.dsn, server_settings=self._settings(), timeout=CONNECT_TIMEOUT_S,
                                    command_timeout=WRITE_TIMEOUT_S)  # fmt: skip
        try:
            keep_alive(conn)
            await conn.execute(_KEEP_IDLE_SESSION, timeout=CONNECT_TIMEOUT_S)  # (part of connecting)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def open(self) -> None:
        self._closing = False
        self._close_asked = asyncio.Event()
        self._epoch = self._fenced = None  # (taken anew: the caller loads its state from the store again)
        self._made = None
        self._conn = await self._connect()
        try:
            await self._hold_lock(self._conn)  # before migrating: a second coordinator changes nothing
            if self.must_exist:
                await self._require_store(self._conn)
            await self._migrate(self._conn)  # (the holder epoch bumped in the same transaction)
            self._pool = await self._create_pool()
        except BaseException:
            try:
                await (
                    self._remove_made()
                )  # a store this start made is dropped again: it leaves nothing behind
            finally:  # (cancelled again meanwhile: the connection, and the lock, are let go all the same)
                conn, self._conn = self._conn, None
                if conn is not None:
                    await _let_go(conn)
            raise
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="postgres-writer")
        self._writer.add_done_callback(self._writer_exited)

    async def _create_pool(self) -> asyncpg.Pool:
        # The server gives a read up too as this side does (else its backend, the connection dropped here, would
        # wait on: reads asked again and again during maintenance would pile up backends up to max_connections).
        # A lock is waited for as long as a call's read; a statement runs as long as a bulk read may.
        settings = {
            **self._settings(read_only=True),
            "lock_timeout": str(int(self.read_timeout_s * 1000)),
            "statement_timeout": str(int(self._load_timeout_s * 1000)),
        }
        return await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size, server_settings=settings,
                                         init=_opened, timeout=CONNECT_TIMEOUT_S, connect=_connect_whole)  # fmt: skip

    @property
    def _load_timeout_s(self) -> float:
        return self.read_timeout_s * LOAD_TIMEOUT_FACTOR

    async def _require_store(self, conn: asyncpg.Connection) -> None:
        """StoreMissing unless the schema holds a store (its schema_version table): nothing is created."""
        if await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
            return
        schema = self.schema or await conn.fetchval("SELECT current_schema()") or "public"
        database = await conn.fetchval("SELECT current_database()")
        raise StoreMissing(
            f"no store at schema {schema} of database {database} (no coordinator ever opened it): "
            "give the coordinator's DATABASE_URL"
        )

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        """The schema if missing, every pending migration and the holder epoch's bump, in one transaction: a start
        that fails part way (its connection lost, a statement refused, a stop signal) leaves the database as it
        found it, and the next start migrates from the same version. A store it made is noted (self._made), with
        the objects this very transaction made (as the catalog has them, not as the scripts' text reads), for a
        start refused later to drop them again (close_unused)."""
        made_schema = False
        async with conn.transaction():
            if self.schema is not None and not await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", self.schema
            ):
                try:
                    async with conn.transaction():  # (a savepoint: the race below leaves the rest standing)
                        await conn.execute(f'CREATE SCHEMA "{self.schema}"')
                    made_schema = True
                except (asyncpg.DuplicateSchemaError, asyncpg.UniqueViolationError):
                    pass  # another process made it just now
            # one migrating process per schema at a time; the others wait, then find it done
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('aitbc-migrate:' || coalesce(current_schema(), '')))"
            )
            schema = await conn.fetchval("SELECT current_schema()") or "public"
            new_store = await conn.fetchval("SELECT to_regclass('schema_version') IS NULL")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_us BIGINT NOT NULL)"
            )
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if version > len(POSTGRES_MIGRATIONS):
                raise StoreUnusable(  # (a downgrade: this code would misread the store)
                    f"store schema version {version} is newer than this coordinator's "
                    f"({len(POSTGRES_MIGRATIONS)}): run the newer version"
                )
            for number, script in enumerate(POSTGRES_MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute(
                    "INSERT INTO schema_version VALUES ($1, $2)", number, time.time_ns() // 1000
                )
            # (committed before any unit is written)
            holder, taken_us = holder_name(), time.time_ns() // 1000
            epoch = await conn.fetchval(numbered(BUMP_EPOCH), holder, taken_us)
            # (noted before the COMMIT: lost on its way, it may have landed; the holder row tells)
            if new_store:
                objects = tuple((r["classid"], r["objid"]) for r in await conn.fetch(_MADE_HERE, schema))
                self._made = _Made(schema, made_schema, epoch, holder, taken_us, objects)
        self._epoch = epoch
        for number in range(version + 1, len(POSTGRES_MIGRATIONS) + 1):
            log.info("store migrated to schema version %d", number)

    async def _remove_made(self) -> None:
        """Drops the store this open made (the objects its migration made, and its schema if it made that too; the
        user's objects beside them are kept), after a start that failed: on the writer's connection, which holds
        the store's lock; else on a new one, if it gets the lock at once (after ending this open's own earlier
        session, if that still holds it). Only while the holder row (epoch, holder, time) is still the one this
        open wrote: a store another process took, or made anew, since (and may have written) is kept. Nothing is
        dropped if the open's migration never landed; all or nothing is dropped (one transaction)."""
        made, self._made = self._made, None
        if made is None:
            return
        conn = self._conn if self._conn is not None and not self._conn.is_closed() else None
        if conn is not None and conn.is_in_transaction():
            # a COMMIT cut short (a stop signal as it went up): this connection cannot tell what landed, nor take
            # another transaction; let go, its backend is ended below from a new one, which reads what landed
            conn.terminate()
            conn = None
        own = conn is None
        try:
            if conn is None:
                conn = await self._connect()
                key = await conn.fetchval(
                    "SELECT hashtext($1)::bigint", f"aitbc-store:{self.schema or made.schema}"
                )
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    # the holder may be this start's own backend, its connection lost on this side only (the
                    # COMMIT's answer lost with it): ended, as the writer ends it (never another's session)
                    row = await conn.fetchrow(_LOCK_HOLDER, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
                    mine = None if row is None else (row["pid"], row["backend_start"])
                    if mine is None or mine not in self._own_backends:
                        raise StoreInUse("the store is held by another process")
                    await self._end_backend(conn, mine)
                    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                        raise StoreInUse("the store is held by another process")
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '5s'")  # (a read on a table: not waited for)
                holder = f"{_quoted(made.schema)}.store_holder"
                if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", holder):
                    return  # its migration did not land: nothing to drop
                # The whole row, not the epoch alone: a store made anew by another process (this start's COMMIT
                # lost before it landed; the schema emptied and made again) counts from 1 again. FOR UPDATE: a
                # taker bumping it meanwhile waits, and then finds no store.
                row = await conn.fetchrow(
                    f"SELECT epoch, holder, taken_us FROM {holder} WHERE id = 1 FOR UPDATE"
                )
                if row is None or tuple(row) != (made.epoch, made.holder, made.taken_us):
                    raise StoreInUse(f"another process took the store since (holder {dict(row or {})})")
                await _drop_made(conn, made)
                if made.schema_too:
                    try:
                        async with conn.transaction():  # (what another put in it meanwhile keeps it)
                            await conn.execute(f"DROP SCHEMA {_quoted(made.schema)}")
                    except asyncpg.DependentObjectsStillExistError:
                        log.warning("start failed: schema %s holds other objects now; kept", made.schema)
            log.info("start failed: removed what it made of the store at schema %s", made.schema)
        except BaseException as exc:  # (cancelled too: the operator is told all the same)
            log.warning(
                "start failed: the store it made at schema %s is left in place (%r)", made.schema, exc
            )
            if not isinstance(exc, Exception):
                raise
        finally:
            if own and conn is not None:
                conn.terminate()  # (and with it the lock)

    async def close(self) -> None:
        await self._close(remove_made=False)

    async def close_unused(self) -> None:
        await self._close(remove_made=True)

    async def _close(self, remove_made: bool) -> None:
        self._closing = True
        if self._close_asked is not None:
            self._close_asked.set()  # (the settling of an in-doubt commit stops asking at once)
        if (writer := self._writer) is not None:  # (held here: a close() meanwhile sets it to None)
            assert self._queue is not None
            self._queue.put_nowait(_STOP)
            await asyncio.wait({writer}, timeout=CONNECT_TIMEOUT_S)
            if not writer.done():  # a statement on a silent path (up to WRITE_TIMEOUT_S): cut it short
                log.warning("store writer: PostgreSQL silent while closing; abandoning its connection")
                for conn in (self._conn, self._connecting):
                    if conn is not None and not conn.is_closed():
                        conn.terminate()  # (what was on its way fails; the next start reads what landed)
            with contextlib.suppress(Exception):
                await writer
            self._writer = None
        # the pool first: a read in flight would hold up the drop of a store made in vain
        if (pool := self._pool) is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (TimeoutError, asyncpg.InterfaceError):
                pool.terminate()
            self._pool = None
        try:
            if remove_made:
                await self._remove_made()
        finally:  # (cancelled meanwhile, a second stop signal: the drop is rolled back; the lock let go all the same)
            self._made = None
            if (conn := self._conn) is not None:
                self._conn = None
                await _let_go(conn)

    # --- writes -----------------------------------------------------------------------------------
    def enqueue(self, unit: UnitOfWork) -> asyncio.Future[None]:
        if self._writer is None or self._writer.done() or self._queue is None or self._closing:
            raise RuntimeError("store not open")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((unit, future))
        return future

    async def _write_loop(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            item = await self._queue.get()
            group = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    group.append(item)
                if len(group) >= MAX_GROUP:
                    break
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            if group:
                try:
                    await self._commit_group(group)
                except Exception as exc:  # never leave a waiter hanging (those told already stay as told)
                    log.exception("store writer: group commit failed unexpectedly")
                    for unit, future in group:
                        if not future.done():
                            self._failed.add(unit)
                    _resolve(group, [exc] * len(group))

    def _writer_exited(self, task: asyncio.Task[None]) -> None:
        """Fails every unit still queued (the writer stopped, or died), so that no commit waits forever."""
        assert self._queue is not None
        if not task.cancelled() and task.exception() is not None:
            log.error("store writer stopped", exc_info=task.exception())
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not _STOP and not item[1].done():
                item[1].set_exception(RuntimeError("store closed"))

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._fenced is not None:
            raise self._fenced
        if self._conn is None or self._conn.is_closed():
            log.warning("store writer: reconnecting to PostgreSQL")
            conn = self._connecting = await self._connect()
            try:
                await self._hold_lock(conn)  # (if another holds the store now, StoreInUse after lock_wait_s)
                await self._check_epoch(conn)  # (if another held it meanwhile, this one writes no more)
            except BaseException:
                await conn.close()  # (and with it the lock: a fenced writer keeps no hold of the store)
                raise
            finally:
                self._connecting = None
            self._conn = conn
        return self._conn

    async def _check_epoch(self, conn: asyncpg.Connection) -> None:
        """The store taken back after a lost connection (or held by another process as the writer reconnects):
        is the holder epoch still the one this process wrote? If not, another process (a coordinator, `keys
        rotate`) took the store while this one's lock was gone, and may have written it: this process' jobs,
        keys, receipt log and balances in memory may no longer match it. Fenced: every unit, queued or later,
        is refused; on_lost is told once."""
        row = await conn.fetchrow(
            "SELECT epoch, holder, taken_us, (SELECT max(version) FROM schema_version) AS version "
            "FROM store_holder WHERE id = 1"
        )
        if row is not None and row["epoch"] == self._epoch and row["version"] == len(POSTGRES_MIGRATIONS):
            return
        if row is None:
            since = "its holder record is gone"
        else:
            at = datetime.fromtimestamp(row["taken_us"] / 1e6, tz=UTC).isoformat(timespec="seconds")
            since = (f"last taken by {row['holder'] or 'an unknown process'} at {at}: epoch {row['epoch']}, "
                     f"this process' {self._epoch}")  # fmt: skip
            if row["version"] != len(POSTGRES_MIGRATIONS):
                since += f"; schema version now {row['version']}"
        schema = self.schema or await conn.fetchval("SELECT current_schema()")
        self._fenced = StoreFenced(
            f"schema {schema} was taken by another process while this one's connection to it was lost ({since}): "
            "what this process holds in memory may no longer match the store, so it writes no more; restart it "
            "to reload from the store"
        )
        log.error("store writer: %s", self._fenced)
        if self.on_lost is not None:
            asyncio.get_running_loop().call_soon(self.on_lost, self._fenced)
        raise self._fenced

    async def _probe(self, probe: tuple[str, tuple], stale: Backend | None) -> bool:
        # On a connection of its own, not the read pool's: reads may hold every pool connection (each up to its
        # timeout, waiting on a lock or a silent path), and the writer must not wait for them.
        conn = await _connect_whole(self.dsn, server_settings=self._settings(read_only=True),
                                    timeout=CONNECT_TIMEOUT_S, command_timeout=CONNECT_TIMEOUT_S)  # fmt: skip
        try:
            keep_alive(conn)
            if stale is not None:  # ended first, so that its transaction is decided
                await self._end_backend(conn, stale)
            return await conn.fetchval(probe[0], *probe[1]) is not None
        finally:
            conn.terminate()  # (at once: on a silent path, a polite close would wait)

    @staticmethod
    async def _end_backend(conn: asyncpg.Connection, backend: Backend) -> None:
        """Terminate the writer's previous backend (its connection lost on this side only) and wait until it is
        gone: its open transaction, if any, is rolled back, and its lock on the store released. (Not a session
        given its pid since: it may be another process'.)"""
        await conn.fetchval(_TERMINATE_BACKEND, *backend)
        for _ in range(100):
            if not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND backend_start IS NOT DISTINCT FROM $2",
                *backend,
            ):
                return
            await asyncio.sleep(0.05)

    async def _hold_lock(self, conn: asyncpg.Connection) -> None:
        """A session advisory lock on the schema, held by the writer's connection: two coordinators on one schema
        would both schedule its jobs, and a key rotation under a running coordinator would retire the key it
        signs with.

        A connection lost on this side only (a NAT entry dropped, a partition) leaves its backend, and the lock,
        alive on the server until TCP keepalive reaps it (_settings asks for ~25 s): the writer's own previous
        backend is terminated, and any other holder waited for, LOCK_WAIT_S at most (a coordinator restarted
        after its host crashed waits for the server to reap the dead one's backend)."""
        # the schema the tables are in: the named one (it may not exist yet), or the search path's first
        schema = self.schema or await conn.fetchval("SELECT current_schema()") or "public"
        key, started = await conn.fetchrow(
            "SELECT hashtext($1)::bigint, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            f"aitbc-store:{schema}",
        )
        mine: Backend = (conn.get_server_pid(), started)
        deadline = time.monotonic() + self.lock_wait_s
        said = False
        # (before the lock is asked for: if it is granted and the answer lost, this backend holds the store)
        self._own_backends.add(mine)
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            row = await conn.fetchrow(_LOCK_HOLDER, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
            holder = None if row is None else row["pid"]
            own = row is not None and (row["pid"], row["backend_start"]) in self._own_backends
            if self._epoch is not None and not own:
                # taking the store back, and another process has it now: fenced as soon as it bumped the epoch
                await self._check_epoch(conn)
            if self._closing or time.monotonic() >= deadline:
                raise StoreInUse(f"schema {schema} is open in another process (a running coordinator? "
                                 f"PostgreSQL pid {holder}): stop it first")  # fmt: skip
            if own:
                log.warning("store writer: ending its previous session (pid %d), which still holds the store",
                            holder)  # fmt: skip
                await conn.fetchval(_TERMINATE_BACKEND, row["pid"], row["backend_start"])
            elif not said:
                log.warning("store: schema %s is held by PostgreSQL pid %s; waiting for it (%.0f s at most)",
                            schema, holder, self.lock_wait_s)  # fmt: skip
                said = True
            await asyncio.sleep(0.5)
        self._writer_pid, self._writer_backend = mine[0], mine
        self._own_backends = {mine}

    async def _commit_group(self, group: list[tuple[UnitOfWork, asyncio.Future[None]]]) -> None:
        if self._fenced is not None:  # another process held the store meanwhile: nothing more is written
            _resolve(group, [self._fenced] * len(group))
            return
        started = time.perf_counter()
        # units built on a unit that failed are refused; the others (live) are written
        outcomes, live = self._failed.partition([unit for unit, _ in group])
        decided = [i not in live for i in range(len(group))]  # an outcome, final, is known for these
        try:
            await self._write_group(group, live, outcomes, decided)
        except Exception as exc:  # a bug: fail what is undecided (what landed stays landed), live on
            log.exception("store writer: group commit failed unexpectedly")
            for i, (unit, _) in enumerate(group):
                if not decided[i]:
                    outcomes[i] = exc
                    self._failed.add(unit)
        elapsed = time.perf_counter() - started
        _resolve(group, outcomes)
        if self.commit_observer is not None:
            with contextlib.suppress(Exception):  # metrics must not touch the outcomes
                self.commit_observer(len(group), elapsed)

    async def _write_group(self, group: list[tuple[UnitOfWork, asyncio.Future[None]]], live: list[int],
                           outcomes: list, decided: list[bool]) -> None:  # fmt: skip
        units = [group[i][0] for i in live]
        attempt = _Attempt()
        try:
            if units:
                await self._transact(units, attempt)
            for i in live:
                decided[i] = True
        except Exception as exc:
            self._next_leaf = None  # count again from what the log holds
            if attempt.in_doubt(exc) and await self._landed(units):
                # The COMMIT failed (its connection lost, its backend ended) after the server had committed: the
                # rows are there, so the group succeeded (retried, it would fail on its own rows, duplicate keys).
                log.warning("store writer: COMMIT failed (%r); the group of %d had landed", exc, len(units))
                for i in live:
                    decided[i] = True
            else:
                unplace(attempt.placed)
                unreachable: BaseException | None = None  # the server not reached again for a unit alone
                for i in live:  # isolate the culprit, and whatever builds on it
                    unit = group[i][0]
                    # no unit at fault (the server, or the store held by another): alone each would fail too
                    if self._closing or _about_the_server(exc) or isinstance(exc, StoreInUse):
                        outcomes[i] = exc
                    elif unreachable is not None:  # (not each unit waiting CONNECT_TIMEOUT_S in turn)
                        outcomes[i] = unreachable
                    elif (blocked := self._failed.blocking(unit)) is not None:
                        outcomes[i] = blocked
                    else:
                        outcomes[i], began = await self._commit_alone(unit)
                        if _fails_every_unit(outcomes[i], began):
                            unreachable = outcomes[i]
                    decided[i] = True
                    if outcomes[i] is not None:
                        self._failed.add(unit)

    async def _landed(self, units: list[UnitOfWork]) -> bool:
        """Whether a group whose commit raised is in the database all the same: its transaction is atomic, so
        one of its rows that only it writes tells (its first job event, or else its first checkpoint or drain)."""
        probe: tuple[str, tuple] | None = None
        for unit in units:
            if unit.events:
                probe = ("SELECT 1 FROM job_events WHERE job_id = $1 AND sequence = $2", unit.events[0][:2])
                break
            if unit.checkpoints:
                probe = ("SELECT 1 FROM checkpoints WHERE tree_size = $1", (unit.checkpoints[0].tree_size,))
                break
            if unit.drains:  # (an operator's drain: its row's end is queued only once it landed)
                drain = unit.drains[0]
                probe = ("SELECT 1 FROM operator_drains WHERE miner_id = $1 AND created_us = $2",
                         (drain.miner_id, drain.created_us))  # fmt: skip
                break
        if probe is None:
            return False  # nothing to tell by (keys, ends of drains only: their writes can simply be retried)
        delay = 0.1
        # The writer's backend may live on, its transaction open and its COMMIT still on the way (a connection
        # lost on this side; a COMMIT past its timeout, the connection still open here): ended before the probe,
        # so that the probe's answer is final; the connection, in an unknown state, is not used again.
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        stale = self._writer_backend
        while True:  # "cannot tell" is not "it did not land": ask until the server answers (a failover)
            if self._closing:
                log.error("store writer: closing without knowing whether a group landed (the next start "
                          "reads what did)")  # fmt: skip
                return False
            try:  # (not on the writer's connection: reading needs no hold of the store, which may be lost for good)
                probing = asyncio.wait_for(self._probe(probe, stale), CONNECT_TIMEOUT_S)
                return await self._unless_closing(probing)
            except _Closing:
                continue  # (said above)
            except Exception:
                log.warning("store writer: cannot tell yet whether a group landed; asking again",
                            exc_info=True)  # fmt: skip
                with contextlib.suppress(_Closing):
                    await self._unless_closing(asyncio.sleep(delay))
                delay = min(delay * 2, 5.0)

    async def _unless_closing(self, awaitable: Awaitable[_T]) -> _T:
        """awaitable's outcome; _Closing as soon as close() is called, awaitable then cancelled (and waited for:
        a probe's connection is closed, a connect in flight discarded)."""
        assert self._close_asked is not None, "store not open"
        task = asyncio.ensure_future(awaitable)
        asked = asyncio.ensure_future(self._close_asked.wait())
        try:
            await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            raise _Closing
        return task.result()

    async def _commit_alone(self, unit: UnitOfWork) -> tuple[BaseException | None, bool]:
        """The unit's outcome, and whether its transaction began (the writer connected and held the store)."""
        attempt = _Attempt()
        try:
            await self._transact([unit], attempt)
            return None, attempt.began
        except Exception as exc:
            self._next_leaf = None
            if attempt.in_doubt(exc) and await self._landed([unit]):
                return None, attempt.began
            unplace(attempt.placed)
            return exc, attempt.began

    async def _transact(self, units: list[UnitOfWork], attempt: _Attempt) -> None:
        """Writes units in one transaction on the writer's connection; attempt records how far it got."""
        conn = await self._writer_connection()
        attempt.began = True
        transaction = conn.transaction()
        await transaction.start()
        try:
            next_leaf, attempt.placed = assign_leaves(units, await self._log_size(conn))
            await _write_units(conn, units)
        except BaseException:
            try:
                await transaction.rollback()
            except Exception:  # (the error that failed the write is the one that tells)
                conn.terminate()  # its state unknown: not used again (the next write reconnects)
            raise
        attempt.commit_sent = True
        await transaction.commit()
        self._next_leaf = next_leaf

    async def _log_size(self, conn: asyncpg.Connection) -> int:
        """The receipt log's next free place: counted by this writer, read from the log after a failure."""
        if self._next_leaf is None:
            self._next_leaf = await conn.fetchval("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM log_leaves")
        return self._next_leaf

    # --- reads ------------------------------------------------------------------------------------
    async def _query(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        return await self._read(numbered(sql), params, self.read_timeout_s)

    async def _load(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        return await self._read(numbered(sql), params, self._load_timeout_s)

    async def load_drains(self) -> list[DrainRow]:
        return [DrainRow(*r) for r in await self._load(LOAD_DRAINS)]

    async def _read(self, sql: str, params: tuple, timeout_s: float) -> list[asyncpg.Record]:
        """A read, asked again (it changes nothing) when its connection was lost (a blip, a restart), and once
        more on a fresh connection when it got no answer in time (a silent path; a lock held by maintenance)."""
        lost = timed_out = 0
        while True:
            try:
                return await self._read_once(sql, params, timeout_s)
            except _READ_LOST:
                lost += 1
                if lost == READ_ATTEMPTS or self._closing:
                    raise
                log.warning("store: a read's connection was lost; reading again", exc_info=True)
            except TimeoutError as exc:
                timed_out += 1
                if timed_out == READ_TIMEOUT_ATTEMPTS or self._closing:
                    raise StoreReadTimeout(
                        f"PostgreSQL answered no read within {timeout_s:g} s ({timed_out} tries): the path to it "
                        "may be down, or a table locked (maintenance)"
                    ) from None
                if isinstance(exc, _NoFreeConnection):  # (every connection busy: no sign of a silent path)
                    log.warning("store: a read got no connection within %g s; reading again", timeout_s)
                    continue
                log.warning("store: a read got no answer within %g s; reading again on a fresh connection",
                            timeout_s)  # fmt: skip
                await self._renew_connections()

    async def _renew_connections(self) -> None:
        """The pool's other connections, opened over the same path, may be as silent: each is replaced as it is
        next taken or given back (the retry is on a fresh one)."""
        if self._pool is not None:
            await self._pool.expire_connections()

    async def _read_once(self, sql: str, params: tuple, timeout_s: float) -> list[asyncpg.Record]:
        """One try, within timeout_s in all (a free connection, or a new one, and the answer)."""
        assert self._pool is not None, "store not open"
        deadline = time.monotonic() + timeout_s
        try:
            conn = await self._pool.acquire(timeout=timeout_s)
        except TimeoutError:
            raise _NoFreeConnection from None
        try:
            return await conn.fetch(sql, *params, timeout=max(deadline - time.monotonic(), 0.001))
        except asyncpg.PostgresError:
            raise  # the server answered (a canceled statement too): the connection is in step, and is kept
        except BaseException:
            # Past its time, cancelled or lost: the connection's state is unknown (on a silent path, a polite
            # release would wait for the cancel's answer forever), so it is dropped, not given back.
            conn.terminate()
            raise
        finally:
            # (its reset, a round trip, bounded too: past it, or failing, the connection is dropped, not the answer)
            with contextlib.suppress(Exception):
                await self._pool.release(conn, timeout=timeout_s)


# The writer's connection holds the store's lock: a server's idle_session_timeout (PostgreSQL 14+, set for the
# role or the database) would end it while idle, and let another process take the store. (Not a startup setting:
# older servers refuse a parameter they do not know.)
# the backend holding a session advisory lock (its bigint key given as its two halves), named (see Backend)
_LOCK_HOLDER = (
    "SELECT l.pid, a.backend_start FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid::bigint = $1 AND l.objid::bigint = $2"
)

_KEEP_IDLE_SESSION = (
    "SELECT set_config('idle_session_timeout', '0', false) "
    "WHERE current_setting('server_version_num')::int >= 140000"
)


_T = TypeVar("_T")


class _Closing(Exception):
    """close() was called while the writer waited to learn a commit's outcome: it stops asking."""


@dataclass(slots=True)
class _Made:
    """A store an open made (no schema_version table before it): a start refused later drops it again."""

    schema: str  # where its tables are
    schema_too: bool  # the open created the schema itself
    # the holder row it wrote (store_holder): another one means another process took, or made, the store since
    epoch: int
    holder: str
    taken_us: int
    # what its migration transaction made there, as (catalog, oid): tables, functions, ... (see _MADE_HERE)
    objects: tuple[tuple[int, int], ...] = ()


# The objects the current transaction (a new store's migration, run just before) made in schema $1: each object
# put in a schema is recorded as depending on it (pg_depend, deptype 'n'), and that row, written as the object is
# made, carries the id of the transaction that made it as its xmin. Read through pg_depend's index on what is
# depended on: as many rows as the schema holds objects, however large the database's catalog. Not read from the
# scripts' text, which could name what they do not make (a comment) or make what a pattern misses (a view, a
# type, `create table`); nor every object of the schema, which holds the user's too, some made by other sessions
# while the migration ran (with their own transactions' ids), or altered since. Only objects that stand alone:
# those part of another (an index, a row or array type, an identity sequence, a range's constructor: an internal,
# auto or extension dependency) go with it. A migration makes its objects in this transaction itself, not in a
# subtransaction (a SAVEPOINT, a DO block's EXCEPTION clause): one made there has another id, and a refused start
# would leave it behind (the safe way: never is another's object dropped).
_MADE_HERE = """
SELECT d.classid, d.objid FROM pg_namespace n, pg_depend d
WHERE n.nspname = $1 AND d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid AND d.deptype = 'n'
  AND d.xmin = (txid_current() % 4294967296)::text::xid
  AND NOT EXISTS (SELECT FROM pg_depend part WHERE part.classid = d.classid AND part.objid = d.objid
                  AND part.objsubid = 0 AND part.deptype IN ('i', 'a', 'e'))
"""

# What of a store made is still there, in its schema, as (kind, qualified name): `DROP <KIND> <name>` drops it
_STILL_MADE = """
SELECT i.type, i.identity FROM unnest($1::oid[], $2::oid[]) AS m (classid, objid),
  LATERAL pg_identify_object(m.classid, m.objid, 0) AS i
WHERE i.identity IS NOT NULL AND i.schema = quote_ident($3)  -- (pg_identify_object quotes the name as needed)
"""

# The kinds of object first dropped, in order: what may use another goes before it (a view over a table, a table
# whose trigger calls a function or whose column is of a type). Any other kind comes last.
_DROP_ORDER = ("materialized view", "view", "foreign table", "table", "sequence", "aggregate", "procedure",
               "function", "type")  # fmt: skip


async def _drop_made(conn: asyncpg.Connection, made: _Made) -> None:
    """Drops what made notes (inside the caller's transaction): one DROP per kind, never CASCADE. A DROP that
    another object of made still needs is tried again once that one is gone; one that an object of someone else
    needs (a user's view over the jobs) fails the whole cleanup, which then keeps the store whole."""
    rows = await conn.fetch(
        _STILL_MADE, [c for c, _ in made.objects], [o for _, o in made.objects], made.schema
    )
    pending: dict[str, list[str]] = {}
    for kind, identity in rows:
        pending.setdefault(kind, []).append(identity)
    while pending:
        blocked: dict[str, list[str]] = {}
        refusal: asyncpg.DependentObjectsStillExistError | None = None
        for kind in sorted(pending, key=_drop_rank):
            try:
                async with conn.transaction():  # (a savepoint: a DROP refused leaves the others' standing)
                    await conn.execute(f"DROP {kind.upper()} {', '.join(pending[kind])}")
            except asyncpg.DependentObjectsStillExistError as exc:
                blocked[kind], refusal = pending[kind], exc
        if refusal is not None and len(blocked) == len(pending):
            raise refusal  # (no progress: something not made by the start depends on the store)
        pending = blocked


def _quoted(name: str) -> str:
    """name as an SQL identifier, whatever it holds (a schema the search path names may hold a double quote)."""
    return '"' + name.replace('"', '""') + '"'


def _drop_rank(kind: str) -> int:
    return _DROP_ORDER.index(kind) if kind in _DROP_ORDER else len(_DROP_ORDER)


CANCEL_GRACE_S = 0.1  # a connect cancelled goes on this long first (see _connect_whole)


async def _connect_whole(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect, never cancelled in its first moment. With sslmode prefer (the default) asyncpg first asks
    the server for SSL through a protocol of its own, whose future fails when its transport is closed early: a
    connect cancelled in the loop turn between its TCP connection made and create_connection returning (a stop
    during start, a read's call cancelled as its pool connection is made) left that future failed and unread, and
    asyncio logged "Future exception was never retrieved". So a cancel lets the connect go on for CANCEL_GRACE_S
    (past that turn: waiting for the server, it ends cleanly when cancelled), then cancels it; a connection it
    made meanwhile is closed. The caller's cancel is raised all the same."""
    task = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            with contextlib.suppress(asyncio.CancelledError):  # (cancelled again: the first cancel is raised)
                await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
            task.cancel()
        task.add_done_callback(_discard_connection)
        raise


def _discard_connection(task: asyncio.Future[asyncpg.Connection]) -> None:
    """A connect whose caller was cancelled: its error read (not logged as never retrieved), its connection closed."""
    if not task.cancelled() and task.exception() is None:
        task.result().terminate()


async def _let_go(conn: asyncpg.Connection) -> None:
    """Close conn (and free the store's lock it may hold), politely but within bounds: on a silent path, at once."""
    try:
        with contextlib.suppress(Exception):
            await conn.close(timeout=5)
    finally:  # (cancelled meanwhile too)
        if not conn.is_closed():
            conn.terminate()


class _NoFreeConnection(TimeoutError):
    """A read found no pool connection free, nor made a new one, in time: the pool's connections are busy (or a
    new one's path silent); none is known silent, so none is renewed (healthy ones would be reopened under load)."""


class StoreReadTimeout(RuntimeError):
    """PostgreSQL answered no read in time, on two connections: the store is unreachable for now (UNAVAILABLE).
    (Not a TimeoutError: a caller's own wait, GetJobResult's, must not take it for its deadline.)"""


def keep_alive(conn: asyncpg.Connection) -> None:
    """TCP keepalive on conn's socket (asyncpg has no option for it), and TCP_USER_TIMEOUT: data sent and left
    unacknowledged as long ends the connection too (else the kernel retransmits for ~15 minutes)."""
    transport = getattr(conn, "_transport", None)
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # (a Unix socket: no network path to lose)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if hasattr(socket, "TCP_KEEPIDLE"):  # (Linux; other systems keep their defaults)
        options += [(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
                    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
                    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)]  # fmt: skip
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        dead_after_ms = (KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES) * 1000
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, dead_after_ms))
    for level, option, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)


async def _opened(conn: asyncpg.Connection) -> None:
    """The pool's hook for each connection it opens."""
    keep_alive(conn)


_TERMINATE_BACKEND = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE pid = $1 AND backend_start IS NOT DISTINCT FROM $2"
)

LOCK_WAIT_S = 30.0  # how long a store held by another backend is waited for (its client may be gone)
CONNECT_TIMEOUT_S = 10.0  # the writer's connects and outcome probes: close() must not wait on a silent server
READ_ATTEMPTS = 3  # a read whose connection was lost is asked again
WRITE_TIMEOUT_S = 60.0  # one statement of a group (up to 2,000 units): beyond, the server is taken as silent


def _fails_every_unit(outcome: BaseException | None, began: bool) -> bool:
    """Whether a unit tried alone failed in a way each unit after it would too, waiting as long in turn: the server
    not reached, or the store held by another (each unit would wait lock_wait_s for it); a statement stopped past
    its timeout (a silent path, or a table locked: each unit would wait as long). Not a connection lost once
    connected: that is a blip, the next unit reconnects."""
    if isinstance(outcome, _STATEMENT_STOPPED):
        return True
    return not began and isinstance(outcome, (*_CONNECTION_LOST, StoreInUse))


def _about_the_server(exc: BaseException) -> bool:
    """Errors of the server rather than of some unit's rows: insufficient resources (a full disk, 53xxx),
    system errors (58xxx)."""
    return isinstance(exc, asyncpg.PostgresError) and (getattr(exc, "sqlstate", "") or "")[:2] in ("53", "58")


# The server going away or not there yet (a restart, a failover, pg_terminate_backend): its backend ended
# (57P01, 57P02), or the connection refused while it starts up or shuts down (57P03). Not an error of the rows.
_SERVER_GONE = (asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError)
# Errors after which a transaction's outcome is unknown: the COMMIT may have been carried out. Any other error
# (a constraint, say) before the COMMIT was sent means it was rolled back.
_CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError,
                    *_SERVER_GONE)  # fmt: skip
# A statement stopped past a timeout, the writer's (WRITE_TIMEOUT_S) or the server's (statement_timeout,
# lock_timeout: a DBA's), waiting on a silent path or a locked table: not an error of the rows; what it wrote was
# rolled back (once the COMMIT was sent, the outcome is settled first).
_STATEMENT_STOPPED = (TimeoutError, asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError)
register_unreachable(lambda exc: isinstance(exc, (*_CONNECTION_LOST, *_STATEMENT_STOPPED, StoreReadTimeout)))
# a read's connection lost (not a read past its time: asked again, it would wait as long again)
_READ_LOST = (asyncpg.ConnectionDoesNotExistError, ConnectionError)


@dataclass(slots=True)
class _Attempt:
    """How far one transaction of the writer got."""

    began: bool = False  # connected, holding the store, the transaction opened
    commit_sent: bool = False  # the COMMIT was on its way: it may have been carried out, whatever the error
    placed: list[ReceiptRow] = field(default_factory=list)  # the receipts it gave a place in the log

    def in_doubt(self, exc: BaseException) -> bool:
        """Whether the transaction may have committed although it raised exc: any error once the COMMIT was
        sent (its answer lost, its backend ended after committing: 57P01, 57P02, a forged or pooled reply), and
        a lost connection at any point (its backend may live on: ended before the outcome is read)."""
        return self.commit_sent or (self.began and isinstance(exc, _CONNECTION_LOST))


def _resolve(
    group: list[tuple[UnitOfWork, asyncio.Future[None]]], outcomes: list[BaseException | None]
) -> None:
    for (_, future), error in zip(group, outcomes, strict=True):
        if future.done():  # the waiter was cancelled; the write stands regardless
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


_INSERT_JOB = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({','.join(f'${i}' for i in range(1, 27))})"
_UPDATE_JOB = (
    "UPDATE jobs SET state=$1, updated_us=$2, attempt=$3, miner_id=$4, started_us=$5, finished_us=$6, "
    "terminal_reason=$7, terminal_message=$8, reassignments=$9, event_seq=$10, not_before_us=$11, "
    "queued_us=$12 WHERE job_id=$13"
)


_ADD_TO_BALANCE = (
    "INSERT INTO account_balances VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (account_id, kind) DO UPDATE SET "
    "amount_whole = account_balances.amount_whole + EXCLUDED.amount_whole, "
    "amount_rest = account_balances.amount_rest + EXCLUDED.amount_rest, "
    "receipts = account_balances.receipts + EXCLUDED.receipts, "
    "units_whole = account_balances.units_whole + EXCLUDED.units_whole, "
    "units_rest = account_balances.units_rest + EXCLUDED.units_rest, "
    "updated_us = GREATEST(account_balances.updated_us, EXCLUDED.updated_us)"
)

_ADD_TO_STATE_COUNT = (
    "INSERT INTO job_state_counts VALUES ($1,$2) ON CONFLICT (state) DO UPDATE SET "
    "jobs = job_state_counts.jobs + EXCLUDED.jobs"
)


async def _write_units(conn: asyncpg.Connection, units: list[UnitOfWork]) -> None:
    new_jobs = [r for u in units for r in u.new_jobs]
    if new_jobs:
        await conn.executemany(_INSERT_JOB, new_jobs)
    updates = [r for u in units for r in u.job_updates]
    if updates:
        await conn.executemany(_UPDATE_JOB, updates)
    events = [r for u in units for r in u.events]
    if events:
        await conn.executemany("INSERT INTO job_events VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)", events)
    results = [r for u in units for r in u.results]
    if results:
        await conn.executemany("INSERT INTO job_results VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)", results)
    receipts = [r for u in units for r in u.receipts]
    if receipts:
        await conn.executemany(
            "INSERT INTO log_leaves (leaf_index, leaf_hash) VALUES ($1, $2)",
            [(r.leaf_index, r.leaf_hash) for r in receipts],
        )
        await conn.executemany(
            "INSERT INTO receipts (receipt_id, job_id, attempt, envelope, leaf_index, issued_us) "
            "VALUES ($1,$2,$3,$4,$5,$6)",
            [(r.receipt_id, r.job_id, r.attempt, r.envelope, r.leaf_index, r.issued_us) for r in receipts],
        )
    tiles = [t for u in units for t in u.tiles]
    if (
        tiles
    ):  # (derived from the leaves: a tile written twice, by a start that found its write lost, is the same)
        await conn.executemany(
            "INSERT INTO log_tiles VALUES ($1,$2) ON CONFLICT (tile_index) DO NOTHING", tiles
        )
    ledger = [e for u in units for e in u.ledger]
    if ledger:
        await conn.executemany(
            "INSERT INTO ledger_entries (account_id, kind, receipt_id, amount_nano, units_nano, booked_us) "
            "VALUES ($1,$2,$3,$4,$5,$6)",
            [(e.account_id, e.kind, e.receipt_id, e.amount_nano, e.units_nano, e.booked_us) for e in ledger],
        )
    if ledger:
        await conn.executemany(_ADD_TO_BALANCE, balance_rows(units))
    moves = state_count_rows(units)  # (a unit may change jobs with no event: the store does not ask for one)
    if moves:
        await conn.executemany(_ADD_TO_STATE_COUNT, moves)
    checkpoints = [c for u in units for c in u.checkpoints]
    if checkpoints:
        await conn.executemany(
            "INSERT INTO checkpoints VALUES ($1,$2,$3,$4)",
            [(c.tree_size, c.root_hash, c.note, c.signed_us) for c in checkpoints],
        )
    keys = [k for u in units for k in u.keys]
    if keys:
        await conn.executemany(
            "INSERT INTO signing_keys VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (key_id) DO UPDATE SET "
            "status = EXCLUDED.status, valid_until_us = EXCLUDED.valid_until_us",
            [
                (
                    k.key_id,
                    k.role,
                    k.status,
                    k.public_key,
                    k.private_seed,
                    k.valid_from_us,
                    k.valid_until_us,
                    k.owner,
                )
                for k in keys
            ],
        )
    await _write_drains(conn, units)


async def _write_drains(conn: asyncpg.Connection, units: list[UnitOfWork]) -> None:
    """Operators' drains: stored in the units' order (a miner's latest wins), then those over deleted, each only
    if the row is still its own (see UnitOfWork.drains_over). Both may be written again (a retry after a failed
    group changes nothing more)."""
    drains = [(d.miner_id, d.reason, d.created_us) for u in units for d in u.drains]
    if drains:
        await conn.executemany(
            "INSERT INTO operator_drains VALUES ($1,$2,$3) ON CONFLICT (miner_id) DO UPDATE SET "
            "reason = EXCLUDED.reason, created_us = EXCLUDED.created_us",
            drains,
        )
    over = [(d.miner_id, d.created_us) for u in units for d in u.drains_over]
    if over:
        await conn.executemany("DELETE FROM operator_drains WHERE miner_id = $1 AND created_us = $2", over)
