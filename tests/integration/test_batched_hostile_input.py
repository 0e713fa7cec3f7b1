"""Hostile input on the batched paths (helper-130): SubmitJobs with many jobs, Results carrying several results,
batched acks (Hello.batched_acks / ResultAcks), Assignments of several jobs. Against a real coordinator on loopback
with its SQLite file, through raw generated stubs (the SDK refuses bad input itself).

Each case checks the status and its google.rpc details, the store afterwards (jobs; one receipt, one COMPLETED
event, one log leaf and one booking per ledger kind per completed job, nothing for any other) and that the
coordinator still serves other callers. What test_bad_input.py, test_batched_stream.py, test_idempotency_races.py
and tests/security already cover (an empty Results or SubmitJobs, 1001 results, a key twice in one batch with
different bodies, odd units in plain form) is not repeated.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import grpc
import pytest
from aitbc.coordinator.v1 import job_pb2, job_service_pb2_grpc, miner_service_pb2_grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import (
    ASSIGNED,
    CANCELED,
    CLIENT_KEYS,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    ErrorDetails,
    Harness,
    capabilities,
    details_of,
    eventually,
    expect_error,
    miner_key,
    rpc_error,
    struct,
)
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

C = grpc.StatusCode
T = 10.0
ALICE = (("x-api-key", CLIENT_KEYS["alice"]),)
BOB = (("x-api-key", CLIENT_KEYS["bob"]),)
R = jpb.SubmitJobRequest
NO_LIMITS = "submit=off,read=off,miner=off,admin=off,stream=off"
# rate limits off (the tests send many calls and messages) and slow leases: nothing moves on its own mid-test
calm = pytest.mark.coordinator(
    rate_limits=NO_LIMITS, lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=5.0
)
TRAILERS_SOFT_LIMIT = 8 << 10  # a gRPC client's default (grpc.max_metadata_size)


# ---------------------------------------------------------------------------------------------- helpers
def raw_jobs(coord: Harness) -> job_service_pb2_grpc.JobServiceStub:
    """JobService over a channel without client-side size limits (to reach the server's own)."""
    ch = grpc.aio.insecure_channel(
        coord.address, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    )
    coord.channels.append(ch)
    return job_service_pb2_grpc.JobServiceStub(ch)


def expect_invalid(err: ErrorDetails, reason: str = "INVALID_REQUEST") -> list[str]:
    """INVALID_ARGUMENT with ErrorInfo and BadRequest; the fields named."""
    expect_error(err, C.INVALID_ARGUMENT, reason)
    assert err.violations, "INVALID_ARGUMENT without BadRequest field violations"
    return [f for f, _ in err.violations]


async def still_serves(coord: Harness) -> None:
    """Health, and another client's submit and read, still answered."""
    health = health_pb2_grpc.HealthStub(coord.channel())
    r = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=T)
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    jobs = coord.jobs_stub()
    job = (await jobs.SubmitJob(R(payload_bytes=b"bob"), metadata=BOB, timeout=T)).job
    got = (await jobs.GetJob(jpb.GetJobRequest(job_id=job.job_id), metadata=BOB, timeout=T)).job
    assert got.state in (QUEUED, ASSIGNED)  # (a miner of the test with a free slot takes it)


def store_agrees(coord: Harness) -> None:
    """Every COMPLETED job has one COMPLETED event, one result, one receipt (one log leaf each) and one booking
    per ledger kind of that receipt; no other job has any of them."""
    db = coord.db
    completed = {j for (j,) in db.query("SELECT job_id FROM jobs WHERE state = ?", (int(COMPLETED),))}
    events, receipts = db.completions()
    results = Counter(j for (j,) in db.query("SELECT job_id FROM job_results"))
    assert set(events) == set(receipts) == set(results) == completed, (events, receipts, results, completed)
    assert all(n == 1 for n in (*events.values(), *receipts.values(), *results.values()))
    assert db.scalar("SELECT COUNT(*) FROM log_leaves") == len(completed)
    booked = Counter(db.query("SELECT receipt_id, kind FROM ledger_entries"))
    assert all(n == 1 for n in booked.values()), booked
    receipt_ids = {r for (r,) in db.query("SELECT receipt_id FROM receipts")}
    kinds = {k for _, k in booked}
    assert {r for r, _ in booked} == receipt_ids
    assert len(booked) == len(receipt_ids) * len(kinds), booked


