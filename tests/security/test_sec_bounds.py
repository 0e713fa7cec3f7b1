"""Bounds on what callers send: message size, payload size, Struct depth, string and list lengths, labels,
malformed bytes; unary and streamed. Each breach is INVALID_ARGUMENT or RESOURCE_EXHAUSTED with details, and
changes nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
from aitbc.coordinator.v1 import job_pb2, job_service_pb2_grpc, miner_service_pb2_grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from google.protobuf import struct_pb2
from sec_support import ALICE, M1, OPS, C, Store, StreamMiner, address, expect, fails, md, raw_unary, serving

KIB = 1024
LIMITS = {"max_message_bytes": 64 * KIB, "max_payload_bytes": 32 * KIB}


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    tag, size, out = (number << 3) | 2, len(data), bytearray()
    out += bytes([tag])
    while True:
        byte = size & 0x7F
        size >>= 7
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out) + data


def nested_bytes(depth: int) -> bytes:
    """A Struct nested depth levels deep, encoded by hand (protobuf refuses to build one this deep)."""
    body = b""
    for _ in range(depth):
        entry = _field(1, b"x") + _field(2, _field(5, body))  # {"x": Value{struct_value: body}}
        body = _field(1, entry)
    return body


def nested(depth: int) -> struct_pb2.Struct:
    root = struct_pb2.Struct()
    node = root
    for _ in range(depth - 1):
        node = node.fields["x"].struct_value
    node.fields["leaf"].string_value = "bottom"
    return root


async def test_message_and_payload_sizes(tmp_path: Path) -> None:
    async with serving(tmp_path, **LIMITS) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        store = Store(coord)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        before = store.snapshot()
        # over the message limit: RESOURCE_EXHAUSTED with ErrorInfo naming the size and the limit
        f = expect(await fails(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"\0" * (100 * KIB)), metadata=md(ALICE))),
                   C.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")  # fmt: skip
        assert f.metadata["limit"] == str(64 * KIB) and int(f.metadata["size"]) > 100 * KIB
        # far over it gRPC itself refuses, before any of our code runs
        f = await fails(
            jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"\0" * (200 * KIB)), metadata=md(ALICE))
        )
        assert f.code == C.RESOURCE_EXHAUSTED
        # within the message, over the payload limit: INVALID_ARGUMENT with the field
        f = expect(await fails(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"\0" * (40 * KIB)), metadata=md(ALICE))),
                   C.INVALID_ARGUMENT)  # fmt: skip
        assert [v[0] for v in f.violations] == ["payload"]
        # a streamed message over the limit ends the stream with the same reason
        miner = StreamMiner(ch, M1)
        await miner.hello()
        await miner.result("some-job", 1, b"\0" * (100 * KIB))
        expect(await fails(miner.next("result_ack")), C.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
        assert store.snapshot() == before
        # at the limits exactly, all is well
        await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"\0" * (32 * KIB)), metadata=md(ALICE))


async def test_deeply_nested_payloads(tmp_path: Path) -> None:
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        store = Store(coord)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        before = store.snapshot()
        f = expect(await fails(jobs.SubmitJob(jpb.SubmitJobRequest(payload=nested(33)), metadata=md(ALICE))),
                   C.INVALID_ARGUMENT)  # fmt: skip
        assert any(v[0] == "payload" and "levels" in v[1] for v in f.violations), f.violations
        # deeper than protobuf parses at all (its recursion limit): a malformed request, not a crash
        body = _field(1, nested_bytes(150))  # SubmitJobRequest.payload
        f = expect(await fails(raw_unary(ch, "/aitbc.coordinator.v1.JobService/SubmitJob")(body, metadata=md(ALICE))),
                   C.INVALID_ARGUMENT, "MALFORMED_REQUEST")  # fmt: skip
        assert f.violations
        # a nested result on the miner stream: refused, the stream's job untouched
        miner = StreamMiner(ch, M1)
        await miner.hello()
        await miner.send(results=mpb.Results(results=[mpb.Result(job_id="j", attempt=1, result=nested(32))]))
        ack = await miner.next("result_ack")
        assert not ack.accepted and ack.reason == "INVALID_RESULT"
        # deeper than protobuf parses: the stream ends, INVALID_ARGUMENT
        await miner.send(results=mpb.Results(results=[mpb.Result(job_id="j", attempt=1, result=nested(33))]))
        expect(await fails(miner.next("result_ack")), C.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        assert store.snapshot() == before
        await jobs.SubmitJob(
            jpb.SubmitJobRequest(payload=nested(31)), metadata=md(ALICE)
        )  # 32 levels: the limit


async def test_strings_lists_labels_and_malformed_bytes(tmp_path: Path) -> None:
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        store = Store(coord)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        nowhere = job_pb2.Constraints(region="nowhere")  # no miner here takes it: it stays queued
        job = (await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x", constraints=nowhere),
                                    metadata=md(ALICE))).job  # fmt: skip
        before = store.snapshot()
        ok = jpb.SubmitJobRequest(payload_bytes=b"x")
        cases = [
            (jobs.GetJob, jpb.GetJobRequest(job_id="j" * 65), "job_id"),
            (jobs.CancelJob, jpb.CancelJobRequest(job_id=job.job_id, reason="r" * 600), "reason"),
            (jobs.SubmitJob, jpb.SubmitJobRequest(payload_bytes=b"x", idempotency_key="k" * 200), "idempotency_key"),
            (jobs.SubmitJob, jpb.SubmitJobRequest(payload_bytes=b"x", metadata={f"k{i}": "v" for i in range(40)}),
             "metadata"),
            (jobs.SubmitJob, jpb.SubmitJobRequest(payload_bytes=b"x", metadata={"k": "v" * 5000}), "metadata"),
            (jobs.SubmitJob, jpb.SubmitJobRequest(payload_bytes=b"x", constraints=job_pb2.Constraints(
                models=[f"m{i}" for i in range(40)])), "constraints.models"),
            (jobs.SubmitJob, jpb.SubmitJobRequest(payload_bytes=b"x", constraints=job_pb2.Constraints(
                gpu="g" * 2000)), "constraints.gpu"),
            (jobs.SubmitJobs, jpb.SubmitJobsRequest(requests=[ok] * 1001), "requests"),
            (jobs.ListJobs, jpb.ListJobsRequest(states=[1] * 17), "states"),
            (jobs.ListJobs, jpb.ListJobsRequest(page_token="t" * 1000), "page_token"),
            (jobs.QuoteCost, jpb.QuoteCostRequest(units="1" * 100), "units"),
        ]  # fmt: skip
        for method, request, field in cases:
            f = expect(await fails(method(request, metadata=md(ALICE))), C.INVALID_ARGUMENT)
            assert any(v[0].startswith(field) for v in f.violations), (field, f.violations)
        # admin and miner requests are bounded too
        from aitbc.coordinator.v1 import admin_service_pb2 as apb
        from aitbc.coordinator.v1 import admin_service_pb2_grpc

        admin = admin_service_pb2_grpc.AdminServiceStub(ch)
        expect(await fails(admin.DrainMiner(apb.DrainMinerRequest(miner_id="m" * 500), metadata=md(OPS))),
               C.INVALID_ARGUMENT)  # fmt: skip
        expect(await fails(admin.ListJobs(apb.AdminServiceListJobsRequest(client_id="c" * 500), metadata=md(OPS))),
               C.INVALID_ARGUMENT)  # fmt: skip
        miners = miner_service_pb2_grpc.MinerServiceStub(ch)
        hello = mpb.Hello(capabilities=mpb.MinerCapabilities(slots=1), agent_version="v" * 500)
        expect(await fails(miners.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=md(M1))),
               C.INVALID_ARGUMENT)  # fmt: skip
        assert "m1" not in coord.scheduler.by_miner
        # malformed bytes: INVALID_ARGUMENT, not UNKNOWN or INTERNAL
        for body in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x12\x80\x80\x80\x80\x10"):
            f = await fails(
                raw_unary(ch, "/aitbc.coordinator.v1.JobService/GetJob")(body, metadata=md(ALICE))
            )
            expect(f, C.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        # the miner stream: an oversized heartbeat list ends the stream before anything is applied
        miner = StreamMiner(ch, M1)
        await miner.hello()
        beat = mpb.MinerHeartbeat(
            running_jobs=[mpb.RunningJob(job_id=f"j{i}", attempt=1) for i in range(5000)]
        )
        await miner.send(heartbeat=beat)
        f = expect(await fails(miner.next("result_ack")), C.INVALID_ARGUMENT)
        assert any(v[0] == "heartbeat.running_jobs" for v in f.violations), f.violations
        # and malformed bytes on a stream
        raw = ch.stream_stream("/aitbc.coordinator.v1.MinerService/Connect", request_serializer=None,
                               response_deserializer=None)(metadata=md(M1))  # fmt: skip
        await raw.write(b"\xff\xff\xff")
        expect(await fails(raw.read()), C.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        assert store.snapshot() == before
