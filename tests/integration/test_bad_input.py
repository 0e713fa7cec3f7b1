"""Black-box bad-input suite: every RPC with bad and boundary input, against a real coordinator on loopback.

Each test asserts the behaviour the standard asks for ("bad input gets a clear gRPC status with google.rpc
details (grpc-status-details-bin: ErrorInfo/BadRequest etc.), never a crash, a hang or lost data"). Every call
has a deadline; after the bad input the server is still healthy. What other files already cover (keys and
roles per RPC, rate and concurrency limits, reconnect grace, size limits at small settings) is not repeated.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import (
    admin_service_pb2_grpc,
    job_pb2,
    receipt_service_pb2_grpc,
)
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import receipt_service_pb2 as rpb
from coord_support import (
    ADMIN_KEY,
    CLIENT_KEYS,
    COMPLETED,
    QUEUED,
    RUNNING,
    ErrorDetails,
    Harness,
    capabilities,
    details_of,
    expect_error,
    miner_key,
    rpc_error,
    struct,
)
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from coordinator.services.jobs import filter_digest
from coordinator.store.base import JobFilter

C = grpc.StatusCode
T = 5.0  # deadline of every unary call
ALICE = (("x-api-key", CLIENT_KEYS["alice"]),)
BOB = (("x-api-key", CLIENT_KEYS["bob"]),)
ADMIN = (("x-api-key", ADMIN_KEY),)
NO_LIMITS = "submit=off,read=off,miner=off,admin=off,stream=off"
# rate limits off (the tests send many calls) and slow leases (nothing should move on its own mid-test)
no_limits = pytest.mark.coordinator(
    rate_limits=NO_LIMITS, lease_seconds=30.0, heartbeat_timeout_seconds=30.0, reconnect_grace_seconds=5.0
)


def md_miner(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", miner_key(name)),)


# ---------------------------------------------------------------------------------------------- helpers
async def failing(awaitable: Any, within: float = T + 2) -> ErrorDetails:
    """The parsed details of a call that must fail, never waiting forever."""
    return await rpc_error(asyncio.wait_for(awaitable, within))


def expect_invalid(err: ErrorDetails, reason: str = "INVALID_REQUEST", field: str | None = None) -> None:
    expect_error(err, C.INVALID_ARGUMENT, reason)
    assert err.violations, "INVALID_ARGUMENT without BadRequest field violations"
    if field is not None:
        assert any(f == field or f.startswith(field) for f, _ in err.violations), err.violations


async def assert_healthy(coord: Harness) -> None:
    """The server still answers health and an ordinary authenticated call."""
    ch = coord.channel()
    health = health_pb2_grpc.HealthStub(ch)
    r = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=T)
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    jobs = coord.jobs_stub()
    await jobs.GetUsage(jpb.GetUsageRequest(), metadata=ALICE, timeout=T)


async def submit(coord: Harness, **kw: Any) -> job_pb2.Job:
    kw.setdefault("payload_bytes", b"x")
    r = await coord.jobs_stub().SubmitJob(jpb.SubmitJobRequest(**kw), metadata=ALICE, timeout=T)
    return r.job


async def get_job(coord: Harness, job_id: str) -> job_pb2.Job:
    return (await coord.jobs_stub().GetJob(jpb.GetJobRequest(job_id=job_id), metadata=ALICE, timeout=T)).job


def raw_channel(coord: Harness) -> grpc.aio.Channel:
    """A channel without client-side size limits (to reach the server's own limits)."""
    ch = grpc.aio.insecure_channel(
        coord.address, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    )
    coord.channels.append(ch)
    return ch


def raw_unary(coord: Harness, method: str) -> Any:
    return raw_channel(coord).unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _ld(b: bytes) -> bytes:
    return _varint(len(b)) + b


def deep_struct_bytes(levels: int) -> bytes:
    """A serialized google.protobuf.Struct nested `levels` deep ({"a": {"a": ...}})."""
    inner = b""
    for _ in range(levels - 1):
        value = b"\x2a" + _ld(inner)  # Value.struct_value
        entry = b"\x0a" + _ld(b"a") + b"\x12" + _ld(value)
        inner = b"\x0a" + _ld(entry)  # Struct.fields
    return inner


async def miner_with_running_job(coord: Harness, name: str, **caps: Any) -> tuple[Any, mpb.Assignment]:
    """A stream miner holding one accepted (RUNNING) job."""
    m = await coord.stream_miner(name, **caps)
    await submit(coord)
    a = await m.next("assignment")
    m.accept(a)
    await asyncio.sleep(0.1)
    return m, a


# ================================================================================= JobService.SubmitJob
@no_limits
async def test_submit_boundaries_are_accepted_and_just_over_refused(coord: Harness) -> None:
    """Exact limits pass; one over each limit is INVALID_ARGUMENT naming the field."""
    jobs = coord.jobs_stub()
    d = duration_pb2.Duration
    ok = [
        dict(payload_bytes=b"x" * (1 << 20)), dict(payload_bytes=b"\xff\xfe\x80"),  # bytes need not be UTF-8
        dict(payload=struct_pb2.Struct()), dict(payload_bytes=b"x", priority=9),
        dict(payload_bytes=b"x", max_attempts=100), dict(payload_bytes=b"x", ttl=d(seconds=1)),
        dict(payload_bytes=b"x", ttl=d(seconds=7 * 86400)), dict(payload_bytes=b"x", idempotency_key="k" * 128),
        dict(payload_bytes=b"x", metadata={f"k{i}": "v" * 128 for i in range(32)}),
    ]  # fmt: skip
    for kw in ok:
        await jobs.SubmitJob(jpb.SubmitJobRequest(**kw), metadata=ALICE, timeout=T)
    bad = [
        (dict(), "payload"), (dict(payload_bytes=b"x" * ((1 << 20) + 1)), "payload"),
        (dict(payload_bytes=b"x", priority=10), "priority"), (dict(payload_bytes=b"x", priority=2**32 - 1), "priority"),
        (dict(payload_bytes=b"x", max_attempts=101), "max_attempts"),
        (dict(payload_bytes=b"x", ttl=d(seconds=-1)), "ttl"), (dict(payload_bytes=b"x", ttl=d(nanos=999_999_999)), "ttl"),
        (dict(payload_bytes=b"x", ttl=d(seconds=2**63 - 1)), "ttl"), (dict(payload_bytes=b"x", ttl=d(seconds=-(2**63))), "ttl"),
        (dict(payload_bytes=b"x", execution_timeout=d(seconds=-1)), "execution_timeout"),
        (dict(payload_bytes=b"x", execution_timeout=d(seconds=7 * 86400 + 1)), "execution_timeout"),
        (dict(payload_bytes=b"x", idempotency_key="k" * 129), "idempotency_key"),
        (dict(payload_bytes=b"x", metadata={f"k{i}": "v" for i in range(33)}), "metadata"),
        (dict(payload_bytes=b"x", metadata={"": "v"}), "metadata"),
        (dict(payload_bytes=b"x", constraints=job_pb2.Constraints(gpu="g" * 129)), "constraints.gpu"),
        (dict(payload_bytes=b"x", constraints=job_pb2.Constraints(cuda="twelve")), "constraints.cuda"),
        (dict(payload_bytes=b"x", constraints=job_pb2.Constraints(min_vram_gb=2**32 - 1)), "constraints.min_vram_gb"),
        (dict(payload_bytes=b"x", constraints=job_pb2.Constraints(models=["m"] * 33)), "constraints.models"),
        (dict(payload_bytes=b"x", constraints=job_pb2.Constraints(region="r" * 65)), "constraints.region"),
        (dict(payload_bytes=b"x", constraints=job_pb2.Constraints(labels={f"k{i}": "v" for i in range(33)})),
         "constraints.labels"),
    ]  # fmt: skip
    for price in ("abc", "-1", "NaN", "Infinity", "0x10", "2.5.1", "1" * 65):
        bad.append(
            (
                dict(payload_bytes=b"x", constraints=job_pb2.Constraints(max_price=price)),
                "constraints.max_price",
            )
        )
    for kw, field in bad:
        expect_invalid(await failing(jobs.SubmitJob(jpb.SubmitJobRequest(**kw), metadata=ALICE, timeout=T)),
                       field=field)  # fmt: skip
    s = struct_pb2.Struct()
    s.fields["n"].number_value = float("nan")
    expect_invalid(await failing(jobs.SubmitJob(jpb.SubmitJobRequest(payload=s), metadata=ALICE, timeout=T)))
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == len(ok)
    await assert_healthy(coord)


@no_limits
@pytest.mark.parametrize(
    "duration",
    [
        duration_pb2.Duration(seconds=10, nanos=2_000_000_000),  # nanos beyond +-999,999,999
        duration_pb2.Duration(seconds=10, nanos=-(2**31)),
        duration_pb2.Duration(seconds=10, nanos=-5),  # seconds and nanos of different signs
        duration_pb2.Duration(seconds=7 * 86400, nanos=1),  # 1 ns over the documented 7-day maximum
    ],
    ids=["nanos_2e9", "nanos_min_int32", "mixed_signs", "seven_days_plus_1ns"],
)
async def test_invalid_or_out_of_range_duration_is_invalid_argument(coord: Harness, duration: Any) -> None:
    """A Duration that is not valid (nanos out of range, mixed signs), or beyond the 7-day maximum by one
    nanosecond, is INVALID_ARGUMENT naming the field; it used to be normalised silently."""
    jobs = coord.jobs_stub()
    for field in ("ttl", "execution_timeout"):
        err = await failing(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x", **{field: duration}),
                                           metadata=ALICE, timeout=T))  # fmt: skip
        expect_invalid(err, field=field)
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 0
    await assert_healthy(coord)


