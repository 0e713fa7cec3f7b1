"""Idempotency keys under concurrency: submits racing on one key, batches with crossed keys, a key twice in
one batch. A real coordinator on loopback; each case failed (INTERNAL, or a hang) before the keys of a
submit were all looked up before it claimed any."""

from __future__ import annotations

import asyncio

import grpc
from aitbc.client import Client
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from coord_support import CANCELED, Harness, eventually, expect_error, rpc_error


async def test_one_key_twice_in_a_batch_is_refused_not_hung(coord: Harness) -> None:
    alice = coord.client("alice")
    requests = [alice.request({"k": n}, idempotency_key="twice") for n in range(2)]
    err = await rpc_error(
        asyncio.wait_for(
            alice.jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=requests), metadata=alice.metadata), 5
        )
    )
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


async def test_submits_racing_on_one_key_get_one_job(coord: Harness) -> None:
    """Both looked the key up before either claimed it, both inserted, and the second failed on the unique
    index (INTERNAL) instead of returning the first one's job."""
    alice = coord.client("alice")
    for n in range(10):
        pair = await asyncio.gather(*(alice.submit({"n": n}, idempotency_key=f"race-{n}") for _ in range(2)))
        assert pair[0].job_id == pair[1].job_id


async def test_batches_with_crossed_keys_do_not_wait_on_each_other(coord: Harness) -> None:
    """Each batch held claims on some keys while it waited on a key the other held: both hung for ever."""
    alice = coord.client("alice")
    for n in range(10):
        x = [alice.request({"k": k}, idempotency_key=f"{k}{n}") for k in ("b", "c", "a")]
        y = [alice.request({"k": k}, idempotency_key=f"{k}{n}") for k in ("a", "b")]
        calls = [
            alice.jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=r), metadata=alice.metadata) for r in (x, y)
        ]
        bx, by = await asyncio.wait_for(asyncio.gather(*calls), 5)
        ids = {r.job.idempotency_key: r.job.job_id for r in (*bx.responses, *by.responses)}
        assert len(ids) == 3


async def test_the_keys_of_finished_jobs_leave_memory_and_still_answer(coord: Harness) -> None:
    """Scheduler.idempotency kept an entry per key ever used (a restart reloads only active jobs' keys): a
    long-running coordinator's memory grew with every idempotent submission. A finished job's key is forgotten
    once its end is stored; the store's unique index answers for it. (Review round 10, helper-32.)"""
    client = coord.client()
    for i in range(20):
        job = await client.submit({"n": i}, idempotency_key=f"order-{i}")
        await client.cancel(job.job_id)
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: not scheduler.idempotency, what="the finished jobs' keys forgotten")
    again = await client.jobs.SubmitJob(Client.request({"n": 3}, idempotency_key="order-3"),
                                        metadata=client.metadata)  # fmt: skip
    assert not again.created and again.job.state == CANCELED
    err = await rpc_error(client.submit({"n": 4}, idempotency_key="order-3"))  # another request, same key
    expect_error(err, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    live = await client.submit({"n": 99}, idempotency_key="order-live")  # a live job's key stays in memory
    assert scheduler.idempotency == {("alice", "order-live"): live.job_id}
