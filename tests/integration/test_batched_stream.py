"""Batching on the Connect stream: jobs submitted together reach a miner in one Assignments message, and
results sent together are acknowledged in one ResultAcks message when the miner set Hello.batched_acks
(one ResultAck per result otherwise, as older miners expect)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from coord_support import CLIENT_KEYS, Harness, capabilities, miner_key, struct


async def _connect(coord: Harness, batched_acks: bool):  # type: ignore[no-untyped-def]
    stub = miner_service_pb2_grpc.MinerServiceStub(coord.channel(own_connection=True))
    call = stub.Connect(metadata=(("x-api-key", miner_key("miner-00")),))
    await call.write(
        mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(slots=4), batched_acks=batched_acks))
    )
    first = await asyncio.wait_for(call.read(), 5)
    assert first.WhichOneof("message") == "welcome"
    return call


async def _submit_four(coord: Harness) -> list[str]:
    reqs = [jpb.SubmitJobRequest(payload=struct({"n": i})) for i in range(4)]
    response = await coord.jobs_stub().SubmitJobs(
        jpb.SubmitJobsRequest(requests=reqs), metadata=(("x-api-key", CLIENT_KEYS["alice"]),)
    )
    return [r.job.job_id for r in response.responses]


async def _read(call, kind: str) -> mpb.ConnectResponse:  # type: ignore[no-untyped-def]
    while True:
        msg = await asyncio.wait_for(call.read(), 5)
        assert msg is not grpc.aio.EOF
        if msg.WhichOneof("message") == kind:
            return msg
        assert msg.WhichOneof("message") in ("assignments", "result_ack", "result_acks"), msg


@pytest.mark.parametrize("batched_acks", [True, False])
async def test_jobs_submitted_together_arrive_together_and_acks_follow_the_hello(
    coord: Harness, batched_acks: bool
) -> None:
    call = await _connect(coord, batched_acks)
    ids = await _submit_four(coord)
    msg = await _read(call, "assignments")
    assigned = [a.job.job_id for a in msg.assignments.assignments]
    assert assigned == ids  # one message, in submission order
    results = [
        mpb.Result(
            job_id=a.job.job_id, attempt=a.attempt, result=struct({"ok": True}), units="1", unit_type="jobs"
        )
        for a in msg.assignments.assignments
    ]
    await call.write(mpb.ConnectRequest(results=mpb.Results(results=results)))
    if batched_acks:
        acks = list((await _read(call, "result_acks")).result_acks.acks)
    else:
        acks = [(await _read(call, "result_ack")).result_ack for _ in ids]
    assert [a.job_id for a in acks] == ids
    assert all(a.accepted and a.receipt_id for a in acks)
    call.cancel()
