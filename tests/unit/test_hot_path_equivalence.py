"""The per-job conversions take shortcuts (bench/hot_path.py); each must give what the plain way gives, for
every input: the same digest and depth of a Struct as canonical_struct(struct_to_python(...)), the same error
for what that refuses, the same Job message as the protobuf helpers build, the same violations of a submission
as every check run unconditionally."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
from aitbc.coordinator.v1 import job_pb2, job_service_pb2, miner_service_pb2
from aitbc.receipts.canonical import CanonicalError, canonical_struct
from google.protobuf import duration_pb2, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.domain.errors import CoordinatorError
from coordinator.domain.model import Constraints, Job, JobState, PayloadKind
from coordinator.domain.validation import (
    NO_CONSTRAINTS,
    Limits,
    SubmissionFields,
    Violations,
    check_constraints,
    check_labels,
    check_text,
    validate_submission,
)
from coordinator.services.convert import (
    fill_job,
    job_message,
    job_spec,
    result_in,
    set_duration,
    struct_digest,
    struct_sha256,
    struct_to_python,
)

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-like values as a Struct holds them: every number a double (NaN and the infinities included: a Struct
# carries them, canonical JSON refuses them), any Unicode text, nesting up to ~40 levels (past the 32 allowed).
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**60), 2**60).map(float),
    st.sampled_from([0.0, -0.0, 2.0**53 - 1, 2.0**53, 1e21, 1e-7, 5e-324]),
)
texts = st.text(max_size=8)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=40,
)


def deep(levels: int) -> dict[str, Any]:
    value: Any = 1.0
    for _ in range(levels):
        value = {"a": [value]}
    return value


def as_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def reference(s: struct_pb2.Struct) -> tuple[bytes, int] | None:
    """The plain way: a Python value, then canonical_struct; None where that raises."""
    value, depth = struct_to_python(s)
    try:
        return hashlib.sha256(canonical_struct(value)).digest(), depth
    except CanonicalError:
        return None


@SETTINGS
@given(st.one_of(st.dictionaries(texts, values, max_size=6), st.integers(1, 40).map(deep)))
def test_struct_digest_shortcut_equals_canonical_struct_of_the_python_value(value: dict[str, Any]) -> None:
    s = as_struct(value)
    assert struct_sha256(s) == reference(s)


@SETTINGS
@given(st.one_of(st.dictionaries(texts, values, max_size=6), st.integers(1, 40).map(deep)))
def test_struct_digest_and_result_intake_refuse_as_before(value: dict[str, Any]) -> None:
    """struct_digest: (b"", depth) past the depth limit (even with a NaN inside), else the digest, else
    INVALID_ARGUMENT naming the canonical error; result_in: the depth refused first, then the JSON."""
    s = as_struct(value)
    limits = Limits()
    _, depth = struct_to_python(s)
    plain = reference(s)
    result = miner_service_pb2.Result(job_id="j", attempt=1, units="1", unit_type="jobs")
    result.result.CopyFrom(s)
    if depth > limits.max_struct_depth:
        assert struct_digest(s, limits, "payload") == (b"", depth)
        with pytest.raises(CoordinatorError, match="result nested too deep"):
            result_in(result, limits)
    elif plain is None:
        with pytest.raises(CanonicalError) as canonical:
            canonical_struct(struct_to_python(s)[0])
        with pytest.raises(CoordinatorError) as refused:
            struct_digest(s, limits, "payload")
        assert refused.value.message == f"payload is not valid JSON: {canonical.value}"
        assert refused.value.field_violations == [("payload", str(canonical.value))]
        with pytest.raises(CoordinatorError) as refused_result:
            result_in(result, limits)
        assert refused_result.value.message == f"result is not valid JSON: {canonical.value}"
        assert refused_result.value.reason == "INVALID_RESULT"
    else:
        assert struct_digest(s, limits, "payload") == plain
        assert result_in(result, limits).result_sha256 == plain[0]


def test_a_value_without_a_kind_is_null_on_both_paths() -> None:
    """A Value with no kind set (struct_to_python: None) is written null, as null_value is."""
    s = struct_pb2.Struct()
    s.fields["unset"].SetInParent()
    s.fields["null"].null_value = struct_pb2.NULL_VALUE
    assert struct_sha256(s) == reference(s) == (hashlib.sha256(b'{"null":null,"unset":null}').digest(), 2)


def test_non_finite_numbers_are_named_with_their_path() -> None:
    s = as_struct({"a": [1.0, {"b": math.inf}]})
    with pytest.raises(CoordinatorError) as refused:
        struct_digest(s, Limits(), "requests[3].payload")
    assert refused.value.field_violations == [("requests[3].payload", "non-finite number at $.a[1].b")]


# ------------------------------------------------------------------------------------------- Job messages
def reference_job(job: Job, with_payload: bool) -> job_pb2.Job:
    """The Job message through protobuf's own helpers (FromMicroseconds), every field as the contract has it."""
    msg = job_pb2.Job(job_id=job.job_id, state=job.state, client_id=job.client_id, priority=job.priority,
                      max_attempts=job.max_attempts, attempt=job.attempt, idempotency_key=job.idempotency_key,
                      miner_id=job.miner_id, terminal_reason=job.terminal_reason,
                      terminal_message=job.terminal_message, metadata=dict(job.metadata))  # fmt: skip
    c = job.constraints
    msg.constraints.SetInParent()
    msg.constraints.MergeFrom(job_pb2.Constraints(gpu=c.gpu, cuda=c.cuda, min_vram_gb=c.min_vram_gb,
                                                  models=c.models, region=c.region, max_price=c.max_price,
                                                  labels=dict(c.labels)))  # fmt: skip
    for name, us in (("created_at", job.created_us), ("updated_at", job.updated_us),
                     ("expires_at", job.expires_us), ("started_at", job.started_us),
                     ("finished_at", job.finished_us)):  # fmt: skip
        if us:
            getattr(msg, name).FromMicroseconds(us)
    msg.ttl.FromMicroseconds(job.ttl_us)
    msg.execution_timeout.FromMicroseconds(job.execution_timeout_us)
    if with_payload:
        if job.payload_kind is PayloadKind.STRUCT:
            msg.payload.MergeFromString(job.payload)
        else:
            msg.payload_bytes = job.payload
    return msg


