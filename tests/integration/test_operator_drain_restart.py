"""An operator's drain (DrainMiner) outlives a coordinator restart: it is stored (table operator_drains) before it
takes effect, and a start loads it. After the restart it holds as for a miner away (test_operator_drain_kept.py):
the miner's next session within the grace period, counted from the start (the coordinator was down meanwhile), is
drained: it keeps its jobs, takes no new one, and is told DRAINED once they are done. The drain is over then, or
when the miner stays away past that grace period: its row is deleted, and the miner takes work again.

Before: the drain lived in memory only, and a miner drained for maintenance took new work as soon as it came back
to a restarted coordinator. Run on a SQLite file and on PostgreSQL (a fresh schema; skipped when PostgreSQL is
not there, unless CI is set)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import RUNNING, Harness, StreamMiner, eventually, rpc_error
from pg_harness import PgHarness, started
from test_failed_commit import held_lock

from tests.store.store_support import pg_admin


async def stored_drains(coord: Harness) -> list[tuple[str, str]]:
    """(miner, reason) of every row of operator_drains, read behind the coordinator's back."""
    if isinstance(coord, PgHarness):
        conn = await pg_admin()
        try:
            rows = await conn.fetch(
                f'SELECT miner_id, reason FROM "{coord.schema}".operator_drains ORDER BY 1'
            )
            return [tuple(r) for r in rows]
        finally:
            await conn.close()
    return coord.db.query("SELECT miner_id, reason FROM operator_drains ORDER BY 1")


async def job_state(coord: Harness, job_id: str) -> int | None:
    if isinstance(coord, PgHarness):
        conn = await pg_admin()
        try:
            return await conn.fetchval(f'SELECT state FROM "{coord.schema}".jobs WHERE job_id = $1', job_id)
        finally:
            await conn.close()
    return coord.db.job_state(job_id)


