"""The store's SQL on hot, per-call and periodic paths reads what it returns, not the whole store.

The coordinator keeps every job, event, receipt and ledger row forever: a read whose cost grows with the history
slows each call a little more every day. Two checks, on SQLite stores made by the coordinator's own migrations:

- plans: each statement a store method runs (caught with SQLite's trace callback, as the store runs it) is
  `EXPLAIN QUERY PLAN`ned; no step may SCAN a table that grows with the history;
- growth: a plan can SEARCH an index and still read all of a client's history (an index on client_id, filtered
  on state), so ListJobs' query, the start's read of live jobs and GetStats' count of transitions are run on
  two stores with the same live work and a history four times longer; the SQLite virtual machine's steps (a
  progress handler counts them, deterministically) may not grow with it.

(PostgreSQL's plans depend on its statistics: the same cases were EXPLAINed there by hand, with the figures in
bench/README.md, sixteenth session; these checks are SQLite's. tests/store/test_list_jobs_per_state.py checks the
pages themselves on both.)
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.domain.model import Constraints, JobState
from coordinator.store import sql_reads
from coordinator.store.base import JobFilter
from coordinator.store.sqlite import _UPDATE_HEAD, _UPDATE_TAIL, _UPDATED, SqliteStore, _values_sql

HOUR_US = 3_600_000_000
NOW_US = 1_800_000_000_000_000  # the stores' "now": the history lies before it, the live jobs within its hour
SMALL, BIG = 3_000, 12_000  # jobs of history of the two stores (the live ones are the same 60 in both)
PAGE = 51  # a ListJobs page of 50, and one more to know there is a next page
GROWTH_LIMIT = 1.3  # steps on the big store / on the small one: bounded reads stay at ~1.0, scans reach ~4
STEPS_FLOOR = 300  # (a read of a few rows: counted from here, the progress handler counting by 100)
# tables that stay small whatever the history (a row per state, account, miner, key, drain; the holder's one)
SMALL_TABLES = {"job_state_counts", "account_balances", "operator_drains", "signing_keys", "store_holder"}
S = JobState


# --- the stores --------------------------------------------------------------------------------------------
def _job_id(created_us: int, i: int) -> str:
    return f"{created_us:016x}-{i:08x}-7000-8000-000000000000"  # time-ordered, as uuid7


def _history_state(i: int, client: str) -> int:
    """Mostly COMPLETED; some FAILED, CANCELED, EXPIRED (carol never failed)."""
    r = (i * 7919) % 100
    if r < 4 and client != "carol":
        return S.FAILED
    return S.CANCELED if r < 7 else S.EXPIRED if r < 9 else S.COMPLETED


def _client(i: int) -> str:
    """alice a third of the jobs, bob 2 %, carol 0.5 %, the rest 130 others."""
    r = (i * 104729) % 200
    return "alice" if r < 60 else "bob" if r < 64 else "carol" if r == 64 else f"client-{r % 130}"


def _jobs(history: int) -> Iterator[tuple[tuple, list[tuple], bool]]:
    """(jobs row, its events, completed) for `history` finished jobs over history/10,000 days, then 60 live jobs
    in the last hour (bob holds 3 of them): the same live work whatever the history."""
    span = history * 8_640_000  # 10,000 jobs a day
    payload = b'{"prompt":"x"}'
    constraints = Constraints().to_json()
    for i in range(history + 60):
        live = i >= history
        created = (
            NOW_US - HOUR_US + (i - history) * 1_000_000
            if live
            else NOW_US - 2 * HOUR_US - span + i * (span // history)
        )
        client = ("bob" if i - history in (5, 30, 55) else "alice") if live else _client(i)
        state = (
            (S.QUEUED if i - history < 30 else S.ASSIGNED if i - history < 40 else S.RUNNING)
            if live
            else (_history_state(i, client))
        )
        miner = "" if state in (S.QUEUED, S.EXPIRED) else f"miner-{i % 20}"
        moves = {S.QUEUED: [], S.ASSIGNED: [2], S.RUNNING: [2, 3], S.COMPLETED: [2, 3, 4], S.FAILED: [2, 3, 5],
                 S.CANCELED: [6], S.EXPIRED: [7]}[state]  # fmt: skip
        job_id = _job_id(created, i)
        key = f"key-{i}" if i % 2 else None
        job = (job_id, client, int(state), 5, payload, 1, hashlib.sha256(payload).digest(), constraints, 900_000_000, 3,
               3_600_000_000, key, b"fp", created, created, 1 if miner else 0, miner, 0, 0, "", "", "[]", 0,
               1 + len(moves), 0, created)  # fmt: skip
        events = [(job_id, 1, None, 1, 0, "", "SUBMITTED", "", created)]
        for seq, to in enumerate(moves, start=2):
            events.append((job_id, seq, events[-1][3], to, 1, miner, "", "", created + seq * 1_000_000))
        yield job, events, state is S.COMPLETED


def _fill(path: Path, history: int) -> None:
    """Jobs with their events, results, receipts, log leaves and ledger entries, written behind the store's back
    (a few seconds' worth of the store's own group commits would take minutes here)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    leaf = 0
    for job, events, completed in _jobs(history):
        conn.execute(f"INSERT INTO jobs VALUES ({','.join('?' * 26)})", job)
        conn.executemany("INSERT INTO job_events VALUES (?,?,?,?,?,?,?,?,?)", events)
        if completed:
            job_id, client, miner, at = job[0], job[1], job[16], events[-1][-1]
            receipt = f"rc-{job_id}"
            conn.execute("INSERT INTO job_results VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (job_id, 1, b"out", 2, b"h", "2.5", "gpu_seconds", miner, at, receipt))  # fmt: skip
            conn.execute(
                "INSERT INTO log_leaves VALUES (?,?)", (leaf, hashlib.sha256(receipt.encode()).digest())
            )
            conn.execute("INSERT INTO receipts VALUES (?,?,?,?,?,?)", (receipt, job_id, 1, b"{}", leaf, at))
            conn.executemany(
                "INSERT INTO ledger_entries (account_id, kind, receipt_id, amount_nano, units_nano, booked_us) "
                "VALUES (?,?,?,?,?,?)",
                [(client, "client", receipt, -2, 2, at), (miner, "miner", receipt, 2, 2, at)],
            )
            leaf += 1
    conn.execute("COMMIT")
    conn.close()


async def _make(path: Path, history: int) -> None:
    store = SqliteStore(str(path))
    await store.open()  # (the coordinator's migrations make it)
    await store.close()
    _fill(path, history)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    made = {}
    for history in (SMALL, BIG):
        path = tmp_path_factory.mktemp(f"plans{history}") / "store.db"
        asyncio.run(_make(path, history))
        made[history] = path
    return made


@dataclass
class Ran:
    """What a store method ran on the reader: each statement (parameters bound) and the VM's steps."""

    statements: list[str]
    steps: int


async def _run(path: Path, call: Callable[[SqliteStore], Awaitable[Any]]) -> Ran:
    store = SqliteStore(str(path))
    await store.open()
    statements: list[str] = []
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0  # (go on)

    reader = store._reader  # the store's own read connection: watched, not replaced
    assert reader is not None
    try:
        await reader.set_trace_callback(statements.append)
        await reader.set_progress_handler(step, 100)
        await call(store)
        await reader.set_progress_handler(None, 0)
        await reader.set_trace_callback(None)
    finally:
        await store.close()
    return Ran([s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))], steps[0] * 100)