@no_limits
async def test_malformed_protobuf_and_bad_utf8_strings_are_invalid_argument(coord: Harness) -> None:
    """Invalid UTF-8 in a string field or a Struct key is INVALID_ARGUMENT (MALFORMED_REQUEST) with a field
    violation; unknown fields are ignored."""
    call = raw_unary(coord, "/aitbc.coordinator.v1.JobService/SubmitJob")
    for body in (b"\x12\x01x" + b"\x42" + _ld(b"\xff\xfe"),
                 b"\x0a" + _ld(b"\x0a" + _ld(b"\x0a" + _ld(b"\xff") + b"\x12" + _ld(b"\x1a" + _ld(b"v"))))):  # fmt: skip
        err = await failing(call(body, metadata=ALICE, timeout=T))
        expect_invalid(err, reason="MALFORMED_REQUEST")
    await call(b"\x12\x01x" + b"\xf8\x07\x01", metadata=ALICE, timeout=T)  # unknown field 127: ignored
    await assert_healthy(coord)


@no_limits
async def test_payload_nested_too_deep_says_so(coord: Harness) -> None:
    """A payload nested past 32 levels is INVALID_ARGUMENT naming its depth, also past the protobuf parser's
    recursion limit (it used to say only 'not a valid SubmitJobRequest')."""
    call = raw_unary(coord, "/aitbc.coordinator.v1.JobService/SubmitJob")
    await call(b"\x0a" + _ld(deep_struct_bytes(32)), metadata=ALICE, timeout=T)  # 32 levels: fine
    for levels in (33, 40, 200, 5000):
        err = await failing(call(b"\x0a" + _ld(deep_struct_bytes(levels)), metadata=ALICE, timeout=T))
        assert err.code == C.INVALID_ARGUMENT and err.has_error_info, (levels, err)
        text = " ".join(d for _, d in err.violations)
        assert "deep" in text or "nest" in text, (levels, err.reason, err.violations)
    await assert_healthy(coord)


@no_limits
async def test_oversize_request_messages_are_resource_exhausted(coord: Harness) -> None:
    """Over MAX_MESSAGE_BYTES (8 MiB): RESOURCE_EXHAUSTED with ErrorInfo MESSAGE_TOO_LARGE, and no RetryInfo (it
    said retry in 0 s: a client honouring it sent again at once what can never pass; review round 10); over twice
    that, gRPC core refuses it first (RESOURCE_EXHAUSTED without details, as docs/security.md says)."""
    call = raw_unary(coord, "/aitbc.coordinator.v1.JobService/SubmitJob")
    try:
        await asyncio.wait_for(call(b"\x12" + _ld(b"x" * (9 << 20)), metadata=ALICE, timeout=10), 15)
    except grpc.aio.AioRpcError as exc:
        expect_error(details_of(exc), C.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
        details = rpc_status.from_call(exc).details
        assert not [d for d in details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)], details
    else:
        raise AssertionError("a 9 MiB request was accepted")
    try:
        await asyncio.wait_for(call(b"\x12" + _ld(b"x" * (20 << 20)), metadata=ALICE, timeout=10), 15)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == C.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
    else:
        raise AssertionError("a 20 MiB request was accepted")
    await assert_healthy(coord)


