"""A stream's Results messages decided together (helper-133): MinerServicer._read starts up to RESULTS_IN_FLIGHT
Results messages of one stream (the first of any size, then up to RESULTS_IN_FLIGHT_BYTES in all), each waiting for
its commit in a task of its own, while it reads on; any other message waits until those are decided. The first to
fail stops the reader: the others are decided, their acks leave, then the stream ends with that error.

Against a real coordinator on loopback with its SQLite file, its metrics on (their count of the messages the reader
took shows what it read). The store is held by another connection's write lock: commits wait behind it, so what the
reader did meanwhile is seen in the scheduler (decided in memory, the commit queued) and in the store (nothing yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    Harness,
    details_of,
    eventually,
    sdk_miner,
)
from pg_harness import PgHarness, started
from test_batched_hostile_input import NO_LIMITS, RawMiner, result, store_agrees, submit_many

import coordinator.server
from coordinator.domain.validation import Limits
from coordinator.scheduler.engine import Scheduler
from coordinator.scheduler.sessions import Session
from coordinator.services.miners import RESULTS_IN_FLIGHT, RESULTS_IN_FLIGHT_BYTES
from tests.store.store_support import pg_admin

C = grpc.StatusCode
# rate limits off and slow leases and timeouts: nothing moves on its own while the store is held
CALM = {"rate_limits": NO_LIMITS, "lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0,
        "reconnect_grace_seconds": 5.0}  # fmt: skip
# the longest a test waits with the store held (after SQLite's busy timeout, 5 s, the waiting writes fail)
HELD_S = 3.0


# ---------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def metered(tmp_path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    """A calm coordinator with its metrics on (they count only then): see received()."""
    async with Harness(tmp_path, {**CALM, "metrics_port": free_port(), **overrides}) as coord:
        yield coord


def sample(coord: Harness, name: str, labels: dict[str, str]) -> int:
    """A counter of the coordinator's metrics (0 if never counted)."""
    assert coord.coordinator is not None and coord.coordinator.observability is not None
    metrics = coord.coordinator.observability.metrics
    assert metrics is not None
    return int(metrics.registry.get_sample_value(name, labels) or 0)


def received(coord: Harness, kind: str) -> int:
    """How many messages of kind the coordinator's stream readers took."""
    return sample(coord, "aitbc_stream_messages_received_total", {"type": kind})


def scheduler(coord: Harness) -> Scheduler:
    assert coord.coordinator is not None
    return coord.coordinator.scheduler


def session_of(coord: Harness, miner_id: str) -> Session:
    return scheduler(coord).by_miner[miner_id]


def writing(coord: Harness, job_ids: list[str]) -> list[str]:
    """Those of job_ids decided in memory whose commit is queued, not yet durable."""
    return [j for j in job_ids if j in scheduler(coord)._unsettled]


