"""Two robustness fixes on the batched and miner paths (helper-132), against a real coordinator on loopback.

IDEMPOTENCY_KEY_REUSED names the entry: a SubmitJobs entry reusing a key of an earlier, different request, or a key
twice in one batch, is ALREADY_EXISTS with ErrorInfo metadata `index` (and `first_index`, `job_id` where there is
one) and the BadRequest field violation `requests[i].idempotency_key`; a client with a batch of hundreds could not
tell which entry it was. The batch limit's messages say the coordinator's limit, not a literal 1000.

A miner's Failure whose code or message is over its bound, or holds a NUL character, is taken with its text cut
(NULs dropped, then 64 and 4096 characters): it used to end the whole stream INVALID_ARGUMENT (and the unary
ReportFailure was refused), the job held until its lease ran out. A Failure whose job_id is over its bound (or holds
a NUL) can match no job: refused alone, JOB_NOT_HELD, the stream going on.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import COMPLETED, FAILED, ErrorDetails, Harness, capabilities, details_of, miner_key
from pg_harness import started
from test_batched_hostile_input import ALICE, NO_LIMITS, R, RawMiner, calm, get_job, result, submit_many

import coordinator.server
from coordinator.domain.validation import Limits

C = grpc.StatusCode
T = 10.0
REUSED = "IDEMPOTENCY_KEY_REUSED"
SLOW = {"rate_limits": NO_LIMITS, "lease_seconds": 30.0, "heartbeat_timeout_seconds": 30.0,
        "reconnect_grace_seconds": 5.0}  # fmt: skip
# over the bounds (64 and 4096 characters), each with a NUL: the job keeps them without it, then cut
LONG_CODE = "OUT_OF_\x00MEMORY_" + "E" * 85
LONG_MESSAGE = "the input\x00 is wrong: " + "m" * 9979
assert (len(LONG_CODE), len(LONG_MESSAGE)) == (100, 10_000)
CUT_CODE = LONG_CODE.replace("\x00", "")[:64]
CUT_MESSAGE = LONG_MESSAGE.replace("\x00", "")[:4096]


async def refused(call: Any) -> tuple[ErrorDetails, str]:
    """A call that must fail: its google.rpc details and its status message."""
    try:
        answer = await call
    except grpc.aio.AioRpcError as exc:
        return details_of(exc), exc.details() or ""
    raise AssertionError(f"the call succeeded but was expected to fail: {answer!r}")


async def submit_jobs(coord: Harness, *requests: jpb.SubmitJobRequest) -> list[jpb.SubmitJobResponse]:
    r = await coord.jobs_stub().SubmitJobs(
        jpb.SubmitJobsRequest(requests=list(requests)), metadata=ALICE, timeout=T
    )
    return list(r.responses)


def jobs_stored(coord: Harness) -> int:
    return coord.db.scalar("SELECT COUNT(*) FROM jobs")


# ================================================================================= IDEMPOTENCY_KEY_REUSED
@calm
async def test_a_batch_entry_reusing_the_key_of_another_request_is_named(coord: Harness) -> None:
    """The 3rd entry reuses the key of a stored job submitted with another payload: index 2, the stored job's id,
    the field `requests[2].idempotency_key`, the message naming requests[2]; not one job of the batch is stored."""
    [stored] = await submit_jobs(coord, R(payload_bytes=b"first", idempotency_key="k0"))
    batch = [R(payload_bytes=b"a", idempotency_key="k1"), R(payload_bytes=b"b"),
             R(payload_bytes=b"other", idempotency_key="k0"), R(payload_bytes=b"c", idempotency_key="k3")]  # fmt: skip
    # the stored job's key found in memory, then (the job no longer active) in the store
    for state in ("active", "canceled"):
        err, message = await refused(submit_jobs(coord, *batch))
        assert (err.code, err.reason) == (C.ALREADY_EXISTS, REUSED), err
        assert err.metadata == {"job_id": stored.job.job_id, "index": "2"}, err.metadata
        assert [f for f, _ in err.violations] == ["requests[2].idempotency_key"], err.violations
        assert message.startswith("requests[2]: ") and "'k0'" in message, message
        assert jobs_stored(coord) == 1
        if state == "active":
            await coord.client("alice").cancel(stored.job.job_id)
    # the same batch with the entry's own key is taken whole
    batch[2] = R(payload_bytes=b"other", idempotency_key="k2")
    assert [x.created for x in await submit_jobs(coord, *batch)] == [True] * 4


@calm
async def test_a_key_twice_in_one_batch_names_both_entries(coord: Harness) -> None:
    """One key at entries 1 and 4 (same body or not): index 4, first_index 1, the field of the later entry."""
    for second in (b"same", b"different"):
        batch = [R(payload_bytes=b"a"), R(payload_bytes=b"same", idempotency_key="twice"),
                 R(payload_bytes=b"b", idempotency_key="once"), R(payload_bytes=b"c"),
                 R(payload_bytes=second, idempotency_key="twice")]  # fmt: skip
        err, message = await refused(submit_jobs(coord, *batch))
        assert (err.code, err.reason) == (C.ALREADY_EXISTS, REUSED), err
        assert err.metadata == {"index": "4", "first_index": "1"}, err.metadata
        assert [f for f, _ in err.violations] == ["requests[4].idempotency_key"], err.violations
        assert "requests[4]" in message and "requests[1]" in message, message
        assert jobs_stored(coord) == 0


@calm
async def test_a_single_submit_reusing_a_key_names_its_field(coord: Harness) -> None:
    """Unary SubmitJob: the field violation `idempotency_key`, the job id in the metadata, no index."""
    jobs = coord.jobs_stub()
    first = await jobs.SubmitJob(R(payload_bytes=b"one", idempotency_key="k"), metadata=ALICE, timeout=T)
    err, _ = await refused(
        jobs.SubmitJob(R(payload_bytes=b"two", idempotency_key="k"), metadata=ALICE, timeout=T)
    )
    assert (err.code, err.reason) == (C.ALREADY_EXISTS, REUSED), err
    assert err.metadata == {"job_id": first.job.job_id}, err.metadata
    assert [f for f, _ in err.violations] == ["idempotency_key"], err.violations
    assert jobs_stored(coord) == 1


async def test_the_batch_limits_messages_say_the_coordinators_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator whose batches hold at most 5 (Limits.max_batch; the field bounds still allow 1000): a SubmitJobs
    of 6 and a Results of 6 are refused with messages saying 5, where they said 1000."""
    monkeypatch.setattr(coordinator.server, "Limits", functools.partial(Limits, max_batch=5))
    async with Harness(tmp_path, SLOW) as coord:
        err, message = await refused(submit_jobs(coord, *[R(payload_bytes=b"x")] * 6))
        assert (err.code, err.violations) == (C.INVALID_ARGUMENT, [("requests", "1 to 5 entries")]), err
        assert message == "requests: 1 to 5 per call", message
        assert jobs_stored(coord) == 0
        m = RawMiner(coord, "miner-01", slots=1, batched_acks=False)
        await m.start()
        await m.results(*[mpb.Result(job_id=f"j{i}", attempt=1) for i in range(6)])
        err, message = await refused(m.read())
        assert (err.code, err.violations) == (C.INVALID_ARGUMENT, [("results", "1 to 5 entries")]), err
        assert message == "results: 1 to 5 per message", message