async def submit_many(coord: Harness, n: int, **kw: Any) -> list[str]:
    kw.setdefault("payload_bytes", b"x")
    r = await coord.jobs_stub().SubmitJobs(jpb.SubmitJobsRequest(requests=[R(**kw) for _ in range(n)]),
                                           metadata=ALICE, timeout=T)  # fmt: skip
    return [x.job.job_id for x in r.responses]


async def get_job(coord: Harness, job_id: str) -> job_pb2.Job:
    return (await coord.jobs_stub().GetJob(jpb.GetJobRequest(job_id=job_id), metadata=ALICE, timeout=T)).job


class RawMiner:
    """A Connect stream driven by hand, reading every message in order (no heartbeats: leases are long here)."""

    def __init__(self, coord: Harness, name: str, *, slots: int, batched_acks: bool, **hello: Any) -> None:
        self.stub = miner_service_pb2_grpc.MinerServiceStub(coord.channel(own_connection=True))
        self.call = self.stub.Connect(metadata=(("x-api-key", miner_key(name)),), timeout=60)
        self.hello = mpb.Hello(capabilities=capabilities(slots=slots), batched_acks=batched_acks, **hello)

    async def start(self) -> mpb.Welcome:
        await self.call.write(mpb.ConnectRequest(hello=self.hello))
        first = await self.read()
        assert first.WhichOneof("message") == "welcome", first
        return first.welcome

    async def read(self, within: float = 5.0) -> mpb.ConnectResponse:
        msg = await asyncio.wait_for(self.call.read(), within)
        assert msg is not grpc.aio.EOF, "the stream ended"
        return msg

    async def assignments(self, n: int) -> list[mpb.Assignment]:
        got: list[mpb.Assignment] = []
        while len(got) < n:
            msg = await self.read()
            assert msg.WhichOneof("message") == "assignments", msg
            got.extend(msg.assignments.assignments)
        assert len(got) == n
        return got

    async def acks(self, n: int) -> tuple[list[mpb.ResultAck], list[str]]:
        """The next n acks, and the kinds of the messages that carried them."""
        acks: list[mpb.ResultAck] = []
        kinds: list[str] = []
        while len(acks) < n:
            msg = await self.read()
            kind = msg.WhichOneof("message")
            if kind == "result_acks":
                acks.extend(msg.result_acks.acks)
            elif kind == "result_ack":
                acks.append(msg.result_ack)
            else:
                continue  # (a cancel, or assignments refilling freed slots)
            kinds.append(kind)
        assert len(acks) == n, acks
        return acks, kinds

    async def send(self, **message: Any) -> None:
        await self.call.write(mpb.ConnectRequest(**message))

    async def results(self, *results: mpb.Result) -> None:
        await self.send(results=mpb.Results(results=list(results)))


def result(a: mpb.Assignment, output: bytes = b"ok", **kw: Any) -> mpb.Result:
    return mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result_bytes=output, **kw)


# ================================================================================= SubmitJobs
@calm
async def test_one_bad_job_among_many_names_its_index_and_stores_none(coord: Harness) -> None:
    """A bad entry anywhere in a batch (a servicer rule, or a field bound the interceptor checks) is INVALID_ARGUMENT
    naming requests[i]; not one job of the call is stored."""
    jobs = coord.jobs_stub()
    batches = {
        "requests[3].priority": {3: R(payload_bytes=b"x", priority=10)},
        "requests[999].payload": {999: R()},
        "requests[0].ttl": {0: R(payload_bytes=b"x", ttl=duration_pb2.Duration(seconds=0))},
        "requests[500].metadata": {
            500: R(payload_bytes=b"x", metadata={"k": "v\x00"})
        },  # (a bound: interceptor)
        "requests[7].idempotency_key": {7: R(payload_bytes=b"x", idempotency_key="k" * 1025)},
    }
    for field, bad in batches.items():
        reqs = [bad.get(i, R(payload_bytes=b"x", idempotency_key=f"{field}-{i}")) for i in range(1000)]
        err = await rpc_error(
            jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=reqs), metadata=ALICE, timeout=T)
        )
        fields = expect_invalid(err)
        assert any(f.startswith(field) for f in fields), (field, err.violations)
        assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 0, field
    # the same keys, the bad entry left out, are all new: none was claimed by a refused call
    reqs = [R(payload_bytes=b"x", idempotency_key=f"requests[3].priority-{i}") for i in range(1000) if i != 3]
    r = await jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=reqs), metadata=ALICE, timeout=T)
    assert all(x.created for x in r.responses) and len(r.responses) == 999
    await still_serves(coord)


