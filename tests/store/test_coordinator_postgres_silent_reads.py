"""The coordinator on PostgreSQL when its reads get no answer (the read pool's connections blackholed: no FIN, no
RST). GetJob, ListJobs and GetJobResult are answered UNAVAILABLE STORE_UNAVAILABLE with RetryInfo within the read
timeout (tried twice), not left hanging past the client's deadline; a read silenced once is answered all the same
(asked again on a fresh connection); once the path heals, every call is answered. A start whose loading of the
live jobs goes unanswered loads them again, or fails as the store unreachable (no hang), and the next start has
every job. (Review round 34: reads had no timeout: the calls hung until the kernel gave up, ~15 minutes.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from aitbc.client import NO_RETRY, Client, error_details
from aitbc.coordinator.v1 import job_pb2, job_service_pb2
from aitbc.receipts import Signer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordinator.config import Settings
from coordinator.server import start
from coordinator.store.base import store_unreachable

from .pg_silent_reads_support import SilentReadsRelay
from .test_coordinator_on_postgres import CLIENT, run_one_job
from .test_coordinator_on_postgres import settings as pg_settings

HANG_GUARD_S = 90.0  # far past the store's timeouts: a start still pending then hangs


@pytest.fixture
async def relay() -> AsyncIterator[SilentReadsRelay]:
    relay = SilentReadsRelay()
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


def settings(relay: SilentReadsRelay, schema: str, read_timeout_s: float) -> Settings:
    return pg_settings(relay.url(schema)).replace(database_read_timeout_seconds=read_timeout_s,
                                                  database_pool_size=2)  # fmt: skip


async def refused_unavailable(call: Awaitable[Any]) -> None:
    try:
        answer = await call
    except grpc.aio.AioRpcError as exc:
        assert (exc.code(), error_details(exc).reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
        ), exc
        status = rpc_status.from_call(exc)
        assert status is not None and any(
            d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details
        )
        return
    raise AssertionError(f"answered with its read silenced: {answer}")


async def test_calls_whose_reads_go_unanswered_are_unavailable_then_answered_once_the_path_heals(
    relay: SilentReadsRelay, schema: str
) -> None:
    coordinator = await start(settings(relay, schema, read_timeout_s=1.0))
    try:
        assert coordinator.scheduler.store._pool.get_max_size() == 2  # DATABASE_POOL_SIZE
        done, _ = await run_one_job(coordinator, Signer.generate(), {"prompt": "hi"})
        quiet = Client(f"127.0.0.1:{coordinator.port}", CLIENT, retry=NO_RETRY)  # (the SDK's retries off)
        try:
            relay.silence_reads("FROM jobs ")  # the job is done: read from the store
            await refused_unavailable(quiet.get(done.job_id))
            await refused_unavailable(quiet.list())
            relay.silence_reads("FROM job_results")
            await refused_unavailable(quiet.result(done.job_id))

            relay.silence_reads("FROM job_results", times=1)  # a blackholed connection, once
            assert (await quiet.result(done.job_id)).result.receipt_id
            relay.silence_reads("", times=0)  # the path heals
            assert (await quiet.get(done.job_id)).state == job_pb2.JOB_STATE_COMPLETED
            assert [j.job_id for j in (await quiet.list()).jobs] == [done.job_id]
        finally:
            await quiet.close()
    finally:
        await coordinator.stop()


async def watch_to_the_end(client: Client, job_id: str, after_sequence: int = 0) -> None:
    """A WatchJob stream read to its end (the SDK's watch() would resume it)."""
    request = job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
    async for _ in client.jobs.WatchJob(request, metadata=client.metadata):
        pass


async def test_waits_and_watches_whose_reads_go_unanswered_are_unavailable_not_a_deadline(
    relay: SilentReadsRelay, schema: str
) -> None:
    """StoreReadTimeout during GetJobResult(wait) and WatchJob: UNAVAILABLE STORE_UNAVAILABLE (retry), not the
    wait's DEADLINE_EXCEEDED WAIT_TIMEOUT nor INTERNAL."""
    coordinator = await start(settings(relay, schema, read_timeout_s=0.5))
    try:
        done, _ = await run_one_job(coordinator, Signer.generate(), {"prompt": "hi"})
        quiet = Client(f"127.0.0.1:{coordinator.port}", CLIENT, retry=NO_RETRY)  # (the SDK's retries off)
        try:
            relay.silence_reads("FROM job_results")
            await refused_unavailable(quiet.result(done.job_id, wait=True))
            relay.silence_reads("FROM jobs ")  # the watch's snapshot of a finished job
            await refused_unavailable(watch_to_the_end(quiet, done.job_id))
            relay.silence_reads("FROM job_events")  # a resumed watch: the changes it missed
            await refused_unavailable(watch_to_the_end(quiet, done.job_id, after_sequence=1))
        finally:
            await quiet.close()
    finally:
        await coordinator.stop()


async def outcome(starting: Awaitable[Any]) -> Any:
    task = asyncio.ensure_future(starting)
    finished, _ = await asyncio.wait({task}, timeout=HANG_GUARD_S)
    assert finished, "the start hangs on a read that gets no answer"
    return task.exception() or task.result()


async def test_a_start_whose_load_of_live_jobs_goes_unanswered_loads_again_or_fails_as_unreachable(
    relay: SilentReadsRelay, schema: str
) -> None:
    first = await start(settings(relay, schema, read_timeout_s=0.2))  # (bulk loads: 24 times as long)
    client = Client(f"127.0.0.1:{first.port}", CLIENT)
    try:
        job = await client.submit({"n": 1})  # queued: no miner
    finally:
        await client.close()
        await first.stop()

    live_jobs = "WHERE state IN (1, 2, 3)"
    relay.silence_reads(live_jobs, times=1)
    again = await outcome(start(settings(relay, schema, read_timeout_s=0.2)))
    assert not isinstance(again, BaseException), again
    assert job.job_id in again.scheduler.jobs  # loaded on a fresh connection
    await again.stop()

    relay.silence_reads(live_jobs)
    refused = await outcome(start(settings(relay, schema, read_timeout_s=0.2)))
    assert isinstance(refused, Exception) and store_unreachable(refused), refused
    assert "PostgreSQL answered no read" in str(refused)

    relay.silence_reads("", times=0)
    last = await outcome(start(settings(relay, schema, read_timeout_s=0.2)))  # (the refused start let go)
    try:
        client = Client(f"127.0.0.1:{last.port}", CLIENT)
        try:
            assert (await client.get(job.job_id)).state == job_pb2.JOB_STATE_QUEUED
        finally:
            await client.close()
    finally:
        await last.stop()