# ================================================================================= a miner's failure text
@pytest.mark.parametrize("postgres", [False, True], ids=["sqlite", "postgres"])
async def test_a_stream_failure_over_its_bounds_is_taken_cut(tmp_path: Path, postgres: bool) -> None:
    """A 100-character code and a 10,000-character message, each with a NUL: acknowledged, the job FAILED with the
    text cut (NULs dropped, 64 and 4096 characters); the same report again is a repeat (acknowledged); the stream
    stays up and serves the next job."""
    async with started(tmp_path, SLOW, postgres) as coord:
        m = RawMiner(coord, "miner-01", slots=1, batched_acks=False)
        await m.start()
        [job_id] = await submit_many(coord, 1)
        [a] = await m.assignments(1)
        failure = mpb.Failure(
            job_id=job_id, attempt=a.attempt, retryable=False, code=LONG_CODE, message=LONG_MESSAGE
        )
        for _ in range(2):  # (the second: a repeat, its first ack taken for lost)
            await m.send(failure=failure)
            [ack], _ = await m.acks(1)
            assert (ack.job_id, ack.accepted) == (job_id, True), ack
        job = await get_job(coord, job_id)
        assert (job.state, job.terminal_reason, job.terminal_message) == (FAILED, CUT_CODE, CUT_MESSAGE)
        [next_job] = await submit_many(coord, 1)
        [b] = await m.assignments(1)
        assert b.job.job_id == next_job
        await m.results(result(b))
        [ack], _ = await m.acks(1)
        assert ack.accepted, ack
        assert (await get_job(coord, next_job)).state == COMPLETED