@no_limits
async def test_idempotency_key_reused_with_other_metadata_or_payload_kind(coord: Harness) -> None:
    """Reusing a key with other metadata, or a Struct payload instead of bytes, is ALREADY_EXISTS."""
    jobs = coord.jobs_stub()
    await jobs.SubmitJob(
        jpb.SubmitJobRequest(payload_bytes=b"x", idempotency_key="dup"), metadata=ALICE, timeout=T
    )
    for kw in (dict(payload_bytes=b"x", metadata={"a": "b"}), dict(payload=struct({"x": 1}))):
        err = await failing(
            jobs.SubmitJob(jpb.SubmitJobRequest(idempotency_key="dup", **kw), metadata=ALICE, timeout=T)
        )
        expect_error(err, C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 1


@no_limits
async def test_submit_jobs_empty_batch_and_key_repeated_in_a_batch(coord: Harness) -> None:
    """An empty batch, or one key twice in a batch with different bodies, is refused and stores nothing."""
    jobs = coord.jobs_stub()
    expect_invalid(await failing(jobs.SubmitJobs(jpb.SubmitJobsRequest(), metadata=ALICE, timeout=T)))
    err = await failing(jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=[
        jpb.SubmitJobRequest(payload_bytes=b"a", idempotency_key="bk"),
        jpb.SubmitJobRequest(payload_bytes=b"b", idempotency_key="bk")]), metadata=ALICE, timeout=T))  # fmt: skip
    assert err.code in (C.ALREADY_EXISTS, C.INVALID_ARGUMENT) and err.has_error_info, err
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 0
    await assert_healthy(coord)


# ================================================================================= JobService, reads
@no_limits
async def test_malformed_job_ids_on_every_job_rpc(coord: Harness) -> None:
    """On every RPC naming a job: an empty or over-64-character id, or one with a NUL character, is
    INVALID_ARGUMENT; any other unknown id (SQL, LIKE wildcards, upper case, another client's job) is NOT_FOUND
    JOB_NOT_FOUND."""
    job = await submit(coord)
    jobs = coord.jobs_stub()
    receipts = receipt_service_pb2_grpc.ReceiptServiceStub(coord.channel())

    async def watch(job_id: str, md: Any = ALICE) -> Any:
        call = jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id), metadata=md, timeout=T)
        async for m in call:
            return m

    def calls(job_id: str, md: Any = ALICE) -> list[Any]:
        return [
            jobs.GetJob(jpb.GetJobRequest(job_id=job_id), metadata=md, timeout=T),
            jobs.GetJobResult(jpb.GetJobResultRequest(job_id=job_id), metadata=md, timeout=T),
            jobs.CancelJob(jpb.CancelJobRequest(job_id=job_id), metadata=md, timeout=T),
            receipts.GetReceipt(rpb.GetReceiptRequest(job_id=job_id), metadata=md, timeout=T),
            receipts.ListReceipts(rpb.ListReceiptsRequest(job_id=job_id), metadata=md, timeout=T),
            watch(job_id, md),
        ]

    for c in calls(""):
        expect_invalid(await failing(c), field="job_id")
    for c in calls("x" * 65):
        expect_invalid(await failing(c), field="job_id")
    for c in calls(job.job_id + "\x00"):
        expect_invalid(await failing(c), field="job_id")
    for jid in (" ", "not-a-uuid", "'; DROP TABLE jobs; --", "%", "_", job.job_id.upper(), str(uuid.uuid4()),
                "é" * 40):  # fmt: skip
        for c in calls(jid):
            expect_error(await failing(c), C.NOT_FOUND, "JOB_NOT_FOUND")
    for c in calls(job.job_id, BOB):  # another client's job looks unknown
        expect_error(await failing(c), C.NOT_FOUND, "JOB_NOT_FOUND")
    assert (await get_job(coord, job.job_id)).state == QUEUED
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs") == 1


@no_limits
async def test_cancel_reason_length_boundary(coord: Harness) -> None:
    """A 513-character cancel reason is INVALID_ARGUMENT and changes nothing; 512 characters pass."""
    job = await submit(coord)
    jobs = coord.jobs_stub()
    err = await failing(jobs.CancelJob(jpb.CancelJobRequest(job_id=job.job_id, reason="r" * 513), metadata=ALICE,
                                       timeout=T))  # fmt: skip
    expect_invalid(err, field="reason")
    assert (await get_job(coord, job.job_id)).state == QUEUED
    await jobs.CancelJob(jpb.CancelJobRequest(job_id=job.job_id, reason="r" * 512), metadata=ALICE, timeout=T)


@no_limits
async def test_text_with_a_nul_character_is_invalid_argument(coord: Harness) -> None:
    """U+0000 is valid UTF-8, but PostgreSQL's text cannot hold it: stored raw (an idempotency key, a cancel
    reason), it made the commit fail and the caller got INTERNAL. It is refused up front, whatever the store,
    naming the field; the same text without it passes. (Review round 10, helper-32.)"""
    jobs = coord.jobs_stub()
    err = await failing(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x", idempotency_key="key\x00one"),
                                       metadata=ALICE, timeout=T))  # fmt: skip
    expect_invalid(err, field="idempotency_key")
    assert ("idempotency_key", "no NUL (U+0000) characters") in err.violations
    err = await failing(jobs.SubmitJob(jpb.SubmitJobRequest(payload_bytes=b"x", metadata={"k\x00": "v"}),
                                       metadata=ALICE, timeout=T))  # fmt: skip
    expect_invalid(err, field="metadata")
    job = await submit(coord, idempotency_key="key one")
    err = await failing(jobs.CancelJob(jpb.CancelJobRequest(job_id=job.job_id, reason="no\x00pe"), metadata=ALICE,
                                       timeout=T))  # fmt: skip
    expect_invalid(err, field="reason")
    assert (await get_job(coord, job.job_id)).state == QUEUED
    await jobs.CancelJob(jpb.CancelJobRequest(job_id=job.job_id, reason="nope"), metadata=ALICE, timeout=T)
    await assert_healthy(coord)


@no_limits
async def test_get_job_result_wait_that_runs_out_carries_wait_timeout(coord: Harness) -> None:
    """GetJobResult(wait=true) on a job unfinished at the deadline is DEADLINE_EXCEEDED with ErrorInfo
    WAIT_TIMEOUT; the server answers just before the deadline instead of leaving it to the client's timer."""
    job = await submit(coord)
    jobs = coord.jobs_stub()
    err = await failing(jobs.GetJobResult(jpb.GetJobResultRequest(job_id=job.job_id, wait=True), metadata=ALICE,
                                          timeout=1.0), within=5)  # fmt: skip
    expect_error(err, C.DEADLINE_EXCEEDED, "WAIT_TIMEOUT")
    await assert_healthy(coord)


