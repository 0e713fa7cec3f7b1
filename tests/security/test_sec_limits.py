"""Rate limits per key and RPC group (reached, answered with RetryInfo, recovered), the miner stream's
message budget (slowed, then cut off), calls and streams in flight per key."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import job_service_pb2_grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from sec_support import ALICE, BOB, M1, C, StreamMiner, address, eventually, expect, fails, md, serving

from coordinator.config import SettingsError, parse_rate_limits


async def test_rate_limit_reached_answers_retry_info_and_recovers(tmp_path: Path) -> None:
    async with serving(tmp_path, rate_limits="read=10/s:burst=3,submit=2/s:burst=1") as coord:
        async with grpc.aio.insecure_channel(address(coord)) as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            usage = jpb.GetUsageRequest()
            for _ in range(3):  # the burst
                await jobs.GetUsage(usage, metadata=md(ALICE))
            f = expect(
                await fails(jobs.GetUsage(usage, metadata=md(ALICE))), C.RESOURCE_EXHAUSTED, "RATE_LIMITED"
            )
            assert f.metadata["group"] == "read"
            assert f.retry_delay_s is not None and 0 < f.retry_delay_s <= 0.1 + 1e-6, f.retry_delay_s
            # per key: bob is untouched; per group: alice may still submit
            await jobs.GetUsage(usage, metadata=md(BOB))
            await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x"), metadata=md(ALICE))
            f2 = await fails(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"y"), metadata=md(ALICE)))
            expect(f2, C.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            assert f2.metadata["group"] == "submit" and 0 < f2.retry_delay_s <= 0.5 + 1e-6
            # waiting as told is enough
            await asyncio.sleep(f.retry_delay_s)
            await jobs.GetUsage(usage, metadata=md(ALICE))
            await asyncio.sleep(f2.retry_delay_s)
            await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"y"), metadata=md(ALICE))
            # a sustained 10/s is served; refusals stay the exception
            await asyncio.sleep(0.3)
            started, refused = time.monotonic(), 0
            while time.monotonic() - started < 0.5:
                try:
                    await jobs.GetUsage(usage, metadata=md(ALICE))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == C.RESOURCE_EXHAUSTED
                    refused += 1
                await asyncio.sleep(0.12)
            assert refused == 0


async def test_a_batch_costs_one_token_per_job(tmp_path: Path) -> None:
    async with serving(tmp_path, rate_limits="submit=10/s:burst=10") as coord:
        async with grpc.aio.insecure_channel(address(coord)) as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            batch = jpb.SubmitJobsRequest(requests=[jpb.SubmitJobRequest(payload_bytes=b"x")] * 50)
            done = await jobs.SubmitJobs(
                batch, metadata=md(ALICE)
            )  # a batch larger than the burst still passes
            assert len(done.responses) == 50
            f = expect(await fails(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"y"), metadata=md(ALICE))),
                       C.RESOURCE_EXHAUSTED, "RATE_LIMITED")  # fmt: skip
            # 50 jobs at 10/s: about 4 s of debt, not the 0.1 s one call would cost
            assert f.retry_delay_s is not None and f.retry_delay_s > 3.0, f.retry_delay_s
            await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"z"), metadata=md(BOB))  # per key


def test_rate_limit_settings() -> None:
    limits = parse_rate_limits("submit=200/s:burst=400,read=500/s,miner=1000/s,admin=50/s,stream=off")
    assert limits["submit"] == (200, 400) and limits["read"] == (500, 500) and limits["stream"] is None
    assert parse_rate_limits("admin=60/m")["admin"] == (1.0, 1.0)
    assert parse_rate_limits("")["submit"] == (200, 400)  # defaults
    for bad in ("nope=1/s", "read=1/d", "read=-1/s", "read=5/s:burst=0", "read=5/s:size=3", "read"):
        try:
            parse_rate_limits(bad)
            raise AssertionError(f"{bad!r} was accepted")
        except SettingsError:
            pass


async def test_a_flooding_miner_is_slowed_then_cut_off(tmp_path: Path) -> None:
    rate, burst, cutoff = 40.0, 5.0, 0.5
    async with serving(tmp_path, rate_limits=f"stream={rate:g}/s:burst={burst:g}",
                       stream_throttle_cutoff_seconds=cutoff) as coord:  # fmt: skip
        async with grpc.aio.insecure_channel(address(coord)) as ch:
            miner = StreamMiner(ch, M1)
            await miner.hello()
            # each accept of a job it does not hold is answered by a refused ack: one reply per message handled
            flood = mpb.ConnectRequest(accept=mpb.Accept(job_id="not-mine", attempt=1))

            async def writer() -> None:
                try:
                    for _ in range(5000):
                        await miner.call.write(flood)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    pass

            task = asyncio.create_task(writer())
            acks, started = 0, time.monotonic()
            try:
                while True:
                    msg = await asyncio.wait_for(miner.call.read(), 10)
                    assert msg is not grpc.aio.EOF, "the stream ended without an error"
                    if msg.WhichOneof("message") == "result_ack":
                        acks += 1
                        last = time.monotonic()
            except grpc.aio.AioRpcError as exc:
                from sec_support import failure_of

                if exc.code() is C.INTERNAL and "from Core" in (exc.details() or ""):
                    # grpcio's own race: a write of the flood still in flight when the server closed the
                    # stream fails locally and hides the server's status (seen 2 runs in ~10 under load);
                    # the bounds below and the closed session still show the slow-down and the cut-off
                    pass
                else:
                    f = expect(failure_of(exc), C.RESOURCE_EXHAUSTED, "STREAM_RATE_EXCEEDED")
                    assert f.retry_delay_s and f.retry_delay_s > 0
            finally:
                task.cancel()
            # slowed: handled at about the rate, not as fast as the miner wrote
            handled_for = last - started
            # (an upper bound on work and a lower bound on time: both hold however loaded the machine is;
            # a lower bound on acks would not, a busy machine handles fewer)
            assert 0 < acks <= burst + rate * (cutoff + 0.5), acks
            assert handled_for >= (acks - burst) / rate * 0.8, (acks, handled_for)
            # the cut-off session is gone; the miner may come back with a fresh budget
            await eventually(lambda: "m1" not in coord.scheduler.by_miner, what="the session to close")
            again = StreamMiner(ch, M1)
            await again.hello()
            await again.send(heartbeat=mpb.MinerHeartbeat())
            again.cancel()


async def test_a_miner_within_its_budget_is_not_cut_off(tmp_path: Path) -> None:
    async with serving(
        tmp_path, rate_limits="stream=50/s:burst=5", stream_throttle_cutoff_seconds=0.3
    ) as coord:
        async with grpc.aio.insecure_channel(address(coord)) as ch:
            miner = StreamMiner(ch, M1)
            await miner.hello()
            for _ in range(30):  # 30 messages at ~33/s, over 0.9 s: three times the cut-off time
                await miner.send(accept=mpb.Accept(job_id="not-mine", attempt=1))
                await miner.next("result_ack")
                await asyncio.sleep(0.03)
            miner.cancel()


async def test_calls_and_streams_in_flight_per_key(tmp_path: Path) -> None:
    async with serving(tmp_path, max_concurrent_calls_per_key=3, max_streams_per_identity=2) as coord:
        async with grpc.aio.insecure_channel(address(coord)) as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            job = (await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x"), metadata=md(ALICE))).job
            watch = jpb.WatchJobRequest(job_id=job.job_id)
            streams = [jobs.WatchJob(watch, metadata=md(ALICE)) for _ in range(2)]
            for s in streams:
                await s.read()  # open: the job as it is now
            f = expect(await fails(jobs.WatchJob(watch, metadata=md(ALICE)).read()), C.RESOURCE_EXHAUSTED,
                       "TOO_MANY_STREAMS")  # fmt: skip
            assert f.retry_delay_s is not None
            await jobs.GetUsage(jpb.GetUsageRequest(), metadata=md(ALICE))  # unary calls still pass
            # a long call makes the third in flight; a fourth is refused
            waiting = asyncio.ensure_future(
                jobs.GetJobResult(
                    jpb.GetJobResultRequest(job_id=job.job_id, wait=True), metadata=md(ALICE), timeout=5
                )
            )
            state = coord.keyring.state("client", "alice")
            await eventually(lambda: state.usage.inflight == 3, what="three calls in flight")
            expect(await fails(jobs.GetUsage(jpb.GetUsageRequest(), metadata=md(ALICE))), C.RESOURCE_EXHAUSTED,
                   "TOO_MANY_CONCURRENT_CALLS")  # fmt: skip
            await jobs.GetUsage(jpb.GetUsageRequest(), metadata=md(BOB))  # another key is not affected
            # cancelling frees the slots: a cancelled stream and a cancelled call give theirs back
            streams[0].cancel()
            waiting.cancel()
            await eventually(
                lambda: state.usage.inflight == 1 and state.usage.streams == 1, what="released slots"
            )
            third = jobs.WatchJob(watch, metadata=md(ALICE))
            await third.read()
            third.cancel()
            streams[1].cancel()
            await eventually(
                lambda: state.usage.inflight == 0 and state.usage.streams == 0, what="nothing in flight"
            )
