"""job_state_counts (schema 7) where a commit's outcome is uncertain or retried: a unit's moves must be added
exactly once, exactly when its rows land. On PostgreSQL: a group whose COMMIT landed but whose answer was lost
(the writer probes and reports it committed: its moves must not be added again by a retry), and a group whose
COMMIT never reached the server (in doubt, probed, not landed: each unit is written alone, its moves once). On both
backends: a group with a unit that fails on its own rows, written again unit by unit, a unit built on the failed
one refused. After each, the kept counts equal the jobs table's own count and the model's (helper-126)."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.domain.model import Job, JobState
from coordinator.store import Store, UnitOfWork
from coordinator.store.base import DependencyFailed
from coordinator.store.postgres import PostgresStore
from tests.tcp_relay import UP, Link

from .store_support import T0, Backend, make_job, pg_admin, submitted_event, transition
from .test_job_state_counts import counted
from .test_postgres_chaos import PgProxy
from .test_postgres_commit_reply_error import READY_IDLE, CommitReplyProxy, error_response

Q, A, R, C, X = JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING, JobState.COMPLETED, JobState.CANCELED


async def jobs_own_count(store: Store) -> dict[JobState, int]:
    """The jobs table's own count (what the kept counts must equal), read through the store's reader."""
    rows = await store._query("SELECT state, count(*) FROM jobs GROUP BY state")  # type: ignore[attr-defined]
    return {JobState(s): int(n) for s, n in rows}


def inserting(*jobs: Job) -> UnitOfWork:
    unit = UnitOfWork()
    for job in jobs:
        unit.add_new_job(job)
        unit.add_event(submitted_event(job))
    return unit


def moving(unit: UnitOfWork, job: Job, to: JobState, at: int) -> UnitOfWork:
    """job moved to `to` in unit, as the scheduler records it (was: the event's from_state)."""
    event = transition(job, to, at, reason="STEP", miner_id="m1")
    unit.add_update(job, event.from_state)
    unit.add_event(event)
    return unit


async def seeded(store: Store, n: int) -> dict[str, Job]:
    jobs = {f"job-{i}": make_job(f"job-{i}", created_us=T0 + i) for i in range(n)}
    await store.commit(inserting(*jobs.values()))
    return jobs


def mixed_group(jobs: dict[str, Job]) -> list[UnitOfWork]:
    """Units that together move stored jobs (one job by two units) and insert jobs moved in the same unit."""
    fresh = make_job("job-new", created_us=T0 + 100)
    jobs[fresh.job_id] = fresh
    return [
        moving(UnitOfWork(), jobs["job-0"], A, T0 + 10),
        moving(UnitOfWork(), jobs["job-0"], R, T0 + 11),  # the same job, in the next unit of the group
        moving(UnitOfWork(), jobs["job-1"], X, T0 + 12),
        moving(inserting(fresh), fresh, A, T0 + 101),
    ]


def grouped(store: Store) -> list[int]:
    """The sizes of the groups the store's writer commits from now on."""
    sizes: list[int] = []
    store.commit_observer = lambda n, _elapsed: sizes.append(n)  # type: ignore[attr-defined]
    return sizes


class CommitNeverArrives(PgProxy):
    """A relay to PostgreSQL; armed, it drops the writer's next COMMIT on its way up and resets the link a moment
    later: the transaction is in doubt for the writer (its COMMIT sent, its connection lost) but rolled back."""

    def __init__(self) -> None:
        super().__init__()
        self.dropping = False
        self.dropped = asyncio.Event()

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and self.dropping and link.first and b"COMMIT" in data:
            self.dropping = False
            self.dropped.set()
            asyncio.get_running_loop().call_later(0.2, link.reset)
            return b""
        return data


@pytest.mark.parametrize("answer", ["backend terminated", "57P01 in its place", "XX000 in its place"])
async def test_a_group_that_landed_with_its_answer_lost_moves_the_counts_once(
    schema: str, answer: str
) -> None:
    proxy = CommitReplyProxy()
    await proxy.start()
    admin = await pg_admin()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        jobs = await seeded(store, 3)
        sizes = grouped(store)
        if answer != "backend terminated":
            proxy.instead = error_response(answer.split()[0], "in place of the COMMIT's answer") + READY_IDLE
        proxy.armed = True
        futures = [store.enqueue(u) for u in mixed_group(jobs)]  # queued together: one group, one COMMIT
        await asyncio.wait_for(proxy.swallowed.wait(), 30)
        if answer == "backend terminated":
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", store._writer_pid)
        await asyncio.wait_for(asyncio.gather(*futures), 60)  # reported committed: it landed
        assert sizes[0] == 4, "the four units were one group (the situation under test)"
        assert await store.count_by_state() == counted(jobs) == await jobs_own_count(store)
        assert counted(jobs) == {Q: 1, A: 1, R: 1, X: 1}
        # the writer writes on (a new connection), moving the jobs the in-doubt group moved
        await store.commit(
            moving(moving(UnitOfWork(), jobs["job-0"], C, T0 + 20), jobs["job-new"], R, T0 + 21)
        )
        assert await store.count_by_state() == counted(jobs) == await jobs_own_count(store)
    finally:
        await store.close()
        await proxy.close()
        await admin.close()


async def test_a_group_whose_commit_never_arrived_is_written_unit_by_unit_its_moves_once(schema: str) -> None:
    proxy = CommitNeverArrives()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        jobs = await seeded(store, 3)
        sizes = grouped(store)
        proxy.dropping = True
        units = mixed_group(jobs)
        futures = [store.enqueue(u) for u in units]
        await asyncio.wait_for(asyncio.gather(*futures), 60)  # in doubt, not landed: each unit written alone
        assert proxy.dropped.is_set(), "the group's COMMIT was dropped (the situation under test)"
        assert sizes[0] == 4
        events = await store._query("SELECT count(*) FROM job_events")
        assert events[0][0] == 3 + sum(len(u.events) for u in units), "every unit's rows landed once"
        assert await store.count_by_state() == counted(jobs) == await jobs_own_count(store)
        assert counted(jobs) == {Q: 1, A: 1, R: 1, X: 1}
    finally:
        await store.close()
        await proxy.close()


async def test_a_group_with_a_failing_unit_moves_the_counts_of_the_units_that_landed_only(
    store: Store, backend: Backend
) -> None:
    jobs = await seeded(store, 4)
    sizes = grouped(store)
    ok_before = moving(UnitOfWork(), jobs["job-0"], A, T0 + 10)
    failing = moving(
        inserting(make_job("job-3")), jobs["job-1"], A, T0 + 11
    )  # job-3 inserted twice: it fails
    failing.key = 901
    built_on_it = moving(UnitOfWork(), jobs["job-1"], R, T0 + 12)  # memory built on the failing unit's move
    built_on_it.requires = (901,)
    ok_after = moving(UnitOfWork(), jobs["job-2"], X, T0 + 13)
    futures = [store.enqueue(u) for u in (ok_before, failing, built_on_it, ok_after)]
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60)
    assert outcomes[0] is None and outcomes[3] is None
    assert isinstance(outcomes[1], Exception) and not isinstance(outcomes[1], DependencyFailed)
    assert isinstance(outcomes[2], DependencyFailed)
    if backend.name == "postgres":
        assert sizes[0] == 4, "the four units were one group (the situation under test)"
    jobs["job-1"].state = Q  # neither of its moves landed
    assert await store.count_by_state() == counted(jobs) == await jobs_own_count(store)
    assert counted(jobs) == {Q: 2, A: 1, X: 1}
