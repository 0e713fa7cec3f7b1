"""Review of this session's changes (helper-131): a repeat told from another result (engine._same_result) across a
restart, on SQLite and PostgreSQL; a Result out of its bounds (bounds.CHECKED_BY_SERVICER) resent on a new stream
after a reconnect; the SDK miner's reaction to JOB_NOT_HELD for a result it resent; a miner's price at the ledger's
edge (check_price) on the unary hello, in QuoteCost and in matching with max_price."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aitbc.coordinator.v1 import job_pb2, miner_service_pb2_grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import COMPLETED, Harness, capabilities, eventually, miner_key, rpc_error, struct
from pg_harness import started
from test_batched_hostile_input import ALICE, RawMiner, expect_invalid, get_job, still_serves, submit_many

from coordinator.domain.validation import MAX_PRICE, check_price

T = 10.0
SLOW = {"rate_limits": "submit=off,read=off,miner=off,admin=off,stream=off", "lease_seconds": 30.0,
        "heartbeat_timeout_seconds": 30.0, "reconnect_grace_seconds": 5.0}  # fmt: skip


def result(job_id: str, attempt: int, **kw: Any) -> mpb.Result:
    kw.setdefault("result", struct({"v": 1}))
    return mpb.Result(job_id=job_id, attempt=attempt, **kw)


# ------------------------------------------------------------------ a repeat after a restart, SQLite and PostgreSQL
@pytest.mark.parametrize("postgres", [False, True], ids=["sqlite", "postgres"])
async def test_a_result_resent_after_a_restart_is_told_from_another_one(
    tmp_path: Path, postgres: bool
) -> None:
    """The job completed (units "1.50", kept as written), the coordinator restarted (the engine holds nothing of the
    job: the stored row decides): the same result again gets the first acknowledgement, on either store; one whose
    units are written otherwise ("1.5"), whose unit_type differs, or whose output differs is refused JOB_NOT_HELD
    naming the receipt; one out of its bounds is refused INVALID_RESULT alone; the stream stays up throughout."""
    async with started(tmp_path, SLOW, postgres) as coord:
        m = RawMiner(coord, "miner-01", slots=1, batched_acks=True)
        await m.start()
        [job_id] = await submit_many(coord, 1)
        [a] = await m.assignments(1)
        first = result(job_id, a.attempt, units="1.50", unit_type="gpu_seconds")
        await m.results(first)
        [ack], _ = await m.acks(1)
        assert ack.accepted and ack.receipt_id
        await coord.restart()

        m = RawMiner(coord, "miner-01", slots=1, batched_acks=True, running_jobs=[mpb.RunningJob(job_id=job_id,
                                                                                                 attempt=a.attempt)])  # fmt: skip
        await m.start()
        acks = []
        for r in (first,
                  result(job_id, a.attempt, units="1.5", unit_type="gpu_seconds"),
                  result(job_id, a.attempt, units="1.50", unit_type="jobs"),
                  result(job_id, a.attempt, units="1.50", unit_type="gpu_seconds", result=struct({"v": 2})),
                  result(job_id, a.attempt, units="1.50", unit_type="t" * 65),
                  first):  # fmt: skip
            await m.results(r)  # one at a time: a batch's refusals by intake are answered before the others
            acks += (await m.acks(1))[0]
        assert [(x.accepted, x.receipt_id) for x in (acks[0], acks[5])] == [(True, ack.receipt_id)] * 2, acks
        for other in acks[1:4]:
            assert (other.accepted, other.reason) == (False, "JOB_NOT_HELD"), other
            assert ack.receipt_id in other.message
        assert (acks[4].accepted, acks[4].reason) == (False, "INVALID_RESULT") and "unit_type" in acks[
            4
        ].message
        [job2] = await submit_many(coord, 1)
        [b] = await m.assignments(1)
        assert b.job.job_id == job2
        await m.results(result(job2, b.attempt))
        [ack2], _ = await m.acks(1)
        assert ack2.accepted
        got = await coord.jobs_stub().GetJobResult(
            jpb.GetJobResultRequest(job_id=job_id), metadata=ALICE, timeout=T
        )
        assert got.result.units == "1.50" and got.result.receipt_id == ack.receipt_id


# ------------------------------------------------------------------ the unary path, a result past its bounds
@pytest.mark.coordinator(**SLOW)
async def test_unary_results_past_their_bounds_after_the_job_completed(coord: Harness) -> None:
    """SubmitResult with a job id past its bound (2000 characters: refused by the servicer now, not the interceptor)
    answers INVALID_RESULT naming job_id; a resend of the accepted result still gets its ack; the session serves on."""
    stub = miner_service_pb2_grpc.MinerServiceStub(coord.channel())
    md = (("x-api-key", miner_key("miner-03")),)
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities())),
                                   metadata=md, timeout=T)  # fmt: skip
    sid = reg.welcome.session_id
    [job_id] = await submit_many(coord, 1)
    [a] = (await stub.PollJob(mpb.PollJobRequest(session_id=sid), metadata=md, timeout=3)).assignments
    r = result(job_id, a.attempt, units="2")
    first = (
        await stub.SubmitResult(mpb.SubmitResultRequest(session_id=sid, result=r), metadata=md, timeout=T)
    ).ack
    assert first.accepted
    err = await rpc_error(stub.SubmitResult(mpb.SubmitResultRequest(
        session_id=sid, result=result("j" * 2000, a.attempt)), metadata=md, timeout=T))  # fmt: skip
    assert expect_invalid(err, "INVALID_RESULT") == [
        "job_id"
    ]  # (named within the result, not "result.job_id")
    again = (
        await stub.SubmitResult(mpb.SubmitResultRequest(session_id=sid, result=r), metadata=md, timeout=T)
    ).ack
    assert again.accepted and again.receipt_id == first.receipt_id
    assert (await get_job(coord, job_id)).state == COMPLETED
    await still_serves(coord)


# ------------------------------------------------------------------ the SDK miner and a refused resend
@pytest.mark.coordinator(**SLOW)
async def test_the_sdk_miner_drops_a_resent_result_refused_job_not_held_and_goes_on(coord: Harness) -> None:
    """The SDK miner holding, unacknowledged, a result other than the one the job was completed with (its own
    identity's): its new stream's resend is refused JOB_NOT_HELD; it drops it (no failure report, no retry) and takes
    and completes the next job."""
    from aitbc.miner import Outcome, job_input
    from coord_support import sdk_miner

    hand = RawMiner(coord, "miner-00", slots=1, batched_acks=True)
    await hand.start()
    [job_id] = await submit_many(coord, 1)
    [a] = await hand.assignments(1)
    await hand.results(result(job_id, a.attempt, units="1", unit_type="jobs"))
    [ack], _ = await hand.acks(1)
    assert ack.accepted
    hand.call.cancel()

    async def runner(job: Any) -> Outcome:
        return Outcome(job_input(job), units="1", unit_type="jobs")

    miner = sdk_miner(coord.address, runner)
    miner.unacked[job_id] = (a.attempt, result(job_id, a.attempt, units="2", unit_type="jobs"))
    coord.run_miner(miner)
    await eventually(lambda: not miner.unacked, within=5, what="the refused resend dropped")
    [job2] = await submit_many(coord, 1)
    await eventually(lambda: miner.acked == 1, within=5, what="the next job's result acknowledged")
    assert (await get_job(coord, job2)).state == COMPLETED
    events = coord.db.events(job_id)
    assert [e["reason"] for e in events].count("COMPLETED") == 1 and events[-1]["reason"] == "COMPLETED"


# ------------------------------------------------------------------ check_price at the ledger's edge
@pytest.mark.parametrize(
    ("price", "fault"),
    [("0", ""), ("", ""), ("0.000000001", ""), (MAX_PRICE, ""), ("9223372036.854775808", "at most"),
     ("9223372037", "at most"), ("9223372036.8547758071", "plain"), ("09", "plain"), ("00", "plain"),
     ("999999999999999999.999999999", "at most"), ("1" * 19, "plain")],
)  # fmt: skip
def test_check_price_edges(price: str, fault: str) -> None:
    v: list[tuple[str, str]] = []
    check_price(v, "capabilities.price", price)
    assert len(v) == (1 if fault else 0), v
    if fault:
        assert v[0][0] == "capabilities.price" and fault in v[0][1], v


@pytest.mark.coordinator(**SLOW)
async def test_price_edges_on_the_unary_hello_in_quotes_and_matching(coord: Harness) -> None:
    """RegisterMiner refuses a price past the ledger's edge (INVALID_REQUEST naming capabilities.price) as the stream's
    hello does; a miner at exactly MAX_PRICE is quoted and matched by a max_price of MAX_PRICE (not by one nano less)."""
    stub = miner_service_pb2_grpc.MinerServiceStub(coord.channel())
    md = (("x-api-key", miner_key("miner-03")),)
    hello = mpb.Hello(capabilities=capabilities(price="9223372036.854775808"))
    err = await rpc_error(stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=md, timeout=T))
    assert "capabilities.price" in expect_invalid(err)
    m = RawMiner(coord, "miner-01", slots=1, batched_acks=True)
    m.hello.capabilities.price = MAX_PRICE
    await m.start()
    jobs = coord.jobs_stub()

    async def quote(max_price: str, units: str = "1") -> jpb.QuoteCostResponse:
        return await jobs.QuoteCost(jpb.QuoteCostRequest(constraints=job_pb2.Constraints(max_price=max_price),
                                                         units=units), metadata=ALICE, timeout=T)  # fmt: skip

    q = await quote(MAX_PRICE)
    assert (q.eligible_miners, q.min_unit_price, q.min_cost) == (1, MAX_PRICE, MAX_PRICE), q
    assert (await quote("9223372036.854775806")).eligible_miners == 0
    assert (await quote("999999999999999999.999999999")).eligible_miners == 1
    cheap = await submit_many(coord, 1, constraints=job_pb2.Constraints(max_price="9223372036.854775806"))
    [job_id] = await submit_many(coord, 1, constraints=job_pb2.Constraints(max_price=MAX_PRICE))
    [a] = await m.assignments(1)
    assert a.job.job_id == job_id
    await m.results(result(job_id, a.attempt, units="1"))
    [ack], _ = await m.acks(1)
    assert ack.accepted
    await asyncio.sleep(0.3)
    assert (await get_job(coord, cheap[0])).state != COMPLETED
