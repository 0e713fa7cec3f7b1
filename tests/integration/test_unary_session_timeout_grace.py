"""A unary miner's session closed for silence (HEARTBEAT_TIMEOUT) keeps its jobs for the reconnect grace period,
as a lost stream's does: a unary miner has no connection to lose, so its silence is how a network outage or a
failed proxy looks. Back within the grace and listing its jobs, it keeps them (same attempt); not back in time,
they are requeued MINER_GONE and run elsewhere. The SDK's poll miner cut off (a stalled relay) past the heartbeat
timeout completes its running job at its first attempt once the network heals."""

from __future__ import annotations

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.receipts import KeySet, verify_bundle
from coord_support import (
    COMPLETED,
    QUEUED,
    RUNNING,
    Harness,
    capabilities,
    eventually,
    expect_error,
    gated_sdk_miner,
    miner_key,
    rpc_error,
    struct,
)

from tests.tcp_relay import Relay

MD = (("x-api-key", miner_key("miner-00")),)


async def _holding_one_job(coord: Harness) -> tuple[object, str, str]:
    """miner-00 registered on the unary path, holding one job (attempt 1) it has heartbeated for; then silent.
    Returns (its stub, its session id, the job id)."""
    alice = coord.client("alice")
    stub = coord.miner_stub()
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities())),
                                   metadata=MD)  # fmt: skip
    session = reg.welcome.session_id
    job = await alice.submit({"task": "flaky network"})
    [a] = (await stub.PollJob(mpb.PollJobRequest(session_id=session), metadata=MD, timeout=5)).assignments
    assert (a.job.job_id, a.attempt) == (job.job_id, 1)
    await stub.Heartbeat(mpb.HeartbeatRequest(session_id=session, running_jobs=[mpb.RunningJob(
        job_id=job.job_id, attempt=1)]), metadata=MD)  # fmt: skip
    return stub, session, job.job_id


async def _closed_for_silence(coord: Harness, session: str) -> None:
    """The miner makes no call: its session ends once the heartbeat timeout (1 s here) has passed."""
    scheduler = coord.coordinator.scheduler
    await eventually(lambda: session not in scheduler.sessions, within=10.0, what="the silent session closed")


@pytest.mark.coordinator(reconnect_grace_seconds=30.0)
async def test_a_silent_unary_miner_back_within_the_grace_keeps_its_job(coord: Harness) -> None:
    alice = coord.client("alice")
    stub, session, job_id = await _holding_one_job(coord)
    await _closed_for_silence(coord, session)

    # away, its job waiting for it (as for a lost stream): not requeued, attempt unspent
    miners = await coord.admin().miners()
    assert miners["miner-00"].status == apb.MINER_STATUS_DISCONNECTED and miners["miner-00"].running_jobs == 1
    got = await alice.get(job_id)
    assert (got.state, got.attempt) == (RUNNING, 1), coord.db.events(job_id)  # (its heartbeat accepted it)
    expect_error(await rpc_error(stub.Heartbeat(mpb.HeartbeatRequest(session_id=session), metadata=MD)),
                 grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")  # fmt: skip

    # it registers again listing the job: kept, and its result lands at attempt 1
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(
        capabilities=capabilities(), running_jobs=[mpb.RunningJob(job_id=job_id, attempt=1)])), metadata=MD)  # fmt: skip
    assert [(r.job_id, r.attempt) for r in reg.welcome.resumed_jobs] == [(job_id, 1)]
    result = mpb.Result(job_id=job_id, attempt=1, result=struct({"ok": True}), units="1", unit_type="jobs")
    ack = (await stub.SubmitResult(mpb.SubmitResultRequest(session_id=reg.welcome.session_id, result=result),
                                   metadata=MD)).ack  # fmt: skip
    assert ack.accepted and ack.receipt_id

    done = await coord.finished(alice, job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert not [e for e in coord.db.events(job_id) if e["to_state"] == QUEUED and e["from_state"]]
    receipt = verify_bundle(await alice.bundle(job_id), KeySet.load(await alice.signing_keys()))
    assert receipt.payload["job_id"] == job_id and receipt.receipt_id == ack.receipt_id
    assert receipt.payload["attempt"] == 1


@pytest.mark.coordinator(reconnect_grace_seconds=1.0)
async def test_a_silent_unary_miner_not_back_in_time_loses_its_job_as_miner_gone(coord: Harness) -> None:
    alice = coord.client("alice")
    stub, session, job_id = await _holding_one_job(coord)
    await _closed_for_silence(coord, session)
    other = await coord.stream_miner("miner-01")

    [a] = await other.assignments(1, within=10.0)  # once the grace is over, the job runs elsewhere
    assert (a.job.job_id, a.attempt) == (job_id, 2)
    requeued = [e for e in coord.db.events(job_id) if e["to_state"] == QUEUED and e["from_state"]]
    assert [e["reason"] for e in requeued] == ["MINER_GONE"]
    other.accept(a)
    other.result(job_id, 2)
    done = await coord.finished(alice, job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2)
    assert (await alice.result(job_id)).result.miner_id == "miner-01"

    # the first miner, back too late, keeps nothing: its old attempt's result is refused (the job is done)
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(
        capabilities=capabilities(), running_jobs=[mpb.RunningJob(job_id=job_id, attempt=1)])), metadata=MD)  # fmt: skip
    assert not reg.welcome.resumed_jobs
    stale = mpb.Result(job_id=job_id, attempt=1, result=struct({"late": True}))
    expect_error(await rpc_error(stub.SubmitResult(mpb.SubmitResultRequest(
        session_id=reg.welcome.session_id, result=stale), metadata=MD)), grpc.StatusCode.FAILED_PRECONDITION,
        "JOB_NOT_HELD")  # fmt: skip


@pytest.mark.coordinator(reconnect_grace_seconds=30.0)
async def test_the_sdk_poll_miner_cut_off_past_the_heartbeat_timeout_completes_its_job(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    try:
        # (short polls: a poll waiting at the coordinator counts as the miner there, and ends only with its wait)
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll", poll_wait_s=0.5)
        coord.run_miner(miner)
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running on the poll miner")
        session = miner.session_id

        relay.stall()  # nothing passes either way: the miner is silent, as behind a failed proxy
        await _closed_for_silence(coord, session)
        relay.heal()
        runner.gate.set()

        done = await coord.finished(alice, job.job_id, within=30.0)
        assert (done.state, done.attempt) == (COMPLETED, 1), coord.db.events(job.job_id)
        assert runner.runs == [1] and miner.session_id != session
        assert not [e for e in coord.db.events(job.job_id) if e["to_state"] == QUEUED and e["from_state"]]
        verify_bundle(await alice.bundle(job.job_id), KeySet.load(await alice.signing_keys()))
    finally:
        await relay.close()
