"""A client's jobs on a miner (admin ListJobs with both filters) is read with bounded work per call: no index holds
both, so a call examines at most sql_reads.SCAN_CAP of the miner's index entries per state and may stop short of
a full page, even with none, at a frontier it returns (JobPage.scanned_to). Followed page after page, through the
empty ones, the listing is the very list a plain filter of the jobs gives; on SQLite and PostgreSQL.
(tests/store/test_query_plans.py checks on SQLite that a call's work does not grow with the miner's history.)"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from coordinator.domain.model import Job, JobState
from coordinator.store import Store, UnitOfWork, sql_reads
from coordinator.store.base import JobFilter, JobPage

from .store_support import T0, Backend, make_job, pg_admin

CAP = 5  # small: on these 900 jobs each walk hits it again and again
S = JobState
MINER_STATES = (S.ASSIGNED, S.RUNNING, S.COMPLETED, S.COMPLETED, S.COMPLETED, S.FAILED, S.CANCELED)


def history() -> list[Job]:
    """m1 runs most jobs, for many clients; alice's come in bursts (a third of a stretch's jobs), between stretches
    as long where she has none: walks of the miner's entries that find nothing of hers."""
    rng = random.Random(127)
    jobs = []
    for i in range(900):
        alice_here = (i // 60) % 2 == 0 and rng.random() < 0.33
        state = rng.choice((*MINER_STATES, S.QUEUED, S.EXPIRED))
        miner = "" if state in (S.QUEUED, S.EXPIRED) else ("m1" if rng.random() < 0.85 else "m2")
        client = "alice" if alice_here else rng.choice(("bob", "carol", "dave"))
        created = T0 + i * 1_000
        jobs.append(
            make_job(f"{created:016x}-{i:04x}", client, state=state, miner_id=miner, created_us=created)
        )
    rng.shuffle(jobs)  # inserted out of order: the order is the key's
    return jobs


FILTERS = [
    JobFilter(client_id="alice", miner_id="m1"),  # all seven states
    JobFilter(client_id="alice", miner_id="m1", states=frozenset({S.COMPLETED})),
    JobFilter(client_id="alice", miner_id="m1", states=frozenset({S.RUNNING, S.FAILED, S.CANCELED})),
    JobFilter(client_id="alice", miner_id="m2"),
    JobFilter(client_id="nobody", miner_id="m1"),  # every page empty, the walks capped all the way down
    JobFilter(
        client_id="alice", miner_id="m1", states=frozenset({S.QUEUED})
    ),  # none on a miner: no walk capped
]


def matches(job: Job, flt: JobFilter) -> bool:
    return (
        job.client_id == flt.client_id
        and job.miner_id == flt.miner_id
        and (not flt.states or job.state in flt.states)
    )


def expected(jobs: list[Job], flt: JobFilter) -> list[str]:
    return sorted((j.job_id for j in jobs if matches(j, flt)), reverse=True)


def frontier(jobs: list[Job], flt: JobFilter, before: str | None) -> str | None:
    """Where a call starting below `before` must stop: per state asked, the walk of the miner's newest CAP
    entries; of the walks that took CAP, the highest lowest id."""
    lows = []
    for state in flt.states or set(JobState):
        walk = sorted(
            (j.job_id for j in jobs if j.miner_id == flt.miner_id and j.state is state and (not before or j.job_id < before)),
            reverse=True,
        )[:CAP]  # fmt: skip
        if len(walk) == CAP:
            lows.append(walk[-1])
    return max(lows, default=None)


def examined_per_state(
    jobs: list[Job], flt: JobFilter, before: str | None, down_to: str
) -> dict[JobState, int]:
    """The miner's entries per state between a call's start and where it stopped (all it had to look at)."""
    counts = dict.fromkeys(flt.states or set(JobState), 0)
    for j in jobs:
        if (
            j.miner_id == flt.miner_id
            and j.state in counts
            and down_to <= j.job_id
            and (not before or j.job_id < before)
        ):
            counts[j.state] += 1
    return counts


def check_call(jobs: list[Job], flt: JobFilter, limit: int, before: str | None, page: JobPage) -> None:
    """One call: it stopped where CAP entries per state took it, and holds every match above that, up to limit."""
    edge = frontier(jobs, flt, before)
    assert page.scanned_to == edge, (flt, before)
    want = [i for i in expected(jobs, flt) if (not before or i < before) and (edge is None or i >= edge)][
        :limit
    ]
    assert [j.job_id for j in page.jobs] == want, (flt, before)
    if edge is not None:
        assert max(examined_per_state(jobs, flt, before, edge).values()) <= CAP


@dataclass
class Walked:
    ids: list[str]
    calls: int = 0
    empty_pages_with_token: int = 0


async def walk_every_page(store: Store, jobs: list[Job], flt: JobFilter, size: int) -> Walked:
    """Every page, as AdminService.ListJobs makes them (size + 1 asked; the next page from the last job of a
    full page, or from where the store stopped), each call checked against the plain filter."""
    walked = Walked([])
    before: str | None = None
    while True:
        page = await store.list_jobs(flt, size + 1, before)
        walked.calls += 1
        check_call(jobs, flt, size + 1, before, page)
        walked.ids += [j.job_id for j in page.jobs[:size]]
        if len(page.jobs) > size:
            before = page.jobs[size - 1].job_id
        elif page.scanned_to is not None:
            walked.empty_pages_with_token += not page.jobs
            before = page.scanned_to
        else:
            return walked
        assert walked.calls < 2_000, "the listing does not end"


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_reads, "SCAN_CAP", CAP)


