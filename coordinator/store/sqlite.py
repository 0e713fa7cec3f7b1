"""SQLite store: WAL, one writer thread committing in groups, aiosqlite for reads.

Why a writer thread of our own: aiosqlite costs ~250 us per awaited statement here, so one round trip per
job would cap throughput far below the target. The writer takes every unit of work queued since its last
commit, writes each table with multi-row statements, commits once, then wakes all waiters: the cost of a commit
(and its fsync) is shared by the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosqlite

from .base import (
    JOB_COLUMNS,
    LOAD_DRAINS,
    DrainRow,
    FailedUnits,
    StoreInUse,
    StoreUnusable,
    UnitOfWork,
    assign_leaves,
    balance_rows,
    register_unreachable,
    state_count_rows,
    unplace,
)
from .schema import BUMP_EPOCH, MIGRATIONS, holder_name
from .sql_reads import SqlReads

log = logging.getLogger(__name__)

MAX_GROUP = 2000  # units per transaction: bounds a group's latency
_STOP = object()


class SqliteStore(SqlReads):
    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: aiosqlite.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commit_observer: Callable[[int, float], None] | None = None  # (group size, seconds)
        self._next_leaf = 0  # the receipt log's next free place (the writer thread's own)
        self._failed = FailedUnits()  # the writer thread's own
        self._lock: IO[str] | None = None
        self._epoch: int | None = None  # the holder epoch this store wrote with its first commit
        self._new_files: list[str] = []  # the files opening made (a new store): close_unused removes them

    # --- life cycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        file = _file_of(self.path)
        if file is not None and os.path.isdir(file):  # (SQLite only says "unable to open database file")
            raise StoreUnusable("a directory, not a file")
        lock_is_new = file is not None and not os.path.lexists(_lock_file_of(file))
        try:
            self._lock = _hold_lock(self.path)
        except OSError as exc:  # a missing directory, a read-only file system, no permission
            raise StoreUnusable(exc.strerror or str(exc)) from None
        # What opening creates, if the store is new: removed again if the start fails (close_unused). Looked at
        # with the lock held: before it, another process may still make the store, serve it, and stop.
        self._new_files = _files_of_a_new_store(file, lock_is_new)
        try:
            await self._open()
        except BaseException as exc:
            # (the writer thread may have started: it is stopped, then the lock freed)
            with contextlib.suppress(Exception):
                await self.close_unused()
            self._release_lock()
            if isinstance(exc, sqlite3.Error):
                raise _unusable(exc) from None
            raise

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(
            target=self._write_loop, args=(ready,), name="sqlite-writer", daemon=True
        )
        self._writer.start()
        await ready
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        await self._close_connections()
        self._release_lock()

    async def close_unused(self) -> None:
        await self._close_connections()
        for path in self._new_files:  # (with the lock still held: nobody opens the store meanwhile)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        if self._new_files:  # (the log said it migrated the store and kept keys in it)
            log.info("start failed: removed what it made of the store at %s", self._new_files[0])
        self._release_lock()

    async def _close_connections(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None  # from now on, enqueue refuses (nothing would write it)
            self._queue.put(_STOP)
            await asyncio.to_thread(writer.join)
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # (closing the file releases its lock)
            self._lock = None

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):  # written by a newer coordinator: this code would misread it
            conn.close()
            raise StoreUnusable(f"the store's schema is version {version}, newer than this coordinator's "
                                f"({len(MIGRATIONS)}): run the newer version")  # fmt: skip
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            log.info("store migrated to schema version %d", number)
        _check_writable(conn)
        self._next_leaf = _stored_log_size(conn)
        return conn

    # --- writes -----------------------------------------------------------------------------------
    def enqueue(self, unit: UnitOfWork) -> asyncio.Future[None]:
        if self._loop is None or self._writer is None:
            raise RuntimeError("store not open")
        future = self._loop.create_future()
        self._queue.put((unit, future))
        return future

    def _write_loop(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect_writer()
        except Exception as exc:  # start-up failure is reported to open()
            loop.call_soon_threadsafe(_tell_opened, ready, exc)
            return
        loop.call_soon_threadsafe(_tell_opened, ready, None)
        stopping = False
        while not stopping:
            item = self._queue.get()
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
                except queue.Empty:
                    break
            if group:
                self._commit_group(conn, group)
        conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[tuple[UnitOfWork, asyncio.Future]]) -> None:
        started = time.perf_counter()
        # units built on a unit that failed are refused; the others (live) are written
        outcomes, live = self._failed.partition([unit for unit, _ in group])
        decided = [i not in live for i in range(len(group))]  # an outcome, final, is known for these
        try:
            self._write_group(conn, group, live, outcomes, decided)
        except BaseException as exc:  # a bug, or ROLLBACK itself failing: fail what is undecided, live on
            log.exception("store writer: group commit failed unexpectedly")
            with contextlib.suppress(Exception):
                self._rollback(conn)
            for i, (unit, _) in enumerate(group):
                if not decided[i]:
                    outcomes[i] = exc
                    self._failed.add(unit)
        elapsed = time.perf_counter() - started
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, group, outcomes)
        if self.commit_observer is not None:
            with contextlib.suppress(Exception):
                self.commit_observer(len(group), elapsed)

    def _write_group(self, conn: sqlite3.Connection, group: list[tuple[UnitOfWork, asyncio.Future]],
                     live: list[int], outcomes: list, decided: list[bool]) -> None:  # fmt: skip
        units = [group[i][0] for i in live]
        next_leaf, placed = assign_leaves(units, self._next_leaf)
        try:
            if units:
                conn.execute("BEGIN IMMEDIATE")
                epoch = self._epoch_in(conn)
                _write_units(conn, units)
                conn.execute("COMMIT")
                self._next_leaf, self._epoch = next_leaf, epoch
            for i in live:
                decided[i] = True
        except Exception as exc:
            self._rollback(conn)
            unplace(placed)
            for i in live:
                unit = group[i][0]
                if _about_the_file(exc):  # the lock, the disk: no unit is at fault, and alone each would fail
                    outcomes[i] = exc
                else:  # a unit's own rows (a constraint, a value out of range): isolate it
                    outcomes[i] = self._failed.blocking(unit) or self._commit_alone(conn, unit)
                decided[i] = True
                if outcomes[i] is not None:
                    self._failed.add(unit)

    def _commit_alone(self, conn: sqlite3.Connection, unit: UnitOfWork) -> BaseException | None:
        next_leaf, placed = assign_leaves([unit], self._next_leaf)
        try:
            conn.execute("BEGIN IMMEDIATE")
            epoch = self._epoch_in(conn)
            _write_units(conn, [unit])
            conn.execute("COMMIT")
            self._next_leaf, self._epoch = next_leaf, epoch
            return None
        except Exception as exc:
            self._rollback(conn)
            unplace(placed)
            return exc

    def _epoch_in(self, conn: sqlite3.Connection) -> int:
        """The holder epoch, bumped in this process's first transaction (like every process that takes a store:
        the record of who wrote it last). Not at open: the flock is held while this process lives, so there is
        nothing to check the epoch against later, and a start must not wait for another connection's write lock
        (a PostgreSQL writer, whose lock can be lost, bumps as it takes the store)."""
        if self._epoch is not None:
            return self._epoch
        return conn.execute(BUMP_EPOCH, (holder_name(), time.time_ns() // 1000)).fetchall()[0][0]

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # A failed BEGIN (the file locked past the busy timeout) opened no transaction, and some errors
        # (a full disk) roll it back themselves: a bare ROLLBACK would then raise and kill the writer.
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    # --- reads ------------------------------------------------------------------------------------
    async def _query(self, sql: str, *params: Any) -> list[tuple]:
        assert self._reader is not None, "store not open"
        # One job on the reader's thread: execute and fetch together. As two, another read could start in
        # between, and SQLite would serve it from the older snapshot of the statement still open: a read
        # made after a commit was acknowledged could then miss it (a WatchJob of a job just finished hung).
        return list(await self._reader.execute_fetchall(sql, params))

    async def load_drains(self) -> list[DrainRow]:
        return [DrainRow(*r) for r in await self._load(LOAD_DRAINS)]


def _tell_opened(ready: asyncio.Future[None], error: Exception | None) -> None:
    """The writer's start told to open(), unless open() stopped waiting (a start cancelled by a stop signal)."""
    if ready.done():
        return
    if error is None:
        ready.set_result(None)
    else:
        ready.set_exception(error)


