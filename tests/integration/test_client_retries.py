"""The Python SDK's Client over a network that fails (review round 33): every call has a deadline; calls safe to
repeat are tried again after UNAVAILABLE (a connection cut after the coordinator acted, its store briefly out),
a submit only with an idempotency key, so that a cut never makes two jobs; a cancel whose answer was lost is not
turned into JOB_TERMINAL by its own repeat. (The Client made every call once, with no deadline.)"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.client import Client, RetryPolicy
from coord_support import CANCELED, CLIENT_KEYS, QUEUED, Harness, eventually

from tests.tcp_relay import DOWN, Link, Relay

FAST_RETRY = RetryPolicy(attempts=100, backoff_s=0.05, backoff_max_s=0.2)


@dataclass(frozen=True)
class LongPause(RetryPolicy):
    """A policy whose pause before the next try is a minute, and that says when a call starts waiting it."""

    pausing: asyncio.Event = field(default_factory=asyncio.Event)

    def backoff(self, attempt: int) -> float:
        self.pausing.set()
        return 60.0


class ReplyCutter(Relay):
    """A relay that, once armed with a condition, cuts (or holds back) the first chunk going back to the
    client after the condition holds: the coordinator has acted on the call, its answer is lost."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.condition: Callable[[], bool] | None = None
        self.hold = False
        self.released = asyncio.Event()
        self.fired = asyncio.Event()

    def arm(self, condition: Callable[[], bool], *, hold: bool = False) -> None:
        self.condition, self.hold = condition, hold

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction != DOWN or self.condition is None or not self.condition():
            return data
        self.condition = None
        self.fired.set()
        if self.hold:
            await self.released.wait()
            return data
        link.reset()
        return None


