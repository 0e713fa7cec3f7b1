"""ListJobs reads one state at a time (schema 8: jobs_client_state, jobs_miner_state; sql_reads._page_by_state), and a
store written by a coordinator of schema 7 (jobs_client, jobs_miner) lists, once opened by this one, the very pages a
plain filter of its jobs gives: every combination of client, miner and states, page after page, on SQLite and
PostgreSQL."""

from __future__ import annotations

import itertools
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.domain.model import Job, JobState
from coordinator.store import Store, open_store
from coordinator.store.base import JobFilter

from .store_support import (
    T0,
    create_schema,
    drop_schema,
    make_job,
    pg_admin,
    pg_url,
    postgres_schema_of_version_with_jobs,
    sqlite_store_of_version_with_jobs,
)

OLD_VERSION = 7  # the last schema with jobs_client (client_id, job_id) and jobs_miner (miner_id, job_id)
CLIENTS = (None, "alice", "bob", "nobody")  # None: any client (admin)
MINERS = (None, "m1", "m2", "nobody")
STATE_SETS = [
    frozenset(c) for n in range(len(JobState) + 1) for c in itertools.combinations(JobState, n)
]  # all 128, the empty set (no filter) among them
PAGE = 3  # small: most listings cross page boundaries, and a state's branch fills a page alone


def old_jobs() -> list[Job]:
    """Jobs of every state, client and miner, their ids time-ordered (as uuid7's) but the states and owners
    interleaved at random: a page merges several states' branches, each cut by the page's size."""
    rng = random.Random(125)
    jobs = []
    for i in range(150):
        state = rng.choice(list(JobState))
        miner = "" if state in (JobState.QUEUED, JobState.EXPIRED) else rng.choice(("m1", "m2", "m3"))
        created = T0 + i * 1_000 + rng.randrange(1_000)
        jobs.append(
            make_job(f"{created:016x}-{i:04x}", rng.choice(("alice", "bob", "carol")), state=state,
                     miner_id=miner, created_us=created)
        )  # fmt: skip
    rng.shuffle(jobs)  # inserted out of order: the page order is the key's, not the rows'
    return jobs


def expected(jobs: list[Job], flt: JobFilter) -> list[str]:
    return sorted(
        (
            j.job_id
            for j in jobs
            if (flt.client_id is None or j.client_id == flt.client_id)
            and (flt.miner_id is None or j.miner_id == flt.miner_id)
            and (not flt.states or j.state in flt.states)
        ),
        reverse=True,
    )


async def listed(store: Store, flt: JobFilter) -> list[list[str]]:
    """Every page of the listing, as the services page (a page and one more, the next page after its last)."""
    pages: list[list[str]] = []
    before = None
    while True:
        page = await store.list_jobs(flt, PAGE + 1, before)
        assert page.scanned_to is None, "150 jobs: no walk of a client's jobs on a miner reaches SCAN_CAP"
        pages.append([j.job_id for j in page.jobs[:PAGE]])
        if len(page.jobs) <= PAGE:
            return pages
        before = page.jobs[PAGE - 1].job_id


def filters() -> Iterator[JobFilter]:
    for client, miner, states in itertools.product(CLIENTS, MINERS, STATE_SETS):
        yield JobFilter(client_id=client, miner_id=miner, states=states)


@dataclass
class Upgraded:
    store: Store
    jobs: list[Job]
    indexes: dict[str, str]  # the jobs table's indexes once opened: name, definition


async def check_every_listing(upgraded: Upgraded) -> None:
    assert {"jobs_client_state", "jobs_miner_state"} <= set(upgraded.indexes)
    assert not {"jobs_client", "jobs_miner"} & set(upgraded.indexes), "replaced, not kept beside the new ones"
    crossed = 0
    for flt in filters():
        want = expected(upgraded.jobs, flt)
        pages = await listed(upgraded.store, flt)
        assert [p for p in pages if p] == [want[i : i + PAGE] for i in range(0, len(want), PAGE)], flt
        crossed += len(pages) > 2
    assert crossed > 500, "too few listings crossed a page boundary to test much"


@pytest.fixture
async def sqlite_upgraded(tmp_path: Path) -> AsyncIterator[Upgraded]:
    jobs = old_jobs()
    sqlite_store_of_version_with_jobs(tmp_path / "old.db", OLD_VERSION, jobs)
    store = open_store(f"sqlite:///{tmp_path / 'old.db'}")
    await store.open()
    try:
        conn = sqlite3.connect(tmp_path / "old.db")
        try:
            rows = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'"
            )
            indexes = {name: sql or "" for name, sql in rows}
        finally:
            conn.close()
        yield Upgraded(store, jobs, indexes)
    finally:
        await store.close()


@pytest.fixture
async def postgres_upgraded() -> AsyncIterator[Upgraded]:
    jobs = old_jobs()
    schema = await create_schema()
    try:
        await postgres_schema_of_version_with_jobs(schema, OLD_VERSION, jobs)
        store = open_store(pg_url(schema))
        await store.open()
        try:
            conn = await pg_admin()
            try:
                rows = await conn.fetch(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'jobs'",
                    schema,
                )
            finally:
                await conn.close()
            yield Upgraded(store, jobs, {r["indexname"]: r["indexdef"] for r in rows})
        finally:
            await store.close()
    finally:
        await drop_schema(schema)


async def test_a_sqlite_store_of_schema_7_lists_the_same_pages(sqlite_upgraded: Upgraded) -> None:
    await check_every_listing(sqlite_upgraded)


async def test_a_postgres_store_of_schema_7_lists_the_same_pages(postgres_upgraded: Upgraded) -> None:
    await check_every_listing(postgres_upgraded)
    # (a btree on state alone orders a state's jobs by their place in the heap: a page of a state sorted them all)
    assert postgres_upgraded.indexes["jobs_state"].endswith("(state, job_id)")