@contextlib.contextmanager
def store_held(coord: Harness, *, then: str = "") -> Iterator[sqlite3.Connection]:
    """The SQLite file's write lock held by another connection: the coordinator's commits wait behind it. At the
    end, `then` (a statement, a trigger say) runs in that transaction, which commits: the writes go on."""
    blocker = sqlite3.connect(coord.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield blocker
    finally:
        if then:
            blocker.execute(then)
        blocker.execute("COMMIT")
        blocker.close()


def refuse_receipt(job_id: str) -> str:
    """A trigger refusing the receipt of job_id: the commit of its result fails (as on a full disk)."""
    return (f"CREATE TRIGGER test_refuse_receipts BEFORE INSERT ON receipts WHEN NEW.job_id = '{job_id}' "
            "BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END")  # fmt: skip


async def until_end(m: RawMiner, within: float = 10.0) -> tuple[list[mpb.ConnectResponse], Any]:
    """Every message until the stream ends, and how it ended: None (OK) or the error (AioRpcError)."""
    got: list[mpb.ConnectResponse] = []

    async def read_all() -> Any:
        while True:
            try:
                msg = await m.call.read()
            except grpc.aio.AioRpcError as exc:
                return exc
            if msg is grpc.aio.EOF:
                return None
            got.append(msg)

    ended = await asyncio.wait_for(read_all(), within)
    return got, ended


def acks_in(messages: list[mpb.ConnectResponse]) -> list[mpb.ResultAck]:
    acks: list[mpb.ResultAck] = []
    for msg in messages:
        kind = msg.WhichOneof("message")
        if kind == "result_ack":
            acks.append(msg.result_ack)
        elif kind == "result_acks":
            acks.extend(msg.result_acks.acks)
    return acks


async def miner_with(
    coord: Harness, n: int, slots: int | None = None
) -> tuple[RawMiner, list[mpb.Assignment]]:
    """miner-01 on a raw stream (acks one per message), given n jobs."""
    m = RawMiner(coord, "miner-01", slots=slots or n, batched_acks=False)
    await m.start()
    await submit_many(coord, n)
    return m, await m.assignments(n)


def states(coord: Harness, job_ids: list[str]) -> list[int | None]:
    return [coord.db.job_state(j) for j in job_ids]


def receipts(coord: Harness, job_ids: list[str]) -> list[int]:
    return [coord.db.count("receipts", j) for j in job_ids]


# ---------------------------------------------------------------------------------------------- 1. together
async def test_results_sent_back_to_back_are_decided_together_and_acked_in_order(tmp_path: Path) -> None:
    """Six Results messages, one job each, while commits wait: four are decided in memory at once (their commits
    queued, the store holding none yet), the fifth is read and waits for room, the sixth is not read. Released:
    six acks, in the order of the results, each with the receipt the store holds."""
    assert RESULTS_IN_FLIGHT == 4
    async with metered(tmp_path) as coord:
        m, got = await miner_with(coord, 6)
        ids = [a.job.job_id for a in got]
        session = session_of(coord, "miner-01")
        with store_held(coord):
            for a in got:
                await m.results(result(a))
            await eventually(lambda: writing(coord, ids) == ids[:4], within=HELD_S,
                             what="four Results messages decided together")  # fmt: skip
            await eventually(lambda: received(coord, "results") == 5, within=HELD_S, what="the fifth read")
            await asyncio.sleep(0.2)  # (room for a reader that would take more)
            assert received(coord, "results") == 5 and writing(coord, ids) == ids[:4]
            assert session.handling == 4 and set(session.held) == set(ids[4:])
            assert coord.db.scalar("SELECT COUNT(*) FROM receipts") == 0  # (decided, not yet durable)
        messages = [await m.read() for _ in range(6)]
        acks = acks_in(messages)
        assert [a.job_id for a in acks] == ids, "acks out of the results' order"
        assert all(a.accepted and a.receipt_id for a in acks), acks
        stored = dict(coord.db.query("SELECT job_id, receipt_id FROM receipts"))
        assert {a.job_id: a.receipt_id for a in acks} == stored
        assert states(coord, ids) == [COMPLETED] * 6
        store_agrees(coord)


async def test_a_repeat_behind_a_waiting_result_is_answered_with_its_receipt(tmp_path: Path) -> None:
    """A done (acked); then B's result, whose commit waits, and A's result again (a repeat): both answered, the
    repeat with A's receipt. Across Results messages the acks may come in either order (miner_service.proto,
    ResultAcks: a repeat needs no commit, and may overtake B's); a miner matches them by job id."""
    async with metered(tmp_path) as coord:
        m, (a, b) = await miner_with(coord, 2)
        await m.results(result(a))
        [first] = acks_in([await m.read()])
        assert first.accepted
        with store_held(coord):
            await m.results(result(b))
            await m.results(result(a))
            await eventually(lambda: writing(coord, [b.job.job_id]), within=HELD_S, what="B decided")
        acks = {x.job_id: x for x in acks_in([await m.read() for _ in range(2)])}
        assert set(acks) == {a.job.job_id, b.job.job_id} and all(x.accepted for x in acks.values()), acks
        assert acks[a.job.job_id].receipt_id == first.receipt_id
        assert coord.db.scalar("SELECT COUNT(*) FROM receipts WHERE job_id = ?", (b.job.job_id,)) == 1


# ---------------------------------------------------------------------------------------------- 2. the others wait
async def test_an_accept_and_a_failure_behind_results_are_handled_after_them(tmp_path: Path) -> None:
    """Results for A, then an Accept of C, a heartbeat and a Failure of B, while A's commit waits: all read, none of
    the three handled (C still ASSIGNED, B still held). Released: A's ack, then B's; A COMPLETED, B FAILED, C
    RUNNING; the stream goes on."""
    async with metered(tmp_path) as coord:
        m, got = await miner_with(coord, 3)
        a, b, c = got
        job_a, job_b, job_c = (x.job.job_id for x in got)
        session = session_of(coord, "miner-01")
        with store_held(coord):
            await m.results(result(a))
            await m.send(accept=mpb.Accept(job_id=job_c, attempt=c.attempt))
            await m.send(heartbeat=mpb.MinerHeartbeat(running_jobs=[mpb.RunningJob(job_id=job_c, attempt=1)]))
            await m.send(failure=mpb.Failure(job_id=job_b, attempt=b.attempt, retryable=False, code="BROKEN",
                                             message="test failure"))  # fmt: skip
            await eventually(lambda: writing(coord, [job_a]) == [job_a], within=HELD_S, what="A decided")
            # the accept is read (and waits for A) before the heartbeat and the failure are
            await eventually(lambda: received(coord, "accept") == 1, within=HELD_S, what="the accept read")
            await asyncio.sleep(0.2)
            assert (received(coord, "heartbeat"), received(coord, "failure")) == (0, 0), "read on past it"
            assert scheduler(coord).jobs[job_c].state.name == "ASSIGNED"
            assert set(session.held) == {job_b, job_c} and writing(coord, [job_b, job_c]) == []
        acks = acks_in([await m.read() for _ in range(2)])
        assert [(x.job_id, x.accepted) for x in acks] == [(job_a, True), (job_b, True)], acks
        assert acks[0].receipt_id
        await eventually(lambda: states(coord, [job_a, job_b, job_c]) == [COMPLETED, FAILED, RUNNING],
                         what="A COMPLETED, B FAILED, C RUNNING")  # fmt: skip
        assert coord.db.scalar("SELECT terminal_reason FROM jobs WHERE job_id = ?", (job_b,)) == "BROKEN"
        await m.results(result(c))
        [ack] = acks_in([await m.read()])
        assert (ack.job_id, ack.accepted) == (job_c, True)
        store_agrees(coord)


async def test_a_capacity_of_0_behind_a_result_takes_effect_after_its_refill(tmp_path: Path) -> None:
    """Two slots busy, two jobs queued. A's result then Capacity 0, while A's commit waits: A's decision refills
    its slot with C (as when handled one at a time), the capacity waits. Released: A's ack, C assigned; after
    that nothing new (B's result frees a slot, D stays queued)."""
    async with metered(tmp_path) as coord:
        m, (a, b) = await miner_with(coord, 2)
        job_c, job_d = await submit_many(coord, 2)
        session = session_of(coord, "miner-01")
        with store_held(coord):
            await m.results(result(a))
            await m.send(capacity=mpb.Capacity(slots=0))
            await eventually(
                lambda: received(coord, "capacity") == 1, within=HELD_S, what="the capacity read"
            )
            await asyncio.sleep(0.2)
            assert session.offered == 2, "the capacity was handled before the result read ahead of it"
            assert set(session.held) == {b.job.job_id, job_c}  # (C: the refill of A's decision)
        # (the refill leaves as A's commit lands, A's ack right after: as when handled one at a time)
        messages = [await m.read() for _ in range(2)]
        assert [x.WhichOneof("message") for x in messages] == ["assignments", "result_ack"], messages
        assert messages[1].result_ack.accepted
        [c] = messages[0].assignments.assignments
        assert c.job.job_id == job_c
        await eventually(lambda: session.offered == 0, what="the capacity taken")
        await m.results(result(b))
        [ack] = acks_in([await m.read()])
        assert (ack.job_id, ack.accepted) == (b.job.job_id, True)
        await m.results(result(c))
        [ack] = acks_in([await m.read()])
        assert (ack.job_id, ack.accepted) == (job_c, True)
        await asyncio.sleep(0.3)
        assert coord.db.job_state(job_d) == QUEUED and not session.held


# ---------------------------------------------------------------------------------------------- 3. a write fails
async def in_flight_apart(coord: Harness, m: RawMiner, a: mpb.Assignment, b: mpb.Assignment) -> None:
    """a's and b's results in two messages, both in flight, their commits in two of the writer's groups (b queued
    once the writer took a's, waiting for the held lock): a's outcome is known before b's write is made."""
    await m.results(result(a))
    job_a, job_b = a.job.job_id, b.job.job_id
    queued = scheduler(coord).store._queue  # type: ignore[attr-defined]  # (SQLite's or PostgreSQL's writer)
    await eventually(lambda: writing(coord, [job_a]) == [job_a] and queued.empty(), within=HELD_S,
                     what="a's commit taken by the writer")  # fmt: skip
    await m.results(result(b))
    await eventually(lambda: writing(coord, [job_a, job_b]) == [job_a, job_b], within=HELD_S,
                     what="both decided together")  # fmt: skip


async def test_a_failed_write_among_results_in_flight_ends_the_stream_after_the_others_acks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A's and B's results in two messages, decided together; A's write fails (its receipt refused), then B's lands:
    B's ack arrives, then the stream ends (as a failed result's stream always did: closed, the error logged with
    its trace); A's result never reads as stored. The miner comes back listing A and sends its result again:
    accepted."""
    async with metered(tmp_path) as coord:
        m, (a, b) = await miner_with(coord, 2)
        job_a, job_b = a.job.job_id, b.job.job_id
        with store_held(coord, then=refuse_receipt(job_a)):
            await in_flight_apart(coord, m, a, b)
        messages, ended = await until_end(m)
        assert ended is None, ended  # (an error not of the store's reach: an OK close, as before)
        [logged] = [r for r in caplog.records if r.getMessage().startswith("miner stream reader failed")]
        assert logged.exc_info is not None and isinstance(logged.exc_info[1], sqlite3.IntegrityError), logged
        assert "test: this write cannot be made" in logged.getMessage()
        assert "Traceback" in caplog.text and "sqlite3.IntegrityError" in caplog.text  # where it was raised
        assert [(x.job_id, x.accepted) for x in acks_in(messages)] == [(job_b, True)], messages
        assert states(coord, [job_b]) == [COMPLETED] and receipts(coord, [job_a, job_b]) == [0, 1]
        await eventually(lambda: job_a in scheduler(coord).jobs, what="A read back")
        assert coord.db.job_state(job_a) != COMPLETED
        with sqlite3.connect(coord.db_path) as conn:
            conn.execute("DROP TRIGGER test_refuse_receipts")
        back = RawMiner(coord, "miner-01", slots=2, batched_acks=False,
                        running_jobs=[mpb.RunningJob(job_id=job_a, attempt=a.attempt)])  # fmt: skip
        welcome = await back.start()
        assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == [(job_a, a.attempt)]
        await back.results(result(a))
        [ack] = acks_in([await back.read()])
        assert (ack.job_id, ack.accepted) == (job_a, True) and ack.receipt_id
        assert states(coord, [job_a, job_b]) == [COMPLETED, COMPLETED]
        store_agrees(coord)


async def test_a_failed_write_after_the_stream_ends_still_runs_its_job_again(tmp_path: Path) -> None:
    """As above, but the miner does not come back: A runs again (attempt 2) on another miner; B is done."""
    async with metered(tmp_path, reconnect_grace_seconds=0.5) as coord:
        m, (a, b) = await miner_with(coord, 2)
        job_a, job_b = a.job.job_id, b.job.job_id
        with store_held(coord, then=refuse_receipt(job_a)):
            await in_flight_apart(coord, m, a, b)
        messages, _ = await until_end(m)
        assert [x.job_id for x in acks_in(messages)] == [job_b]
        m.call.cancel()
        with sqlite3.connect(coord.db_path) as conn:
            conn.execute("DROP TRIGGER test_refuse_receipts")
        other = RawMiner(coord, "miner-02", slots=1, batched_acks=False)
        await other.start()
        [again] = await other.assignments(1)
        assert (again.job.job_id, again.attempt) == (job_a, 2)
        await other.results(result(again))
        [ack] = acks_in([await other.read()])
        assert ack.accepted
        assert states(coord, [job_a, job_b]) == [COMPLETED, COMPLETED]
        store_agrees(coord)


@contextlib.asynccontextmanager
async def row_locked(schema: str, job_id: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """job_id's row locked by another PostgreSQL session: a write to it waits. Yields the release (also at the
    end)."""
    conn = await pg_admin()
    tx = conn.transaction()
    await tx.start()
    await conn.execute(f'SELECT 1 FROM "{schema}".jobs WHERE job_id = $1 FOR UPDATE', job_id)
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await tx.rollback()

    try:
        yield release
    finally:
        await release()
        await conn.close()


async def refuse_receipt_pg(schema: str, job_id: str) -> None:
    conn = await pg_admin()
    try:
        await conn.execute(f"""CREATE FUNCTION "{schema}".test_refuse() RETURNS trigger LANGUAGE plpgsql AS
                               $$ BEGIN RAISE EXCEPTION 'test: this write cannot be made'; END $$""")
        await conn.execute(f"""CREATE TRIGGER test_refuse_receipts BEFORE INSERT ON "{schema}".receipts
                               FOR EACH ROW WHEN (NEW.job_id = '{job_id}') EXECUTE FUNCTION "{schema}".test_refuse()""")
    finally:
        await conn.close()


async def test_a_failed_write_waits_for_the_results_still_being_written_on_postgres(tmp_path: Path) -> None:
    """On PostgreSQL, each job's row locked by another session: A's and B's results in flight, A's write fails
    (its receipt refused) while B's still waits for its row. The stream stays up, reading no more, until B's
    write lands: B's ack, then the end."""
    async with started(tmp_path, {**CALM, "metrics_port": free_port()}, postgres=True) as coord:
        assert isinstance(coord, PgHarness)
        m, (a, b) = await miner_with(coord, 2)
        job_a, job_b = a.job.job_id, b.job.job_id
        await refuse_receipt_pg(coord.schema, job_a)
        reading = asyncio.ensure_future(until_end(m))
        async with row_locked(coord.schema, job_a) as release_a, row_locked(coord.schema, job_b) as release_b:
            await in_flight_apart(coord, m, a, b)
            await release_a()
            await eventually(lambda: writing(coord, [job_a, job_b]) == [job_b], within=HELD_S,
                             what="A's write failed, B's still waiting")  # fmt: skip
            await m.send(heartbeat=mpb.MinerHeartbeat())
            await asyncio.sleep(0.3)
            assert not reading.done(), "the stream ended with a result still being written"
            assert received(coord, "heartbeat") == 0  # (the reader stopped at A's failure)
            await release_b()
            messages, ended = await reading
        assert ended is None, ended
        assert [(x.job_id, x.accepted) for x in acks_in(messages)] == [(job_b, True)], messages
        await coord.stored(job_b, COMPLETED)
        assert await coord.state(job_a) != COMPLETED