micros = st.one_of(st.just(0), st.integers(1, 2**50), st.integers(-(2**40), -1))
short = st.text(max_size=6)
constraints = st.one_of(
    st.just(NO_CONSTRAINTS),
    st.just(Constraints()),
    st.builds(Constraints, gpu=short, cuda=short, min_vram_gb=st.integers(0, 100),
              models=st.lists(short, max_size=3).map(tuple), region=short, max_price=short,
              labels=st.dictionaries(short, short, max_size=3).map(lambda d: tuple(sorted(d.items())))),
)  # fmt: skip


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    structured = draw(st.booleans())
    payload = (
        as_struct(
            draw(st.dictionaries(texts, values, max_size=3).filter(lambda v: reference(as_struct(v))))
        ).SerializeToString()
        if structured
        else draw(st.binary(max_size=20))
    )
    return Job(
        job_id=draw(short), client_id=draw(short), state=draw(st.sampled_from(list(JobState))), payload=payload,
        payload_kind=PayloadKind.STRUCT if structured else PayloadKind.BYTES, input_sha256=b"",
        constraints=draw(constraints), priority=draw(st.integers(0, 9)), ttl_us=draw(micros),
        max_attempts=draw(st.integers(0, 100)), execution_timeout_us=draw(micros), idempotency_key=draw(short),
        request_fingerprint=b"", created_us=draw(micros), updated_us=draw(micros), attempt=draw(st.integers(0, 9)),
        miner_id=draw(short), started_us=draw(micros), finished_us=draw(micros), terminal_reason=draw(short),
        terminal_message=draw(short),
        metadata=tuple(sorted(draw(st.dictionaries(short, short, max_size=3)).items())),
    )  # fmt: skip


