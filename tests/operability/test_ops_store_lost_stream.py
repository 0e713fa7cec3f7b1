"""A miner's Connect stream whose message could not be stored because the store was lost (taken by another
process: StoreFenced) or could not be reached ends with the status a unary call gets, UNAVAILABLE with the
reason (STORE_LOST, STORE_UNAVAILABLE) and RetryInfo: reconnect, here or elsewhere, later. (It ended with an OK
close and no message, which an SDK may take for a clean end; the other miners got a go-away as the coordinator
stopped.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
from aitbc.channel import open_channel
from aitbc.client import Client
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from google.rpc import error_details_pb2, status_pb2
from ops_support import CLIENT_KEY, MINER_KEY, running

from coordinator.server import Coordinator, start
from coordinator.store.postgres import PostgresStore
from tests.store import test_coordinator_on_postgres as on_postgres
from tests.store.store_support import create_schema, drop_schema, pg_url
from tests.store.test_postgres_writer_lock import HalfOpenProxy
from tests.store.test_store_fencing import cut_writer, through


async def connect_and_take_a_job(coordinator: Coordinator, miner_key: str, client_key: str):  # type: ignore[no-untyped-def]
    """A hand-driven miner stream holding one assignment: (channel, call, assignment)."""
    address = f"127.0.0.1:{coordinator.port}"
    channel = open_channel(address, own_connection=True)
    call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(metadata=(("x-api-key", miner_key),))
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=1))))
    assert (await call.read()).WhichOneof("message") == "welcome"
    async with Client(address, client_key) as client:
        await client.submit({"n": 1})
    message = await call.read()
    assert message.WhichOneof("message") == "assignments", message
    return channel, call, message.assignments.assignments[0]


async def accept_and_read_the_end(call, assignment) -> tuple[list[str], grpc.StatusCode, status_pb2.Status]:  # type: ignore[no-untyped-def]
    """Accept the assignment (a write), then read the stream to its end: the messages, the code, the details."""
    await call.write(
        mpb.ConnectRequest(accept=mpb.Accept(job_id=assignment.job.job_id, attempt=assignment.attempt))
    )
    kinds = []
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            kinds.append(message.WhichOneof("message"))
    except grpc.aio.AioRpcError:
        pass  # (the end's status, read below)
    details = dict(await call.trailing_metadata()).get("grpc-status-details-bin", b"")
    return kinds, await call.code(), status_pb2.Status.FromString(details)


def reason_and_retry(status: status_pb2.Status) -> tuple[str, bool]:
    reason, retry = "", False
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        retry = retry or detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    return reason, retry


async def test_a_stream_whose_write_finds_the_store_lost_ends_unavailable_store_lost() -> None:
    schema = await create_schema()
    proxy = HalfOpenProxy()
    coordinator = await start(on_postgres.settings(through(await proxy.start(), schema)))
    try:
        channel, call, assignment = await connect_and_take_a_job(
            coordinator, on_postgres.MINER, on_postgres.CLIENT
        )
        await cut_writer(proxy, coordinator.scheduler.store)  # type: ignore[arg-type]
        other = PostgresStore(pg_url(schema), lock_wait_s=0)  # another process takes the store meanwhile
        await other.open()
        await other.close()
        kinds, code, status = await accept_and_read_the_end(
            call, assignment
        )  # the first write after the loss
        assert code == grpc.StatusCode.UNAVAILABLE, (code, kinds)
        assert reason_and_retry(status) == ("STORE_LOST", True), status
        assert coordinator.store_lost is not None and coordinator.store_lost.done()
        await channel.close()
    finally:
        await coordinator.stop(grace=0.2)
        await proxy.close()
        await drop_schema(schema)


async def test_a_stream_whose_write_cannot_reach_the_store_ends_unavailable_store_unavailable(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as ops:
        channel, call, assignment = await connect_and_take_a_job(ops.coordinator, MINER_KEY, CLIENT_KEY)
        blocker = sqlite3.connect(tmp_path / "coordinator.db", isolation_level=None, timeout=1.0)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held past the writer's busy timeout
        try:
            kinds, code, status = await accept_and_read_the_end(call, assignment)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert code == grpc.StatusCode.UNAVAILABLE, (code, kinds)
        assert reason_and_retry(status) == ("STORE_UNAVAILABLE", True), status
        await channel.close()
