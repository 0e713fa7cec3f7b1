"""job_state_counts (schema 7) through whole coordinator flows on PostgreSQL, where the harness's own check (at every
stop) reads SQLite files only: completion, failures, retries exhausted, cancels, TTL expiry, a miner lost and its
job requeued, a restart, an operator's drain, a commit refused and its job read back, a COMMIT whose answer was lost
(landed) or which never arrived (in doubt, written again alone). After each flow (and at each stop) the kept counts
must be the jobs table's own count. And on SQLite, a change reported failed that landed all the same (an accept),
its job then changed again: each change must name the stored state it leaves (helper-126)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from coord_support import (
    ASSIGNED,
    CANCELED,
    COMPLETED,
    EXPIRED,
    FAILED,
    QUEUED,
    RUNNING,
    Harness,
    eventually,
    rpc_error,
)
from pg_harness import PgHarness, pg_counts_off, started
from test_failed_commit import held_lock, refuse

from coordinator.domain import states
from coordinator.domain.clock import now_us
from coordinator.domain.model import JobState
from coordinator.store.base import UnitOfWork
from coordinator.store.sqlite import _write_units
from tests.store.store_support import create_schema, drop_schema, pg_admin
from tests.store.test_job_state_counts_uncertain_commits import CommitNeverArrives
from tests.store.test_postgres_commit_reply_error import READY_IDLE, CommitReplyProxy, error_response


@pytest.fixture
async def pg(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PgHarness]:
    marker = request.node.get_closest_marker("coordinator")
    async with started(tmp_path, dict(marker.kwargs) if marker else {}, postgres=True) as coord:
        assert isinstance(coord, PgHarness)
        yield coord


async def test_counts_hold_through_every_kind_of_end_a_restart_and_a_drain_on_postgres(pg: PgHarness) -> None:
    alice = pg.client("alice")
    miner = await pg.stream_miner("miner-00", slots=4)
    done = await alice.submit({"k": "completed"})
    [a] = await miner.assignments(1)
    miner.accept(a)
    miner.result(a.job.job_id, a.attempt)
    await pg.stored(done.job_id, COMPLETED)

    failed = await alice.submit({"k": "failed"})
    [a] = await miner.assignments(1)
    miner.accept(a)
    miner.failure(a.job.job_id, a.attempt, retryable=False)
    await pg.stored(failed.job_id, FAILED)

    exhausted = await alice.submit({"k": "exhausted"}, max_attempts=2)
    for _ in range(2):  # retryable, then its attempts spent
        [a] = await miner.assignments(1)
        miner.accept(a)
        miner.failure(a.job.job_id, a.attempt, retryable=True)
    await pg.stored(exhausted.job_id, FAILED)

    canceled_running = await alice.submit({"k": "canceled running"})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await pg.stored(canceled_running.job_id, RUNNING)
    await alice.cancel(canceled_running.job_id)
    await pg.stored(canceled_running.job_id, CANCELED)

    lost = await alice.submit({"k": "lost with its miner"})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await pg.stored(lost.job_id, RUNNING)
    assert await pg_counts_off(pg.schema) == {}
    await miner.kill()  # gone past its grace: the job is requeued
    await pg.stored(lost.job_id, QUEUED)

    expiring = await alice.submit({"k": "expired"}, ttl_s=1)  # no miner: it runs out queued
    canceled_queued = await alice.submit({"k": "canceled queued"})
    await alice.cancel(canceled_queued.job_id)
    await pg.stored(expiring.job_id, EXPIRED)
    await pg.stored(canceled_queued.job_id, CANCELED)

    await pg.restart()  # (the stop checks the counts)
    alice = pg.client("alice")
    miner = await pg.stream_miner("miner-01", slots=1)
    [a] = await miner.assignments(1)
    assert a.job.job_id == lost.job_id
    await pg.stored(lost.job_id, ASSIGNED)
    await pg.admin().drain("miner-01")  # it keeps its job, takes no other
    miner.accept(a)
    miner.result(a.job.job_id, a.attempt)
    await pg.stored(lost.job_id, COMPLETED)
    assert await pg_counts_off(pg.schema) == {}
    assert dict(await pg.coordinator.scheduler.store.count_by_state()) == {
        JobState.COMPLETED: 2,
        JobState.FAILED: 2,
        JobState.CANCELED: 2,
        JobState.EXPIRED: 1,
    }


async def refuse_on_postgres(schema: str, job_id: str, reason: str) -> None:
    """From now on, a commit writing an event of this job with this reason fails (a unit's own rows at fault)."""
    conn = await pg_admin()
    try:
        await conn.execute(f"""
            CREATE FUNCTION "{schema}".test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.job_id = '{job_id}' AND NEW.reason = '{reason}' THEN
                RAISE EXCEPTION 'test: this write cannot be made';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse BEFORE INSERT ON "{schema}".job_events
              FOR EACH ROW EXECUTE FUNCTION "{schema}".test_refuse();
        """)
    finally:
        await conn.close()


async def allow_on_postgres(schema: str) -> None:
    conn = await pg_admin()
    try:
        await conn.execute(f'DROP TRIGGER test_refuse ON "{schema}".job_events')
    finally:
        await conn.close()


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_counts_hold_after_a_refused_cancel_read_back_then_completed_on_postgres(pg: PgHarness) -> None:
    alice = pg.client("alice")
    miner = await pg.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await pg.stored(job.job_id, RUNNING)
    await refuse_on_postgres(pg.schema, job.job_id, "CANCELED_BY_CLIENT")
    err = await rpc_error(alice.cancel(job.job_id))
    assert err.code == grpc.StatusCode.INTERNAL
    await allow_on_postgres(pg.schema)
    await eventually(lambda: job.job_id in pg.coordinator.scheduler.jobs, what="the job read back")
    assert await pg_counts_off(pg.schema) == {}
    miner.result(a.job.job_id, a.attempt)
    assert (await miner.next("result_ack")).accepted
    await pg.stored(job.job_id, COMPLETED)
    assert await pg_counts_off(pg.schema) == {}


@pytest.mark.parametrize("how", ["answer lost, landed", "never arrived"])
async def test_counts_hold_when_a_coordinators_commit_is_in_doubt_on_postgres(
    tmp_path: Path, how: str
) -> None:
    schema = await create_schema()
    proxy: CommitReplyProxy | CommitNeverArrives = (
        CommitReplyProxy() if how.startswith("answer") else CommitNeverArrives()
    )
    await proxy.start()
    coord = PgHarness(tmp_path, {"lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0}, schema=schema,
                      url=proxy.url(schema))  # fmt: skip
    try:
        await coord.start()
        alice = coord.client("alice")
        jobs = [await alice.submit({"n": i}) for i in range(3)]  # queued: no miner yet
        if isinstance(proxy, CommitReplyProxy):
            proxy.instead = error_response("57P01", "in place of the COMMIT's answer") + READY_IDLE
            proxy.armed = True
        else:
            proxy.dropping = True
        miner = await coord.stream_miner("miner-00", slots=3)  # its welcome assigns the three: that COMMIT
        assignments = await miner.assignments(3, within=30)
        assert not getattr(proxy, "armed", False) and not getattr(proxy, "dropping", False), "(the situation)"
        for job in jobs:
            await coord.stored(job.job_id, ASSIGNED)
        assert await pg_counts_off(schema) == {}
        for a in assignments:
            miner.accept(a)
            miner.result(a.job.job_id, a.attempt)
        for job in jobs:
            await coord.stored(job.job_id, COMPLETED)
        assert await pg_counts_off(schema) == {}
    finally:
        await coord.stop()
        await proxy.close()
        await drop_schema(schema)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_an_accept_reported_failed_that_landed_then_completed_keeps_the_counts(coord: Harness) -> None:
    """The accept's write is refused; while its job's read-back waits for the write lock, the test lands the rows
    that accept would have written (RUNNING), with the store's own writing code. The job read back is RUNNING; its
    completion must leave RUNNING, as stored (not ASSIGNED, as memory had it before the failed accept)."""
    scheduler = coord.coordinator.scheduler
    alice = coord.client("alice")
    miner = await coord.stream_miner("miner-00", slots=1)
    job = await alice.submit({"x": 1})
    [a] = await miner.assignments(1)
    await eventually(lambda: coord.db.job_state(job.job_id) == ASSIGNED, what="ASSIGNED stored")
    session = scheduler.by_miner["miner-00"]
    refuse(coord, job.job_id, "job_events", "NEW.reason = 'ACCEPTED'")
    with pytest.raises(Exception, match="cannot be made"):
        await scheduler.accept(session, job.job_id, a.attempt)
    blocker = held_lock(coord)  # (no await since the failure: the read-back has not read yet)
    try:
        blocker.execute("DROP TRIGGER test_refuse_job_events")
        assert job.job_id not in scheduler.jobs
        stored = await scheduler.store.get_job(job.job_id)
        assert stored is not None and stored.state is JobState.ASSIGNED
        event = states.transition(stored, JobState.RUNNING, "ACCEPTED", now_us())
        unit = UnitOfWork()
        unit.add_update(stored, event.from_state)
        unit.add_event(event)
        _write_units(blocker, [unit])
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await eventually(lambda: job.job_id in scheduler.jobs, what="the job read back")
    assert scheduler.jobs[job.job_id].state is JobState.RUNNING
    assert coord.db.state_counts_off() == {}
    miner.result(a.job.job_id, a.attempt)
    assert (await miner.next("result_ack")).accepted
    await eventually(lambda: coord.db.job_state(job.job_id) == COMPLETED, what="COMPLETED stored")
    assert [(e["from_state"], e["reason"]) for e in coord.db.events(job.job_id)][-2:] == [
        (ASSIGNED, "ACCEPTED"),
        (RUNNING, "COMPLETED"),
    ]
    assert coord.db.state_counts_off() == {}