@no_limits
async def test_list_jobs_filters_and_page_tokens(coord: Harness) -> None:
    """Unknown or too many states, page_size over 1000, and page tokens truncated, tampered, too long or
    taken across JobService/AdminService.ListJobs are INVALID_ARGUMENT (INVALID_PAGE_TOKEN for tokens)."""
    for _ in range(5):
        await submit(coord)
    jobs = coord.jobs_stub()
    admin = admin_service_pb2_grpc.AdminServiceStub(coord.channel())

    def lst(md: Any = ALICE, **kw: Any) -> Any:
        return jobs.ListJobs(jpb.ListJobsRequest(**kw), metadata=md, timeout=T)

    for kw in (dict(states=[99]), dict(states=[-1]), dict(states=[1] * 17), dict(page_size=1001),
               dict(page_size=2**32 - 1)):  # fmt: skip
        expect_invalid(await failing(lst(**kw)))
    first = await lst(page_size=2)
    tok = first.next_page_token
    assert tok
    admin_tok = (await admin.ListJobs(apb.AdminServiceListJobsRequest(page_size=2), metadata=ADMIN,
                                      timeout=T)).next_page_token  # fmt: skip
    # forged with the right filter digest (it is no secret) but an id no page ends at: a NUL reached PostgreSQL
    # and came back INTERNAL (review round 12, helper-34); an empty or over-long one is no id either
    digest = filter_digest(JobFilter(client_id="alice"))
    forged = [base64.urlsafe_b64encode(json.dumps({"after": after, "f": digest}).encode()).decode().rstrip("=")
              for after in ("a\x00b", "", "x" * 65, "job-\ud800")]  # (a lone surrogate: round 13)  # fmt: skip
    for bad in ("=", tok[:-2], tok + "AA", tok[::-1], tok.swapcase(), "é", admin_tok, *forged):
        expect_invalid(await failing(lst(page_size=2, page_token=bad)), reason="INVALID_PAGE_TOKEN")
    expect_invalid(await failing(lst(page_size=2, page_token="A" * 5000)))
    expect_invalid(await failing(admin.ListJobs(apb.AdminServiceListJobsRequest(page_size=2, page_token=tok),
                                                metadata=ADMIN, timeout=T)), reason="INVALID_PAGE_TOKEN")  # fmt: skip
    second = await lst(page_size=2, page_token=tok)
    assert {j.job_id for j in second.jobs}.isdisjoint({j.job_id for j in first.jobs})


@no_limits
async def test_quote_cost_bad_units_and_price(coord: Harness) -> None:
    """Malformed, negative, non-finite or too long units, and bad constraints, are INVALID_ARGUMENT."""
    jobs = coord.jobs_stub()
    for units in ("-1", "abc", "NaN", "Infinity", "1" * 65):
        expect_invalid(await failing(jobs.QuoteCost(jpb.QuoteCostRequest(units=units), metadata=ALICE, timeout=T)),
                       field="units")  # fmt: skip
    expect_invalid(await failing(jobs.QuoteCost(jpb.QuoteCostRequest(constraints=job_pb2.Constraints(cuda="x")),
                                                metadata=ALICE, timeout=T)))  # fmt: skip


@no_limits
@pytest.mark.parametrize("units, max_price", [("1e999999999", ""), ("1", "1e999999999"), ("1e400", "")])
async def test_quote_cost_with_huge_exponent_decimals_is_never_internal(coord: Harness, units: str,
                                                                       max_price: str) -> None:  # fmt: skip
    """Huge-exponent decimals ('1e999999999') in units or max_price are INVALID_ARGUMENT naming the field,
    never INTERNAL (decimal.Overflow) once an eligible miner is connected."""
    await coord.stream_miner("miner-01", price="2")
    jobs = coord.jobs_stub()
    req = jpb.QuoteCostRequest(units=units, constraints=job_pb2.Constraints(max_price=max_price))
    err = await failing(jobs.QuoteCost(req, metadata=ALICE, timeout=T))
    expect_invalid(err, field="constraints.max_price" if max_price else "units")
    r = await jobs.QuoteCost(jpb.QuoteCostRequest(units="3"), metadata=ALICE, timeout=T)
    assert (r.eligible_miners, r.max_cost) == (1, "6")
    await assert_healthy(coord)


@no_limits
async def test_miner_price_with_huge_exponent_does_not_break_quote_cost_for_everyone(coord: Harness) -> None:
    """A hello with price '1e999999999' is INVALID_ARGUMENT naming capabilities.price: one miner's price can
    no longer make QuoteCost INTERNAL for every client."""
    call = coord.miner_stub().Connect(metadata=md_miner("miner-01"), timeout=10)
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(price="1e999999999"))))
    expect_invalid(await failing(call.read()), field="capabilities.price")
    r = await coord.jobs_stub().QuoteCost(jpb.QuoteCostRequest(units="2"), metadata=ALICE, timeout=T)
    assert r.eligible_miners == 0


# ================================================================================= auth
@no_limits
async def test_malformed_credentials_are_unauthenticated(coord: Harness) -> None:
    """Empty, padded, oversize and -bin keys, 'Bearer ' without a key and a bare key in authorization are
    UNAUTHENTICATED on every service; health needs no key."""
    ch = coord.channel()
    jobs = coord.jobs_stub()
    admin = admin_service_pb2_grpc.AdminServiceStub(ch)
    receipts = receipt_service_pb2_grpc.ReceiptServiceStub(ch)
    miners = coord.miner_stub()
    for md in ((("x-api-key", ""),), (("authorization", "Bearer "),), (("authorization", CLIENT_KEYS["alice"]),),
               (("x-api-key", f" {CLIENT_KEYS['alice']} "),), (("x-api-key", "k" * 7000),),
               (("x-api-key-bin", CLIENT_KEYS["alice"].encode()),)):  # fmt: skip
        for c in (jobs.GetUsage(jpb.GetUsageRequest(), metadata=md, timeout=T),
                  admin.GetStats(apb.GetStatsRequest(), metadata=md, timeout=T),
                  receipts.GetCheckpoint(rpb.GetCheckpointRequest(), metadata=md, timeout=T),
                  miners.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello()), metadata=md, timeout=T)):  # fmt: skip
            expect_error(await failing(c), C.UNAUTHENTICATED, "UNAUTHENTICATED")
    await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=T)


@no_limits
async def test_ambiguous_credentials_are_refused(coord: Harness) -> None:
    """Two different keys in one call (two x-api-key entries, or x-api-key and a conflicting Bearer) are
    UNAUTHENTICATED; the call used to be authenticated silently as one of them."""
    jobs = coord.jobs_stub()
    for md in ((("x-api-key", CLIENT_KEYS["alice"]), ("x-api-key", CLIENT_KEYS["bob"])),
               (("x-api-key", CLIENT_KEYS["alice"]), ("authorization", f"Bearer {CLIENT_KEYS['bob']}"))):  # fmt: skip
        err = await failing(jobs.GetUsage(jpb.GetUsageRequest(), metadata=md, timeout=T))
        expect_error(err, C.UNAUTHENTICATED, "UNAUTHENTICATED")