@calm
async def test_a_thousand_jobs_pass_and_one_more_is_refused_by_the_contracts_count(coord: Harness) -> None:
    """1000 jobs are stored, answered in order without their payloads; 1001 and 1025 are refused naming `requests`
    with the contract's count (1025 was refused 'at most 1024 entries', the interceptor's default list bound)."""
    jobs = raw_jobs(coord)
    reqs = [R(payload=struct({"n": i})) for i in range(1000)]
    r = await jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=reqs), metadata=ALICE, timeout=T)
    assert len(r.responses) == 1000 and all(x.created for x in r.responses)
    assert all(not x.job.HasField("payload") for x in r.responses)
    got = await get_job(coord, r.responses[617].job.job_id)
    assert got.payload == struct({"n": 617})
    for n in (1001, 1024, 1025, 4000):
        err = await rpc_error(jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=[R(payload_bytes=b"x")] * n),
                                              metadata=ALICE, timeout=T))  # fmt: skip
        expect_invalid(err)
        [(field, description)] = err.violations
        assert field == "requests" and "1000" in description and "at most 1024" not in description, (
            n,
            err.violations,
        )
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 1000
    await still_serves(coord)


@calm
async def test_a_batch_of_entries_all_out_of_bounds_still_gets_its_details(coord: Harness) -> None:
    """1000 entries each out of a field bound named 1000 field violations: 69 KB of trailers, which the client's
    gRPC refused, so the call ended RESOURCE_EXHAUSTED ('received metadata size exceeds hard limit') with no
    details at all, a status that reads as 'retry later'. The violations named are capped; the status stays whole."""
    jobs = coord.jobs_stub()
    for reqs in (
        [R(payload_bytes=b"x", idempotency_key="k" * 1025) for _ in range(1000)],
        [R(payload_bytes=b"x", metadata={f"k{i}": "v\x00", "m" * 1025: "v"}) for i in range(1000)],
    ):
        try:
            await jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=reqs), metadata=ALICE, timeout=T)
        except grpc.aio.AioRpcError as exc:
            err = details_of(exc)
            size = sum(len(k) + len(v) for k, v in exc.trailing_metadata() or ())
        else:
            raise AssertionError("a batch of 1000 bad entries was accepted")
        fields = expect_invalid(err)
        assert fields[0].startswith("requests[0].") and len(fields) <= 21, len(fields)
        assert "more field violations" in err.violations[-1][1], err.violations[-1]
        assert size < TRAILERS_SOFT_LIMIT, size
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 0
    # the same on a stream: a hello listing 4096 jobs with ids over 64 characters
    m = RawMiner(coord, "miner-03", slots=1, batched_acks=True,
                 running_jobs=[mpb.RunningJob(job_id="j" * 65 + str(i), attempt=1) for i in range(4096)])  # fmt: skip
    await m.call.write(mpb.ConnectRequest(hello=m.hello))
    try:
        await m.read()
    except grpc.aio.AioRpcError as exc:
        fields = expect_invalid(details_of(exc))
        assert fields[0] == "hello.running_jobs[0].job_id" and len(fields) <= 21, fields[:3]
    else:
        raise AssertionError("a hello with 4096 bad job ids was welcomed")
    await still_serves(coord)


