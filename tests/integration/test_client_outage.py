"""The Python SDK across a coordinator that is DOWN for a while (review round, helper client-review): the
coordinator stopped, its port closed, then a new one started on the same SQLite file and the same port.

- Calls safe to repeat, watches and waits give up only at their deadline: the retry policy's cap of 5 tries
  gave up after about 3 s of outage (UNAVAILABLE), however long the caller had said it would wait; wait()
  without a deadline failed within seconds of a restart.
- A keyed submit across the outage gives the one job, its id the stored one.
- A cancel repeated after its answer was lost reads the job back within what is left of its deadline (it
  read with a fresh 30 s deadline of its own: the call could outlive the caller's).
- wait(timeout_s) ends with a TimeoutError naming the job, its last state seen and the failure it was waiting
  out (a bare TimeoutError, or before that the UNAVAILABLE of the fifth try).
- A watch resumed against a coordinator whose history of the job ends before the sequence it had seen (a
  store restored from an older copy), or with a sequence past the job's last, gets OUT_OF_RANGE
  (SEQUENCE_OUT_OF_RANGE, the job's last sequence in its metadata), not INVALID_ARGUMENT, and stops.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitbc.client import Client, RetryPolicy, error_details
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from coord_support import CANCELED, CLIENT_KEYS, COMPLETED, QUEUED, RUNNING, Harness, eventually

from tests.tcp_relay import DOWN, Link, Relay

OUTAGE_S = 6.0  # twice what the capped policy (5 tries, 0.2 s doubling, jittered) waited out at most


async def coordinator_down(coord: Harness) -> int:
    """Stops the coordinator (its port closed, its watches cut); returns the port to start the next one on."""
    assert coord.coordinator is not None
    port = coord.coordinator.port
    await coord.coordinator.stop(grace=0.2)
    coord.coordinator = None
    return port


async def coordinator_up(coord: Harness, port: int) -> None:
    """A new coordinator on the same store and the same port."""
    coord.overrides["app_port"] = port
    await coord.start()


def jobs_stored(coord: Harness) -> int:
    return coord.db.scalar("SELECT COUNT(*) FROM jobs")


async def test_wait_result_and_a_keyed_submit_outlast_a_coordinator_down_for_seconds(coord: Harness) -> None:
    """With the client's default policy: each call waits the outage out within its own deadline."""
    client = Client(coord.address, CLIENT_KEYS["alice"], channel=coord.channel())
    job = await client.submit({"n": 1})
    seen: list[jpb.WatchJobResponse] = []
    first = asyncio.Event()

    async def watch() -> None:
        async for update in client.watch(job.job_id):
            seen.append(update)
            first.set()

    watching = asyncio.create_task(watch())
    waiting = asyncio.create_task(client.wait(job.job_id, timeout_s=120))
    result = asyncio.create_task(client.result(job.job_id, wait=True, deadline_s=120))
    await asyncio.wait_for(first.wait(), 5)
    port = await coordinator_down(coord)
    keyed = asyncio.create_task(client.submit({"n": 2}, idempotency_key="during-the-outage"))
    await asyncio.sleep(OUTAGE_S)
    for task in (watching, waiting, result, keyed):
        assert not task.done(), task  # (with the cap: done, UNAVAILABLE)
    await coordinator_up(coord, port)
    miner = await coord.stream_miner("miner-00", slots=2)
    for a in await miner.assignments(2, within=15):
        miner.result(a.job.job_id, a.attempt)
    await asyncio.wait_for(asyncio.gather(watching, waiting, result, keyed), 30)
    sequences = [u.sequence for u in seen]
    assert sequences == list(range(1, len(coord.db.events(job.job_id)) + 1)), (
        sequences
    )  # none missed or twice
    assert seen[-1].job.state == COMPLETED and waiting.result().state == COMPLETED
    assert result.result().job.state == COMPLETED
    stored = coord.db.query("SELECT job_id FROM jobs WHERE idempotency_key = ?", ("during-the-outage",))
    assert [(keyed.result().job_id,)] == stored