# ================================================================================= AdminService
@no_limits
async def test_admin_bad_input(coord: Harness) -> None:
    """Empty or oversize ids, bad roles, unknown key names, unknown states, page_size over 1000 and LIKE
    wildcards in client_id get the documented status and details."""
    admin = admin_service_pb2_grpc.AdminServiceStub(coord.channel())
    cases = [
        (admin.DrainMiner(apb.DrainMinerRequest(), metadata=ADMIN, timeout=T), C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (admin.DrainMiner(apb.DrainMinerRequest(miner_id="m" * 129), metadata=ADMIN, timeout=T), C.INVALID_ARGUMENT,
         "INVALID_REQUEST"),
        (admin.SetApiKeyEnabled(apb.SetApiKeyEnabledRequest(), metadata=ADMIN, timeout=T), C.INVALID_ARGUMENT,
         "INVALID_REQUEST"),
        (admin.SetApiKeyEnabled(apb.SetApiKeyEnabledRequest(name="alice", role="root"), metadata=ADMIN, timeout=T),
         C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (admin.SetApiKeyEnabled(apb.SetApiKeyEnabledRequest(name="zed", role="client"), metadata=ADMIN, timeout=T),
         C.NOT_FOUND, "KEY_NOT_FOUND"),
        (admin.SetApiKeyEnabled(apb.SetApiKeyEnabledRequest(name="alice", role="admin"), metadata=ADMIN, timeout=T),
         C.NOT_FOUND, "KEY_NOT_FOUND"),
        (admin.ListJobs(apb.AdminServiceListJobsRequest(states=[42]), metadata=ADMIN, timeout=T), C.INVALID_ARGUMENT,
         "INVALID_REQUEST"),
        (admin.ListJobs(apb.AdminServiceListJobsRequest(page_size=1001), metadata=ADMIN, timeout=T), C.INVALID_ARGUMENT,
         "INVALID_REQUEST"),
        (admin.ListJobs(apb.AdminServiceListJobsRequest(client_id="c" * 129), metadata=ADMIN, timeout=T),
         C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (admin.ListJobs(apb.AdminServiceListJobsRequest(page_token="garbage"), metadata=ADMIN, timeout=T),
         C.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"),
    ]  # fmt: skip
    for c, code, reason in cases:
        expect_error(await failing(c), code, reason)
    # LIKE wildcards are not wildcards
    await submit(coord)
    for cid in ("%", "_lice", "ALICE"):
        r = await admin.ListJobs(apb.AdminServiceListJobsRequest(client_id=cid), metadata=ADMIN, timeout=T)
        assert not r.jobs, cid
    await assert_healthy(coord)


# ================================================================================= ReceiptService
@no_limits
async def test_receipt_proofs_out_of_range(coord: Harness) -> None:
    """Proofs with indexes or sizes out of range (including 2^64-1) are INVALID_TREE_SIZE."""
    receipts = receipt_service_pb2_grpc.ReceiptServiceStub(coord.channel())
    for req in (rpb.GetInclusionProofRequest(leaf_index=0, tree_size=1),
                rpb.GetInclusionProofRequest(leaf_index=2**64 - 1, tree_size=2**64 - 1),
                rpb.GetInclusionProofRequest(leaf_index=5)):  # fmt: skip
        expect_invalid(
            await failing(receipts.GetInclusionProof(req, metadata=ALICE, timeout=T)),
            reason="INVALID_TREE_SIZE",
        )
    for req in (rpb.GetConsistencyProofRequest(), rpb.GetConsistencyProofRequest(first_size=2, second_size=1),
                rpb.GetConsistencyProofRequest(first_size=2**64 - 1, second_size=2**64 - 1)):  # fmt: skip
        expect_invalid(await failing(receipts.GetConsistencyProof(req, metadata=ALICE, timeout=T)),
                       reason="INVALID_TREE_SIZE")  # fmt: skip
    await assert_healthy(coord)


# ================================================================================= health, reflection
@no_limits
async def test_health_and_reflection_bad_input(coord: Harness) -> None:
    """An unknown health service is NOT_FOUND; reflection answers unknown symbols and files with an
    error_response on the stream, which stays usable."""
    ch = coord.channel()
    health = health_pb2_grpc.HealthStub(ch)
    for name in ("nope", "x" * 100_000):
        try:
            await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=T)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == C.NOT_FOUND
        else:
            raise AssertionError("unknown service reported as known")
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    call = stub.ServerReflectionInfo(timeout=T)
    for req in (reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
                reflection_pb2.ServerReflectionRequest(file_by_filename="../../etc/passwd"),
                reflection_pb2.ServerReflectionRequest(file_containing_extension=reflection_pb2.ExtensionRequest(
                    containing_type="aitbc.coordinator.v1.Job", extension_number=-1)),
                reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type="x" * 10000),
                reflection_pb2.ServerReflectionRequest()):  # fmt: skip
        await call.write(req)
        r = await asyncio.wait_for(call.read(), T)
        assert r is not grpc.aio.EOF and r.WhichOneof("message_response") == "error_response", r
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    r = await asyncio.wait_for(call.read(), T)
    assert r.list_services_response.service
    await call.done_writing()
    await assert_healthy(coord)


# ================================================================================= MinerService.Connect
async def open_stream(coord: Harness, name: str = "miner-01") -> Any:
    return coord.miner_stub().Connect(metadata=md_miner(name), timeout=15)


async def stream_error(call: Any, within: float = 5.0) -> ErrorDetails:
    """Read until the stream fails; fail if it ends OK or stays open."""
    while True:
        try:
            msg = await asyncio.wait_for(call.read(), within)
        except grpc.aio.AioRpcError as exc:
            return details_of(exc)
        except TimeoutError:
            raise AssertionError(f"the stream neither answered nor ended within {within} s") from None
        assert msg is not grpc.aio.EOF, "the stream ended OK instead of with an error status"


@no_limits
async def test_connect_first_message_and_hello_validation(coord: Harness) -> None:
    """An empty first envelope, a half-close before hello and invalid hellos end the stream INVALID_ARGUMENT
    with details; a hello then a half-close ends OK."""
    CR = mpb.ConnectRequest
    call = await open_stream(coord)
    await call.write(CR())
    expect_error(await stream_error(call), C.INVALID_ARGUMENT, "HELLO_REQUIRED")
    call = await open_stream(coord)
    await call.done_writing()
    expect_error(await stream_error(call), C.INVALID_ARGUMENT, "HELLO_REQUIRED")
    bad_hellos = [
        mpb.Hello(capabilities=capabilities(slots=1025)), mpb.Hello(capabilities=capabilities(price="-1")),
        mpb.Hello(capabilities=capabilities(price="abc")), mpb.Hello(capabilities=capabilities(region="r" * 65)),
        mpb.Hello(capabilities=capabilities(gpus=tuple(("g", 8) for _ in range(65)))),
        mpb.Hello(capabilities=capabilities(models=tuple(f"m{i}" for i in range(257)))),
        mpb.Hello(capabilities=capabilities(labels={f"k{i}": "v" for i in range(33)})),
        mpb.Hello(capabilities=capabilities(labels={"tier": "v" * 129})),
        mpb.Hello(capabilities=capabilities(labels={"k" * 129: "v"})),
        mpb.Hello(capabilities=capabilities(), receipt_public_key=b"k" * 31),
        mpb.Hello(capabilities=capabilities(), agent_version="v" * 129),
        mpb.Hello(capabilities=capabilities(), running_jobs=[mpb.RunningJob(job_id="x" * 65, attempt=1)]),
        mpb.Hello(capabilities=capabilities(), running_jobs=[mpb.RunningJob(job_id=str(uuid.uuid4()), attempt=1)] * 4097),
    ]  # fmt: skip
    for hello in bad_hellos:
        call = await open_stream(coord)
        await call.write(CR(hello=hello))
        expect_invalid(await stream_error(call))
    call = await open_stream(coord)
    await call.write(CR(hello=mpb.Hello(capabilities=capabilities())))
    assert (await asyncio.wait_for(call.read(), 5)).WhichOneof("message") == "welcome"
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
    assert await call.code() == C.OK
    await assert_healthy(coord)


@no_limits
async def test_hello_with_malformed_cuda_version_is_refused(coord: Harness) -> None:
    """A hello whose cuda_version is not like '12.1' is INVALID_ARGUMENT, as Constraints.cuda is; it used to
    be welcomed and then never matched a CUDA constraint."""
    call = await open_stream(coord)
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(cuda="abc"))))
    expect_invalid(await stream_error(call))