@calm
async def test_idempotency_keys_across_calls_in_batches(coord: Harness) -> None:
    """A batch holding a key stored earlier with another body is ALREADY_EXISTS naming that job, and stores none of
    its new jobs; the batch without the conflict gets the earlier jobs (created false, same ids) and the new one;
    one key twice in a batch with the same body is refused too, storing nothing."""
    jobs = coord.jobs_stub()

    async def batch(*reqs: jpb.SubmitJobRequest) -> list[jpb.SubmitJobResponse]:
        r = await jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=list(reqs)), metadata=ALICE, timeout=T)
        return list(r.responses)

    first = await batch(
        R(payload_bytes=b"a", idempotency_key="k0"), R(payload_bytes=b"b", idempotency_key="k1")
    )
    k0 = first[0].job.job_id
    err = await rpc_error(batch(R(payload_bytes=b"b", idempotency_key="k1"), R(payload_bytes=b"c", idempotency_key="k2"),
                                R(payload_bytes=b"other", idempotency_key="k0")))  # fmt: skip
    expect_error(err, C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert err.metadata.get("job_id") == k0, err.metadata
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 2  # k2 not stored
    again = await batch(R(payload_bytes=b"b", idempotency_key="k1"), R(payload_bytes=b"c", idempotency_key="k2"),
                        R(payload_bytes=b"a", idempotency_key="k0"))  # fmt: skip
    assert [x.created for x in again] == [False, True, False]
    assert again[0].job.job_id == first[1].job.job_id and again[2].job.job_id == k0
    err = await rpc_error(
        batch(R(payload_bytes=b"d", idempotency_key="k3"), R(payload_bytes=b"d", idempotency_key="k3"))
    )
    expect_error(err, C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    # another client's batch with the same keys is its own
    r = await jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=[R(payload_bytes=b"zz", idempotency_key="k0")]),
                              metadata=BOB, timeout=T)  # fmt: skip
    assert r.responses[0].created and r.responses[0].job.job_id != k0
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 4
    await still_serves(coord)


