"""What each kind of caller sees as the coordinator stops (Coordinator.stop: health NOT_SERVING, gRPC's stop
begun, the go-aways, the calls in flight given the grace).

Calls that wait were not woken by the stop: a unary miner's PollJob (the go-away woke it; finding no news it waited
again), a client's WatchJob and GetJobResult(wait). They were cut only at the grace's end (UNAVAILABLE "Cancelling
all calls", from gRPC, not the coordinator), holding the whole stop for the grace (10 s by default). They now end
at once, UNAVAILABLE `SHUTTING_DOWN` (a watch after the changes queued for it), as a stream is told go away.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from aitbc.channel import open_channel
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import job_service_pb2_grpc, miner_service_pb2_grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    CLIENT_KEYS,
    COMPLETED,
    Harness,
    capabilities,
    details_of,
    eventually,
    expect_error,
    make_settings,
    miner_key,
    rpc_error,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.config import ApiKeyEntry
from coordinator.server import start

MD = (("x-api-key", miner_key("miner-00")),)


async def test_a_waiting_unary_poll_is_answered_shutting_down_when_the_stop_begins(coord: Harness) -> None:
    stub = coord.miner_stub()
    hello = mpb.Hello(capabilities=capabilities(slots=1))
    session_id = (
        await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=MD)
    ).welcome.session_id
    poll = asyncio.ensure_future(
        stub.PollJob(mpb.PollJobRequest(session_id=session_id, max_jobs=1), metadata=MD, timeout=30)
    )
    assert coord.coordinator is not None
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: scheduler.sessions[session_id].poll_waiting == 1, what="the poll waiting")

    # a grace long enough that, cut at its end, the poll would end with gRPC's status, not the coordinator's
    stopping = asyncio.ensure_future(coord.coordinator.stop(grace=3.0))
    details = await rpc_error(poll)
    expect_error(details, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    await stopping
    coord.coordinator = None


async def _stream(channel: grpc.aio.Channel, name: str, ends: dict[str, tuple[str, list[str]]]) -> None:
    """A miner's stream from hello to its end: what it read after the welcome, and how it ended."""
    call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(
        metadata=(("x-api-key", miner_key(name)),)
    )
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities())))
    first = await call.read()
    assert first is not grpc.aio.EOF and first.WhichOneof("message") == "welcome", first
    read: list[str] = []
    ends[name] = ("open", read)
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            body = getattr(message, message.WhichOneof("message"))
            read.append(f"go_away {body.reason}" if message.WhichOneof("message") == "go_away" else "other")
        ends[name] = ("OK", read)
    except grpc.aio.AioRpcError as exc:
        ends[name] = (exc.code().name, read)


async def test_every_one_of_hundreds_of_streams_is_told_to_go_away_before_it_ends_with_no_grace(
    tmp_path: Path,
) -> None:
    # gRPC's stop begins before the go-aways (and with grace 0 cuts the calls in flight 0.05 s after): each stream
    # must still read its go-away before it ends. Streams share connections, as a miner fleet's do.
    names = [f"fleet-{i:03d}" for i in range(300)]
    settings = make_settings(tmp_path / "coordinator.db").replace(
        miner_api_keys=tuple(ApiKeyEntry(n, "miner", miner_key(n)) for n in names)
    )
    coordinator = await start(settings)
    channels = [open_channel(f"127.0.0.1:{coordinator.port}", own_connection=True) for _ in range(6)]
    ends: dict[str, tuple[str, list[str]]] = {}
    streams = [asyncio.create_task(_stream(channels[i % 6], n, ends)) for i, n in enumerate(names)]
    stopping = None
    try:
        failed = [t for t in streams if t.done()]  # (a stream refused: its error, rather than a wait)

        def welcomed() -> bool:
            failed[:] = [t for t in streams if t.done()]
            return bool(failed) or len(coordinator.scheduler.by_miner) == len(names)

        await eventually(welcomed, within=60, what="all streams")
        assert not failed, [t.exception() for t in failed[:3]]
        stopping = asyncio.ensure_future(coordinator.stop(grace=0))
        await stopping
        await asyncio.wait_for(asyncio.gather(*streams), 10)
        # (ended OK, or cut by the grace's end once its go-away was read: the miner acts on the go-away alone)
        untold = {
            n: e
            for n, e in ends.items()
            if e[1] != ["go_away SHUTTING_DOWN"] or e[0] not in ("OK", "UNAVAILABLE")
        }
        assert len(ends) == len(names) and not untold, (
            f"{len(untold)} not told: {dict(list(untold.items())[:5])}"
        )
    finally:
        for task in streams:
            task.cancel()
        for channel in channels:
            await channel.close()
        if stopping is None:  # (failed before the stop: the store's threads would keep the process alive)
            await coordinator.stop(grace=0)