@no_limits
async def test_register_miner_without_hello_is_invalid_argument(coord: Harness) -> None:
    """RegisterMiner without a hello is INVALID_ARGUMENT, as a stream without one is; it used to open a
    session with default capabilities."""
    miners = coord.miner_stub()
    err = await failing(
        miners.RegisterMiner(mpb.RegisterMinerRequest(), metadata=md_miner("miner-01"), timeout=T)
    )
    assert err.code == C.INVALID_ARGUMENT and err.has_error_info, err


@no_limits
async def test_stream_messages_for_unknown_jobs_are_refused_without_closing(coord: Harness) -> None:
    """Accept or result for an unknown job gets result_ack JOB_NOT_HELD on a stream that stays open; NaN
    progress and heartbeats naming unknown jobs change nothing; an empty envelope is INVALID_ARGUMENT."""
    m = await coord.stream_miner("miner-01", slots=1)
    u = str(uuid.uuid4())
    m.send(accept=mpb.Accept(job_id=u, attempt=1))
    ack = await m.next("result_ack")
    assert not ack.accepted and ack.reason == "JOB_NOT_HELD"
    m.send(results=mpb.Results(results=[mpb.Result(job_id=u, attempt=1, result_bytes=b"x")]))
    ack = await m.next("result_ack")
    assert not ack.accepted and ack.reason == "JOB_NOT_HELD"
    m.send(progress=mpb.Progress(job_id=u, attempt=1, fraction=float("nan")))
    m.send(heartbeat=mpb.MinerHeartbeat(running_jobs=[mpb.RunningJob(job_id=u, attempt=1)]))
    await asyncio.sleep(0.3)
    assert not m.closed.is_set()
    # a job still reaches this miner
    job = await submit(coord)
    assert (await m.next("assignment")).job.job_id == job.job_id
    m._out.put_nowait(mpb.ConnectRequest())  # an empty envelope, straight to the sender
    await m.wait_closed()
    assert m.end_status == C.INVALID_ARGUMENT
    await assert_healthy(coord)


@no_limits
async def test_stream_batch_bounds(coord: Harness) -> None:
    """An empty Results and one of 1001 end the stream INVALID_ARGUMENT with details; a batch of 1000 valid
    results is acknowledged in full."""
    for results in ([], [mpb.Result(job_id=str(uuid.uuid4()), attempt=1, result_bytes=b"x")] * 1001):
        call = await open_stream(coord)
        await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities())))
        assert (await asyncio.wait_for(call.read(), 5)).WhichOneof("message") == "welcome"
        await call.write(mpb.ConnectRequest(results=mpb.Results(results=results)))
        expect_invalid(await stream_error(call))
    m = await coord.stream_miner("miner-02", slots=1000)
    await coord.jobs_stub().SubmitJobs(jpb.SubmitJobsRequest(requests=[jpb.SubmitJobRequest(payload_bytes=b"x")] * 1000),
                                       metadata=ALICE, timeout=20)  # fmt: skip
    got = await m.assignments(1000, within=10)
    m.send(results=mpb.Results(results=[mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"r")
                                        for a in got]))  # fmt: skip
    acks = [await m.next("result_ack", 10) for _ in range(1000)]
    assert all(a.accepted for a in acks)
    assert coord.db.scalar("SELECT COUNT(*) FROM jobs WHERE state = ?", (COMPLETED,)) == 1000


@no_limits
async def test_stream_fencing_within_a_batch_and_after_reject(coord: Harness) -> None:
    """The second copy of one result in a batch does not overwrite the first; a stale attempt in the batch
    and a result after a reject are refused."""
    m1 = await coord.stream_miner("miner-01", slots=2)
    m2 = await coord.stream_miner("miner-02", slots=1)
    await submit(coord)
    await submit(coord)
    await submit(coord)
    a1 = await m1.assignments(2)
    [a2] = await m2.assignments(1)
    m1.send(results=mpb.Results(results=[
        mpb.Result(job_id=a1[0].job.job_id, attempt=a1[0].attempt, result_bytes=b"one"),
        mpb.Result(job_id=a1[0].job.job_id, attempt=a1[0].attempt, result_bytes=b"two"),
        mpb.Result(job_id=a1[1].job.job_id, attempt=a1[1].attempt + 5, result_bytes=b"stale")]))  # fmt: skip
    acks = [await m1.next("result_ack") for _ in range(3)]
    assert acks[0].accepted and acks[2].reason == "STALE_ATTEMPT"
    r = await coord.jobs_stub().GetJobResult(
        jpb.GetJobResultRequest(job_id=a1[0].job.job_id), metadata=ALICE, timeout=T
    )
    assert r.result.result_bytes == b"one"
    m2.send(reject=mpb.Reject(job_id=a2.job.job_id, attempt=a2.attempt, reason="no"))
    await asyncio.sleep(0.1)
    m2.send(
        results=mpb.Results(
            results=[mpb.Result(job_id=a2.job.job_id, attempt=a2.attempt, result_bytes=b"late")]
        )
    )
    ack = await m2.next("result_ack")
    assert not ack.accepted and ack.reason in ("JOB_NOT_HELD", "STALE_ATTEMPT")