@SETTINGS
@given(jobs(), st.booleans())
def test_job_messages_equal_the_protobuf_helpers(job: Job, with_payload: bool) -> None:
    expected = reference_job(job, with_payload)
    msg = job_message(job, with_payload)
    assert msg == expected
    assert msg.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    assignment = miner_service_pb2.Assignment(attempt=1)
    fill_job(assignment.job, job, with_payload)
    assert assignment.job == expected


@SETTINGS
@given(st.one_of(micros, st.integers(-(2**62), 2**62)))
def test_set_duration_is_from_microseconds(us: int) -> None:
    expected, d = duration_pb2.Duration(), duration_pb2.Duration()
    expected.FromMicroseconds(us)
    set_duration(d, us)
    assert (d.seconds, d.nanos) == (expected.seconds, expected.nanos)
    holder, reference_holder = job_pb2.Job(), job_pb2.Job()
    set_duration(holder.ttl, us)
    reference_holder.ttl.FromMicroseconds(us)
    assert holder.HasField("ttl") and holder.SerializeToString() == reference_holder.SerializeToString()


# ------------------------------------------------------------------------------------------- submissions
def reference_violations(f: SubmissionFields, limits: Limits, prefix: str) -> Violations:
    """validate_submission's checks of names, constraints and metadata, each run whatever the value."""
    v: Violations = []
    check_text(v, f"{prefix}idempotency_key", f.idempotency_key, limits.max_short_string)
    check_constraints(v, f"{prefix}constraints", f.constraints, limits)
    check_labels(v, f"{prefix}metadata", f.metadata, limits)
    return v


near_limit = st.one_of(st.integers(0, 200), st.sampled_from([127, 128, 129]))
limits_drawn = st.one_of(
    st.just(Limits()),
    st.builds(Limits, max_short_string=st.integers(-1, 130), max_list_items=st.integers(-1, 3),
              max_labels=st.integers(-1, 3)),
)  # fmt: skip
odd_constraints = st.one_of(
    constraints,
    st.builds(Constraints, gpu=st.integers(0, 200).map("g".__mul__), cuda=st.sampled_from(["", "12.1", "x", "1" * 17]),
              min_vram_gb=st.sampled_from([0, 4096, 4097]), models=st.lists(st.sampled_from(["", "m", "m" * 257]),
              max_size=40).map(tuple), max_price=st.sampled_from(["", "1.5", "1e3"]),
              labels=st.lists(st.tuples(st.sampled_from(["", "k", "k" * 129]), short), max_size=34).map(tuple)),
)  # fmt: skip


@SETTINGS
@given(
    odd_constraints,
    st.lists(st.tuples(st.sampled_from(["", "k", "k" * 129]), short), max_size=34).map(tuple),
    near_limit.map("i".__mul__),
    limits_drawn,
    st.sampled_from(["", "requests[7]."]),
)
def test_submission_violations_equal_every_check_run(
    c: Constraints, metadata: tuple[tuple[str, str], ...], key: str, limits: Limits, prefix: str
) -> None:
    f = SubmissionFields(payload_size=1, payload_depth=1, has_payload=True, constraints=c, priority=0, ttl_s=None,
                         max_attempts=0, execution_timeout_s=None, idempotency_key=key, metadata=metadata)  # fmt: skip
    violations, *_ = validate_submission(f, limits, prefix)
    assert violations == reference_violations(f, limits, prefix)


def test_a_bench_submission_passes_and_its_fingerprint_covers_the_whole_request() -> None:
    """The common case the shortcuts serve: no constraints, no metadata, a generated key."""
    req = job_service_pb2.SubmitJobRequest(constraints=job_pb2.Constraints(), idempotency_key="auto-1")
    req.payload.update({"n": 1.0, "task": "echo"})
    spec = job_spec(req, Limits())
    assert spec.constraints is NO_CONSTRAINTS and spec.metadata == ()
    assert spec.input_sha256 == hashlib.sha256(b'{"n":1,"task":"echo"}').digest()
    assert spec.fingerprint == hashlib.sha256(req.SerializeToString(deterministic=True)).digest()
