"""Miners act only on jobs they hold (a result, failure, accept or reject for another miner's job is refused
and changes nothing), and a second stream for the same identity replaces the first without losing jobs."""

from __future__ import annotations

from pathlib import Path

import grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import job_service_pb2_grpc, miner_service_pb2_grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from sec_support import (
    ALICE,
    ASSIGNED,
    COMPLETED,
    M1,
    M2,
    QUEUED,
    RUNNING,
    C,
    Store,
    StreamMiner,
    address,
    consistency_problems,
    eventually,
    expect,
    fails,
    md,
    serving,
)


async def test_a_miner_cannot_act_on_another_miners_job(tmp_path: Path) -> None:
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        store = Store(coord)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        owner = StreamMiner(ch, M1)
        await owner.hello(slots=1)
        job = (await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"work"), metadata=md(ALICE))).job
        [a] = (await owner.next("assignments")).assignments
        assert a.job.job_id == job.job_id and a.attempt == 1
        await owner.send(accept=mpb.Accept(job_id=job.job_id, attempt=1))
        await eventually(lambda: store.job(job.job_id)[0] == RUNNING, what="RUNNING")
        before = store.snapshot()

        thief = StreamMiner(ch, M2)
        await thief.hello(slots=1)
        # on the stream: result, failure, accept, reject, progress for m1's job: each refused with an ack
        await thief.result(job.job_id, 1, b"stolen")
        ack = await thief.next("result_ack")
        assert not ack.accepted and ack.reason == "JOB_NOT_HELD"
        await thief.send(failure=mpb.Failure(job_id=job.job_id, attempt=1, retryable=False, code="X"))
        assert (await thief.next("result_ack")).reason == "JOB_NOT_HELD"
        for message in ({"accept": mpb.Accept(job_id=job.job_id, attempt=1)},
                        {"reject": mpb.Reject(job_id=job.job_id, attempt=1, reason="mine now")}):  # fmt: skip
            await thief.send(**message)
            assert (await thief.next("result_ack")).reason == "JOB_NOT_HELD"
        await thief.send(progress=mpb.Progress(job_id=job.job_id, attempt=1, fraction=0.5))
        # on the unary path too (registering replaces m2's stream session: the rule for a second session)
        stub = miner_service_pb2_grpc.MinerServiceStub(ch)
        session = (await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(
            capabilities=mpb.MinerCapabilities(slots=1))), metadata=md(M2))).welcome.session_id  # fmt: skip
        result = mpb.Result(job_id=job.job_id, attempt=1, result_bytes=b"stolen", units="1")
        expect(await fails(stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=result),
                                             metadata=md(M2))), C.FAILED_PRECONDITION, "JOB_NOT_HELD")  # fmt: skip
        failure = mpb.Failure(job_id=job.job_id, attempt=1, retryable=False, code="X")
        expect(await fails(stub.ReportFailure(mpb.ReportFailureRequest(session_id=session, failure=failure),
                                              metadata=md(M2))), C.FAILED_PRECONDITION, "JOB_NOT_HELD")  # fmt: skip
        # m1's own session id, used with m2's key: not found (sessions belong to identities)
        own = coord.scheduler.by_miner["m1"].session_id
        expect(await fails(stub.SubmitResult(mpb.SubmitResultRequest(session_id=own, result=result),
                                             metadata=md(M2))), C.NOT_FOUND, "SESSION_NOT_FOUND")  # fmt: skip
        assert store.snapshot() == before, "a refused action changed the store"
        assert coord.scheduler.jobs[job.job_id].miner_id == "m1"
        # the holder finishes it, with its own bytes
        await owner.result(job.job_id, 1, b"honest")
        assert (await owner.next("result_ack")).accepted
        await eventually(lambda: store.job(job.job_id)[0] == COMPLETED, what="COMPLETED")
        assert store.scalar("SELECT output FROM job_results WHERE job_id = ?", (job.job_id,)) == b"honest"
        assert (await thief.next("go_away")).reason == "SESSION_REPLACED"
        # and a late copy from the thief still changes nothing
        expect(await fails(stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=result),
                                             metadata=md(M2))), C.FAILED_PRECONDITION, "JOB_NOT_HELD")  # fmt: skip
        assert store.scalar("SELECT COUNT(*) FROM job_results") == 1
        assert consistency_problems(store) == []
        owner.cancel()
        thief.cancel()


async def test_a_second_stream_replaces_the_first_and_keeps_its_jobs(tmp_path: Path) -> None:
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        store = Store(coord)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        first = StreamMiner(ch, M1)
        await first.hello(slots=1)
        job = (await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"keep"), metadata=md(ALICE))).job
        [a] = (await first.next("assignments")).assignments
        # the same identity connects again, listing the job it runs
        second = StreamMiner(ch, M1)
        welcome = await second.hello(running=[(job.job_id, a.attempt)], slots=1)
        assert [(j.job_id, j.attempt) for j in welcome.resumed_jobs] == [(job.job_id, 1)]
        go = await first.next("go_away")
        assert go.reason == "SESSION_REPLACED"
        assert await first.end_status() == C.OK  # replaced cleanly, not failed
        assert coord.scheduler.by_miner["m1"].session_id == welcome.session_id
        # the first stream can no longer act; the second finishes the job at the same attempt
        await second.result(job.job_id, 1, b"done")
        assert (await second.next("result_ack")).accepted
        await eventually(lambda: store.job(job.job_id)[:2] == (COMPLETED, 1), what="COMPLETED at attempt 1")
        assert consistency_problems(store) == []
        second.cancel()


async def test_a_second_stream_that_does_not_list_a_job_sends_it_back_to_the_queue(tmp_path: Path) -> None:
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        store = Store(coord)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        first = StreamMiner(ch, M1)
        await first.hello(slots=1)
        job = (await jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"lost?"), metadata=md(ALICE))).job
        await first.next("assignments")
        second = StreamMiner(ch, M1)
        welcome = await second.hello(running=[], slots=1)  # it does not run the job (a restarted process)
        assert list(welcome.resumed_jobs) == []
        # not lost: requeued with the next attempt, and handed out again (here to the new session)
        [again] = (await second.next("assignments")).assignments
        assert again.job.job_id == job.job_id and again.attempt == 2
        assert store.job(job.job_id)[:2] == (ASSIGNED, 2)
        states = [r[0] for r in store.rows("SELECT to_state FROM job_events WHERE job_id = ? ORDER BY sequence",
                                           (job.job_id,))]  # fmt: skip
        assert states == [QUEUED, ASSIGNED, QUEUED, ASSIGNED]
        # the old attempt is fenced off
        await second.result(job.job_id, 1, b"stale")
        assert (await second.next("result_ack")).reason in ("STALE_ATTEMPT", "JOB_NOT_HELD")
        await second.result(job.job_id, 2, b"fresh")
        assert (await second.next("result_ack")).accepted
        await eventually(lambda: store.job(job.job_id)[:2] == (COMPLETED, 2), what="COMPLETED at attempt 2")
        assert consistency_problems(store) == []
        first.cancel()
        second.cancel()