@no_limits
async def test_stream_hello_after_drain(coord: Harness) -> None:
    """A hello after the miner asked to drain (answered with drain) ends the stream FAILED_PRECONDITION."""
    m, _ = await miner_with_running_job(coord, "miner-01")
    m.send(drain=mpb.MinerDrain(reason="bye"))
    await m.next("drain")
    m.send(hello=mpb.Hello(capabilities=capabilities()))
    await m.wait_closed()
    assert m.end_status == C.FAILED_PRECONDITION


async def _result_with_units(m: Any, a: mpb.Assignment, units: str) -> mpb.ResultAck:
    m.send(results=mpb.Results(results=[mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"ok",
                                                   units=units)]))  # fmt: skip
    try:
        return await m.next("result_ack", 5)
    except AssertionError:
        raise AssertionError(
            f"no result_ack for units {units!r}; stream closed={m.closed.is_set()} status={m.end_status}"
        ) from None


@no_limits
@pytest.mark.parametrize("units", ["1E+5", "1e3", " 3 ", "1e999999999"])
async def test_stream_result_with_odd_units_is_refused_not_a_dead_stream(coord: Harness, units: str) -> None:
    """A streamed result with units not in plain decimal form ('1E+5', ' 3 ') or with a huge exponent is
    refused (INVALID_RESULT) on a stream that stays open; it used to end the stream silently."""
    m, a = await miner_with_running_job(coord, "miner-01")
    ack = await _result_with_units(m, a, units)
    assert not m.closed.is_set(), f"the stream ended (status {m.end_status})"
    assert not ack.accepted and ack.reason == "INVALID_RESULT", ack
    assert (await get_job(coord, a.job.job_id)).state == RUNNING
    # the miner can still deliver a valid result for the same attempt
    ack = await _result_with_units(m, a, "1")
    assert ack.accepted, ack
    assert (await get_job(coord, a.job.job_id)).state == COMPLETED
    await assert_healthy(coord)


@no_limits
async def test_stream_invalid_result_ack_reason_is_the_documented_one(coord: Harness) -> None:
    """A result with no output, units '-1' or 'abc', or over 1 MiB is refused with the documented
    ResultAck reason INVALID_RESULT (it used to be the undocumented INVALID_REQUEST)."""
    m, a = await miner_with_running_job(coord, "miner-01", slots=1)
    for result in (mpb.Result(job_id=a.job.job_id, attempt=a.attempt),
                   mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"x", units="-1"),
                   mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"x", units="abc"),
                   mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"x" * ((1 << 20) + 1))):  # fmt: skip
        m.send(results=mpb.Results(results=[result]))
        ack = await m.next("result_ack")
        assert not ack.accepted
        assert ack.reason == "INVALID_RESULT", (ack.reason, ack.message)
    assert (await get_job(coord, a.job.job_id)).state == RUNNING


# ================================================================================= MinerService, unary
async def unary_session(coord: Harness, name: str = "miner-05", slots: int = 4) -> tuple[Any, str, Any]:
    stub = coord.miner_stub()
    md = md_miner(name)
    reg = await stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=slots))),
                                   metadata=md, timeout=T)  # fmt: skip
    return stub, reg.welcome.session_id, md


async def unary_job(coord: Harness, stub: Any, sid: str, md: Any) -> mpb.Assignment:
    await submit(coord)
    r = await stub.PollJob(mpb.PollJobRequest(session_id=sid, max_jobs=1), metadata=md, timeout=3)
    [a] = r.assignments
    return a