@calm
async def test_a_batch_near_the_message_limit_and_its_assignments(coord: Harness) -> None:
    """Seven 1 MiB jobs in one call (7 MiB) pass; eight (just over MAX_MESSAGE_BYTES) are RESOURCE_EXHAUSTED
    MESSAGE_TOO_LARGE (size and limit) with nothing stored. The seven reach an 8-slot miner in messages each far
    below the limit, are completed in one Results of 7 MiB, and each gets one receipt."""
    jobs = raw_jobs(coord)
    seven = jpb.SubmitJobsRequest(requests=[R(payload_bytes=bytes([i]) * (1 << 20)) for i in range(7)])
    r = await jobs.SubmitJobs(seven, metadata=ALICE, timeout=T)
    ids = [x.job.job_id for x in r.responses]
    eight = jpb.SubmitJobsRequest(requests=[R(payload_bytes=b"y" * (1 << 20)) for _ in range(8)])
    err = await rpc_error(jobs.SubmitJobs(eight, metadata=ALICE, timeout=T))
    expect_error(err, C.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
    assert int(err.metadata["size"]) > int(err.metadata["limit"]) == 8 << 20
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 7
    m = RawMiner(coord, "miner-01", slots=8, batched_acks=True)
    welcome = await m.start()
    got: list[mpb.Assignment] = []
    while len(got) < 7:
        msg = await m.read()
        assert msg.WhichOneof("message") == "assignments"
        assert msg.ByteSize() < welcome.max_message_bytes // 2, msg.ByteSize()
        got.extend(msg.assignments.assignments)
    assert sorted(a.job.job_id for a in got) == sorted(ids)
    assert all(a.job.payload_bytes == bytes([ids.index(a.job.job_id)]) * (1 << 20) for a in got)
    await m.results(*(result(a, b"r" * (1 << 20)) for a in got))
    acks, _ = await m.acks(7)
    assert all(a.accepted and a.receipt_id for a in acks), acks
    store_agrees(coord)
    await still_serves(coord)


@calm
async def test_a_batch_of_jobs_with_every_field_at_its_limit_round_trips(coord: Harness) -> None:
    """Fifty jobs with every field at its limit are stored, matched to a miner offering just that, assigned as
    submitted (constraints, metadata, limits intact), completed, and each receipted once."""
    d = duration_pb2.Duration
    models = [f"{i:02d}" + "m" * 254 for i in range(32)]
    labels = {f"{i:02d}" + "k" * 126: "v" * 128 for i in range(32)}
    constraints = job_pb2.Constraints(gpu="g" * 128, cuda="1234567.12345678", min_vram_gb=4096, models=models,
                                      region="r" * 64, max_price="999999999999999999.999999999", labels=labels)  # fmt: skip
    reqs = [R(payload=struct({"n": i, "s": "x" * 1000}), constraints=constraints, priority=9, max_attempts=100,
              ttl=d(seconds=7 * 86400), execution_timeout=d(seconds=7 * 86400), idempotency_key=f"{i:03d}" + "k" * 125,
              metadata={f"{j:02d}" + "a" * 126: "b" * 128 for j in range(32)})
            for i in range(50)]  # fmt: skip
    r = await raw_jobs(coord).SubmitJobs(jpb.SubmitJobsRequest(requests=reqs), metadata=ALICE, timeout=T)
    assert len(r.responses) == 50
    caps = capabilities(slots=64, gpus=(("g" * 128, 4096),), region="r" * 64, models=tuple(models),
                        cuda="1234567.12345678", labels=labels, price="1")  # fmt: skip
    stub = miner_service_pb2_grpc.MinerServiceStub(coord.channel(own_connection=True))
    call = stub.Connect(metadata=(("x-api-key", miner_key("miner-02")),), timeout=60)
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=caps, batched_acks=True)))
    assert (await asyncio.wait_for(call.read(), 5)).WhichOneof("message") == "welcome"
    got: list[mpb.Assignment] = []
    while len(got) < 50:
        msg = await asyncio.wait_for(call.read(), 5)
        got.extend(msg.assignments.assignments)
    by_key = {x.idempotency_key: x for x in reqs}
    for a in got:
        sent = by_key[a.job.idempotency_key]
        assert a.job.constraints == sent.constraints and dict(a.job.metadata) == dict(sent.metadata)
        assert a.job.payload == sent.payload and a.job.priority == 9 and a.job.max_attempts == 100
        assert a.job.ttl.seconds == a.job.execution_timeout.seconds == 7 * 86400
    # units at their own limit too: beyond the ledger's 64-bit billionths, that result alone is refused
    # (INVALID_RESULT), its job still the miner's; with units 1 it is booked
    top = "999999999999999999.999999999"
    results = [mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result=struct({"ok": 1}), unit_type="u" * 64,
                          units=top if i == 0 else "1") for i, a in enumerate(got)]  # fmt: skip

    async def acks_of(n: int) -> list[mpb.ResultAck]:
        acks: list[mpb.ResultAck] = []
        while len(acks) < n:
            msg = await asyncio.wait_for(call.read(), 5)
            kind = msg.WhichOneof("message")
            acks.extend(
                msg.result_acks.acks
                if kind == "result_acks"
                else [msg.result_ack]
                if kind == "result_ack"
                else []
            )
        return acks

    await call.write(mpb.ConnectRequest(results=mpb.Results(results=results)))
    acks = await acks_of(50)
    refused = [a for a in acks if not a.accepted]
    assert [(a.job_id, a.reason) for a in refused] == [(got[0].job.job_id, "INVALID_RESULT")], refused
    assert "ledger" in refused[0].message, refused[0].message
    results[0].units = "1"
    await call.write(mpb.ConnectRequest(results=mpb.Results(results=[results[0]])))
    assert all(a.accepted for a in await acks_of(1))
    balance = coord.db.scalar("SELECT COUNT(*) FROM ledger_entries")
    assert balance and coord.db.scalar("SELECT COUNT(*) FROM receipts") == 50
    call.cancel()
    store_agrees(coord)
    await still_serves(coord)


