"""The Store contract, one suite for both implementations: every test runs on SQLite and on PostgreSQL.

Rows are built from the domain objects (Job, Event, JobResult) through UnitOfWork, committed, and read back
through the Store's own queries; append-only tables are attacked through a raw connection of the backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import pytest

from coordinator.domain.model import JobState
from coordinator.store import Store, UnitOfWork
from coordinator.store.base import CheckpointRow, DependencyFailed, JobFilter, KeyRow, LedgerEntry, ReceiptRow
from coordinator.store.schema import APPEND_ONLY

from .store_support import T0, Backend, make_job, make_result, submitted_event, transition


def new_jobs_unit(*jobs) -> UnitOfWork:
    unit = UnitOfWork()
    for job in jobs:
        unit.add_new_job(job)
        unit.add_event(submitted_event(job))
    return unit


TAMPERED = "'tampered'"


def leaf(i: int) -> bytes:
    return hashlib.sha256(b"leaf %d" % i).digest()


def receipt(receipt_id: str, job_id: str, attempt: int, index: int) -> ReceiptRow:
    envelope = b'{"payloadType":"x","payload":"\x00\xff' + receipt_id.encode() + b'"}'
    return ReceiptRow(receipt_id, job_id, attempt, envelope, index, leaf(index), T0 + index)


# --- jobs, events, results ---------------------------------------------------------------------------------
async def test_new_jobs_and_events_read_back_equal(store: Store) -> None:
    a = make_job("job-a", idempotency_key="idem-1")
    b = make_job("job-b", client_id="bob", created_us=T0 + 1)
    await store.commit(new_jobs_unit(a, b))

    assert await store.get_job("job-a") == a
    assert await store.get_job("job-b") == b  # empty idempotency key stored as NULL, read back as ""
    assert await store.get_job("job-missing") is None
    assert await store.get_events("job-a") == [submitted_event(a)]
    assert await store.get_events("job-missing") == []
    assert await store.find_by_idempotency_keys("alice", ["idem-1"]) == {"idem-1": a}
    assert await store.find_by_idempotency_keys("bob", ["idem-1"]) == {}
    assert await store.find_by_idempotency_keys("alice", ["other", "idem-1"]) == {"idem-1": a}


async def test_a_batch_of_idempotency_keys_is_found_in_one_read_past_a_chunk(store: Store) -> None:
    # a SubmitJobs batch's keys, more than one query's worth, some another client's
    mine = [
        make_job(f"job-{i:04d}", idempotency_key=f"key-{i}", created_us=T0 + i) for i in range(0, 1200, 2)
    ]
    theirs = make_job("job-bob", client_id="bob", idempotency_key="key-1")
    await store.commit(new_jobs_unit(*mine, theirs))
    asked = [f"key-{i}" for i in range(1200)]
    found = await store.find_by_idempotency_keys("alice", asked)
    assert found == {job.idempotency_key: job for job in mine}
    assert await store.find_by_idempotency_keys("alice", []) == {}


async def test_updates_replace_the_mutable_fields_and_events_append(store: Store) -> None:
    job = make_job("job-u")
    await store.commit(new_jobs_unit(job))
    created = dataclasses.replace(job)
    events = [submitted_event(job)]
    for to, at in ((JobState.ASSIGNED, T0 + 10), (JobState.RUNNING, T0 + 20)):
        unit = UnitOfWork()
        events.append(transition(job, to, at, miner_id="m1"))
        job.reassignments, job.not_before_us, job.queued_us = 1, T0 + 5, T0 + 6
        unit.add_update(job, events[-1].from_state)
        unit.add_event(events[-1])
        await store.commit(unit)

    stored = await store.get_job("job-u")
    assert stored == job
    assert (stored.state, stored.miner_id, stored.attempt, stored.started_us) == (
        JobState.RUNNING,
        "m1",
        1,
        T0 + 20,
    )
    assert (stored.payload, stored.constraints, stored.metadata) == (
        created.payload,
        created.constraints,
        created.metadata,
    )
    assert await store.get_events("job-u") == events
    assert [e.sequence for e in await store.get_events("job-u")] == [1, 2, 3]


async def test_results_latest_attempt_wins(store: Store) -> None:
    job = make_job("job-r", miner_id="m1")
    await store.commit(new_jobs_unit(job))
    first, second = make_result(job, 1, "rc-1"), make_result(job, 2, "rc-2")
    unit = UnitOfWork()
    unit.add_result(second)
    unit.add_result(first)
    await store.commit(unit)
    assert await store.get_result("job-r") == second
    assert await store.get_result("job-missing") is None


async def test_a_unit_is_atomic_and_a_group_keeps_unit_order(store: Store) -> None:
    """Insert and update of one job in two units gathered together: the update lands on the insert."""
    job = make_job("job-g")
    insert = new_jobs_unit(job)
    update = UnitOfWork()
    update.add_event(transition(job, JobState.ASSIGNED, T0 + 1, miner_id="m9"))
    update.add_update(job, JobState.QUEUED)
    await asyncio.gather(store.commit(insert), store.commit(update))
    assert (await store.get_job("job-g")).state is JobState.ASSIGNED
    assert len(await store.get_events("job-g")) == 2


# --- receipts, log, ledger, checkpoints, keys ------------------------------------------------------------
async def test_receipts_log_ledger_checkpoints_and_keys_read_back(store: Store) -> None:
    a, b = make_job("job-a", miner_id="m1"), make_job("job-b", miner_id="m2")
    await store.commit(new_jobs_unit(a, b))
    first = UnitOfWork()
    first.receipts += [receipt("rc-a2", "job-a", 2, 3), receipt("rc-b1", "job-b", 1, 0)]
    first.checkpoints.append(CheckpointRow(4, b"\x01" * 32, "note four", T0 + 40))
    second = UnitOfWork()
    second.receipts += [receipt("rc-a1", "job-a", 1, 1), receipt("rc-b2", "job-b", 2, 2)]
    second.checkpoints.append(CheckpointRow(2, b"\x02" * 32, "note two", T0 + 50))
    await store.commit(first)
    await store.commit(second)

    assert await store.get_receipts("job-a") == [
        receipt("rc-a1", "job-a", 1, 1),
        receipt("rc-a2", "job-a", 2, 3),
    ]
    assert [r.receipt_id for r in await store.get_receipts("job-b")] == ["rc-b1", "rc-b2"]
    assert await store.get_receipts("job-missing") == []
    assert await store.read_leaves(0, 10) == [
        leaf(0),
        leaf(1),
        leaf(2),
        leaf(3),
    ]  # index order, not commit order
    _, checkpoint = await store.load_log_tiles()
    assert checkpoint == CheckpointRow(4, b"\x01" * 32, "note four", T0 + 40)  # the largest tree


async def test_the_stored_tiles_are_read_up_to_a_missing_one_and_leaves_by_range(store: Store) -> None:
    unit = UnitOfWork()
    unit.receipts += [receipt(f"rc-{i}", f"job-{i}", 1, i) for i in range(7)]
    tile = [hashlib.sha256(b"tile %d" % i).digest() for i in range(4)]
    unit.tiles += [(0, tile[0]), (1, tile[1]), (3, tile[3])]  # tile 2's write lost
    await store.commit(unit)
    again = UnitOfWork()
    again.tiles.append((0, tile[2]))  # a tile written again (by a start that hashed it) keeps its first row
    await store.commit(again)

    assert await store.load_log_tiles() == ([tile[0], tile[1]], None)  # up to the one missing
    assert await store.read_leaves(2, 5) == [leaf(2), leaf(3), leaf(4)]
    assert await store.read_leaves(5, 100) == [leaf(5), leaf(6)]
    assert await store.read_leaves(7, 9) == []


async def test_empty_log_has_no_checkpoint(store: Store) -> None:
    assert await store.load_log_tiles() == ([], None)
    assert await store.read_leaves(0, 10) == []
    assert await store.load_keys() == []
    assert await store.load_accounts() == []
    assert await store.count_by_state() == {}


async def test_keys_are_upserted_on_rotation_status_and_expiry_only(store: Store) -> None:
    old = KeyRow("k-old", "coordinator", "active", b"\x10" * 32, b"\x20" * 32, T0, None, "")
    miner = KeyRow("k-miner", "miner", "active", b"\x30" * 32, None, T0 + 5, None, "m1")
    unit = UnitOfWork()
    unit.keys += [miner, old]
    await store.commit(unit)
    assert await store.load_keys() == [old, miner]  # by valid_from_us

    rotation = UnitOfWork()
    # ON CONFLICT updates status and valid_until only: the key material can never be replaced this way
    rotation.keys.append(
        dataclasses.replace(old, status="retired", valid_until_us=T0 + 100, public_key=b"\x99" * 32)
    )
    new = KeyRow("k-new", "coordinator", "active", b"\x40" * 32, b"\x50" * 32, T0 + 100, None, "")
    rotation.keys.append(new)
    await store.commit(rotation)
    retired = dataclasses.replace(old, status="retired", valid_until_us=T0 + 100)
    assert await store.load_keys() == [retired, miner, new]


async def test_accounts_sum_the_ledger_as_ints_and_receipt_booked(store: Store) -> None:
    unit = UnitOfWork()
    # Each entry fits a BIGINT; a balance of them may not (SQLite's sum() then raised "integer overflow", and
    # the coordinator could not start: review round 10, helper-32). Remainders below a unit, either sign.
    big = 4_000_000_000_123_456_789
    unit.ledger += [
        LedgerEntry("alice", "client", "rc-1", -2_500_000_000, 2_000_000_000, T0 + 1),
        LedgerEntry("m1", "miner", "rc-1", 2_500_000_000, 2_000_000_000, T0 + 1),
        LedgerEntry("alice", "client", "rc-2", -1_000_000_000, 500_000_000, T0 + 7),
        LedgerEntry("whale", "client", "rc-3", big, 1, T0 + 3),
        LedgerEntry("whale", "client", "rc-4", big, 1, T0 + 2),
        LedgerEntry("whale", "client", "rc-5", big, big, T0 + 2),
        LedgerEntry("whale", "client", "rc-6", -987_654_321, big, T0 + 2),
        LedgerEntry("sink", "miner", "rc-7", -big, 1, T0 + 4),
        LedgerEntry("sink", "miner", "rc-8", -big, 1, T0 + 4),
        LedgerEntry("sink", "miner", "rc-9", -big, 1, T0 + 4),
    ]
    await store.commit(unit)
    accounts = {(a["account_id"], a["kind"]): a for a in await store.load_accounts()}
    assert accounts == {
        ("alice", "client"): {"account_id": "alice", "kind": "client", "balance_nano": -3_500_000_000,
                              "receipts": 2, "units_nano": 2_500_000_000, "updated_us": T0 + 7},
        ("m1", "miner"): {"account_id": "m1", "kind": "miner", "balance_nano": 2_500_000_000,
                          "receipts": 1, "units_nano": 2_000_000_000, "updated_us": T0 + 1},
        ("whale", "client"): {"account_id": "whale", "kind": "client", "balance_nano": 3 * big - 987_654_321,
                              "receipts": 4, "units_nano": 2 + 2 * big, "updated_us": T0 + 3},
        ("sink", "miner"): {"account_id": "sink", "kind": "miner", "balance_nano": -3 * big,
                            "receipts": 3, "units_nano": 3, "updated_us": T0 + 4},
    }  # fmt: skip
    for account in accounts.values():
        assert all(type(account[k]) is int for k in ("balance_nano", "receipts", "units_nano", "updated_us"))
    assert await store.receipt_booked("rc-2") is True
    assert await store.receipt_booked("rc-404") is False


async def test_a_receipt_is_booked_once_per_kind(store: Store) -> None:
    unit = UnitOfWork()
    unit.ledger.append(LedgerEntry("alice", "client", "rc-1", -1, 1, T0))
    await store.commit(unit)
    again = UnitOfWork()
    again.ledger.append(LedgerEntry("alice", "client", "rc-1", -1, 1, T0 + 1))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.commit(again)
    assert [a["balance_nano"] for a in await store.load_accounts()] == [-1]


# --- queries -------------------------------------------------------------------------------------------------
async def seed_listing(store: Store) -> dict[str, object]:
    """Twelve jobs job-01..job-12 in various states, clients and miners, plus byte-ordered ids."""
    jobs = {}
    states = [JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED,
              JobState.CANCELED, JobState.EXPIRED]  # fmt: skip
    for i in range(1, 13):
        state = states[i % 7]
        miner = "" if state is JobState.QUEUED else f"m{i % 2}"
        jobs[f"job-{i:02d}"] = make_job(
            f"job-{i:02d}", "alice" if i % 3 else "bob", state=state, miner_id=miner
        )
    # byte order, not a locale's: "job-B" < "job-a" < "job-b" (uppercase sorts before lowercase)
    for job_id in ("job-a", "job-B", "job-b"):
        jobs[job_id] = make_job(job_id, "carol", state=JobState.QUEUED)
    await store.commit(new_jobs_unit(*jobs.values()))
    return jobs


async def test_list_jobs_newest_first_filters_and_paging(store: Store) -> None:
    jobs = await seed_listing(store)
    everything = sorted(jobs, reverse=True)
    assert everything[:3] == ["job-b", "job-a", "job-B"]
    listed = (await store.list_jobs(JobFilter(), 100, None)).jobs
    assert [j.job_id for j in listed] == everything
    assert listed[0] == jobs["job-b"]

    # paging: pages of 4, each continuing before the last id of the previous page
    pages, before = [], None
    while True:
        page = (await store.list_jobs(JobFilter(), 4, before)).jobs
        if not page:
            break
        pages.append([j.job_id for j in page])
        before = page[-1].job_id
    assert [len(p) for p in pages] == [4, 4, 4, 3]
    assert [job_id for page in pages for job_id in page] == everything
    assert [j.job_id for j in (await store.list_jobs(JobFilter(), 2, "job-10")).jobs] == ["job-09", "job-08"]

    def ids(page) -> list[str]:  # (a JobPage)
        return [j.job_id for j in page.jobs]

    expect = lambda pred: [k for k in everything if pred(jobs[k])]  # noqa: E731
    assert ids(await store.list_jobs(JobFilter(client_id="bob"), 100, None)) == expect(
        lambda j: j.client_id == "bob"
    )
    assert ids(await store.list_jobs(JobFilter(miner_id="m1"), 100, None)) == expect(
        lambda j: j.miner_id == "m1"
    )
    terminal = frozenset({JobState.COMPLETED, JobState.FAILED})
    assert ids(await store.list_jobs(JobFilter(states=terminal), 100, None)) == expect(
        lambda j: j.state in terminal
    )
    both = JobFilter(client_id="alice", miner_id="m0", states=frozenset({JobState.ASSIGNED, JobState.RUNNING,
                                                                         JobState.CANCELED}))  # fmt: skip
    wanted = expect(lambda j: j.client_id == "alice" and j.miner_id == "m0" and j.state in both.states)
    assert wanted and ids(await store.list_jobs(both, 100, None)) == wanted
    assert ids(await store.list_jobs(both, 1, wanted[0])) == wanted[1:2]
    assert (await store.list_jobs(JobFilter(client_id="nobody"), 10, None)).jobs == []


async def test_load_active_jobs_only_queued_assigned_running(store: Store) -> None:
    jobs = await seed_listing(store)
    active = await store.load_active_jobs()
    assert [j.job_id for j in active] == sorted(k for k, j in jobs.items() if not j.state.terminal)
    assert {j.state for j in active} == {JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING}
    assert active == [jobs[j.job_id] for j in active]


async def test_count_by_state(store: Store) -> None:
    jobs = await seed_listing(store)
    counts = await store.count_by_state()
    expected: dict[JobState, int] = {}
    for job in jobs.values():
        expected[job.state] = expected.get(job.state, 0) + 1
    assert counts == expected
    assert all(type(n) is int for n in counts.values())


async def test_count_transitions_since(store: Store) -> None:
    since = T0 + 1000
    old = make_job("job-old", created_us=T0)  # submitted and completed before `since`: not counted
    await store.commit(new_jobs_unit(old))
    unit = UnitOfWork()
    unit.add_event(transition(old, JobState.COMPLETED, T0 + 5))
    await store.commit(unit)

    fresh = [make_job(f"job-n{i}", created_us=since + i) for i in range(6)]
    await store.commit(new_jobs_unit(*fresh))
    unit = UnitOfWork()
    for job, to in zip(fresh, (JobState.COMPLETED, JobState.COMPLETED, JobState.FAILED, JobState.CANCELED,
                               JobState.EXPIRED), strict=False):  # fmt: skip
        unit.add_event(transition(job, JobState.ASSIGNED, since + 100))  # not a counted transition
        unit.add_event(transition(job, to, since + 200))
    await store.commit(unit)
    assert await store.count_transitions_since(since) == {
        "submitted": 6, "completed": 2, "failed": 1, "canceled": 1, "expired": 1,
    }  # fmt: skip
    assert await store.count_transitions_since(since + 150) == {
        "submitted": 0, "completed": 2, "failed": 1, "canceled": 1, "expired": 1,
    }  # fmt: skip
    assert (await store.count_transitions_since(T0))["completed"] == 3


# --- group commit -----------------------------------------------------------------------------------------
async def test_a_failing_unit_fails_alone_in_its_group(store: Store) -> None:
    original = make_job("job-dup", client_id="alice")
    await store.commit(new_jobs_unit(original))

    duplicate = make_job("job-dup", client_id="mallory")
    units = [new_jobs_unit(make_job("job-ok1")), new_jobs_unit(duplicate), new_jobs_unit(make_job("job-ok2"))]
    bad_key = UnitOfWork()
    bad_key.ledger.append(LedgerEntry("x", "client", "rc-same", 1, 1, T0))
    bad_key.ledger.append(LedgerEntry("y", "client", "rc-same", 1, 1, T0))  # breaks UNIQUE(receipt_id, kind)
    units.insert(2, bad_key)
    outcomes = await asyncio.gather(*(store.commit(u) for u in units), return_exceptions=True)

    assert outcomes[0] is None and outcomes[3] is None
    assert isinstance(outcomes[1], Exception) and isinstance(outcomes[2], Exception)
    assert (await store.get_job("job-dup")).client_id == "alice"  # the duplicate changed nothing
    assert len(await store.get_events("job-dup")) == 1
    assert await store.get_job("job-ok1") is not None and await store.get_job("job-ok2") is not None
    assert await store.load_accounts() == []  # the failing unit is all or nothing
    # the writer is still healthy afterwards
    await store.commit(new_jobs_unit(make_job("job-after")))
    assert await store.get_job("job-after") is not None


async def test_a_unit_built_on_a_failed_unit_fails_too_in_its_group_or_a_later_one(store: Store) -> None:
    """The scheduler queues a job's next change before the previous one is durable; if that one fails, the
    next must not land over a state that never did (an event sequence with a hole, a skipped step)."""
    job = make_job("job-x")
    await store.commit(new_jobs_unit(job))
    failing = UnitOfWork(key=1)
    failing.add_event(transition(job, JobState.ASSIGNED, T0 + 1, "ASSIGNED", "m1"))
    failing.ledger += [LedgerEntry("x", "client", "rc-dup", 1, 1, T0)] * 2  # breaks UNIQUE: the unit fails
    next_step = UnitOfWork(key=2, requires=(1,))
    next_step.add_event(transition(job, JobState.RUNNING, T0 + 2, "ACCEPTED", "m1"))
    unrelated = UnitOfWork(key=3)
    unrelated.add_new_job(make_job("job-y"))
    outcomes = await asyncio.gather(*(store.commit(u) for u in (failing, next_step, unrelated)),
                                    return_exceptions=True)  # fmt: skip
    assert isinstance(outcomes[0], Exception) and outcomes[2] is None
    assert isinstance(outcomes[1], DependencyFailed), outcomes[1]
    later = UnitOfWork(key=4, requires=(2,))  # built on the refused one, and queued after the group
    later.add_event(transition(job, JobState.COMPLETED, T0 + 3, "COMPLETED", "m1"))
    with pytest.raises(DependencyFailed):
        await store.commit(later)
    assert [e.sequence for e in await store.get_events("job-x")] == [1]
    assert await store.get_job("job-y") is not None
    independent = UnitOfWork(key=5, requires=(3,))  # requires a unit that landed
    independent.add_new_job(make_job("job-z"))
    await store.commit(independent)
    assert await store.get_job("job-z") is not None


async def test_a_failing_commit_observer_leaves_what_landed_landed(store: Store) -> None:
    """The observer (metrics) runs after a group's outcomes are known: its error must not turn the units
    that landed into failed ones (the next unit built on one was refused: DependencyFailed)."""

    def broken(units: int, seconds: float) -> None:
        raise RuntimeError("observer bug")

    store.commit_observer = broken
    landed = UnitOfWork(key=1)
    landed.add_new_job(make_job("job-a"))
    await store.commit(landed)
    store.commit_observer = None
    built_on_it = UnitOfWork(key=2, requires=(1,))
    built_on_it.add_new_job(make_job("job-b"))
    await store.commit(built_on_it)
    assert await store.get_job("job-a") is not None and await store.get_job("job-b") is not None


async def test_receipts_take_their_log_places_in_commit_order_and_a_failed_unit_takes_none(
    store: Store,
) -> None:
    def unit_with_receipt(name: str, *, failing: bool = False) -> UnitOfWork:
        unit = new_jobs_unit(make_job(f"job-{name}"))
        unit.receipts.append(ReceiptRow(f"rc-{name}", f"job-{name}", 1, b"env " + name.encode(), -1,
                                        hashlib.sha256(name.encode()).digest(), T0))  # fmt: skip
        if failing:  # breaks UNIQUE(receipt_id, kind): the whole unit fails
            unit.ledger += [LedgerEntry("x", "client", f"rc-{name}", 1, 1, T0)] * 2
        return unit

    units = [unit_with_receipt("a"), unit_with_receipt("b", failing=True), unit_with_receipt("c")]
    outcomes = await asyncio.gather(*(store.commit(u) for u in units), return_exceptions=True)
    assert outcomes[0] is None and outcomes[2] is None and isinstance(outcomes[1], Exception)
    assert [units[0].receipts[0].leaf_index, units[2].receipts[0].leaf_index] == [0, 1]
    later = unit_with_receipt("d")
    await store.commit(later)
    assert later.receipts[0].leaf_index == 2
    assert await store.read_leaves(0, 10) == [
        hashlib.sha256(n.encode()).digest() for n in ("a", "c", "d")
    ]  # no gap
    assert [r.leaf_index for r in await store.get_receipts("job-c")] == [1]


async def test_two_thousand_units_gathered_all_commit_in_groups(store: Store) -> None:
    groups: list[int] = []
    store.commit_observer = lambda size, seconds: groups.append(size)  # type: ignore[attr-defined]
    jobs = [make_job(f"job-{i:05d}", created_us=T0 + i) for i in range(2000)]
    results = await asyncio.wait_for(asyncio.gather(*(store.commit(new_jobs_unit(j)) for j in jobs)), 60)
    assert results == [None] * 2000
    for _ in range(200):  # SQLite's writer thread reports a group just after waking its waiters
        if sum(groups) == 2000:
            break
        await asyncio.sleep(0.01)
    assert sum(groups) == 2000
    assert max(groups) > 1, f"no grouping happened: {groups[:20]}"
    assert await store.count_by_state() == {JobState.QUEUED: 2000}
    assert len(await store.load_active_jobs()) == 2000
    assert await store.get_job("job-01999") == jobs[-1]


async def test_a_unit_with_more_rows_than_a_statement_has_parameters_commits(store: Store) -> None:
    """A SubmitJobs of the largest batch, and more: 1,500 jobs of 26 columns are 39,000 values, past the 32,767
    bind parameters of one PostgreSQL statement (each row is bound apart, so none comes near it)."""
    jobs = [make_job(f"batch-{i:05d}", created_us=T0 + i) for i in range(1500)]
    await asyncio.wait_for(store.commit(new_jobs_unit(*jobs)), 60)
    assert await store.count_by_state() == {JobState.QUEUED: 1500}
    assert await store.get_job("batch-01499") == jobs[-1]


async def test_a_cancelled_waiter_does_not_cancel_its_write(store: Store) -> None:
    waiter = asyncio.create_task(store.commit(new_jobs_unit(make_job("job-cancelled"))))
    await asyncio.sleep(0)  # the unit is queued
    waiter.cancel()
    await store.commit(new_jobs_unit(make_job("job-next")))  # the writer keeps queue order
    assert await store.get_job("job-cancelled") is not None
    with pytest.raises(asyncio.CancelledError):
        await waiter


# --- durability and append-only tables ---------------------------------------------------------------------
async def test_state_survives_reopening(backend: Backend) -> None:
    first = backend.new_store()
    await first.open()
    job = make_job("job-keep")
    unit = new_jobs_unit(job)
    unit.receipts.append(receipt("rc-keep", "job-keep", 1, 0))
    await first.commit(unit)
    await first.close()

    again = backend.new_store()  # migrations already applied: opening again changes nothing
    await again.open()
    try:
        assert await again.get_job("job-keep") == job
        assert await again.read_leaves(0, 10) == [leaf(0)]
    finally:
        await again.close()


async def test_append_only_tables_refuse_update_and_delete(store: Store, backend: Backend) -> None:
    job = make_job("job-ao")
    unit = new_jobs_unit(job)
    unit.receipts.append(receipt("rc-ao", "job-ao", 1, 0))
    unit.ledger.append(LedgerEntry("alice", "client", "rc-ao", -1, 1, T0))
    unit.checkpoints.append(CheckpointRow(1, leaf(0), "note", T0))
    unit.tiles.append((0, leaf(0)))
    await store.commit(unit)

    column = {"job_events": "message", "receipts": "envelope", "log_leaves": "leaf_hash",
              "checkpoints": "note", "ledger_entries": "account_id", "log_tiles": "tile_hash"}  # fmt: skip
    value = {"envelope": "'x'", "leaf_hash": "'x'", "tile_hash": "'x'"}  # BLOB / BYTEA from a literal on both
    assert set(column) == set(APPEND_ONLY)
    for table in APPEND_ONLY:
        assert (await backend.raw_fetch(f"SELECT count(*) FROM {table}"))[0][0] == 1
        set_clause = f"{column[table]} = {value.get(column[table], TAMPERED)}"
        with pytest.raises(Exception, match=f"{table} is append-only"):
            await backend.raw_execute(f"UPDATE {table} SET {set_clause}")
        with pytest.raises(Exception, match=f"{table} is append-only"):
            await backend.raw_execute(f"DELETE FROM {table}")
        assert (await backend.raw_fetch(f"SELECT count(*) FROM {table}"))[0][0] == 1
    # the jobs table is not append-only: the same raw connection may change it
    await backend.raw_execute("UPDATE jobs SET terminal_message = 'edited'")
    assert (await store.get_job("job-ao")).terminal_message == "edited"
    assert (await store.get_receipts("job-ao"))[0] == receipt("rc-ao", "job-ao", 1, 0)