class AnswerLost(Relay):
    """A relay that, once the condition holds, cuts the connection carrying the next answer and refuses new
    connections until opened again: the coordinator acted, its answer is lost, and it is out of reach."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.condition: Any = None
        self.open = True
        self.fired = asyncio.Event()

    def accepting(self) -> bool:
        return self.open

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction != DOWN or self.condition is None or not self.condition():
            return data
        self.condition, self.open = None, False
        self.fired.set()
        link.reset()
        return None


@pytest.fixture
async def relay(coord: Harness) -> AsyncIterator[AnswerLost]:
    relay = AnswerLost("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def test_a_keyed_submit_whose_answer_went_down_with_the_coordinator_returns_the_stored_job(
    coord: Harness, relay: AnswerLost
) -> None:
    """Stored, answer lost, the coordinator gone for seconds, then replaced on its port: the repeat returns
    the one job (its id the stored one), not a second."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}")
    coord.channels.append(channel)
    client = Client(f"127.0.0.1:{relay.port}", CLIENT_KEYS["alice"], channel=channel)
    await client.list()
    relay.condition = lambda: jobs_stored(coord) == 1
    submit = asyncio.create_task(client.submit({"n": 1}, idempotency_key="order-7"))
    await asyncio.wait_for(relay.fired.wait(), 10)
    port = await coordinator_down(coord)
    await asyncio.sleep(OUTAGE_S)
    assert not submit.done(), submit
    await coordinator_up(coord, port)
    relay.open = True
    job = await asyncio.wait_for(submit, 30)
    assert coord.db.query("SELECT job_id FROM jobs") == [(job.job_id,)]
    assert job.state == QUEUED and job.idempotency_key == "order-7"


class Deadlines(grpc.aio.UnaryUnaryClientInterceptor):
    """Notes each unary try's method and the timeout it was sent with (observation only)."""

    def __init__(self) -> None:
        self.tries: list[tuple[str, float | None]] = []

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.tries.append((method.rsplit("/", 1)[-1], details.timeout))
        return await continuation(details, request)


@dataclass(frozen=True)
class SecondPause(RetryPolicy):
    """A pause of 1 s before each next try: the repeat starts at least 1 s into the call's deadline."""

    def backoff(self, attempt: int) -> float:
        return 1.0


async def test_a_repeated_cancel_reads_the_job_back_within_the_callers_deadline(
    coord: Harness, relay: AnswerLost
) -> None:
    """The first try cancels the job and its answer is lost; the repeat gets JOB_TERMINAL and reads the job to
    tell its own cancel from another end: that read gets what is left of the cancel's 5 s, not 5 s afresh."""
    job = await coord.client().submit({"n": 1})
    deadlines = Deadlines()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}", interceptors=[deadlines])
    coord.channels.append(channel)
    client = Client(f"127.0.0.1:{relay.port}", CLIENT_KEYS["alice"], channel=channel, timeout_s=5.0,
                    retry=SecondPause())  # fmt: skip
    await client.list()
    relay.condition = lambda: coord.db.job_state(job.job_id) == CANCELED
    relay.open = True

    async def reopen() -> None:  # the coordinator stays up: only the answer is lost
        await relay.fired.wait()
        relay.open = True

    reopening = asyncio.create_task(reopen())
    canceled = await client.cancel(job.job_id, "not needed")
    await reopening
    assert canceled.state == CANCELED and canceled.terminal_message == "not needed"
    tries = deadlines.tries[1:]  # (after the list)
    assert [m for m, _ in tries] == ["CancelJob", "CancelJob", "GetJob"], tries
    (_, first), (_, repeat), (_, read) = tries
    assert first is not None and repeat is not None and read is not None
    assert repeat <= first - 1.0  # the repeat came after the 1 s pause, within the one deadline
    assert read <= repeat, tries  # (the read had a fresh 5 s of its own)


async def test_wait_gives_up_at_its_deadline_saying_what_it_saw_and_waited_out(coord: Harness) -> None:
    client = Client(coord.address, CLIENT_KEYS["alice"], channel=coord.channel(),
                    retry=RetryPolicy(backoff_s=0.05, backoff_max_s=0.1))  # fmt: skip
    job = await client.submit({"n": 1})
    await client.get(job.job_id)
    port = await coordinator_down(coord)
    try:
        with pytest.raises(TimeoutError) as late:
            await client.wait(job.job_id, timeout_s=2.0)  # (the capped policy: UNAVAILABLE within 0.5 s)
    finally:
        await coordinator_up(coord, port)
    text = str(late.value)
    assert f"job {job.job_id} not seen in 2 s; last cut: UNAVAILABLE" in text, text


def copy_of_the_store(coord: Harness, to: Path) -> None:
    """A consistent copy of the coordinator's SQLite store as it is now (its committed state)."""
    source, copy = sqlite3.connect(coord.db_path), sqlite3.connect(to)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()


def restore_the_store(coord: Harness, copy: Path) -> None:
    """The store replaced with an older copy (the coordinator stopped)."""
    for suffix in ("-wal", "-shm"):
        Path(f"{coord.db_path}{suffix}").unlink(missing_ok=True)
    coord.db_path.write_bytes(copy.read_bytes())