# ================================================================================= Results from a miner
@calm
@pytest.mark.parametrize("batched_acks", [True, False])
async def test_a_results_message_mixing_every_kind_of_wrong_result(
    coord: Harness, batched_acks: bool
) -> None:
    """One Results message: a good result, the same result again, another miner's job, a stale attempt, a job
    canceled meanwhile, an unknown job, a result with no output, a second good result. Each is answered, in the
    order decided, on a stream that stays up: the good ones accepted (the repeat with the first's receipt), the
    others refused with their reason, nothing changed by them; one receipt per completed job. Then the refused
    jobs are still completable by their holders."""
    a_miner = RawMiner(coord, "miner-01", slots=5, batched_acks=batched_acks)
    b_miner = RawMiner(coord, "miner-02", slots=1, batched_acks=batched_acks)
    await a_miner.start()
    ids = await submit_many(coord, 5)
    held = {a.job.job_id: a for a in await a_miner.assignments(5)}
    await b_miner.start()
    [b_id] = await submit_many(coord, 1)
    [b_job] = await b_miner.assignments(1)
    good, stale, canceled, no_output, good2 = (held[i] for i in ids)
    await coord.jobs_stub().CancelJob(
        jpb.CancelJobRequest(job_id=canceled.job.job_id), metadata=ALICE, timeout=T
    )
    unknown = str(uuid.uuid4())
    await a_miner.results(
        result(good, b"first"), result(good, b"first"), result(b_job, b"not yours"),
        mpb.Result(job_id=stale.job.job_id, attempt=stale.attempt + 1, result_bytes=b"stale"),
        result(canceled, b"too late"), mpb.Result(job_id=unknown, attempt=1, result_bytes=b"?"),
        mpb.Result(job_id=no_output.job.job_id, attempt=no_output.attempt), result(good2, b"fine"),
    )  # fmt: skip
    acks, kinds = await a_miner.acks(8)
    assert set(kinds) == ({"result_acks"} if batched_acks else {"result_ack"}), kinds
    # in the order decided: the invalid one before any commit, then those the commit decided, then the rest
    assert [(a.job_id, a.accepted, a.reason) for a in acks] == [
        (no_output.job.job_id, False, "INVALID_RESULT"), (good.job.job_id, True, ""), (good2.job.job_id, True, ""),
        (good.job.job_id, True, ""), (b_id, False, "JOB_NOT_HELD"), (stale.job.job_id, False, "STALE_ATTEMPT"),
        (canceled.job.job_id, False, "JOB_NOT_HELD"), (unknown, False, "JOB_NOT_HELD"),
    ], acks  # fmt: skip
    good_acks = [a for a in acks if a.job_id == good.job.job_id]
    assert good_acks[0].receipt_id == good_acks[1].receipt_id != ""
    answer = await coord.jobs_stub().GetJobResult(jpb.GetJobResultRequest(job_id=good.job.job_id), metadata=ALICE,
                                                  timeout=T)  # fmt: skip
    assert answer.result.result_bytes == b"first"
    states = {i: (await get_job(coord, i)).state for i in (*ids, b_id)}
    assert states[canceled.job.job_id] == CANCELED and states[b_id] == ASSIGNED
    assert states[good.job.job_id] == states[good2.job.job_id] == COMPLETED
    assert states[stale.job.job_id] != COMPLETED and states[no_output.job.job_id] != COMPLETED
    store_agrees(coord)
    # the holders can still finish what was refused
    await b_miner.results(result(b_job))
    await a_miner.results(result(stale), result(no_output))
    assert all(a.accepted for a in (await b_miner.acks(1))[0] + (await a_miner.acks(2))[0])
    store_agrees(coord)
    assert coord.db.scalar("SELECT COUNT(*) FROM receipts") == 5
    await still_serves(coord)


