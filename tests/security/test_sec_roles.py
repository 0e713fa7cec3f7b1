"""Every RPC of every service, called with no key and with each role's key: the role boundary holds
everywhere, streams included, and a refused call runs nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from sec_support import ROLE_KEYS, C, Rpc, Store, address, all_rpcs, md, serving

# Who may call what, stated here independently of the interceptor's table.
ALLOWED = {
    "JobService": {"client"},
    "MinerService": {"miner"},
    "AdminService": {"admin"},
    "ReceiptService": {"client", "miner", "admin"},
}
REFUSALS = {C.UNAUTHENTICATED, C.PERMISSION_DENIED}


async def call(channel: grpc.aio.Channel, rpc: Rpc, key: str | None) -> grpc.StatusCode:
    """The status of one call with an empty request (a hello first on the miner stream)."""
    metadata = md(key)
    try:
        if rpc.client_streaming:
            stream = channel.stream_stream(rpc.path, request_serializer=rpc.request.SerializeToString,
                                           response_deserializer=rpc.response.FromString)(metadata=metadata, timeout=3)  # fmt: skip
            await stream.write(
                mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=1)))
            )
            first = await stream.read()
            assert first.WhichOneof("message") == "welcome"
            stream.cancel()
            return C.OK
        if rpc.server_streaming:
            stream = channel.unary_stream(rpc.path, request_serializer=rpc.request.SerializeToString,
                                          response_deserializer=rpc.response.FromString)(rpc.request(), metadata=metadata, timeout=3)  # fmt: skip
            async for _ in stream:
                break
            stream.cancel()
            return C.OK
        unary = channel.unary_unary(rpc.path, request_serializer=rpc.request.SerializeToString,
                                    response_deserializer=rpc.response.FromString)  # fmt: skip
        await unary(rpc.request(), metadata=metadata, timeout=3)
        return C.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_every_rpc_with_every_role_and_without_a_key(tmp_path: Path) -> None:
    rpcs = all_rpcs()
    assert {r.service for r in rpcs} == set(ALLOWED) and len(rpcs) >= 28
    async with serving(tmp_path) as coord:
        store = Store(coord)
        async with grpc.aio.insecure_channel(address(coord)) as channel:
            outcomes = {}
            for rpc in rpcs:
                outcomes[(rpc.path, None)] = await call(channel, rpc, None)
                for role, key in ROLE_KEYS.items():
                    outcomes[(rpc.path, role)] = await call(channel, rpc, key)
            wrong = []
            for rpc in rpcs:
                if outcomes[(rpc.path, None)] != C.UNAUTHENTICATED:
                    wrong.append(f"{rpc.path} without a key: {outcomes[(rpc.path, None)].name}")
                for role in ROLE_KEYS:
                    got = outcomes[(rpc.path, role)]
                    if role in ALLOWED[rpc.service]:
                        if got in REFUSALS or got in (C.UNIMPLEMENTED, C.INTERNAL, C.UNKNOWN):
                            wrong.append(f"{rpc.path} as {role}: {got.name} (should pass the interceptor)")
                    elif got != C.PERMISSION_DENIED:
                        wrong.append(f"{rpc.path} as {role}: {got.name} (should be PERMISSION_DENIED)")
            assert not wrong, "\n".join(wrong)
        # nothing any of it did reached the store: refused calls ran nothing, empty requests are invalid
        assert store.scalar("SELECT COUNT(*) FROM jobs") == 0


async def test_a_refused_call_runs_nothing(tmp_path: Path) -> None:
    """A miner or admin key submitting a job, or a client opening a miner stream, changes nothing."""
    from aitbc.coordinator.v1 import job_service_pb2 as jpb
    from aitbc.coordinator.v1 import job_service_pb2_grpc, miner_service_pb2_grpc

    async with serving(tmp_path) as coord:
        async with grpc.aio.insecure_channel(address(coord)) as channel:
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            for key in (ROLE_KEYS["miner"], ROLE_KEYS["admin"], None, "not-a-key-at-all"):
                try:
                    await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x"), metadata=md(key))
                    raise AssertionError("a non-client key submitted a job")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in REFUSALS
            stream = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(
                metadata=md(ROLE_KEYS["client"])
            )
            await stream.write(
                mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=1)))
            )
            try:
                await stream.read()
                raise AssertionError("a client key opened a miner stream")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == C.PERMISSION_DENIED
        assert Store(coord).scalar("SELECT COUNT(*) FROM jobs") == 0
        assert not coord.scheduler.by_miner, "a refused stream opened a miner session"