@no_limits
async def test_unary_miner_bad_sessions_and_fields(coord: Harness) -> None:
    """Empty, oversize, unknown and other miners' session ids, a missing result, a stale attempt, an oversize
    failure job id or reason, and a huge max_jobs get the documented status and details."""
    stub, sid, md = await unary_session(coord)
    other = md_miner("miner-06")
    cases = [
        (stub.Heartbeat(mpb.HeartbeatRequest(), metadata=md, timeout=T), C.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (stub.Heartbeat(mpb.HeartbeatRequest(session_id="s" * 65), metadata=md, timeout=T), C.INVALID_ARGUMENT,
         "INVALID_REQUEST"),
        (stub.Heartbeat(mpb.HeartbeatRequest(session_id=sid), metadata=other, timeout=T), C.NOT_FOUND,
         "SESSION_NOT_FOUND"),
        (stub.PollJob(mpb.PollJobRequest(session_id=sid), metadata=other, timeout=T), C.NOT_FOUND, "SESSION_NOT_FOUND"),
        (stub.Drain(mpb.DrainRequest(session_id="nope"), metadata=md, timeout=T), C.NOT_FOUND, "SESSION_NOT_FOUND"),
        (stub.Drain(mpb.DrainRequest(session_id=sid, reason="r" * 513), metadata=md, timeout=T), C.INVALID_ARGUMENT,
         "INVALID_REQUEST"),
        (stub.SubmitResult(mpb.SubmitResultRequest(session_id=sid), metadata=md, timeout=T), C.INVALID_ARGUMENT,
         "INVALID_REQUEST"),
    ]  # fmt: skip
    for c, code, reason in cases:
        expect_error(await failing(c), code, reason)
    a = await unary_job(coord, stub, sid, md)
    err = await failing(stub.SubmitResult(mpb.SubmitResultRequest(session_id=sid, result=mpb.Result(
        job_id=a.job.job_id, attempt=a.attempt + 3, result_bytes=b"x")), metadata=md, timeout=T))  # fmt: skip
    expect_error(err, C.FAILED_PRECONDITION, "STALE_ATTEMPT")
    err = await failing(stub.ReportFailure(mpb.ReportFailureRequest(session_id=sid, failure=mpb.Failure(
        job_id="j" * 65, attempt=a.attempt, code="c" * 65)), metadata=md, timeout=T))  # fmt: skip
    expect_invalid(err, field="failure.job_id")  # (an oversize code alone is cut, not refused: helper-132)
    # a long-poll with a huge max_jobs neither fails nor hands out more than the free slots
    r = await stub.PollJob(mpb.PollJobRequest(session_id=sid, max_jobs=2**32 - 1), metadata=md, timeout=0.5)
    assert len(r.assignments) <= 3
    await assert_healthy(coord)


@no_limits
async def test_unary_report_failure_without_failure_is_invalid_argument(coord: Harness) -> None:
    """ReportFailure without a failure is INVALID_ARGUMENT, as SubmitResult without a result is (it used to
    be FAILED_PRECONDITION JOB_NOT_HELD)."""
    stub, sid, md = await unary_session(coord)
    err = await failing(stub.ReportFailure(mpb.ReportFailureRequest(session_id=sid), metadata=md, timeout=T))
    expect_invalid(err)


@no_limits
async def test_unary_report_failure_for_a_completed_job_is_refused(coord: Harness) -> None:
    """ReportFailure for a COMPLETED job is FAILED_PRECONDITION (JOB_NOT_HELD or STALE_ATTEMPT) and changes
    nothing; it used to be acknowledged with the job's receipt."""
    stub, sid, md = await unary_session(coord)
    a = await unary_job(coord, stub, sid, md)
    await stub.SubmitResult(mpb.SubmitResultRequest(session_id=sid, result=mpb.Result(
        job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"x")), metadata=md, timeout=T)  # fmt: skip
    assert (await get_job(coord, a.job.job_id)).state == COMPLETED
    try:
        r = await stub.ReportFailure(mpb.ReportFailureRequest(session_id=sid, failure=mpb.Failure(
            job_id=a.job.job_id, attempt=a.attempt, retryable=False, code="OOPS")), metadata=md, timeout=T)  # fmt: skip
    except grpc.aio.AioRpcError as exc:
        err = details_of(exc)
        assert err.code == C.FAILED_PRECONDITION and err.reason in ("JOB_NOT_HELD", "STALE_ATTEMPT"), err
    else:
        raise AssertionError(f"a failure of a COMPLETED job was acknowledged: {r.ack}")
    assert (await get_job(coord, a.job.job_id)).state == COMPLETED


@no_limits
@pytest.mark.parametrize("units", ["1E+5", " 3 ", "1e999999999"])
async def test_unary_submit_result_with_odd_units_is_not_internal(coord: Harness, units: str) -> None:
    """SubmitResult with units '1E+5', ' 3 ' or '1e999999999' is INVALID_ARGUMENT (INVALID_RESULT), never
    INTERNAL, and the job stays deliverable."""
    stub, sid, md = await unary_session(coord)
    a = await unary_job(coord, stub, sid, md)
    req = mpb.SubmitResultRequest(session_id=sid, result=mpb.Result(job_id=a.job.job_id, attempt=a.attempt,
                                                                    result_bytes=b"x", units=units))  # fmt: skip
    err = await failing(stub.SubmitResult(req, metadata=md, timeout=T))
    expect_invalid(err, "INVALID_RESULT", "units")
    r = await stub.SubmitResult(mpb.SubmitResultRequest(session_id=sid, result=mpb.Result(
        job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"x", units="1")), metadata=md, timeout=T)  # fmt: skip
    assert r.ack.accepted
    assert (await get_job(coord, a.job.job_id)).state == COMPLETED
    await assert_healthy(coord)


@no_limits
async def test_unary_register_with_huge_exponent_price_is_refused(coord: Harness) -> None:
    """RegisterMiner with price '1e999999999' is INVALID_ARGUMENT naming capabilities.price; it used to
    make QuoteCost INTERNAL for every client."""
    stub = coord.miner_stub()
    err = await failing(stub.RegisterMiner(mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(
        price="1e999999999"))), metadata=md_miner("miner-05"), timeout=T))  # fmt: skip
    expect_invalid(err, field="capabilities.price")


@no_limits
async def test_unary_drain_twice_is_idempotent(coord: Harness) -> None:
    """A second Drain of a draining session answers as the first did."""
    stub, sid, md = await unary_session(coord)
    await unary_job(coord, stub, sid, md)
    assert (await stub.Drain(mpb.DrainRequest(session_id=sid), metadata=md, timeout=T)).running_jobs == 1
    assert (await stub.Drain(mpb.DrainRequest(session_id=sid), metadata=md, timeout=T)).running_jobs == 1
    await assert_healthy(coord)


@no_limits
async def test_stream_batch_with_one_bad_units_entry_loses_no_result(coord: Harness) -> None:
    """A Results batch [good, units '1E+5', good] acks every result, and the API agrees with the store: a
    COMPLETED job has its result and receipt (one bad entry used to kill the reader and lose data)."""
    m = await coord.stream_miner("miner-01", slots=3)
    for _ in range(3):
        await submit(coord)
    asg = await m.assignments(3)
    m.send(
        results=mpb.Results(
            results=[
                mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result_bytes=b"x", units=u)
                for a, u in zip(asg, ["1", "1E+5", "2"], strict=True)
            ]
        )
    )
    await asyncio.sleep(1.0)
    jobs = coord.jobs_stub()
    receipts = receipt_service_pb2_grpc.ReceiptServiceStub(coord.channel())
    problems = []
    for a in asg:
        job = await get_job(coord, a.job.job_id)
        stored = coord.db.job_state(a.job.job_id)
        if job.state != stored:
            problems.append(f"{a.job.job_id}: API says {job.state}, the store says {stored}")
        if job.state == COMPLETED:
            try:
                await jobs.GetJobResult(
                    jpb.GetJobResultRequest(job_id=a.job.job_id), metadata=ALICE, timeout=T
                )
                await receipts.GetReceipt(
                    rpb.GetReceiptRequest(job_id=a.job.job_id), metadata=ALICE, timeout=T
                )
            except grpc.aio.AioRpcError as exc:
                problems.append(f"{a.job.job_id}: COMPLETED but {exc.code()} {exc.details()}")
    assert not problems, problems
    assert len([k for k, _ in m.log if k == "result_ack"]) == 3, [k for k, _ in m.log]


@no_limits
async def test_a_miner_price_the_ledger_cannot_book_a_unit_at_is_refused_at_its_hello(coord: Harness) -> None:
    """A price past 9223372036.854775807 (a ledger entry is a 64-bit integer of nano units) passed the hello, and
    every result the miner sent was refused INVALID_RESULT 'beyond what the ledger can book': each job it took failed
    for good. The hello is refused now, naming capabilities.price; the largest bookable price still serves."""
    call = coord.miner_stub().Connect(metadata=md_miner("miner-01"), timeout=10)
    await call.write(
        mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(price="9223372036.854775808")))
    )
    expect_invalid(await failing(call.read()), field="capabilities.price")
    miner = await coord.stream_miner("miner-02", price="9223372036.854775807")
    job = await submit(coord)
    [a] = await miner.assignments(1)
    miner.result(job.job_id, a.attempt, {"v": 1})  # units "1": the cost is the price
    ack = await miner.next("result_ack")
    assert ack.accepted and ack.receipt_id, ack
    assert (await get_job(coord, job.job_id)).state == COMPLETED
