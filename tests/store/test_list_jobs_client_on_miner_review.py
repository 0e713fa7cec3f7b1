"""Review (helper-128) of a client's jobs on a miner, listed with bounded work per call (sql_reads.SCAN_CAP,
JobPage.scanned_to), on SQLite and PostgreSQL: jobs changing state between calls, a frontier that is one of the
client's jobs, ids sharing a prefix, page_size 1000 with the real cap, and pages cut by PAGE_BYTES (page_of) while
the store also stopped at a frontier. tests/store/test_list_jobs_client_on_miner.py covers a still history."""

from __future__ import annotations

import random

import pytest

from coordinator.domain.model import Job, JobState
from coordinator.services import jobs as job_service
from coordinator.services.convert import job_message
from coordinator.store import Store, UnitOfWork, sql_reads
from coordinator.store.base import JobFilter, JobPage

from .store_support import T0, make_job

S = JobState
MAX_CALLS = 5_000  # far above any listing here: reaching it means the listing does not end


def issued_id(i: int) -> str:
    """An id shaped as the coordinator issues them (page tokens only carry such ids), ordered by i."""
    return f"{i:08x}-0000-7000-8000-{i:012x}"


async def stored(store: Store, jobs: list[Job]) -> None:
    unit = UnitOfWork()
    for job in jobs:
        unit.add_new_job(job)
    await store.commit(unit)


async def moved(store: Store, jobs: list[Job], to: JobState, at: int) -> None:
    """jobs written in state `to` (as the scheduler's updates write them)."""
    unit = UnitOfWork()
    for job in jobs:
        was = job.state
        job.state, job.updated_us = to, at
        job.finished_us = at if to.terminal else 0
        unit.add_update(job, was)
    await store.commit(unit)


def newest_first(jobs: list[Job], keep) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted((j.job_id for j in jobs if keep(j)), reverse=True)


def next_start(page: JobPage, size: int) -> str | None:
    """Where AdminService's next call starts (page_of without the byte cut): the last job of a full page, else
    the frontier; None when the listing is over."""
    if len(page.jobs) > size:
        return page.jobs[size - 1].job_id
    return page.scanned_to


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sql_reads, "SCAN_CAP", 4)
    return 4


