"""API keys and roles, google.rpc error details on every error, health and server reflection."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import admin_service_pb2_grpc, receipt_service_pb2_grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import receipt_service_pb2 as rpb
from coord_support import (
    ADMIN_KEY,
    CLIENT_KEYS,
    Harness,
    capabilities,
    details_of,
    expect_error,
    miner_key,
    rpc_error,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

C = grpc.StatusCode
FOUR_SERVICES = {
    "aitbc.coordinator.v1.JobService",
    "aitbc.coordinator.v1.MinerService",
    "aitbc.coordinator.v1.ReceiptService",
    "aitbc.coordinator.v1.AdminService",
}


async def test_missing_or_unknown_key_is_unauthenticated(coord: Harness) -> None:
    jobs = coord.jobs_stub()
    req = jpb.ListJobsRequest()
    for metadata in ((), (("x-api-key", "no-such-key-123"),), (("authorization", "Bearer wrong-key-123"),),
                     (("authorization", f"Basic {CLIENT_KEYS['alice']}"),)):  # fmt: skip
        err = await rpc_error(jobs.ListJobs(req, metadata=metadata))
        expect_error(err, C.UNAUTHENTICATED, "UNAUTHENTICATED")
    # the same key as a bearer token is accepted
    ok = await jobs.ListJobs(req, metadata=(("authorization", f"Bearer {CLIENT_KEYS['alice']}"),))
    assert list(ok.jobs) == []
    # streams are guarded too
    stub = coord.miner_stub()
    call = stub.Connect(metadata=(("x-api-key", "no-such-key-123"),))
    err = await rpc_error(call.read())
    expect_error(err, C.UNAUTHENTICATED, "UNAUTHENTICATED")


async def test_wrong_role_is_permission_denied(coord: Harness) -> None:
    ch = coord.channel()
    jobs = coord.jobs_stub()
    admin = admin_service_pb2_grpc.AdminServiceStub(ch)
    as_miner = (("x-api-key", miner_key("miner-00")),)
    as_client = (("x-api-key", CLIENT_KEYS["alice"]),)
    as_admin = (("x-api-key", ADMIN_KEY),)

    err = await rpc_error(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x"), metadata=as_miner))
    expect_error(err, C.PERMISSION_DENIED, "WRONG_ROLE")
    expect_error(await rpc_error(jobs.ListJobs(jpb.ListJobsRequest(), metadata=as_admin)),
                 C.PERMISSION_DENIED, "WRONG_ROLE")  # fmt: skip
    expect_error(await rpc_error(admin.GetStats(apb.GetStatsRequest(), metadata=as_client)),
                 C.PERMISSION_DENIED, "WRONG_ROLE")  # fmt: skip
    call = coord.miner_stub().Connect(metadata=as_client)
    expect_error(await rpc_error(call.read()), C.PERMISSION_DENIED, "WRONG_ROLE")
    reg = coord.miner_stub().RegisterMiner(mpb.RegisterMinerRequest(), metadata=as_client)
    expect_error(await rpc_error(reg), C.PERMISSION_DENIED, "WRONG_ROLE")
    # the right roles pass; receipts are open to every role
    await admin.GetStats(apb.GetStatsRequest(), metadata=as_admin)
    receipts = receipt_service_pb2_grpc.ReceiptServiceStub(ch)
    for md in (as_client, as_miner, as_admin):
        await receipts.GetSigningKeys(rpb.GetSigningKeysRequest(), metadata=md)
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 0


async def test_every_error_carries_error_info_with_a_reason(coord: Harness) -> None:
    alice = coord.client("alice")
    md = alice.metadata
    admin = coord.admin()
    miners = coord.miner_stub()
    as_miner = (("x-api-key", miner_key("miner-00")),)
    done = await alice.submit({"x": 1})
    await alice.cancel(done.job_id)
    await alice.submit({"x": 1}, idempotency_key="k")
    unknown = str(uuid.uuid4())

    cases = [
        (alice.jobs.GetJob(jpb.GetJobRequest(job_id=unknown), metadata=md), C.NOT_FOUND, "JOB_NOT_FOUND"),
        (alice.jobs.GetJob(jpb.GetJobRequest(), metadata=md), C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (alice.jobs.SubmitJob(jpb.SubmitJobRequest(), metadata=md), C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (alice.jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x", priority=10), metadata=md),
         C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (alice.submit({"x": 2}, idempotency_key="k"), C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"),
        (alice.cancel(done.job_id), C.FAILED_PRECONDITION, "JOB_TERMINAL"),
        (alice.result(done.job_id), C.FAILED_PRECONDITION, "JOB_NOT_COMPLETED"),
        (alice.list(page_token="zzz"), C.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"),
        (alice.list(page_size=5000), C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (admin.drain("nobody"), C.NOT_FOUND, "MINER_NOT_FOUND"),
        (miners.Heartbeat(mpb.HeartbeatRequest(session_id=str(uuid.uuid4())), metadata=as_miner),
         C.NOT_FOUND, "SESSION_NOT_FOUND"),
        (miners.PollJob(mpb.PollJobRequest(session_id=str(uuid.uuid4())), metadata=as_miner),
         C.NOT_FOUND, "SESSION_NOT_FOUND"),
    ]  # fmt: skip
    for call, code, reason in cases:
        err = await rpc_error(call)
        expect_error(err, code, reason)
        if code == C.INVALID_ARGUMENT:
            assert err.violations, f"{reason}: INVALID_ARGUMENT without BadRequest field violations"

    # a stream whose first message is not hello
    call = miners.Connect(metadata=as_miner)
    await call.write(mpb.ConnectRequest(heartbeat=mpb.MinerHeartbeat()))
    expect_error(await rpc_error(call.read()), C.INVALID_ARGUMENT, "HELLO_REQUIRED")
    # a second hello on an open stream
    call = miners.Connect(metadata=as_miner)
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities())))
    assert (await call.read()).WhichOneof("message") == "welcome"
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities())))
    while True:
        try:
            msg = await asyncio.wait_for(call.read(), 5)
        except grpc.aio.AioRpcError as exc:
            expect_error(details_of(exc), C.FAILED_PRECONDITION, "HELLO_REPEATED")
            break
        assert msg is not grpc.aio.EOF, "the stream ended without an error status"


async def test_health_is_serving_for_the_server_and_each_service(coord: Harness) -> None:
    health = health_pb2_grpc.HealthStub(coord.channel())
    for service in ("", *sorted(FOUR_SERVICES)):
        r = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_the_four_services(coord: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(coord.channel())
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = await call.read()
    names = {s.name for s in listed.list_services_response.service}
    assert FOUR_SERVICES <= names
    assert "grpc.health.v1.Health" in names
    # and the descriptors behind them resolve (what grpcurl describe needs)
    await call.write(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="aitbc.coordinator.v1.JobService")
    )
    files = await call.read()
    assert files.file_descriptor_response.file_descriptor_proto
    await call.done_writing()