async def test_a_watch_resumed_on_a_store_restored_from_an_older_copy_stops_out_of_range(
    coord: Harness, tmp_path: Path
) -> None:
    """The watcher saw the job RUNNING (sequence 3); the new coordinator's store knows the job only as
    submitted (sequence 1). The resume after 3 is answered OUT_OF_RANGE, raised at once (not tried again):
    the history the watcher saw is not this store's. (It was INVALID_ARGUMENT, the code of a malformed request:
    gRPC's for a read past what exists now, which may exist later, is OUT_OF_RANGE.)"""
    client = Client(coord.address, CLIENT_KEYS["alice"], channel=coord.channel())
    job = await client.submit({"n": 1})
    copy_of_the_store(coord, tmp_path / "older.db")
    miner = await coord.stream_miner("miner-00")
    a = await miner.next("assignment")
    miner.accept(a)
    seen: list[int] = []
    running = asyncio.Event()

    async def watch() -> None:
        async for update in client.watch(job.job_id):
            seen.append(update.sequence)
            if update.job.state == RUNNING:
                running.set()

    watching = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(running.wait(), 5)
        port = await coordinator_down(coord)
        restore_the_store(coord, tmp_path / "older.db")
        await coordinator_up(coord, port)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(watching, 30)
    finally:
        watching.cancel()
    assert seen[-1] == 3, seen
    said = error_details(refused.value)
    assert (said.code, said.reason) == (grpc.StatusCode.OUT_OF_RANGE, "SEQUENCE_OUT_OF_RANGE"), said
    assert said.metadata == {"job_id": job.job_id, "after_sequence": "3", "last_sequence": "1"}
    assert said.violations == [("after_sequence", "at most 1")]


async def test_a_resume_past_the_jobs_last_change_is_out_of_range_and_within_it_replays(
    coord: Harness,
) -> None:
    """Sequences are the job's own (1 its submission): past its last, OUT_OF_RANGE whoever asks; within it,
    the job's own changes after it (another job's number there cannot be told apart, and harms nothing)."""
    client = coord.client()
    done = await client.submit({"n": 1})
    waiting = await client.submit({"n": 2}, constraints={"region": "nowhere"})  # no miner takes it
    miner = await coord.stream_miner("miner-00")
    a = await miner.next("assignment")
    miner.result(a.job.job_id, a.attempt)
    await coord.finished(client, done.job_id)
    stub = coord.jobs_stub()
    metadata = (("x-api-key", CLIENT_KEYS["alice"]),)

    async def resume(job_id: str, after: int) -> list[jpb.WatchJobResponse]:
        call = stub.WatchJob(jpb.WatchJobRequest(job_id=job_id, after_sequence=after), metadata=metadata,
                             timeout=5)  # fmt: skip
        return [m async for m in call]

    with pytest.raises(grpc.aio.AioRpcError) as past:
        await resume(waiting.job_id, 4)  # the finished job's last sequence, given for the queued one
    said = error_details(past.value)
    assert (said.code, said.reason) == (grpc.StatusCode.OUT_OF_RANGE, "SEQUENCE_OUT_OF_RANGE"), said
    assert said.metadata["last_sequence"] == "1"
    replayed = await resume(done.job_id, 2)
    assert [(m.job.job_id, m.sequence) for m in replayed] == [(done.job_id, 3), (done.job_id, 4)]


async def test_the_cli_wait_outlasts_a_coordinator_down_for_seconds(
    coord: Harness, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`aitbc wait ID` across a restart on the same port exits 0 with the completed job (it exited 1,
    UNAVAILABLE, a few seconds into the outage); while it waits, one line says what it waits out."""
    from aitbc.cli import main

    caplog.set_level(logging.WARNING, logger="aitbc.client")
    job = await coord.client().submit({"n": 1})
    argv = ["wait", job.job_id, "--address", coord.address, "--api-key", CLIENT_KEYS["alice"]]
    cli = asyncio.create_task(asyncio.to_thread(main, argv))
    await eventually(lambda: job.job_id in coord.coordinator.scheduler.watchers, what="the CLI's watch")  # type: ignore[union-attr]
    port = await coordinator_down(coord)
    await asyncio.sleep(OUTAGE_S)
    assert not cli.done()
    await coordinator_up(coord, port)
    miner = await coord.stream_miner("miner-00")
    a = await miner.next("assignment", within=15)
    miner.result(a.job.job_id, a.attempt)
    code = await asyncio.wait_for(cli, 30)
    out, err = capsys.readouterr()
    assert code == 0 and job.job_id in out and "COMPLETED" in out, (out, err)
    said = [r.getMessage() for r in caplog.records if r.name == "aitbc.client"]
    assert len(said) == 1 and said[0].startswith(f"watch of job {job.job_id} cut (UNAVAILABLE"), said