@pytest.fixture
async def relay(coord: Harness) -> AsyncIterator[ReplyCutter]:
    relay = ReplyCutter("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
    await relay.start()
    try:
        yield relay
    finally:
        relay.released.set()
        await relay.close()


def client_through(coord: Harness, relay: Relay, **options: object) -> Client:
    channel = open_channel(f"127.0.0.1:{relay.port}")
    coord.channels.append(channel)
    return Client(f"127.0.0.1:{relay.port}", CLIENT_KEYS["alice"], channel=channel, **options)  # type: ignore[arg-type]


def jobs_stored(coord: Harness) -> int:
    return coord.db.scalar("SELECT COUNT(*) FROM jobs")


async def test_a_keyed_submit_whose_answer_was_lost_is_made_again_and_gives_the_one_job(
    coord: Harness, relay: ReplyCutter
) -> None:
    client = client_through(coord, relay, retry=FAST_RETRY)
    await client.get((await coord.client().submit({"warm": 1})).job_id)  # the connection is up
    relay.arm(lambda: jobs_stored(coord) == 2)
    job = await client.submit({"n": 1}, idempotency_key="order-1")
    assert relay.fired.is_set()
    assert job.state == QUEUED and job.idempotency_key == "order-1"
    assert jobs_stored(coord) == 2


async def test_a_submit_without_a_key_whose_answer_was_lost_is_not_made_again(
    coord: Harness, relay: ReplyCutter
) -> None:
    """UNAVAILABLE after the job was stored: a repeat would store a second one (keys not generated)."""
    client = client_through(coord, relay, retry=FAST_RETRY, generate_idempotency_keys=False)
    await client.list()
    relay.arm(lambda: jobs_stored(coord) == 1)
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await client.submit({"n": 1})
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.sleep(0.3)  # time for a wrongful repeat to land
    assert jobs_stored(coord) == 1


async def test_a_batch_without_keys_is_not_made_again_and_one_with_keys_is(
    coord: Harness, relay: ReplyCutter
) -> None:
    client = client_through(coord, relay, retry=FAST_RETRY, generate_idempotency_keys=False)
    await client.list()
    relay.arm(lambda: jobs_stored(coord) == 2)
    with pytest.raises(grpc.aio.AioRpcError):
        await client.submit_many([{"n": 1}, {"n": 2}])
    relay.arm(lambda: jobs_stored(coord) == 4)
    keyed = [Client.request({"n": i}, idempotency_key=f"batch-{i}") for i in (3, 4)]
    jobs = await client.submit_requests(keyed)
    assert [j.idempotency_key for j in jobs] == ["batch-3", "batch-4"]
    assert jobs_stored(coord) == 4


async def test_reads_are_made_again_over_a_cut_connection(coord: Harness, relay: ReplyCutter) -> None:
    job = await coord.client().submit({"n": 1})
    client = client_through(coord, relay, retry=FAST_RETRY)
    await client.list()
    relay.arm(lambda: True)
    assert (await client.get(job.job_id)).job_id == job.job_id
    assert relay.fired.is_set()


async def test_a_cancel_whose_answer_was_lost_answers_the_canceled_job(
    coord: Harness, relay: ReplyCutter
) -> None:
    """The repeat finds the job terminal (JOB_TERMINAL): it was this call's own first try that canceled it."""
    job = await coord.client().submit({"n": 1})
    client = client_through(coord, relay, retry=FAST_RETRY)
    await client.list()
    relay.arm(lambda: coord.db.job_state(job.job_id) == CANCELED)
    canceled = await client.cancel(job.job_id, "not needed")
    assert relay.fired.is_set()
    assert canceled.state == CANCELED and canceled.terminal_message == "not needed"


async def test_every_call_has_a_deadline(coord: Harness, relay: ReplyCutter) -> None:
    """A coordinator that never answers: the call ends DEADLINE_EXCEEDED (it waited for ever)."""
    job = await coord.client().submit({"n": 1})
    client = client_through(coord, relay, timeout_s=0.5)
    await client.list()
    relay.stall()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await client.get(job.job_id)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_submit_past_its_deadline_once_stored_is_made_again_with_its_key_as_the_one_job(
    coord: Harness, relay: ReplyCutter
) -> None:
    """The deadline passes while the answer is on its way: the application submits again with the same key."""
    client = client_through(coord, relay, timeout_s=0.5)
    await client.list()
    relay.arm(lambda: jobs_stored(coord) == 1, hold=True)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await client.submit({"n": 1}, idempotency_key="late-1")
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    relay.released.set()
    again = await client.submit({"n": 1}, idempotency_key="late-1")
    assert again.idempotency_key == "late-1" and jobs_stored(coord) == 1


async def test_a_keyed_submit_is_made_again_after_the_store_was_out(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """STORE_UNAVAILABLE (nothing stored, RetryInfo 1 s): tried again after that delay, it stores the job once."""
    caplog.set_level(logging.WARNING, logger="coordinator")
    client = Client(coord.address, CLIENT_KEYS["alice"], channel=coord.channel())
    blocker = sqlite3.connect(coord.db_path, isolation_level=None, timeout=1.0)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, past the writer's busy timeout
    try:
        submit = asyncio.create_task(client.submit({"n": 1}, idempotency_key="k-1"))
        await eventually(lambda: "store unreachable" in caplog.text, within=30, what="the refused first try")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    job = await submit
    assert job.state == QUEUED and jobs_stored(coord) == 1


async def closed_while_pausing(client: Client, call: asyncio.Task, policy: LongPause) -> grpc.aio.AioRpcError:
    """Closes client once call waits to try again; the error call ends with."""
    await asyncio.wait_for(policy.pausing.wait(), 30)
    await client.close()
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await asyncio.wait_for(call, 30)  # (it waited out the pause, then failed on the closed channel)
    return closed.value


async def test_a_call_waiting_to_try_again_ends_cancelled_when_the_client_is_closed(
    coord: Harness, relay: ReplyCutter
) -> None:
    policy = LongPause()
    client = client_through(coord, relay, retry=policy, timeout_s=300)
    await client.list()
    relay.arm(lambda: True)
    listing = asyncio.create_task(client.list())
    closed = await closed_while_pausing(client, listing, policy)
    assert closed.code() == grpc.StatusCode.CANCELLED


async def test_a_watch_waiting_to_resume_ends_cancelled_when_the_client_is_closed(
    coord: Harness, relay: ReplyCutter
) -> None:
    job = await coord.client().submit({"n": 1})
    policy = LongPause()
    client = client_through(coord, relay, retry=policy)
    await client.list()
    relay.arm(lambda: True)

    async def watch() -> None:
        async for _ in client.watch(job.job_id):
            pass

    closed = await closed_while_pausing(client, asyncio.create_task(watch()), policy)
    assert closed.code() == grpc.StatusCode.CANCELLED