# ---------------------------------------------------------------------------------------------- 4. refused whole
async def test_a_results_message_over_the_batch_limit_behind_a_valid_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_batch 5: A's result, then a Results of 6, read while A's commit waits. The refusal waits for A: A's
    ack arrives, then the stream ends INVALID_ARGUMENT (results: 1 to 5 entries)."""
    monkeypatch.setattr(coordinator.server, "Limits", functools.partial(Limits, max_batch=5))
    async with metered(tmp_path) as coord:
        m, (a,) = await miner_with(coord, 1)
        job_a = a.job.job_id
        reading = asyncio.ensure_future(until_end(m))
        with store_held(coord):
            await m.results(result(a))
            await m.results(*[mpb.Result(job_id=f"j{i}", attempt=1, result_bytes=b"x") for i in range(6)])
            await eventually(lambda: received(coord, "results") == 2, within=HELD_S, what="both read")
            await asyncio.sleep(0.2)
            assert not reading.done(), "the stream ended before the result in flight was decided"
        messages, ended = await reading
        assert [(x.job_id, x.accepted) for x in acks_in(messages)] == [(job_a, True)], messages
        err = details_of(ended)
        assert (err.code, err.violations) == (C.INVALID_ARGUMENT, [("results", "1 to 5 entries")]), err
        assert states(coord, [job_a]) == [COMPLETED]
        store_agrees(coord)


# ---------------------------------------------------------------------------------------------- 5. miner done
async def test_the_miner_closing_its_side_with_results_in_flight_gets_their_acks(tmp_path: Path) -> None:
    """Two Results messages in flight, then the miner is done writing: both acks arrive, then the stream ends OK."""
    async with metered(tmp_path) as coord:
        m, got = await miner_with(coord, 2)
        ids = [a.job.job_id for a in got]
        reading = asyncio.ensure_future(until_end(m))
        with store_held(coord):
            for a in got:
                await m.results(result(a))
            await eventually(lambda: received(coord, "results") == 2, within=HELD_S, what="both read")
            await m.call.done_writing()
            await asyncio.sleep(0.2)
            assert not reading.done(), "the stream ended with results in flight"
        messages, ended = await reading
        assert ended is None, ended
        assert [(x.job_id, x.accepted) for x in acks_in(messages)] == [(j, True) for j in ids], messages
        assert states(coord, ids) == [COMPLETED, COMPLETED]
        store_agrees(coord)


# ---------------------------------------------------------------------------------------------- 6. interceptor
async def test_a_message_the_interceptor_refuses_behind_results_ends_the_stream_after_their_acks(
    tmp_path: Path,
) -> None:
    """A's result, then a Reject of B whose reason is over its bound (512 characters; refused by the interceptor,
    raised from the request iterator): A's ack, then INVALID_ARGUMENT; B is not rejected."""
    async with metered(tmp_path) as coord:
        m, (a, b) = await miner_with(coord, 2)
        job_a, job_b = a.job.job_id, b.job.job_id
        reading = asyncio.ensure_future(until_end(m))
        with store_held(coord):
            await m.results(result(a))
            await eventually(lambda: writing(coord, [job_a]) == [job_a], within=HELD_S, what="A decided")
            await m.send(reject=mpb.Reject(job_id=job_b, attempt=b.attempt, reason="r" * 513))
            await asyncio.sleep(0.3)
            assert not reading.done(), "the stream ended before the result in flight was decided"
        messages, ended = await reading
        assert [(x.job_id, x.accepted) for x in acks_in(messages)] == [(job_a, True)], messages
        err = details_of(ended)
        assert err.code == C.INVALID_ARGUMENT, err
        assert [f for f, _ in err.violations] == ["reject.reason"], err.violations
        assert received(coord, "reject") == 0
        assert states(coord, [job_a]) == [COMPLETED]
        assert scheduler(coord).jobs[job_b].attempt == 1  # (not given back: the reject was refused)
        store_agrees(coord)