def _plan(path: Path, sql: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    finally:
        conn.close()


def _scans_of_growing_tables(plan: list[str]) -> list[str]:
    """The plan's steps that read a whole table that grows with the history (a subquery's rows, VALUES, and the
    tables that stay small are fine)."""
    # the rows of a subquery or a CTE (a co-routine, or materialized): their own steps are checked
    made = {line.split()[1] for line in plan if line.startswith(("CO-ROUTINE ", "MATERIALIZE "))}
    bad = []
    for line in plan:
        if not line.startswith("SCAN "):
            continue
        target = line.split()[1]
        if target.startswith("(") or "CONSTANT ROW" in line or target in SMALL_TABLES or target in made:
            continue
        bad.append(line)
    return bad


# --- the calls -------------------------------------------------------------------------------------------
def _some_completed(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT job_id FROM jobs WHERE state = 4 ORDER BY job_id LIMIT 1 OFFSET 100"
        ).fetchone()[0]
    finally:
        conn.close()


def _listing(
    flt: JobFilter, before: bool = False
) -> Callable[[Path], Callable[[SqliteStore], Awaitable[Any]]]:
    def make(path: Path) -> Callable[[SqliteStore], Awaitable[Any]]:
        return lambda s: s.list_jobs(flt, PAGE, _some_completed(path) if before else None)

    return make


def _capped(
    cap: int, listing: Callable[[Path], Callable[[SqliteStore], Awaitable[Any]]]
) -> Callable[[Path], Callable[[SqliteStore], Awaitable[Any]]]:
    """A listing run with sql_reads.SCAN_CAP set to cap (for the call only)."""

    def make(path: Path) -> Callable[[SqliteStore], Awaitable[Any]]:
        call = listing(path)

        async def capped(store: SqliteStore) -> Any:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(sql_reads, "SCAN_CAP", cap)
                return await call(store)

        return capped

    return make


def _with_job(method: str) -> Callable[[Path], Callable[[SqliteStore], Awaitable[Any]]]:
    def make(path: Path) -> Callable[[SqliteStore], Awaitable[Any]]:
        job_id = _some_completed(path)
        return lambda s: getattr(s, method)(job_id)

    return make


def _fixed(call: Callable[[SqliteStore], Awaitable[Any]]) -> Callable[[Path], Callable[..., Awaitable[Any]]]:
    return lambda _path: call


# Per call: GetJob/CancelJob of a job not in memory, GetJobResult, WatchJob resumed, GetReceipt (and its proofs),
# SubmitJob with an idempotency key the scheduler's filter may hold, ListJobs (client and admin); periodic: GetStats
# until the hour before the start is counted in memory.
PER_CALL = {
    "get_job": _with_job("get_job"),
    "get_result": _with_job("get_result"),
    "get_events": _with_job("get_events"),
    "get_receipts": _with_job("get_receipts"),
    "read_leaves": _fixed(lambda s: s.read_leaves(256, 512)),
    "find_by_idempotency_keys": _fixed(lambda s: s.find_by_idempotency_keys("alice", ["key-1", "key-3"])),
    "receipt_booked": _fixed(lambda s: s.receipt_booked("rc-x")),
    "count_transitions_since": _fixed(lambda s: s.count_transitions_since(NOW_US - HOUR_US)),
    "list: client": _listing(JobFilter(client_id="alice")),
    "list: client, next page": _listing(JobFilter(client_id="alice"), before=True),
    "list: client, one state": _listing(JobFilter(client_id="bob", states=frozenset({S.COMPLETED}))),
    "list: admin, one state": _listing(JobFilter(states=frozenset({S.FAILED}))),
    "list: admin, a miner": _listing(JobFilter(miner_id="miner-3")),
    "list: admin, a client's jobs on a miner": _capped(
        50, _listing(JobFilter(client_id="carol", miner_id="miner-3"))
    ),
}


@pytest.mark.parametrize("name", list(PER_CALL))
async def test_per_call_reads_scan_no_growing_table(stores: dict[int, Path], name: str) -> None:
    path = stores[SMALL]
    ran = await _run(path, PER_CALL[name](path))
    assert ran.statements, f"{name} ran no statement"
    for sql in ran.statements:
        plan = _plan(path, sql)
        assert not _scans_of_growing_tables(plan), f"{name} scans a table:\n{sql}\n{plan}"


def test_the_writers_job_update_finds_each_job_by_its_key(stores: dict[int, Path]) -> None:
    """Every commit that moves jobs runs it (one statement per chunk of rows): the jobs found by their key, the
    VALUES scanned, not the jobs."""
    sql = _values_sql(_UPDATE_HEAD, len(_UPDATED) + 1, 2, _UPDATE_TAIL).replace("?", "NULL")
    plan = _plan(stores[SMALL], sql)
    assert "SEARCH jobs USING PRIMARY KEY (job_id=?)" in plan, plan
    assert not _scans_of_growing_tables(plan), plan


# --- growth ---------------------------------------------------------------------------------------------
LIVE = frozenset({S.QUEUED, S.ASSIGNED, S.RUNNING})
ENDED_BADLY = frozenset({S.FAILED, S.CANCELED, S.EXPIRED})


BOUNDED = [
    pytest.param(_listing(JobFilter(client_id="alice")), id="list: client"),
    pytest.param(_listing(JobFilter(client_id="alice"), before=True), id="list: client, next page"),
    pytest.param(
        _listing(JobFilter(client_id="bob", states=frozenset({S.COMPLETED}))), id="list: client, COMPLETED"
    ),
    pytest.param(
        _listing(JobFilter(client_id="bob", states=frozenset({S.QUEUED}))), id="list: client, QUEUED"
    ),
    pytest.param(_listing(JobFilter()), id="list: admin, all"),
    pytest.param(_listing(JobFilter(states=frozenset({S.FAILED}))), id="list: admin, FAILED"),
    pytest.param(_listing(JobFilter(states=LIVE)), id="list: admin, live states"),
    pytest.param(_listing(JobFilter(miner_id="miner-3")), id="list: admin, a miner"),
    # (without its index, the key is looked for among all of the client's jobs: a SEARCH, that the plan check passes)
    pytest.param(
        _fixed(lambda s: s.find_by_idempotency_keys("alice", ["key-1", "key-3"])), id="idempotency keys"
    ),
    pytest.param(_fixed(lambda s: s.load_active_jobs()), id="load_active_jobs (start)"),
    pytest.param(_fixed(lambda s: s.count_transitions_since(NOW_US - HOUR_US)), id="count_transitions_since"),
    # A page of a client's (or a miner's) jobs in some states walked the client's whole history (jobs_client,
    # filtered on state) or every job in the state (jobs_state, filtered on client) until schema 8: an index on
    # (client_id|miner_id, state, job_id) and one read per state (sql_reads._page_by_state). The README's own
    # example, a client's QUEUED and RUNNING jobs, is the first.
    pytest.param(_listing(JobFilter(client_id="bob", states=LIVE)), id="list: client, live states"),
    pytest.param(
        _listing(JobFilter(client_id="carol", states=frozenset({S.FAILED}))),
        id="list: client, a state it has none of",
    ),
    pytest.param(_listing(JobFilter(client_id="bob", states=ENDED_BADLY)), id="list: client, ended badly"),
    pytest.param(
        _listing(JobFilter(client_id="bob", states=ENDED_BADLY), before=True),
        id="list: client, ended badly, next page",
    ),
    pytest.param(
        _listing(JobFilter(miner_id="miner-3", states=frozenset({S.FAILED}))),
        id="list: admin, a miner's FAILED",
    ),
    pytest.param(_listing(JobFilter(miner_id="miner-3"), before=True), id="list: admin, a miner, next page"),
    pytest.param(
        _listing(JobFilter(client_id="alice", miner_id="miner-3", states=LIVE)),
        id="list: admin, client and miner",
    ),
    pytest.param(_listing(JobFilter(states=ENDED_BADLY)), id="list: admin, ended badly"),
    # A client's jobs on a miner (both filters, admin only) walked the miner's jobs in each state, filtered on
    # client: its whole history. An index on (client_id, miner_id, state, job_id) would cost every insert and
    # state change, for a rare admin query: instead a call examines at most SCAN_CAP of the miner's entries per
    # state and the page may stop short (sql_reads._page_of_client_on_miner). miner-3 ran 150 jobs here (600 on
    # the big store), carol none of them: the default cap (1000) would not bind, 50 does on both stores.
    pytest.param(
        _capped(50, _listing(JobFilter(client_id="carol", miner_id="miner-3"))),
        id="list: admin, a client's jobs on a miner",
    ),
    pytest.param(
        _capped(50, _listing(JobFilter(client_id="alice", miner_id="miner-3"), before=True)),
        id="list: admin, a client's jobs on a miner, next page",
    ),
]


@pytest.mark.parametrize("call", BOUNDED)
async def test_reads_do_not_grow_with_the_history(
    stores: dict[int, Path], call: Callable[[Path], Callable[[SqliteStore], Awaitable[Any]]]
) -> None:
    small = await _run(stores[SMALL], call(stores[SMALL]))
    big = await _run(stores[BIG], call(stores[BIG]))
    plans = [_plan(stores[BIG], sql) for sql in big.statements]
    assert big.steps <= GROWTH_LIMIT * max(small.steps, STEPS_FLOOR), (
        f"{small.steps} VM steps with {SMALL} jobs of history, {big.steps} with {BIG}: {plans}"
    )
