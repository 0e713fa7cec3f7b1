"""A call whose write fails because the store cannot be reached (here SQLite's file held locked by another
connection past the writer's busy timeout) is answered UNAVAILABLE (STORE_UNAVAILABLE, with RetryInfo), not
INTERNAL: nothing was stored, and the same call, made again once the store is back, succeeds once. (It was
answered INTERNAL, "see the coordinator log", with the trace of an unexpected error.)"""

from __future__ import annotations

import sqlite3

import grpc
from aitbc.client import NO_RETRY, Client
from coord_support import CLIENT_KEYS, QUEUED, Harness, details_of
from google.rpc import error_details_pb2
from grpc_status import rpc_status


async def test_a_submit_that_cannot_reach_the_store_is_unavailable_and_can_be_made_again(
    coord: Harness,
) -> None:
    # (the SDK's retries off: a repeat would meet the lock again; test_client_retries has the SDK's side)
    alice = Client(coord.address, CLIENT_KEYS["alice"], channel=coord.channel(), retry=NO_RETRY)
    blocker = sqlite3.connect(coord.db_path, isolation_level=None, timeout=1.0)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, held past the writer's busy timeout (5 s)
    try:
        await alice.submit({"x": 1}, idempotency_key="k-1")
        raise AssertionError("the submit succeeded with the store locked")
    except grpc.aio.AioRpcError as exc:
        refused = exc
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    err = details_of(refused)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"), err
    status = rpc_status.from_call(refused)
    assert status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    job = await alice.submit({"x": 1}, idempotency_key="k-1")
    assert job.state == QUEUED
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 1
