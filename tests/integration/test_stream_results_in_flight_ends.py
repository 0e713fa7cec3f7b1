"""How a miner stream ends with Results messages in flight (helper-134, following helper-133's review of
MinerServicer._read): up to RESULTS_IN_FLIGHT Results messages of a stream wait for their commits at once, each in
a task of its own, while the reader reads on. Here the stream ends meanwhile: an operator's drain, the miner
cancelling its call, the coordinator stopping.

Against a real coordinator on loopback with its SQLite file; the store is held by another connection's write lock
(store_held) so the results' commits wait: six jobs, six Results messages, four decided in memory, the fifth read
and waiting for room, the sixth unread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import COMPLETED, Harness, eventually
from test_batched_hostile_input import RawMiner, result, store_agrees
from test_stream_results_in_flight import (
    HELD_S,
    acks_in,
    metered,
    miner_with,
    receipts,
    received,
    scheduler,
    session_of,
    states,
    store_held,
    until_end,
    writing,
)

from coordinator.scheduler.sessions import Session
from coordinator.services.miners import RESULTS_IN_FLIGHT

MINER = "miner-01"
JOBS = RESULTS_IN_FLIGHT + 2  # four in flight, one read and waiting for room, one unread


# ---------------------------------------------------------------------------------------------- helpers
async def results_in_flight(coord: Harness, m: RawMiner, got: list[mpb.Assignment]) -> list[str]:
    """Each job's result in a message of its own, the store held by the caller: returns the job ids once the first
    RESULTS_IN_FLIGHT are decided in memory (their commits queued) and the next message is read."""
    ids = [a.job.job_id for a in got]
    for a in got:
        await m.results(result(a))
    await eventually(lambda: writing(coord, ids) == ids[:RESULTS_IN_FLIGHT], within=HELD_S,
                     what="four Results messages decided together")  # fmt: skip
    await eventually(lambda: received(coord, "results") == RESULTS_IN_FLIGHT + 1, within=HELD_S,
                     what="the fifth read, waiting for room")  # fmt: skip
    return ids


def handling_tasks(session: Session) -> list[asyncio.Task]:
    """The coordinator's tasks still handling a message of session (the reader's Results tasks among them)."""
    alive = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if task.done() or frame is None or getattr(coro, "__qualname__", "") != "MinerServicer._handle_one":
            continue
        if frame.f_locals.get("session") is session:
            alive.append(task)
    return alive


def readers_of(miner_id: str) -> list[asyncio.Task]:
    """The stream reader tasks of miner_id still running (MinerServicer.Connect names them)."""
    return [t for t in asyncio.all_tasks() if t.get_name() == f"miner-read-{miner_id}" and not t.done()]


def stream_gone(coord: Harness, session: Session) -> bool:
    """session closed, and nothing of its stream left on the coordinator: not in the scheduler's sessions, no
    reader, no message of it being handled."""
    s = scheduler(coord)
    return (
        session.closed
        and session.session_id not in s.sessions
        and s.by_miner.get(MINER) is not session
        and not readers_of(MINER)
        and not handling_tasks(session)
    )


async def back_and_resend(
    coord: Harness, got: list[mpb.Assignment]
) -> tuple[mpb.Welcome, list[mpb.ResultAck]]:
    """MINER on a new stream listing every job, sending every result again (one message each): its welcome and
    the acks, by job, in the order of got."""
    listed = [mpb.RunningJob(job_id=a.job.job_id, attempt=a.attempt) for a in got]
    m = RawMiner(coord, MINER, slots=len(got), batched_acks=False, running_jobs=listed)
    welcome = await m.start()
    for a in got:
        await m.results(result(a))
    acks, _ = await m.acks(len(got))
    by_job = {x.job_id: x for x in acks}
    assert len(by_job) == len(got), acks
    return welcome, [by_job[a.job.job_id] for a in got]


def stored_receipts(coord: Harness) -> dict[str, str]:
    return dict(coord.db.query("SELECT job_id, receipt_id FROM receipts"))


def assert_resends_answered(
    coord: Harness, ids: list[str], acks: list[mpb.ResultAck], before: dict[str, str]
) -> None:
    """Every resend accepted; one already stored (before) answered with the receipt it has; each job COMPLETED
    once, at its first attempt, with one receipt, the one its ack names."""
    assert all(x.accepted and x.receipt_id for x in acks), [(x.job_id, x.accepted, x.reason) for x in acks]
    for x in acks:
        if x.job_id in before:
            assert x.receipt_id == before[x.job_id], f"a repeat of {x.job_id} named another receipt"
    assert stored_receipts(coord) == {x.job_id: x.receipt_id for x in acks}
    assert states(coord, ids) == [COMPLETED] * len(ids) and receipts(coord, ids) == [1] * len(ids)
    assert coord.db.query("SELECT DISTINCT attempt FROM jobs") == [(1,)]
    store_agrees(coord)


# ---------------------------------------------------------------------------------------------- 1. a drain
@pytest.mark.parametrize(
    "drained_first", [False, True], ids=["drain-behind-the-results", "drain-before-them"]
)
async def test_an_operator_drain_with_results_in_flight_acks_them_all_before_the_go_away(
    tmp_path: Path, drained_first: bool
) -> None:
    """Four results decided and waiting for their commits, a fifth read, a sixth unread, and the operator's drain:
    its write waiting behind theirs, or landed before them (the miner told Drain, holding its six jobs). Released:
    every one of the six is acknowledged, accepted, with the receipt the store holds, before the GoAway DRAINED
    that ends the stream; none is refused (no NOT_STORED), each job COMPLETED once."""
    async with metered(tmp_path) as coord:
        m, got = await miner_with(coord, JOBS)
        session = session_of(coord, MINER)
        if drained_first:
            await coord.admin().drain(MINER)
            assert (await m.read()).WhichOneof("message") == "drain"
        reading = asyncio.ensure_future(until_end(m))
        with store_held(coord):
            ids = await results_in_flight(coord, m, got)
            drain = asyncio.ensure_future(coord.admin().drain(MINER))
            if not drained_first:
                await eventually(lambda: MINER in scheduler(coord)._drain_writes, within=HELD_S,
                                 what="the drain's write waiting")  # fmt: skip
            await asyncio.sleep(0.1)
            assert not reading.done()
        await drain
        messages, ended = await reading
        assert ended is None, ended
        kinds = [x.WhichOneof("message") for x in messages]
        assert kinds[-1] == "go_away" and messages[-1].go_away.reason == "DRAINED", kinds
        assert ("drain" in kinds) is not drained_first, kinds  # (told once)
        acks = acks_in(messages)
        assert sorted(x.job_id for x in acks) == sorted(ids), [(x.job_id, x.reason) for x in acks]
        assert all(x.accepted and x.receipt_id for x in acks), [(x.job_id, x.reason) for x in acks]
        assert {x.job_id: x.receipt_id for x in acks} == stored_receipts(coord)
        assert states(coord, ids) == [COMPLETED] * JOBS and receipts(coord, ids) == [1] * JOBS
        await eventually(lambda: stream_gone(coord, session), what="the drained stream gone")
        store_agrees(coord)


# ---------------------------------------------------------------------------------------------- 2. the miner cancels
async def test_a_miner_cancelling_its_call_with_results_in_flight_loses_nothing(tmp_path: Path) -> None:
    """The miner cancels its call with four results decided (commits waiting), a fifth read, a sixth unread. Before
    the store is released, nothing of the stream is left: its session closed and out of the scheduler, no reader,
    no Results task (they were cancelled, not left waiting). Released, the four decided commits conclude though
    nobody waits: COMPLETED, one receipt each; the other two wait for the miner within the grace. Back on a new
    stream listing all six, resending every result: the four answered with the receipts they have, the two
    accepted; every job COMPLETED once at attempt 1."""
    async with metered(tmp_path) as coord:
        m, got = await miner_with(coord, JOBS)
        session = session_of(coord, MINER)
        with store_held(coord):
            ids = await results_in_flight(coord, m, got)
            m.call.cancel()
            await eventually(lambda: stream_gone(coord, session), within=HELD_S,
                             what="the stream's session, reader and Results tasks gone")  # fmt: skip
            assert coord.db.scalar("SELECT COUNT(*) FROM receipts") == 0  # (still in flight: nothing durable)
        decided, undecided = ids[:RESULTS_IN_FLIGHT], ids[RESULTS_IN_FLIGHT:]
        await eventually(lambda: receipts(coord, ids) == [1] * RESULTS_IN_FLIGHT + [0, 0],
                         what="the decided results stored though nobody waits")  # fmt: skip
        assert states(coord, decided) == [COMPLETED] * RESULTS_IN_FLIGHT
        assert set(scheduler(coord).orphans.get(MINER, {})) == set(undecided), "not waiting for their miner"
        before = stored_receipts(coord)
        welcome, acks = await back_and_resend(coord, got)
        assert sorted(r.job_id for r in welcome.resumed_jobs) == sorted(undecided)
        assert_resends_answered(coord, ids, acks, before)


# ---------------------------------------------------------------------------------------------- 3. a stop
async def test_a_coordinator_stopping_with_results_in_flight_keeps_them_across_a_restart(
    tmp_path: Path,
) -> None:
    """The coordinator stops with four results decided (commits waiting), a fifth read, a sixth unread: the miner
    is told SHUTTING_DOWN, the stream ends and nothing of it is left (as when the miner cancels). The store released before the stop is over: the four decided are
    stored with their receipts, the others not. After a restart on the same file, the miner back listing all six
    and resending every result: the four answered with their receipts, the two accepted; no job lost or completed
    twice."""
    async with metered(tmp_path) as coord:
        m, got = await miner_with(coord, JOBS)
        coordinator = coord.coordinator
        assert coordinator is not None
        session = session_of(coord, MINER)
        with store_held(coord):
            ids = await results_in_flight(coord, m, got)
            stopping = asyncio.ensure_future(coordinator.stop(grace=1.0))
            messages, ended = await until_end(m)
            assert ended is None, ended
            assert [x.WhichOneof("message") for x in messages] == ["go_away"], messages
            assert messages[-1].go_away.reason == "SHUTTING_DOWN"
            # (the stop waits for the store's writes: its stream's tasks must not wait with them)
            await eventually(lambda: stream_gone(coord, session), within=HELD_S,
                             what="the stream's session, reader and Results tasks gone")  # fmt: skip
            assert not stopping.done()
        await stopping
        coord.coordinator = None  # (stopped above)
        decided = ids[:RESULTS_IN_FLIGHT]
        assert receipts(coord, ids) == [1] * RESULTS_IN_FLIGHT + [0, 0]
        assert states(coord, decided) == [COMPLETED] * RESULTS_IN_FLIGHT
        before = stored_receipts(coord)
        await coord.restart()
        welcome, acks = await back_and_resend(coord, got)
        assert sorted(r.job_id for r in welcome.resumed_jobs) == sorted(ids[RESULTS_IN_FLIGHT:])
        assert_resends_answered(coord, ids, acks, before)