async def _watch_end(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError | None:
    """How a WatchJob stream ended: its error, or None for an end with OK."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_a_client_waiting_on_a_job_is_told_shutting_down_when_the_stop_begins(coord: Harness) -> None:
    # WatchJob and GetJobResult(wait) waiting for a queued job: ended UNAVAILABLE SHUTTING_DOWN as the stop begins
    # (the SDK resumes them at the next coordinator), not held until the grace's end to be cut by gRPC.
    client = coord.client()
    job = await client.submit({"n": 1})
    stub = job_service_pb2_grpc.JobServiceStub(coord.channel())
    md = (("x-api-key", CLIENT_KEYS["alice"]),)
    watch = stub.WatchJob(jpb.WatchJobRequest(job_id=job.job_id), metadata=md)
    assert (await watch.read()).job.job_id == job.job_id  # the first snapshot: the watch is registered
    result = asyncio.ensure_future(
        stub.GetJobResult(jpb.GetJobResultRequest(job_id=job.job_id, wait=True), metadata=md, timeout=30)
    )
    assert coord.coordinator is not None
    watchers = coord.coordinator.scheduler.watchers
    await eventually(lambda: len(watchers.get(job.job_id, ())) == 2, what="both waiting")

    stopping = asyncio.ensure_future(coord.coordinator.stop(grace=3.0))
    watched = await _watch_end(watch)
    assert watched is not None, "the watch ended OK before the job's end"
    expect_error(details_of(watched), grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    expect_error(await rpc_error(result), grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    await stopping
    coord.coordinator = None


async def test_the_sdks_wait_outlives_a_restart_and_sees_the_job_finish(coord: Harness) -> None:
    client = coord.client()
    job = await client.submit({"n": 2})
    waiting = asyncio.ensure_future(client.wait(job.job_id, timeout_s=30))
    assert coord.coordinator is not None
    watchers = coord.coordinator.scheduler.watchers
    await eventually(lambda: job.job_id in watchers, what="the SDK's watch")
    port = coord.coordinator.port
    await coord.coordinator.stop(grace=3.0)
    coord.coordinator = None
    coord.overrides["app_port"] = port  # (the client's channel goes on to the same address)
    await coord.start()
    miner = await coord.stream_miner("miner-00")
    [assignment] = await miner.assignments(1)
    miner.accept(assignment)
    miner.result(job.job_id, assignment.attempt)
    finished = await asyncio.wait_for(waiting, 30)
    assert finished.state == COMPLETED


async def test_health_watchers_are_told_not_serving_before_their_stream_ends_with_no_grace(
    coord: Harness,
) -> None:
    stub = health_pb2_grpc.HealthStub(coord.channel(own_connection=True))
    watches = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(20)]
    for call in watches:
        assert (await asyncio.wait_for(call.read(), 5)).status == health_pb2.HealthCheckResponse.SERVING
    assert coord.coordinator is not None
    await coord.coordinator.stop(grace=0)
    coord.coordinator = None
    for call in watches:
        update = await asyncio.wait_for(call.read(), 5)  # (read before the end, whatever the end's status)
        assert update is not grpc.aio.EOF and update.status == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()


async def test_sdk_waits_started_as_the_stop_begins_resume_at_the_next_coordinator(coord: Harness) -> None:
    client = coord.client()
    job = await client.submit({"n": 3})
    waits = [asyncio.ensure_future(client.wait(job.job_id, timeout_s=30)) for _ in range(50)]
    assert coord.coordinator is not None
    watchers = coord.coordinator.scheduler.watchers
    # the first one started: the others are on their way
    await eventually(lambda: job.job_id in watchers, interval=0, what="a wait started")
    port = coord.coordinator.port
    await coord.coordinator.stop(grace=0.2)
    coord.coordinator = None
    coord.overrides["app_port"] = port
    await coord.start()
    miner = await coord.stream_miner("miner-00")
    [assignment] = await miner.assignments(1)
    miner.accept(assignment)
    miner.result(job.job_id, assignment.attempt)
    ends = await asyncio.gather(*waits, return_exceptions=True)
    failed = [e for e in ends if isinstance(e, BaseException)]
    assert not failed, f"{len(failed)} of {len(ends)} waits failed, e.g. {failed[0]!r}"
    assert all(e.state == COMPLETED for e in ends)