# ---------------------------------------------------------------------------------------------- 7. byte budget
async def test_a_results_message_over_the_byte_budget_delays_the_next_refusing_nothing(
    tmp_path: Path,
) -> None:
    """A Results of two 700 KB results (over RESULTS_IN_FLIGHT_BYTES, alone in flight), then three small ones:
    the first small one is read and waits (the budget is spent), the others are not read; released, all five
    results are acknowledged, in order, none refused."""
    big = 700 * 1024
    assert 2 * big > RESULTS_IN_FLIGHT_BYTES
    async with metered(tmp_path) as coord:
        m, got = await miner_with(coord, 5)
        ids = [a.job.job_id for a in got]
        with store_held(coord):
            await m.results(result(got[0], b"a" * big), result(got[1], b"b" * big))
            for a in got[2:]:
                await m.results(result(a))
            await eventually(
                lambda: writing(coord, ids) == ids[:2], within=HELD_S, what="the big one decided"
            )
            await eventually(lambda: received(coord, "results") == 2, within=HELD_S, what="a small one read")
            await asyncio.sleep(0.2)
            assert received(coord, "results") == 2 and writing(coord, ids) == ids[:2]
        acks = acks_in([await m.read() for _ in range(5)])
        assert [(x.job_id, x.accepted) for x in acks] == [(j, True) for j in ids], acks
        assert states(coord, ids) == [COMPLETED] * 5
        sizes = coord.db.query("SELECT job_id, length(output) FROM job_results")
        assert {j: n for j, n in sizes if j in ids[:2]} == {ids[0]: big, ids[1]: big}
        store_agrees(coord)