# --- jobs changing state between calls --------------------------------------------------------------------
def busy_miner(rng: random.Random) -> list[Job]:
    """m1's 240 jobs RUNNING or COMPLETED, a quarter alice's, with stretches of bob's alone (capped walks that find
    none of hers)."""
    jobs = []
    for i in range(240):
        alice = (i // 30) % 2 == 0 and rng.random() < 0.5
        state = rng.choice((S.RUNNING, S.COMPLETED))
        jobs.append(
            make_job(issued_id(i), "alice" if alice else "bob", state=state, miner_id="m1", created_us=T0 + i)
        )
    rng.shuffle(jobs)
    return jobs


@pytest.mark.parametrize("size", [1, 2, 7])
async def test_jobs_finishing_between_calls_are_listed_once_each(store: Store, cap: int, size: int) -> None:
    """RUNNING -> COMPLETED between every two calls (for alice and bob, above and below the page's start): with
    both states asked every job of alice's stays in the listing, so each is listed exactly once, pages going down
    strictly and the listing ending."""
    rng = random.Random(128 + size)
    jobs = busy_miner(rng)
    await stored(store, jobs)
    want = set(newest_first(jobs, lambda j: j.client_id == "alice"))
    flt = JobFilter(client_id="alice", miner_id="m1", states=frozenset({S.RUNNING, S.COMPLETED}))
    listed: list[str] = []
    before: str | None = None
    for call in range(MAX_CALLS):
        page = await store.list_jobs(flt, size + 1, before)
        ids = [j.job_id for j in page.jobs]
        assert len(set(ids)) == len(ids), ids  # no job twice in one page
        assert ids == sorted(ids, reverse=True) and (before is None or all(i < before for i in ids))
        assert all(j.client_id == "alice" and j.state in flt.states for j in page.jobs)
        listed += ids[:size]
        if (start := next_start(page, size)) is None:
            break
        assert before is None or start < before, "a page that does not move down"
        before = start
        running = [j for j in jobs if j.state is S.RUNNING]
        await moved(store, rng.sample(running, min(6, len(running))), S.COMPLETED, T0 + 10_000 + call)
    else:
        pytest.fail("the listing does not end")
    assert len(listed) == len(set(listed)), "a job listed twice"
    assert set(listed) == want


async def test_jobs_leaving_the_states_asked_are_never_listed_twice(store: Store, cap: int) -> None:
    """Jobs leave the asked state and others enter it between calls (written as such; the store does not judge
    moves): AIP-158 lets those be missed, but none is listed twice, every job that stayed RUNNING throughout is
    listed, and the listing ends."""
    rng = random.Random(1281)
    jobs = busy_miner(rng)
    await stored(store, jobs)
    flt = JobFilter(client_id="alice", miner_id="m1", states=frozenset({S.RUNNING}))
    ever_moved: set[str] = set()
    listed: list[str] = []
    before: str | None = None
    for call in range(MAX_CALLS):
        page = await store.list_jobs(flt, 3, before)
        listed += [j.job_id for j in page.jobs[:2]]
        if (before := next_start(page, 2)) is None:
            break
        leaving = rng.sample([j for j in jobs if j.state is S.RUNNING], 3)
        coming = [j for j in jobs if j.state is S.FAILED][:2]
        await moved(store, leaving, S.FAILED, T0 + 10_000 + call)
        await moved(store, coming, S.RUNNING, T0 + 10_000 + call)
        ever_moved |= {j.job_id for j in leaving + coming}
    else:
        pytest.fail("the listing does not end")
    assert len(listed) == len(set(listed)), "a job listed twice"
    stayed = {j.job_id for j in jobs if j.client_id == "alice" and j.state is S.RUNNING} - ever_moved
    assert stayed <= set(listed)


# --- the frontier's edge ----------------------------------------------------------------------------------
async def test_a_frontier_on_one_of_the_clients_jobs_lists_it_once(store: Store, cap: int) -> None:
    """m1's COMPLETED jobs, newest first: bob, bob, bob, alice (the 4th: the capped walk's lowest, the frontier),
    then alice, bob... The first call lists the frontier's job (>=), the next starts below it (<): not twice."""
    owners = ["bob", "bob", "bob", "alice", "alice", "bob", "bob", "bob", "bob", "alice"]
    jobs = [
        make_job(issued_id(100 - n), who, state=S.COMPLETED, miner_id="m1", created_us=T0 + 100 - n)
        for n, who in enumerate(owners)
    ]
    await stored(store, jobs)
    flt = JobFilter(client_id="alice", miner_id="m1", states=frozenset({S.COMPLETED}))
    first = await store.list_jobs(flt, 51, None)
    assert [j.job_id for j in first.jobs] == [issued_id(97)] and first.scanned_to == issued_id(97)
    second = await store.list_jobs(flt, 51, first.scanned_to)
    assert [j.job_id for j in second.jobs] == [issued_id(96)] and second.scanned_to == issued_id(93)
    third = await store.list_jobs(flt, 51, second.scanned_to)
    assert [j.job_id for j in third.jobs] == [issued_id(91)] and third.scanned_to is None


async def test_ids_sharing_a_prefix_page_in_byte_order(store: Store, cap: int) -> None:
    """Ids where one is a prefix of another ("a7" < "a7f" < "a8"): the walks' `<` and the frontier's `>=` are the
    byte order Python's sort gives (PostgreSQL's job_id is COLLATE "C"); every page size lists them all once."""
    stems = ["a7", "a7f", "a7f0", "a7f00", "a7g", "a8", "a", "b", "b0", "b00", "ab", "abc", "a70", "a7f1"]
    ids = sorted({f"{stem}{tail}" for stem in stems for tail in ("", "-", "0", "~")})
    rng = random.Random(1282)
    jobs = [
        make_job(
            i, rng.choice(("alice", "bob", "bob")), state=rng.choice((S.RUNNING, S.FAILED)), miner_id="m1"
        )
        for i in ids
    ]
    await stored(store, jobs)
    flt = JobFilter(client_id="alice", miner_id="m1")
    want = newest_first(jobs, lambda j: j.client_id == "alice")
    for size in (1, 2, 5, 100):
        listed: list[str] = []
        before: str | None = None
        for _ in range(MAX_CALLS):
            page = await store.list_jobs(flt, size + 1, before)
            listed += [j.job_id for j in page.jobs[:size]]
            if (before := next_start(page, size)) is None:
                break
        assert listed == want, size


# --- page_size 1000 with the real cap ----------------------------------------------------------------------
@pytest.mark.parametrize("alices", [999, 1000, 2345])
async def test_page_size_1000_with_the_real_cap(store: Store, alices: int) -> None:
    """page_size 1000 asks 1001, more than SCAN_CAP (1000) entries per walk can give: pages of 1000 (or fewer,
    with a token), all of alice's jobs once, in order; also when her count is the cap exactly (a walk of the
    cap's length is 'capped' even when nothing lies below: one more, empty, call)."""
    assert sql_reads.SCAN_CAP == 1000
    jobs = [
        make_job(issued_id(i), "alice", state=S.COMPLETED, miner_id="m1", created_us=T0 + i)
        for i in range(alices)
    ]
    jobs += [make_job(issued_id(10_000 + i), "bob", state=S.COMPLETED, miner_id="m1") for i in range(50)]
    await stored(store, jobs)
    flt = JobFilter(client_id="alice", miner_id="m1")
    listed: list[str] = []
    before: str | None = None
    sizes: list[int] = []
    for _ in range(20):
        page = await store.list_jobs(flt, 1001, before)
        sizes.append(len(page.jobs))
        assert len(page.jobs) <= 1000  # never more than the cap from one state's walk
        listed += [j.job_id for j in page.jobs[:1000]]
        if (before := next_start(page, 1000)) is None:
            break
    assert listed == newest_first(jobs, lambda j: j.client_id == "alice"), sizes
    assert len(sizes) <= alices // 1000 + 2, sizes


# --- PAGE_BYTES cuts a page the store also stopped short ----------------------------------------------------
def admin_message(job: Job):  # type: ignore[no-untyped-def]
    return job_message(job, with_payload=False)


async def test_a_page_cut_by_bytes_at_a_frontier_goes_on_from_the_last_job_sent(
    store: Store, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """page_of with a JobPage that stopped at a frontier below several jobs, and PAGE_BYTES room for two jobs'
    messages: the token is the second job's (the last sent), not the frontier (which would skip the rest);
    followed through decode_page_token to the end, the listing is every job of alice's once."""
    jobs = [
        make_job(
            issued_id(i), "alice" if i % 5 else "bob", state=S.COMPLETED, miner_id="m1", created_us=T0 + i
        )
        for i in range(60)
    ]
    await stored(store, jobs)
    one = admin_message(jobs[1]).ByteSize()
    monkeypatch.setattr(job_service, "PAGE_BYTES", 2 * one + one // 2)
    flt = JobFilter(client_id="alice", miner_id="m1", states=frozenset({S.COMPLETED}))

    page = await store.list_jobs(flt, 11, None)
    assert page.scanned_to is not None and 2 < len(page.jobs) < 11  # stopped short at the walk of 4
    messages, token = job_service.page_of(page, 10, flt, admin_message)
    assert [m.job_id for m in messages] == [j.job_id for j in page.jobs[:2]]
    assert job_service.decode_page_token(token, flt) == page.jobs[1].job_id

    listed: list[str] = []
    token = ""
    for _ in range(MAX_CALLS):
        page = await store.list_jobs(flt, 11, job_service.decode_page_token(token, flt))
        messages, token = job_service.page_of(page, 10, flt, admin_message)
        listed += [m.job_id for m in messages]
        if not token:
            break
    assert listed == newest_first(jobs, lambda j: j.client_id == "alice")
