"""SQLite writes a group's rows with multi-row statements (one GIL hand-off per statement, not per row):
any number of rows round-trips, a job updated by several units of one group ends in the last state, and
the batched UPDATE finds each job by its primary key (never a scan of the jobs table)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from coordinator.domain.model import JobState
from coordinator.store import UnitOfWork
from coordinator.store.base import DependencyFailed, LedgerEntry
from coordinator.store.schema import MIGRATIONS
from coordinator.store.sqlite import _UPDATE_HEAD, _UPDATE_TAIL, SqliteStore, _values_sql, _write_units

from .store_support import T0, make_job, submitted_event


async def test_any_number_of_rows_round_trips(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        jobs = [make_job(f"job-{i:04d}", created_us=T0 + i) for i in range(301)]  # 256 + 32 + 8 + 4 + 1
        unit = UnitOfWork()
        for job in jobs:
            unit.add_new_job(job)
            unit.add_event(submitted_event(job))
        await store.commit(unit)
        for job in (jobs[0], jobs[127], jobs[128], jobs[300]):
            assert await store.get_job(job.job_id) == job
            assert await store.get_events(job.job_id) == [submitted_event(job)]
        assert (await store.count_by_state())[JobState.QUEUED] == 301
    finally:
        await store.close()


async def test_a_job_updated_by_several_units_of_one_group_ends_in_the_last_state(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        job = make_job("job-x")
        first = UnitOfWork()
        first.add_new_job(job)
        await store.commit(first)
        units = []
        for step in range(1, 6):
            job = dataclasses.replace(job, updated_us=T0 + step, event_seq=step + 1)
            unit = UnitOfWork()
            unit.add_update(job, job.state)
            units.append(unit)
        await asyncio.gather(*(store.commit(u) for u in units))  # queued together: typically one group
        assert await store.get_job("job-x") == job
    finally:
        await store.close()


def test_the_batched_update_searches_jobs_by_primary_key() -> None:
    conn = sqlite3.connect(":memory:")
    for script in MIGRATIONS:
        conn.executescript(script)
    for rows in (1, 8, 128):
        plan = conn.execute("EXPLAIN QUERY PLAN " + _values_sql(_UPDATE_HEAD, 13, rows, _UPDATE_TAIL),
                            [0] * 13 * rows).fetchall()  # fmt: skip
        details = [row[3] for row in plan]
        assert "SEARCH jobs USING PRIMARY KEY (job_id=?)" in details, details
        assert not any(d.startswith("SCAN jobs") for d in details), details


async def test_the_writer_survives_an_error_that_already_rolled_the_transaction_back(tmp_path: Path) -> None:
    """A trigger's RAISE(ROLLBACK) (like some I/O errors) ends the transaction itself: a plain ROLLBACK then
    raised 'no transaction is active', the writer thread died, and every later commit waited forever."""
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        with sqlite3.connect(tmp_path / "s.db") as conn:
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON jobs WHEN NEW.job_id = 'job-doomed' "
                         "BEGIN SELECT RAISE(ROLLBACK, 'test: rolled back by the trigger'); END")  # fmt: skip
        doomed, fine = UnitOfWork(), UnitOfWork()
        doomed.add_new_job(make_job("job-doomed"))
        fine.add_new_job(make_job("job-fine"))
        outcomes = await asyncio.gather(store.commit(doomed), store.commit(fine), return_exceptions=True)
        assert isinstance(outcomes[0], sqlite3.Error) and outcomes[1] is None
        after = UnitOfWork()
        after.add_new_job(make_job("job-after"))
        await asyncio.wait_for(store.commit(after), 5)
        assert await store.get_job("job-after") is not None and await store.get_job("job-doomed") is None
    finally:
        await store.close()


async def test_a_unit_failing_outside_sqlite_fails_alone(tmp_path: Path) -> None:
    """A value SQLite cannot bind (an integer beyond 64 bits) raised OverflowError, not sqlite3.Error: the
    whole group failed, and units built on the culprit were not refused."""
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the next units wait, and go to the writer as one group
        first = UnitOfWork()
        first.add_new_job(make_job("job-first"))
        waiting = store.enqueue(first)
        await asyncio.sleep(0.2)
        bad, good = UnitOfWork(key=1), UnitOfWork(key=2)
        bad.add_new_job(make_job("job-bad"))
        bad.ledger.append(LedgerEntry("acct", "miner", "rc-bad", 1, 10**20, T0))
        good.add_new_job(make_job("job-good"))
        outcomes = [store.enqueue(bad), store.enqueue(good)]
        blocker.execute("COMMIT")
        blocker.close()
        await waiting
        results = await asyncio.gather(*outcomes, return_exceptions=True)
        assert isinstance(results[0], OverflowError) and results[1] is None
        dependent = UnitOfWork(key=3, requires=(1,))
        dependent.add_new_job(make_job("job-dependent"))
        with pytest.raises(DependencyFailed):
            await store.commit(dependent)
        assert await store.get_job("job-good") is not None and await store.get_job("job-bad") is None
    finally:
        await store.close()


def test_summed_rows_are_upserted_several_to_a_statement(tmp_path: Path) -> None:
    """A group's balance rows (one per account booked) and state counts (one per state moved) went one
    statement per row (executemany), each step a GIL hand-off: a group paying 16 miners made 17 more."""
    conn = sqlite3.connect(tmp_path / "s.db")
    for script in MIGRATIONS:
        conn.executescript(script)
    unit = UnitOfWork()
    moved = [JobState.ASSIGNED, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELED]
    for i, state in enumerate(moved):
        job = make_job(f"job-{i}")
        unit.add_new_job(job)  # +1 QUEUED
        unit.add_update(dataclasses.replace(job, state=state), JobState.QUEUED)  # -1 QUEUED, +1 state
    accounts = [f"miner-{i:02d}" for i in range(40)]
    for i, account in enumerate(accounts):
        unit.ledger.append(LedgerEntry(account, "miner", f"rc-{i}", 1_000 + i, 7, T0 + i))
        unit.ledger.append(LedgerEntry(account, "miner", f"rc-{i}-b", 500, 3, T0 + 100))
    conn.execute("INSERT INTO account_balances VALUES ('miner-00', 'miner', 0, 5, 1, 0, 2, ?)", (T0 + 500,))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    with conn:
        _write_units(conn, [unit])
    conn.set_trace_callback(None)

    def touching(table: str) -> int:
        return sum(1 for s in statements if s.startswith(f"INSERT INTO {table}"))

    assert touching("account_balances") == 2, statements  # 40 rows: 32 + 8
    assert touching("job_state_counts") == 2, statements  # 5 states moved (QUEUED's +5 -5 is none): 4 + 1
    balances = {row[0]: row[1:] for row in conn.execute(
        "SELECT account_id, amount_rest, receipts, units_rest, updated_us FROM account_balances")}  # fmt: skip
    assert balances["miner-00"] == (1_505, 3, 12, T0 + 500)  # added to the row already there
    assert balances["miner-39"] == (1_539, 2, 10, T0 + 100)
    counts = dict(conn.execute("SELECT state, jobs FROM job_state_counts WHERE jobs <> 0"))
    assert counts == {int(s): 1 for s in moved}