async def filled(store: Store) -> list[Job]:
    jobs = history()
    unit = UnitOfWork()
    for job in jobs:
        unit.add_new_job(job)
    await store.commit(unit)
    return jobs


@pytest.mark.usefixtures("small_cap")
@pytest.mark.parametrize("size", [1, 3, 50])
async def test_every_page_of_a_clients_jobs_on_a_miner_through_the_empty_ones(
    store: Store, size: int
) -> None:
    jobs = await filled(store)
    stopped_short = 0
    for flt in FILTERS:
        want = expected(jobs, flt)
        walked = await walk_every_page(store, jobs, flt, size)
        assert walked.ids == want, flt  # the same jobs, in the same order: none missing, none twice
        assert len(set(walked.ids)) == len(walked.ids)
        stopped_short += walked.empty_pages_with_token
    assert stopped_short > 20, "too few empty pages with a token to test much"


@pytest.mark.usefixtures("small_cap")
async def test_a_call_stops_at_once_when_a_walk_is_capped(store: Store) -> None:
    """The empty page of a client with no job on the miner: a token (the frontier), no jobs, from the first call."""
    jobs = await filled(store)
    flt = JobFilter(client_id="nobody", miner_id="m1")
    page = await store.list_jobs(flt, 51, None)
    assert page.jobs == [] and page.scanned_to == frontier(jobs, flt, None) is not None


async def test_with_the_default_cap_a_small_history_is_listed_whole(store: Store) -> None:
    jobs = await filled(store)
    flt = JobFilter(client_id="alice", miner_id="m1")
    page = await store.list_jobs(flt, 1_000, None)
    assert [j.job_id for j in page.jobs] == expected(jobs, flt) and page.scanned_to is None


def plan_nodes(node: dict) -> Iterator[dict]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.usefixtures("small_cap")
async def test_postgres_reads_at_most_the_cap_of_entries_per_state(backend: Backend, store: Store) -> None:
    """What PostgreSQL did (EXPLAIN ANALYZE of the store's own statement, statistics fresh): each walk read the
    miner's index, at most CAP entries (filtered out ones counted), and no table was read whole."""
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's own account of a statement's work")
    jobs = await filled(store)
    flt = JobFilter(client_id="alice", miner_id="m1")
    before = expected(jobs, flt)[40]
    sql, args = sql_reads._page_of_client_on_miner("alice", "m1", list(JobState), 51, before)
    conn = await pg_admin()
    try:
        await conn.execute(f'SET search_path = "{backend.schema}"')
        await conn.execute("ANALYZE jobs")
        [plan] = json.loads(
            await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql_reads.numbered(sql)}", *args)
        )
    finally:
        await conn.close()
    nodes = list(plan_nodes(plan["Plan"]))
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], plan
    walks = [n for n in nodes if n.get("Index Name") == "jobs_miner_state"]
    assert len(walks) == len(JobState), plan
    for walk in walks:
        assert walk["Actual Rows"] * walk["Actual Loops"] + walk.get("Rows Removed by Filter", 0) <= CAP, walk
    assert {n.get("Index Name") for n in nodes if n.get("Relation Name") == "jobs"} == {
        "jobs_miner_state",
        "jobs_pkey",
    }, plan