def _file_of(path: str) -> str | None:
    """The file SQLite opens for path (a URI's, percent-decoded); None for an in-memory database."""
    if path.startswith("file:"):
        uri = urlsplit(path)
        if uri.netloc not in ("", "localhost") or "memory" in parse_qs(uri.query).get("mode", []):
            return None  # (another host's file SQLite refuses; an in-memory database is this process's own)
        path = unquote(uri.path)
    if not path or path == ":memory:":
        return None
    return path


def _lock_file_of(file: str) -> str:
    # by the file's real path: a symbolic or other path to the same file finds the same lock
    return f"{os.path.realpath(file)}.lock"


def _files_of_a_new_store(file: str | None, lock_is_new: bool) -> list[str]:
    """The files opening the store at file makes: the store's when there is none there yet, and its lock file
    when this start made it (an existing store is left as it is)."""
    if file is None:
        return []
    made = [] if os.path.lexists(file) else [file, f"{file}-wal", f"{file}-shm", f"{file}-journal"]
    return [*made, _lock_file_of(file)] if lock_is_new else made


def _check_writable(conn: sqlite3.Connection) -> None:
    """A write rolled back: a store opened read-only (mode=ro, immutable=1, the file's permissions) is refused at
    start, not at its first write (a store already in WAL mode opens read-only without a word). SQLite checks
    read-only before the write lock, so the probe does not wait for another connection's lock: busy, it is
    not read-only, and the start goes on."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN")
        conn.execute(f"PRAGMA user_version = {version}")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            raise
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute(f"PRAGMA busy_timeout = {timeout}")


def _unusable(exc: sqlite3.Error) -> StoreUnusable:
    """A store SQLite refuses to open for writing, said in a line."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    why = {8: "read-only (mode=ro, or the file's or directory's permissions): the coordinator writes its store",
           14: "cannot open the file (a missing directory, or no permission)",
           26: "the file is not a SQLite database"}.get(code, str(exc))  # fmt: skip
    return StoreUnusable(why)