@calm
@pytest.mark.parametrize("first", ["result", "failure"])
async def test_a_result_and_a_failure_for_one_job_in_one_read(coord: Harness, first: str) -> None:
    """A result and a (final) failure of the same job, written back to back: the first decides, the second is
    refused JOB_NOT_HELD; one receipt if the result came first, none otherwise; the job is not run again."""
    m = RawMiner(coord, "miner-01", slots=1, batched_acks=True)
    await m.start()
    [job_id] = await submit_many(coord, 1)
    [a] = await m.assignments(1)
    r = mpb.ConnectRequest(results=mpb.Results(results=[result(a)]))
    f = mpb.ConnectRequest(
        failure=mpb.Failure(job_id=job_id, attempt=a.attempt, retryable=False, code="OOPS")
    )
    for message in (r, f) if first == "result" else (f, r):
        await m.call.write(message)
    acks, _ = await m.acks(2)
    assert [(x.accepted, x.reason) for x in acks] == [(True, ""), (False, "JOB_NOT_HELD")], acks
    assert (await get_job(coord, job_id)).state == (COMPLETED if first == "result" else FAILED)
    assert coord.db.scalar("SELECT COUNT(*) FROM receipts") == (1 if first == "result" else 0)
    store_agrees(coord)
    await still_serves(coord)


@calm
async def test_a_result_field_out_of_bounds_is_refused_alone(coord: Harness) -> None:
    """A result whose units (65 or 100000 characters), unit_type (65 characters), miner signature (257 bytes) or
    job id (65 characters) breaks a field bound is refused alone, INVALID_RESULT, naming the field; the stream
    stays up and the batch's other results are accepted. It ended the whole stream INVALID_ARGUMENT, the good
    results of the batch unanswered (a bound the interceptor checked), while units out of form within the bound
    were refused alone (INVALID_RESULT, as the contract says of any form but a plain decimal)."""
    m = RawMiner(coord, "miner-01", slots=6, batched_acks=True)
    await m.start()
    await submit_many(coord, 6)
    got = await m.assignments(6)
    await m.results(
        result(got[0]), result(got[1], units="1" * 65), result(got[2], units="9" * 100_000),
        result(got[3], unit_type="t" * 65), result(got[4], miner_signature=b"s" * 257),
        mpb.Result(job_id=got[5].job.job_id + "x" * 29, attempt=got[5].attempt, result_bytes=b"x"), result(got[5]),
    )  # fmt: skip
    acks, _ = await m.acks(7)
    by_field = {"units": [1, 2], "unit_type": [3], "miner_signature": [4], "job_id": [5]}
    refused = {i: a for i, a in enumerate(acks) if not a.accepted}
    assert sorted(refused) == [0, 1, 2, 3, 4] or len(refused) == 5, acks
    for field, idx in by_field.items():
        for i in idx:
            a = next(x for x in refused.values() if x.job_id.startswith(got[i].job.job_id)
                     and (i != 5 or x.job_id != got[5].job.job_id))  # fmt: skip
            assert a.reason == "INVALID_RESULT" and field in a.message, (field, a.reason, a.message[:200])
    accepted = {a.job_id for a in acks if a.accepted}
    assert accepted == {got[0].job.job_id, got[5].job.job_id}
    for i in (1, 2, 3, 4):
        assert (await get_job(coord, got[i].job.job_id)).state != COMPLETED
    await m.results(*(result(got[i]) for i in (1, 2, 3, 4)))
    acks, _ = await m.acks(4)
    assert all(a.accepted for a in acks)
    store_agrees(coord)
    await still_serves(coord)


@calm
async def test_a_unary_result_field_out_of_bounds_is_invalid_result(coord: Harness) -> None:
    """On the unary path the same result is INVALID_ARGUMENT with the contract's INVALID_RESULT, naming the field."""
    stub = miner_service_pb2_grpc.MinerServiceStub(coord.channel())
    md = (("x-api-key", miner_key("miner-04")),)
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities())),
                                   metadata=md, timeout=T)  # fmt: skip
    sid = reg.welcome.session_id
    await submit_many(coord, 1)
    [a] = (await stub.PollJob(mpb.PollJobRequest(session_id=sid), metadata=md, timeout=3)).assignments
    err = await rpc_error(stub.SubmitResult(mpb.SubmitResultRequest(session_id=sid, result=result(a, units="1" * 65)),
                                            metadata=md, timeout=T))  # fmt: skip
    assert "units" in expect_invalid(err, "INVALID_RESULT")
    r = await stub.SubmitResult(
        mpb.SubmitResultRequest(session_id=sid, result=result(a)), metadata=md, timeout=T
    )
    assert r.ack.accepted
    store_agrees(coord)


