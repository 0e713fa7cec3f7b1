"""How a call finds its handler: the interceptors build each method's wrapped handler once, and the
coordinator's server keeps no pending call request per method (the generated registration would have
grpc.aio's accept loop wait on one future per method for every call that arrives)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aitbc.coordinator.v1 import job_service_pb2 as pb
from aitbc.coordinator.v1 import job_service_pb2_grpc, receipt_service_pb2, receipt_service_pb2_grpc
from coord_support import ADMIN_KEY, CLIENT_KEYS, Harness
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from coordinator.config import ApiKeyEntry
from coordinator.observability import RequestContextInterceptor
from coordinator.security.interceptor import AuthInterceptor
from coordinator.security.keys import KeyRing

KEY = "dispatch-test-key-0001"
JOBS = "/aitbc.coordinator.v1.JobService/"


class EchoJobs(job_service_pb2_grpc.JobServiceServicer):
    """A servicer behind the real interceptors: GetJob echoes the id, WatchJob streams two messages."""

    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        response = pb.GetJobResponse()
        response.job.job_id = request.job_id
        return response

    async def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> AsyncIterator[pb.WatchJobResponse]:
        for sequence in (1, 2):
            yield pb.WatchJobResponse(sequence=sequence)


class Asked(grpc.GenericRpcHandler):
    """Counts the methods grpc.aio (through the interceptors) looks up in the handlers it wraps."""

    def __init__(self, handlers: list[grpc.GenericRpcHandler]) -> None:
        self.handlers = handlers
        self.asked: Counter[str] = Counter()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        self.asked[details.method] += 1
        for h in self.handlers:
            found = h.service(details)
            if found is not None:
                return found
        return None


class Collect:
    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, name: str, handlers: Any) -> None:
        pass


async def test_each_methods_handler_is_built_once_and_unknown_methods_are_not_kept() -> None:
    collect = Collect()
    job_service_pb2_grpc.add_JobServiceServicer_to_server(EchoJobs(), collect)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), collect)
    asked = Asked(collect.handlers)
    keyring = KeyRing((ApiKeyEntry("alice", "client", KEY),))
    server = grpc.aio.server(interceptors=[RequestContextInterceptor(), AuthInterceptor(keyring)])
    server.add_generic_rpc_handlers((asked,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            md = (("x-api-key", KEY),)
            for i in range(3):  # the request reaches the servicer parsed by the interceptor, every time
                got = await jobs.GetJob(pb.GetJobRequest(job_id=f"job-{i}"), metadata=md)
                assert got.job.job_id == f"job-{i}"
            for _ in range(2):
                watched = [
                    m.sequence async for m in jobs.WatchJob(pb.WatchJobRequest(job_id="j"), metadata=md)
                ]
                assert watched == [1, 2]
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # still authenticated on a kept handler
                await jobs.GetJob(pb.GetJobRequest(job_id="x"), metadata=(("x-api-key", "wrong-key-000001"),))
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            checks = health_pb2_grpc.HealthStub(channel)
            for _ in range(2):
                assert (await checks.Check(health_pb2.HealthCheckRequest())).status == 1  # SERVING
            unknown = channel.unary_unary("/nowhere.Service/Method")
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await unknown(b"")
                assert missing.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
    assert asked.asked[JOBS + "GetJob"] == 1
    assert asked.asked[JOBS + "WatchJob"] == 1
    assert asked.asked["/grpc.health.v1.Health/Check"] == 1
    assert asked.asked["/nowhere.Service/Method"] == 2  # looked up at each call: nothing kept for it


def _pending_call_requests() -> int:
    """grpc.aio's accept loop keeps one task per registered method, waiting for that method's next call."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if "_request_registered_call" in getattr(t.get_coro(), "__qualname__", "")
    )


async def test_the_server_waits_for_calls_without_a_request_per_method(coord: Harness) -> None:
    # reflection's helper registers its one method (it takes only a real grpc.aio server); nothing else does. Exactly
    # one: the probe sees grpc.aio's pending requests at all (a renamed internal would make "at most one" vacuous)
    assert _pending_call_requests() == 1
    channel = coord.channel()
    # every service still answers through its generic handler
    health_check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health_check.status == health_pb2.HealthCheckResponse.SERVING
    job = await coord.client().submit({"n": 1})
    got = await job_service_pb2_grpc.JobServiceStub(channel).GetJob(
        pb.GetJobRequest(job_id=job.job_id), metadata=(("x-api-key", CLIENT_KEYS["alice"]),)
    )
    assert got.job.job_id == job.job_id
    keys = await receipt_service_pb2_grpc.ReceiptServiceStub(channel).GetSigningKeys(
        receipt_service_pb2.GetSigningKeysRequest(), metadata=(("x-api-key", ADMIN_KEY),)
    )
    assert keys.keys
    miner = await coord.stream_miner()
    assert miner.welcome is not None and miner.welcome.session_id
    assert "miner-00" in await coord.admin().miners()
    services = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in services for s in r.list_services_response.service]
    assert "aitbc.coordinator.v1.JobService" in names
    assert _pending_call_requests() == 1