def _hold_lock(path: str) -> IO[str] | None:
    """An exclusive lock on PATH.lock, held while the store is open: two coordinators on one file would both
    schedule its jobs, and a key rotation under a running coordinator would retire the key it signs with."""
    file = _file_of(path)
    if file is None:
        return None
    lock = open(_lock_file_of(file), "a")  # held open until the store closes
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreInUse(
            f"{file} is open in another process (a running coordinator?): stop it first"
        ) from None
    return lock


# SQLite's primary result codes for errors of the file or the connection rather than of some unit's rows:
# busy, locked, no memory, read-only, interrupted, I/O error, corrupt, full, cannot open, protocol, not a db
_FILE_ERRORS = frozenset({5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26})


def _about_the_file(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _FILE_ERRORS


register_unreachable(_about_the_file)


def _stored_log_size(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM log_leaves").fetchone()[0]


def _resolve(group: list[tuple[UnitOfWork, asyncio.Future]], outcomes: list[BaseException | None]) -> None:
    for (_, future), error in zip(group, outcomes, strict=True):
        if future.done():  # the waiter was cancelled; the write stands regardless
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


# Rows per multi-row statement: a power of two at most this, so few statement texts (cached) serve any count.
MAX_ROWS_PER_STATEMENT = 128
_UPDATED = ("state", "updated_us", "attempt", "miner_id", "started_us", "finished_us", "terminal_reason",
            "terminal_message", "reassignments", "event_seq", "not_before_us", "queued_us")  # fmt: skip


@functools.lru_cache(maxsize=512)
def _values_sql(head: str, width: int, rows: int, tail: str = "") -> str:
    one = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([one] * rows)}{tail}"


def _execute_rows(conn: sqlite3.Connection, head: str, width: int, rows: list, tail: str = "") -> None:
    """Write rows with as few statements as possible (multi-row VALUES).

    sqlite3 releases the GIL around every statement step and must take it back from the event loop, which
    may keep it for up to the switch interval: with one step per row (executemany), a 300-row group took
    tens of milliseconds against a busy loop. One statement per chunk of rows is one step.
    """
    i, n = 0, len(rows)
    while i < n:
        k = min(MAX_ROWS_PER_STATEMENT, 1 << ((n - i).bit_length() - 1))
        # (flattened in C: the writer holds the GIL meanwhile, ~0.1 us a row less than a comprehension)
        conn.execute(_values_sql(head, width, k, tail), list(itertools.chain.from_iterable(rows[i : i + k])))
        i += k


_UPDATE_HEAD = f"WITH v({', '.join(_UPDATED)}, job_id) AS ("
_UPDATE_TAIL = (
    f") UPDATE jobs SET {', '.join(f'{c} = v.{c}' for c in _UPDATED)} FROM v WHERE jobs.job_id = v.job_id"
)


# Upserts of summed rows (one per account, one per state), several rows a statement like the inserts: a row's
# key is in at most one row of a group, and SQLite applies a statement's rows in order anyway.
_ADD_TO_BALANCE_TAIL = (
    " ON CONFLICT (account_id, kind) DO UPDATE SET "
    "amount_whole = amount_whole + excluded.amount_whole, amount_rest = amount_rest + excluded.amount_rest, "
    "receipts = receipts + excluded.receipts, units_whole = units_whole + excluded.units_whole, "
    "units_rest = units_rest + excluded.units_rest, updated_us = max(updated_us, excluded.updated_us)"
)
_ADD_TO_STATE_COUNT_TAIL = " ON CONFLICT (state) DO UPDATE SET jobs = jobs + excluded.jobs"


def _write_units(conn: sqlite3.Connection, units: list[UnitOfWork]) -> None:
    new_jobs = [r for u in units for r in u.new_jobs]
    if new_jobs:
        _execute_rows(conn, f"INSERT INTO jobs ({JOB_COLUMNS})", 26, new_jobs)
    updates = {r[-1]: r for u in units for r in u.job_updates}  # several units, one job: its last state
    if updates:
        _execute_rows(conn, _UPDATE_HEAD, len(_UPDATED) + 1, list(updates.values()), _UPDATE_TAIL)
    events = [r for u in units for r in u.events]
    if events:
        _execute_rows(conn, "INSERT INTO job_events", 9, events)
    results = [r for u in units for r in u.results]
    if results:
        _execute_rows(conn, "INSERT INTO job_results", 10, results)
    receipts = [r for u in units for r in u.receipts]
    if receipts:
        _execute_rows(conn, "INSERT INTO log_leaves (leaf_index, leaf_hash)", 2,
                      [(r.leaf_index, r.leaf_hash) for r in receipts])  # fmt: skip
        _execute_rows(conn, "INSERT INTO receipts (receipt_id, job_id, attempt, envelope, leaf_index, issued_us)", 6,
                      [(r.receipt_id, r.job_id, r.attempt, r.envelope, r.leaf_index, r.issued_us) for r in receipts])  # fmt: skip
    tiles = [t for u in units for t in u.tiles]
    # (derived from the leaves: a tile written twice, by a start that found its write lost, is the same)
    if tiles:
        conn.executemany("INSERT OR IGNORE INTO log_tiles VALUES (?,?)", tiles)
    ledger = [e for u in units for e in u.ledger]
    if ledger:
        _execute_rows(conn, "INSERT INTO ledger_entries (account_id, kind, receipt_id, amount_nano, units_nano, booked_us)", 6,
                      [(e.account_id, e.kind, e.receipt_id, e.amount_nano, e.units_nano, e.booked_us) for e in ledger])  # fmt: skip
    if ledger:
        _execute_rows(conn, "INSERT INTO account_balances", 8, balance_rows(units), _ADD_TO_BALANCE_TAIL)
    moves = state_count_rows(units)  # (a unit may change jobs with no event: the store does not ask for one)
    if moves:
        _execute_rows(conn, "INSERT INTO job_state_counts", 2, moves, _ADD_TO_STATE_COUNT_TAIL)
    checkpoints = [c for u in units for c in u.checkpoints]
    if checkpoints:
        conn.executemany(
            "INSERT INTO checkpoints VALUES (?,?,?,?)",
            [(c.tree_size, c.root_hash, c.note, c.signed_us) for c in checkpoints],
        )
    keys = [k for u in units for k in u.keys]
    if keys:
        conn.executemany(
            "INSERT INTO signing_keys VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(key_id) DO UPDATE SET "
            "status=excluded.status, valid_until_us=excluded.valid_until_us",
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
    _write_drains(conn, units)


def _write_drains(conn: sqlite3.Connection, units: list[UnitOfWork]) -> None:
    """Operators' drains: stored in the units' order (a miner's latest wins), then those over deleted, each only
    if the row is still its own (see UnitOfWork.drains_over)."""
    drains = [(d.miner_id, d.reason, d.created_us) for u in units for d in u.drains]
    if drains:
        conn.executemany(
            "INSERT INTO operator_drains VALUES (?,?,?) ON CONFLICT(miner_id) DO UPDATE SET "
            "reason=excluded.reason, created_us=excluded.created_us",
            drains,
        )
    over = [(d.miner_id, d.created_us) for u in units for d in u.drains_over]
    if over:
        conn.executemany("DELETE FROM operator_drains WHERE miner_id = ? AND created_us = ?", over)