# ---------------------------------------------------------------------------------------------- 8. the SDK
async def test_the_sdk_miner_with_several_slots_runs_many_short_jobs_on_one_stream(tmp_path: Path) -> None:
    """The SDK miner, 4 slots, 120 short jobs, the store held for a while mid-run (results pile up in flight):
    every job COMPLETED at attempt 1, one receipt each, on one stream (none ended: no resend), no result refused."""
    from aitbc.miner import Outcome, job_input

    async def runner(job: Any) -> Outcome:
        await asyncio.sleep(0.005)
        return Outcome(job_input(job), units="1", unit_type="jobs")

    async with metered(tmp_path) as coord:
        miner = sdk_miner(coord.address, runner, slots=4)
        coord.run_miner(miner)
        ids = await submit_many(coord, 60)
        await eventually(lambda: coord.db.scalar("SELECT COUNT(*) FROM receipts") >= 20, within=20,
                         what="a third done")  # fmt: skip
        with store_held(coord):
            await asyncio.sleep(0.5)
        ids += await submit_many(coord, 60)
        await eventually(lambda: coord.db.scalar("SELECT COUNT(*) FROM receipts") == 120, within=60,
                         what="every job done")  # fmt: skip
        assert coord.db.query("SELECT DISTINCT state, attempt FROM jobs") == [(COMPLETED, 1)]
        events, receipted = coord.db.completions()
        assert set(events) == set(receipted) == set(ids) and set(events.values()) == {1}
        assert sample(coord, "aitbc_miner_connections_total", {"transport": "stream"}) == 1
        assert sample(coord, "aitbc_miner_disconnections_total", {"reason": "STREAM_CLOSED"}) == 0
        await eventually(
            lambda: not miner.unacked, what="every ack read by the miner"
        )  # (stored before sent)
        assert received(coord, "results") >= 1 and not coord.db.not_terminal()
        store_agrees(coord)