def miner_md(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", miner_key(name)),)


async def unary_assignment(coord: Harness, name: str) -> tuple[Any, str, mpb.Assignment]:
    """A unary session of miner `name` (one slot) and the job it polled: (stub, session id, assignment)."""
    stub = coord.miner_stub()
    hello = mpb.Hello(capabilities=capabilities(slots=1))
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=hello), metadata=miner_md(name), timeout=T)
    session = reg.welcome.session_id
    await submit_many(coord, 1)
    poll = mpb.PollJobRequest(session_id=session, max_jobs=1)
    [a] = (await stub.PollJob(poll, metadata=miner_md(name), timeout=5)).assignments
    return stub, session, a


@calm
async def test_a_unary_failure_over_its_bounds_is_taken_cut(coord: Harness) -> None:
    """ReportFailure with the same over-long text: acknowledged, the job FAILED with the cut text; the session
    goes on (its next poll gets the next job)."""
    stub, session, a = await unary_assignment(coord, "miner-02")
    failure = mpb.Failure(
        job_id=a.job.job_id, attempt=a.attempt, retryable=False, code=LONG_CODE, message=LONG_MESSAGE
    )
    r = await stub.ReportFailure(mpb.ReportFailureRequest(session_id=session, failure=failure),
                                 metadata=miner_md("miner-02"), timeout=T)  # fmt: skip
    assert (r.ack.job_id, r.ack.accepted) == (a.job.job_id, True), r.ack
    job = await get_job(coord, a.job.job_id)
    assert (job.state, job.terminal_reason, job.terminal_message) == (FAILED, CUT_CODE, CUT_MESSAGE)
    [next_job] = await submit_many(coord, 1)
    poll = mpb.PollJobRequest(session_id=session, max_jobs=1)
    [b] = (await stub.PollJob(poll, metadata=miner_md("miner-02"), timeout=5)).assignments
    assert b.job.job_id == next_job


@calm
async def test_a_stream_failure_of_an_impossible_job_id_is_refused_alone(coord: Harness) -> None:
    """Failures whose job_id is 65 or 5,000 characters, or holds a NUL: each refused JOB_NOT_HELD naming the id it
    was sent with, nothing changed; the stream goes on, and the job it holds completes."""
    m = RawMiner(coord, "miner-03", slots=1, batched_acks=False)
    await m.start()
    [job_id] = await submit_many(coord, 1)
    [a] = await m.assignments(1)
    for bad_id in ("j" * 65, "j" * 5000, job_id[:10] + "\x00" + job_id[11:]):
        await m.send(failure=mpb.Failure(job_id=bad_id, attempt=a.attempt, retryable=False, code="OOPS"))
        [ack], _ = await m.acks(1)
        assert (ack.job_id, ack.accepted, ack.reason) == (bad_id, False, "JOB_NOT_HELD"), ack.message
    await m.results(result(a))
    [ack], _ = await m.acks(1)
    assert ack.accepted, ack
    assert (await get_job(coord, job_id)).state == COMPLETED
    assert coord.db.scalar("SELECT COUNT(*) FROM job_events WHERE reason = 'OOPS'") == 0


@calm
async def test_a_unary_failure_of_an_over_long_job_id_is_invalid_argument(coord: Harness) -> None:
    """ReportFailure whose job_id is over 64 characters: INVALID_ARGUMENT naming `failure.job_id` (an id no job has;
    nothing echoed back at length), the job held unchanged."""
    stub, session, a = await unary_assignment(coord, "miner-04")
    failure = mpb.Failure(job_id="j" * 5000, attempt=a.attempt, retryable=False, code="OOPS")
    err, _ = await refused(stub.ReportFailure(mpb.ReportFailureRequest(session_id=session, failure=failure),
                                              metadata=miner_md("miner-04"), timeout=T))  # fmt: skip
    assert (err.code, [f for f, _ in err.violations]) == (C.INVALID_ARGUMENT, ["failure.job_id"]), err
    r = await stub.SubmitResult(mpb.SubmitResultRequest(session_id=session, result=result(a)),
                                metadata=miner_md("miner-04"), timeout=T)  # fmt: skip
    assert r.ack.accepted