# ================================================================================= acks and accepts
@calm
async def test_accepts_out_of_order_and_for_what_was_never_sent(coord: Harness) -> None:
    """An Accept after the job's result, for an attempt never assigned, for another miner's job, for a job never
    made: each refused with a ResultAck (JOB_NOT_HELD or STALE_ATTEMPT), nothing changed, the stream up."""
    m = RawMiner(coord, "miner-01", slots=2, batched_acks=True)
    other = RawMiner(coord, "miner-02", slots=1, batched_acks=False)
    await m.start()
    await submit_many(coord, 2)
    done, running = await m.assignments(2)
    await other.start()
    await submit_many(coord, 1)
    [theirs] = await other.assignments(1)
    await m.results(result(done))
    [ack], _ = await m.acks(1)
    assert ack.accepted
    for job_id, attempt, reason in ((done.job.job_id, done.attempt, "JOB_NOT_HELD"),
                                    (running.job.job_id, running.attempt + 1, "STALE_ATTEMPT"),
                                    (theirs.job.job_id, theirs.attempt, "JOB_NOT_HELD"),
                                    (str(uuid.uuid4()), 1, "JOB_NOT_HELD")):  # fmt: skip
        await m.send(accept=mpb.Accept(job_id=job_id, attempt=attempt))
        [ack], _ = await m.acks(1)
        assert (ack.job_id, ack.accepted, ack.reason) == (job_id, False, reason), ack
    assert (await get_job(coord, done.job.job_id)).state == COMPLETED
    assert (await get_job(coord, theirs.job.job_id)).miner_id == "miner-02"
    await m.send(accept=mpb.Accept(job_id=running.job.job_id, attempt=running.attempt))
    await eventually(lambda: coord.db.job_state(running.job.job_id) == RUNNING, what="the real accept")
    store_agrees(coord)
    await still_serves(coord)


@calm
async def test_batched_acks_toggled_between_streams_of_one_miner(coord: Harness) -> None:
    """A miner's streams, each replacing the last, with batched_acks on, off, on: each stream's acks come as its
    hello asked (one ResultAcks, or a ResultAck each), results sent again on the next stream get the same
    receipts, and no job is receipted twice."""
    receipts: dict[str, str] = {}
    done: list[mpb.Result] = []
    for n, batched in enumerate((True, False, True)):
        m = RawMiner(coord, "miner-01", slots=3, batched_acks=batched)
        await m.start()
        await submit_many(coord, 3)
        got = await m.assignments(3)
        fresh = [result(a, f"s{n}".encode()) for a in got]
        await m.results(*done, *fresh)  # the earlier streams' results again, as if their acks were lost
        acks, kinds = await m.acks(len(done) + 3)
        assert set(kinds) == ({"result_acks"} if batched else {"result_ack"}), (batched, kinds)
        assert len(kinds) == (1 if batched else len(done) + 3) or batched, kinds
        for a in acks:
            assert a.accepted, a
            assert receipts.setdefault(a.job_id, a.receipt_id) == a.receipt_id, a
        done.extend(fresh)
    assert len(receipts) == 9
    store_agrees(coord)
    await still_serves(coord)


@calm
async def test_a_second_result_with_another_output_is_not_acknowledged_as_a_repeat(coord: Harness) -> None:
    """The contract answers the same acknowledgement to a *repeat* of an accepted result; a result of the same job
    and attempt with another output is no repeat: it should be refused (JOB_NOT_HELD), the stored result kept."""
    m = RawMiner(coord, "miner-01", slots=1, batched_acks=True)
    await m.start()
    [job_id] = await submit_many(coord, 1)
    [a] = await m.assignments(1)
    await m.results(result(a, b"first"), result(a, b"second"))
    acks, _ = await m.acks(2)
    assert acks[0].accepted and acks[0].receipt_id
    answer = await coord.jobs_stub().GetJobResult(
        jpb.GetJobResultRequest(job_id=job_id), metadata=ALICE, timeout=T
    )
    assert answer.result.result_bytes == b"first"
    store_agrees(coord)
    assert (acks[1].accepted, acks[1].reason) == (False, "JOB_NOT_HELD"), acks[1]
