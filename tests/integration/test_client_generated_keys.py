"""Submits safe to retry by default (helper client-polish): the Python SDK gives every job submitted without an
idempotency key one of its own (`auto-` and a UUIDv7), made once per call, so that a submit whose answer was
lost is made again and gives the ONE job. (A keyless submit failed at its first UNAVAILABLE: the caller could
not tell whether the job was stored.) RetryInfo delays are jittered upwards so that the clients one
STORE_UNAVAILABLE answered do not all come back at the same instant.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.cli import _call_failed
from aitbc.client import RETRY_INFO_JITTER, Client, RetryPolicy, new_idempotency_key, retry_pause
from coord_support import CLIENT_KEYS, QUEUED, Harness

from tests.tcp_relay import DOWN, Link, Relay
from tests.unit.test_client_retry_policy import failure

FAST_RETRY = RetryPolicy(backoff_s=0.05, backoff_max_s=0.2)
GENERATED = re.compile(r"^auto-[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class AnswerCutter(Relay):
    """Once armed, cuts the connection carrying the first answer that comes back after the condition holds:
    the coordinator stored the job, its answer is lost."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.condition: Callable[[], bool] | None = None
        self.fired = asyncio.Event()

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction != DOWN or self.condition is None or not self.condition():
            return data
        self.condition = None
        self.fired.set()
        link.reset()
        return None


@pytest.fixture
async def relay(coord: Harness) -> AsyncIterator[AnswerCutter]:
    relay = AnswerCutter("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


def client_through(coord: Harness, relay: Relay) -> Client:
    channel = open_channel(f"127.0.0.1:{relay.port}")
    coord.channels.append(channel)
    return Client(f"127.0.0.1:{relay.port}", CLIENT_KEYS["alice"], channel=channel, retry=FAST_RETRY)


def stored(coord: Harness) -> list[tuple[str, str | None]]:
    return coord.db.query("SELECT job_id, idempotency_key FROM jobs ORDER BY created_us, job_id")


async def test_a_submit_without_a_key_whose_answer_was_lost_is_made_again_and_gives_one_job(
    coord: Harness, relay: AnswerCutter
) -> None:
    client = client_through(coord, relay)  # the default: keys generated
    await client.list()  # the relayed connection is up
    relay.condition = lambda: len(stored(coord)) == 1
    job = await client.submit({"n": 1})
    assert relay.fired.is_set()
    assert stored(coord) == [(job.job_id, job.idempotency_key)], "one job, under the key the call made"
    assert GENERATED.match(job.idempotency_key) and job.state == QUEUED
    # GetJob shows the generated key, as it shows a caller's
    assert (await client.get(job.job_id)).idempotency_key == job.idempotency_key


async def test_a_batch_without_keys_whose_answer_was_lost_is_made_again_with_a_key_per_job(
    coord: Harness, relay: AnswerCutter
) -> None:
    client = client_through(coord, relay)
    await client.list()
    requests = [
        Client.request({"n": 1}),
        Client.request({"n": 1}),
        Client.request({"n": 2}, idempotency_key="k2"),
    ]
    relay.condition = lambda: len(stored(coord)) == 3
    jobs = await client.submit_requests(requests)
    assert relay.fired.is_set()
    keys = [j.idempotency_key for j in jobs]
    assert sorted(stored(coord)) == sorted((j.job_id, j.idempotency_key) for j in jobs), "three jobs, not six"
    assert GENERATED.match(keys[0]) and GENERATED.match(keys[1]) and keys[0] != keys[1] and keys[2] == "k2"
    assert [r.idempotency_key for r in requests] == ["", "", "k2"], "the caller's requests are left as given"
    # sent again by another call: new keys, new jobs (a generated key belongs to one call)
    again = await client.submit_requests(requests[:2])
    assert {j.job_id for j in again}.isdisjoint(j.job_id for j in jobs) and len(stored(coord)) == 5


async def test_the_same_payload_submitted_twice_makes_two_jobs(coord: Harness) -> None:
    """Generated keys never meet: two calls are two jobs, never IDEMPOTENCY_KEY_REUSED nor the first's job."""
    client = coord.client()
    first, second = await client.submit({"n": 1}), await client.submit({"n": 1})
    other = await client.submit({"n": 2})
    assert len({first.job_id, second.job_id, other.job_id}) == 3
    assert len({first.idempotency_key, second.idempotency_key, other.idempotency_key}) == 3


async def test_generation_turned_off_sends_no_key(coord: Harness) -> None:
    client = Client(
        coord.address, CLIENT_KEYS["alice"], channel=coord.channel(), generate_idempotency_keys=False
    )
    job = await client.submit({"n": 1})
    assert job.idempotency_key == "" and stored(coord) == [(job.job_id, None)]


def test_generated_keys_are_uuid7_time_ordered_and_within_the_coordinators_limit() -> None:
    keys = [new_idempotency_key() for _ in range(200)]
    assert all(GENERATED.match(k) and len(k) <= 128 for k in keys) and len(set(keys)) == len(keys)
    uuids = [uuid.UUID(k.removeprefix("auto-")) for k in keys]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in uuids)
    ms = [int.from_bytes(u.bytes[:6], "big") for u in uuids]
    assert ms == sorted(ms) and abs(ms[0] - time.time() * 1000) < 60_000  # its time: Unix milliseconds, now


def test_retry_info_delays_are_jittered_up_to_a_fifth_never_shortened() -> None:
    """1000 clients answered RetryInfo 1 s come back spread over [1 s, 1.2 s], not at one instant."""
    exc = failure(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", retry_after_ms=1000)
    pauses = [retry_pause(exc, True, 1, FAST_RETRY) for _ in range(2000)]
    assert RETRY_INFO_JITTER == 1.2
    assert all(p is not None and 1.0 <= p <= 1.2 for p in pauses)
    values = [p for p in pauses if p is not None]
    # spread over the whole range (each fails with odds 0.9 ** 2000), not bunched (a tenth holds ~200 of them)
    assert min(values) < 1.02 and max(values) > 1.18
    assert max(sum(1.0 + i * 0.02 <= p < 1.02 + i * 0.02 for p in values) for i in range(10)) < 400


def test_the_cli_names_the_key_of_a_submit_that_may_have_been_stored() -> None:
    """Its tries ran out at the deadline: submitting again with that key gets the job, not a second one."""
    args = argparse.Namespace(command="submit", idempotency_key="auto-0190-x")
    late = grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "late"
    )
    assert _call_failed(late, args) == (
        "DEADLINE_EXCEEDED: late (the job may have been stored: submit again with --idempotency-key auto-0190-x"
        " to get it, not a second one)"
    )
