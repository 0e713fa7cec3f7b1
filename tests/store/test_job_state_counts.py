"""How many jobs are in each state, kept with the jobs (schema 7, job_state_counts): GetStats reads a row per state,
not the jobs index (~0.1 s per 2M jobs at every call). count_by_state must stay the jobs' own count however the
changes were grouped into commits (a job inserted and moved in one unit, moved by several units of one group), when
a unit fails, and for a store written before the table existed. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from coordinator.domain.model import Job, JobState
from coordinator.store import Store, UnitOfWork, open_store

from .store_support import (
    T0,
    Backend,
    create_schema,
    drop_schema,
    make_job,
    pg_url,
    postgres_schema_of_version_with_jobs,
    sqlite_store_of_version_with_jobs,
    submitted_event,
    transition,
)

# where a job may go next (the state machine's edges, DESIGN section 3)
NEXT = {
    JobState.QUEUED: (JobState.ASSIGNED, JobState.EXPIRED, JobState.CANCELED),
    JobState.ASSIGNED: (JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELED),
    JobState.RUNNING: (JobState.COMPLETED, JobState.QUEUED, JobState.FAILED, JobState.CANCELED),
}


def counted(jobs: dict[str, Job]) -> dict[JobState, int]:
    out: dict[JobState, int] = {}
    for job in jobs.values():
        out[job.state] = out.get(job.state, 0) + 1
    return out


async def stored_count(backend: Backend) -> dict[JobState, int]:
    """The jobs table's own count, read apart from the store."""
    return {
        JobState(s): int(n)
        for s, n in await backend.raw_fetch("SELECT state, count(*) FROM jobs GROUP BY state")
    }


def move(unit: UnitOfWork, job: Job, rng: random.Random, at: int) -> bool:
    """One step of job in unit (as the scheduler records it); False when it is terminal already."""
    if job.state.terminal:
        return False
    event = transition(job, rng.choice(NEXT[job.state]), at, reason="STEP", miner_id="m1")
    unit.add_update(job, event.from_state)
    unit.add_event(event)
    return True


async def test_counts_are_the_jobs_own_however_the_changes_were_committed(
    store: Store, backend: Backend
) -> None:
    rng = random.Random(7)
    jobs: dict[str, Job] = {}
    stored_moves: set[tuple[JobState, JobState]] = set()  # (stored before a group, after it), for stored jobs
    at = T0
    for round_ in range(15):
        units = []
        for u in range(rng.randint(1, 8)):  # concurrent units: the writer groups them
            unit = UnitOfWork()
            for i in range(rng.randint(0, 4)):  # new jobs, some moved on in the same unit
                job = make_job(f"job-{round_}-{u}-{i}", created_us=at)
                unit.add_new_job(job)
                unit.add_event(submitted_event(job))
                jobs[job.job_id] = job
                for _ in range(rng.randint(0, 3)):
                    at += 1
                    move(unit, job, rng, at)
            units.append(unit)
        # stored jobs moved, each by one unit or by several units of the same group, in commit order
        for job in rng.sample(sorted(jobs.values(), key=lambda j: j.job_id), k=min(len(jobs), 20)):
            if any(job.job_id in u._rows for u in units):
                continue
            before = job.state
            for index in sorted(rng.sample(range(len(units)), k=rng.randint(1, len(units)))):
                at += 1
                move(units[index], job, rng, at)
            stored_moves.add((before, job.state))
        await asyncio.gather(*(store.commit(u) for u in units))
        assert await store.count_by_state() == counted(jobs) == await stored_count(backend)
    # every state entered and every live one left by a stored job's update (not only by inserts)
    assert {after for before, after in stored_moves if before != after} == set(JobState)
    assert {before for before, after in stored_moves if before != after} == {
        JobState.QUEUED,
        JobState.ASSIGNED,
        JobState.RUNNING,
    }
    assert len(counted(jobs)) >= 5, "the walk reached too few states to test much"
    assert all(type(n) is int for n in (await store.count_by_state()).values())


async def test_a_failed_unit_moves_no_count(store: Store) -> None:
    jobs = {j.job_id: j for j in (make_job("job-a"), make_job("job-b"))}
    first = UnitOfWork()
    for job in jobs.values():
        first.add_new_job(job)
        first.add_event(submitted_event(job))
    await store.commit(first)
    failing = UnitOfWork()
    event = transition(jobs["job-a"], JobState.ASSIGNED, T0 + 1, miner_id="m1")
    failing.add_update(jobs["job-a"], event.from_state)
    failing.add_event(event)
    again = make_job("job-b")  # inserted twice: the unit fails whole
    failing.add_new_job(again)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.commit(failing)
    assert await store.count_by_state() == {JobState.QUEUED: 2}


async def test_a_state_emptied_is_not_counted(store: Store) -> None:
    job = make_job("job-1")
    unit = UnitOfWork()
    unit.add_new_job(job)
    unit.add_event(submitted_event(job))
    await store.commit(unit)
    unit = UnitOfWork()
    event = transition(job, JobState.CANCELED, T0 + 1, reason="CANCELED_BY_CLIENT")
    unit.add_update(job, event.from_state)
    unit.add_event(event)
    await store.commit(unit)
    assert await store.count_by_state() == {JobState.CANCELED: 1}


async def test_jobs_written_without_events_are_counted(store: Store) -> None:
    """The store asks no event of a unit that changes jobs (the scheduler writes one; a unit need not)."""
    jobs = [make_job(f"job-{i}") for i in range(3)]
    unit = UnitOfWork()
    for job in jobs:
        unit.add_new_job(job)
    await store.commit(unit)
    unit = UnitOfWork()
    transition(jobs[0], JobState.CANCELED, T0 + 1, reason="CANCELED_BY_CLIENT")
    unit.add_update(jobs[0], JobState.QUEUED)
    await store.commit(unit)
    assert await store.count_by_state() == {JobState.QUEUED: 2, JobState.CANCELED: 1}


def old_jobs() -> list[Job]:
    states = list(JobState)
    return [make_job(f"old-{i:03d}", state=states[i % len(states)], created_us=T0 + i) for i in range(120)]


async def test_a_sqlite_store_written_before_the_counts_gets_them_from_its_jobs(tmp_path: Path) -> None:
    jobs = old_jobs()
    sqlite_store_of_version_with_jobs(tmp_path / "old.db", 6, jobs)
    store = open_store(f"sqlite:///{tmp_path / 'old.db'}")
    await store.open()
    try:
        assert await store.count_by_state() == counted({j.job_id: j for j in jobs})
    finally:
        await store.close()


async def test_a_postgres_store_written_before_the_counts_gets_them_from_its_jobs() -> None:
    jobs = old_jobs()
    schema = await create_schema()
    try:
        await postgres_schema_of_version_with_jobs(schema, 6, jobs)
        store = open_store(pg_url(schema))
        await store.open()
        try:
            assert await store.count_by_state() == counted({j.job_id: j for j in jobs})
        finally:
            await store.close()
    finally:
        await drop_schema(schema)