@pytest.fixture(params=["sqlite", "postgres"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    marker = request.node.get_closest_marker("coordinator")
    overrides = dict(marker.kwargs) if marker else {}
    async with started(tmp_path, overrides, postgres=request.param == "postgres") as coord:
        yield coord


async def drained_while_running(coord: Harness) -> tuple[StreamMiner, str, int]:
    """miner-00 (2 slots) runs a job, RUNNING stored, and is drained by the operator: (miner, job, attempt)."""
    client = coord.client()
    miner = await coord.stream_miner("miner-00", slots=2)
    job = await client.submit({"n": 1})
    a = await miner.next("assignment")
    miner.accept(a)
    await eventually(lambda: _is(job_state(coord, job.job_id), RUNNING), what="RUNNING stored")
    drained = (await coord.admin().drain("miner-00")).miner
    assert drained.status == apb.MINER_STATUS_DRAINING, drained
    await miner.next("drain")
    assert await stored_drains(coord) == [("miner-00", "ADMIN")]
    return miner, job.job_id, a.attempt


async def _is(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def miners_draining(coord: Harness) -> int:
    admin = coord.admin()
    return (await admin.stub.GetStats(apb.GetStatsRequest(), metadata=admin.md)).miners_draining


# grace 3 s, and the coordinator down 3.5 s: the grace period is counted from the new start
@pytest.mark.coordinator(reconnect_grace_seconds=3.0, lease_seconds=30.0)
async def test_a_drain_outlives_a_restart_until_the_miner_drained_to_the_end(harness: Harness) -> None:
    coord = harness
    miner, job_id, attempt = await drained_while_running(coord)
    await coord.stop()
    await asyncio.sleep(3.5)
    await coord.start()

    listed = (await coord.admin().miners())["miner-00"]
    assert (listed.status, listed.drain_pending) == (apb.MINER_STATUS_DISCONNECTED, True), listed
    assert await miners_draining(coord) == 1
    client = coord.client()
    queued = await client.submit({"n": 2})
    welcome = await miner.connect(running_jobs=((job_id, attempt),))
    assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == [(job_id, attempt)]
    await miner.next("drain")
    await asyncio.sleep(0.5)
    assert miner.pending("assignment") == 0, "the miner, drained before the restart, got new work after it"
    assert (await coord.admin().miners())["miner-00"].status == apb.MINER_STATUS_DRAINING

    miner.result(job_id, attempt)
    assert (await miner.next("go_away")).reason == "DRAINED"
    await eventually(lambda: _is(stored_drains(coord), []), what="the drain's row deleted once it is over")
    await miner.kill()
    await miner.connect()
    assert (await miner.next("assignment")).job.job_id == queued.job_id  # the drain is over: work again

    # and a restart now brings no drain back
    await coord.restart()
    assert coord.coordinator.scheduler.drains_pending() == {}


@pytest.mark.coordinator(reconnect_grace_seconds=1.0, lease_seconds=30.0)
async def test_a_kept_drain_ends_when_the_miner_is_not_back_within_the_grace_period(harness: Harness) -> None:
    coord = harness
    miner, job_id, _ = await drained_while_running(coord)
    await coord.restart()
    scheduler = coord.coordinator.scheduler
    assert scheduler.drains_pending() == {"miner-00": "ADMIN"}
    await eventually(lambda: not scheduler.drains_pending(), what="the drain over after the grace period")
    await eventually(lambda: _is(stored_drains(coord), []), what="the drain's row deleted")
    assert await miners_draining(coord) == 0

    await coord.restart()  # (not brought back by another start)
    assert coord.coordinator.scheduler.drains_pending() == {}
    await miner.connect()  # its job was requeued (MINER_GONE) and is given to it again
    assert (await miner.next("assignment")).job.job_id == job_id


async def test_a_drain_that_cannot_be_stored_is_refused_and_changes_nothing(coord: Harness) -> None:
    """The drain's write fails (the store locked past its busy timeout): UNAVAILABLE STORE_UNAVAILABLE, and the
    miner is not drained (it takes work); the same call made again drains it."""
    client = coord.client()
    miner = await coord.stream_miner("miner-00", slots=1)
    scheduler = coord.coordinator.scheduler
    blocker = held_lock(coord)
    try:
        err = await rpc_error(coord.admin().drain("miner-00"))
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"), err
    session = scheduler.by_miner["miner-00"]
    assert not session.draining and scheduler.miners_draining() == 0
    assert coord.db.query("SELECT * FROM operator_drains") == []
    job = await client.submit({"n": 1})
    assert (await miner.next("assignment")).job.job_id == job.job_id
    assert miner.pending("drain") == 0

    assert (await coord.admin().drain("miner-00")).miner.status == apb.MINER_STATUS_DRAINING
    await miner.next("drain")
    assert coord.db.query("SELECT miner_id FROM operator_drains") == [("miner-00",)]


async def test_a_drain_whose_row_is_refused_is_answered_internal_and_changes_nothing(coord: Harness) -> None:
    """A write refused for its own row (here a trigger; a bug, say): INTERNAL, and nothing drained either."""
    miner = await coord.stream_miner("miner-00", slots=1)
    with sqlite3.connect(coord.db_path) as conn:
        conn.execute(
            "CREATE TRIGGER test_refuse_drains BEFORE INSERT ON operator_drains "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
    err = await rpc_error(coord.admin().drain("miner-00"))
    assert err.code == grpc.StatusCode.INTERNAL, err
    scheduler = coord.coordinator.scheduler
    assert not scheduler.by_miner["miner-00"].draining and scheduler.miners_draining() == 0
    job = await coord.client().submit({"n": 1})
    assert (await miner.next("assignment")).job.job_id == job.job_id


@pytest.mark.coordinator(reconnect_grace_seconds=5.0)
async def test_a_unary_miner_drained_before_a_restart_is_told_drained_after_it(coord: Harness) -> None:
    """An idle unary miner drained: its session waits, taking no work, for its next call to be told
    SESSION_DRAINED. The coordinator restarts first; the miner, its session gone, registers again, and that
    session is drained: its next poll is told SESSION_DRAINED (it took new work), and the drain is over."""
    from test_unary_miner_drain import UnaryMiner, expect_drained

    unary = UnaryMiner(coord)
    await unary.register()
    await coord.admin().drain("miner-00")
    assert coord.db.query("SELECT miner_id FROM operator_drains") == [("miner-00",)]
    await coord.restart()

    await coord.client().submit({"n": 1})
    unary = UnaryMiner(coord)
    await unary.register()
    expect_drained(await rpc_error(unary.poll(timeout=2.0)))
    await eventually(
        lambda: coord.db.query("SELECT * FROM operator_drains") == [], what="the drain's row deleted"
    )
    await unary.register()  # (registering again after the drain took effect: work again)
    assert len((await unary.poll(timeout=5.0)).assignments) == 1
