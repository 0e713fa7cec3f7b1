"""Stream flow: a miner that stops reading is cut off, a large fill is split, busy miners leave the index of
miners a submit looks at.

A miner that keeps heartbeating but stops reading its stream is detected, and its jobs go back to the queue.

HTTP/2 keepalive cannot see this (the miner's transport still answers pings) and neither can the
application heartbeat (heartbeats keep coming): the coordinator notices that its writes stay blocked.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
from aitbc.client import Client
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc

from coordinator.config import ApiKeyEntry, Settings
from coordinator.server import start

CLIENT, MINER = "client-key-stall", "miner-key-stall"


async def test_a_miner_that_stops_reading_is_cut_off_and_its_jobs_requeued(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    coordinator = await start(Settings(
        app_port=0, database_url=f"sqlite:///{db}", sqlite_synchronous="NORMAL",
        client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),), miner_api_keys=(ApiKeyEntry("m1", "miner", MINER),),
        heartbeat_interval_seconds=0.2, heartbeat_timeout_seconds=1, lease_seconds=30, reconnect_grace_seconds=0.5,
    ))  # fmt: skip
    address = f"127.0.0.1:{coordinator.port}"
    channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(metadata=(("x-api-key", MINER),))
    beating = True

    async def heartbeat() -> None:
        while beating:
            await call.write(mpb.ConnectRequest(heartbeat=mpb.MinerHeartbeat()))
            await asyncio.sleep(0.1)

    try:
        await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=100))))
        assert (await call.read()).WhichOneof("message") == "welcome"
        beats = asyncio.create_task(heartbeat())  # alive on the application level, but never reads again
        async with Client(address, CLIENT) as client:
            # 60 jobs of 900 kB: far more than HTTP/2 flow control lets through to a reader that never reads
            jobs = [await client.submit(bytes(900_000)) for _ in range(60)]
            ids = {job.job_id for job in jobs}

            def events(reason: str) -> set[str]:
                with sqlite3.connect(db) as conn:
                    rows = conn.execute("SELECT DISTINCT job_id FROM job_events WHERE reason = ?", (reason,))
                    return {r[0] for r in rows} & ids

            def queued() -> set[str]:
                with sqlite3.connect(db) as conn:
                    return {r[0] for r in conn.execute("SELECT job_id FROM jobs WHERE state = 1")} & ids

            # Every job given to the stalled miner comes back (MINER_GONE); on a loaded machine the stream
            # may be cut before the last submits, which then stay queued without having been assigned.
            deadline = asyncio.get_running_loop().time() + 20
            while (assigned := events("ASSIGNED")) - events("MINER_GONE") or queued() != ids:
                assert asyncio.get_running_loop().time() < deadline, (
                    f"{len(assigned)} assigned, {len(events('MINER_GONE'))} requeued, {len(queued())} of 60 queued"
                )
                await asyncio.sleep(0.2)
            assert len(assigned) >= 10, f"only {len(assigned)} jobs (9 MB) went out: no stall to cut off"
        assert not beats.done(), "the miner kept heartbeating throughout"
        assert "m1" not in coordinator.scheduler.by_miner, "the stalled session is gone"
    finally:
        beating = False
        call.cancel()
        await channel.close()
        await coordinator.stop(grace=0.5)


async def test_a_fill_larger_than_one_message_reaches_the_miner_in_parts(tmp_path: Path) -> None:
    """20 queued jobs of 900 kB for a 20-slot miner: one fill, 18 MB, more than a message may carry."""
    coordinator = await start(Settings(
        app_port=0, database_url=f"sqlite:///{tmp_path / 'c.db'}", sqlite_synchronous="NORMAL",
        client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),), miner_api_keys=(ApiKeyEntry("m1", "miner", MINER),),
    ))  # fmt: skip
    address = f"127.0.0.1:{coordinator.port}"
    channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                          ("grpc.max_receive_message_length", 8 << 20)])  # fmt: skip
    try:
        async with Client(address, CLIENT) as client:
            ids = {(await client.submit(bytes(900_000))).job_id for _ in range(20)}
        call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(metadata=(("x-api-key", MINER),))
        await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=20))))
        assert (await call.read()).WhichOneof("message") == "welcome"
        received: set[str] = set()
        messages = 0
        while received != ids:
            message = await asyncio.wait_for(call.read(), 10)
            assert message is not grpc.aio.EOF, f"stream ended after {len(received)} of 20 jobs"
            if message.WhichOneof("message") == "assignments":
                messages += 1
                received |= {a.job.job_id for a in message.assignments.assignments}
        assert messages > 1
        call.cancel()
    finally:
        await channel.close()
        await coordinator.stop(grace=0.5)


async def test_a_submit_looks_only_at_miners_with_free_slots(tmp_path: Path) -> None:
    """Busy miners leave the scheduler's `available` index and come back when a slot frees."""
    coordinator = await start(Settings(
        app_port=0, database_url=f"sqlite:///{tmp_path / 'c.db'}", sqlite_synchronous="NORMAL",
        client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),),
        miner_api_keys=tuple(ApiKeyEntry(f"m{i}", "miner", f"{MINER}-{i}") for i in range(3)),
    ))  # fmt: skip
    address = f"127.0.0.1:{coordinator.port}"
    scheduler = coordinator.scheduler
    channels, calls = [], []
    try:
        for i in range(3):
            channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(
                metadata=(("x-api-key", f"{MINER}-{i}"),)
            )
            await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=1))))
            assert (await call.read()).WhichOneof("message") == "welcome"
            channels.append(channel)
            calls.append(call)
        assert len(scheduler.available) == 3
        async with Client(address, CLIENT) as client:
            jobs = [await client.submit({"n": i}) for i in range(3)]
            assignments = [(await call.read()).assignments.assignments[0] for call in calls]
            assert {a.job.job_id for a in assignments} == {j.job_id for j in jobs}
            assert scheduler.available == {}, "every miner is busy: a submit has nobody to look at"
            queued = await client.submit({"n": 3})
            assert (await client.get(queued.job_id)).state == 1  # QUEUED: nobody free
            done = mpb.Result(
                job_id=assignments[0].job.job_id, attempt=assignments[0].attempt, result_bytes=b"ok"
            )
            await calls[0].write(mpb.ConnectRequest(results=mpb.Results(results=[done])))
            # the freed slot takes the queued job at once, so the miner is busy again
            seen = set()
            while "assignments" not in seen:
                seen.add((await asyncio.wait_for(calls[0].read(), 10)).WhichOneof("message"))
            assert (await client.get(queued.job_id)).state == 2 and scheduler.available == {}
            done = mpb.Result(
                job_id=assignments[1].job.job_id, attempt=assignments[1].attempt, result_bytes=b"ok"
            )
            await calls[1].write(mpb.ConnectRequest(results=mpb.Results(results=[done])))
            assert (await asyncio.wait_for(calls[1].read(), 10)).WhichOneof("message") == "result_ack"
            assert list(scheduler.available) == [
                s.session_id for s in scheduler.by_miner.values() if s.miner_id == "m1"
            ]
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
        await coordinator.stop(grace=0.5)
