"""A long-poll's answer must reach its miner before the miner's deadline. PollJob waited until 50 ms before
it: a miner more than 50 ms away (a WAN, a proxy) got DEADLINE_EXCEEDED instead of the answer, and the
assignments in a late answer were lost with it (handed out: back only when their leases ran out, attempts
spent). The poll keeps a share of the time left for the way back. Real coordinator on loopback, reached
through a relay that delays every answer."""

from __future__ import annotations

import asyncio

import grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from coord_support import Harness, capabilities, miner_key

from tests.tcp_relay import DOWN, Link, Relay

MD = (("x-api-key", miner_key("miner-00")),)
ONE_WAY_S = 0.2  # the answer's way back to the miner


class SlowWayBack(Relay):
    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == DOWN:
            await asyncio.sleep(ONE_WAY_S)
        return data


async def test_an_empty_long_poll_answer_reaches_a_distant_miner_before_its_deadline(coord: Harness) -> None:
    relay = SlowWayBack("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
    port = await relay.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = miner_service_pb2_grpc.MinerServiceStub(channel)
        reg = await stub.RegisterMiner(
            mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=1))),
            metadata=MD,
            timeout=10,
        )
        for _ in range(2):  # (each answered, not cut by the miner's deadline)
            answer = await stub.PollJob(
                mpb.PollJobRequest(session_id=reg.welcome.session_id), metadata=MD, timeout=2.0
            )
            assert not answer.assignments
    finally:
        await channel.close()
        await relay.close()
