"""Idempotency keys under concurrency: submits racing on one key, batches with crossed keys, a key twice in
one batch. A real coordinator on loopback; each case failed (INTERNAL, or a hang) before the keys of a
submit were all looked up before it claimed any."""

from __future__ import annotations

import asyncio

import grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from coord_support import Harness, rpc_error


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
