"""Proto <-> domain conversion. No rules here: validation lives in domain.validation."""

from __future__ import annotations

import hashlib
from typing import Any

from aitbc.coordinator.v1 import job_pb2, job_service_pb2, miner_service_pb2
from aitbc.receipts.canonical import MAX_SAFE_INTEGER, CanonicalError, _quote, canonical_struct, es_number
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from ..domain.errors import invalid
from ..domain.model import Capabilities, Constraints, Event, Gpu, Job, JobResult, PayloadKind
from ..domain.validation import (
    NO_CONSTRAINTS,
    Limits,
    SubmissionFields,
    check_cuda,
    check_decimal,
    check_labels,
    check_price,
    check_text,
    raise_if,
    validate_submission,
)
from ..scheduler.engine import FailureIn, JobSpec, ResultIn
from ..security.bounds import LIMITS, NO_NUL, NUL, violations_of


def timestamp(us: int) -> timestamp_pb2.Timestamp | None:
    if not us:
        return None
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def duration_s(d: duration_pb2.Duration, field: str) -> float:
    """A Duration in seconds (to the nanosecond: a bound is exact), refused unless well formed as the
    protobuf spec has it (nanos within +-999,999,999, of the same sign as seconds)."""
    if not -999_999_999 <= d.nanos <= 999_999_999 or (d.seconds > 0 > d.nanos) or (d.seconds < 0 < d.nanos):
        raise invalid(f"{field} is not a valid Duration (seconds {d.seconds}, nanos {d.nanos})",
                      [(field, "nanos within +-999999999, of the same sign as seconds")])  # fmt: skip
    return d.seconds + d.nanos / 1e9


def struct_to_python(value: struct_pb2.Value | struct_pb2.Struct, depth: int = 1) -> tuple[Any, int]:
    """A Struct as plain Python, and its nesting depth (for the depth limit)."""
    if isinstance(value, struct_pb2.Struct):
        out, deepest = {}, depth
        for key, item in value.fields.items():
            out[key], d = struct_to_python(item, depth + 1)
            deepest = max(deepest, d)
        return out, deepest
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_python(value.struct_value, depth)
    if kind == "list_value":
        items, deepest = [], depth
        for item in value.list_value.values:
            converted, d = struct_to_python(item, depth + 1)
            items.append(converted)
            deepest = max(deepest, d)
        return items, deepest
    if kind == "number_value":
        return value.number_value, depth
    if kind == "string_value":
        return value.string_value, depth
    if kind == "bool_value":
        return value.bool_value, depth
    return None, depth


def _struct_json(struct: struct_pb2.Struct, out: list[str], depth: int) -> int:
    """Append struct's canonical JSON (canonical_struct of struct_to_python's value) to out; its depth.

    Straight from the message: no intermediate dict, and each Value read once. Raises on anything unusual
    (a non-finite number): callers then take the reference path, which names the problem."""
    fields = struct.fields
    deepest = depth
    sep = "{"
    for key in sorted(fields):  # code point order, as canonical_struct sorts
        out.append(sep)
        out.append(_quote(key))
        out.append(":")
        d = _value_json(fields[key], out, depth + 1)
        if d > deepest:
            deepest = d
        sep = ","
    out.append("}" if sep == "," else "{}")
    return deepest


def _value_json(value: struct_pb2.Value, out: list[str], depth: int) -> int:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        x = value.number_value
        # es_number's common case inline (an integral double below 2^53; NaN fails the range test)
        integral = -MAX_SAFE_INTEGER <= x <= MAX_SAFE_INTEGER and x == int(x)
        out.append(str(int(x)) if integral else es_number(x))
    elif kind == "string_value":
        out.append(_quote(value.string_value))
    elif kind == "struct_value":
        return _struct_json(value.struct_value, out, depth)
    elif kind == "bool_value":
        out.append("true" if value.bool_value else "false")
    elif kind == "list_value":
        deepest = depth
        sep = "["
        for item in value.list_value.values:
            out.append(sep)
            d = _value_json(item, out, depth + 1)
            if d > deepest:
                deepest = d
            sep = ","
        out.append("]" if sep == "," else "[]")
        return deepest
    else:  # null_value, or no kind at all: struct_to_python's None
        out.append("null")
    return depth


def struct_sha256(struct: struct_pb2.Struct) -> tuple[bytes, int] | None:
    """(SHA-256 of canonical_struct(struct_to_python(struct)), its depth), or None where that would raise
    (the caller's reference path then raises as it always did)."""
    out: list[str] = []
    try:
        depth = _struct_json(struct, out, 1)
        return hashlib.sha256("".join(out).encode("utf-8")).digest(), depth
    except Exception:  # a non-finite number, a lone surrogate: the reference path names it
        return None


def struct_digest(struct: struct_pb2.Struct, limits: Limits, field: str) -> tuple[bytes, int]:
    """SHA-256 of the canonical JSON of struct (receipts spec section 1), and its depth."""
    fast = struct_sha256(struct)
    if fast is not None:
        return fast if fast[1] <= limits.max_struct_depth else (b"", fast[1])
    value, depth = struct_to_python(struct)
    if depth > limits.max_struct_depth:
        return b"", depth
    try:
        return hashlib.sha256(canonical_struct(value)).digest(), depth
    except CanonicalError as exc:
        raise invalid(f"{field} is not valid JSON: {exc}", [(field, str(exc))]) from None


def constraints_from(c: job_pb2.Constraints) -> Constraints:
    if not c.ByteSize():
        return _NO_CONSTRAINTS  # most jobs: no tuples to build
    return Constraints(
        gpu=c.gpu, cuda=c.cuda, min_vram_gb=c.min_vram_gb, models=tuple(c.models), region=c.region,
        max_price=c.max_price, labels=tuple(sorted(c.labels.items())),
    )  # fmt: skip


def job_spec(req: job_service_pb2.SubmitJobRequest, limits: Limits, prefix: str = "") -> JobSpec:
    kind = req.WhichOneof("input")
    if kind == "payload":
        payload = req.payload.SerializeToString()
        digest, depth = (
            struct_digest(req.payload, limits, f"{prefix}payload")
            if len(payload) <= limits.max_payload_bytes
            else (b"", 0)
        )
        payload_kind = PayloadKind.STRUCT
    else:
        payload, depth, payload_kind = req.payload_bytes, 0, PayloadKind.BYTES
        digest = hashlib.sha256(payload).digest()
    constraints = constraints_from(req.constraints)
    fields = SubmissionFields(
        payload_size=len(payload), payload_depth=depth, has_payload=kind is not None,
        constraints=constraints, priority=req.priority,
        ttl_s=duration_s(req.ttl, f"{prefix}ttl") if req.HasField("ttl") else None,
        max_attempts=req.max_attempts,
        execution_timeout_s=duration_s(req.execution_timeout, f"{prefix}execution_timeout")
        if req.HasField("execution_timeout") else None,
        idempotency_key=req.idempotency_key, metadata=tuple(sorted(req.metadata.items())) if req.metadata else (),
    )  # fmt: skip
    violations, ttl_us, attempts, exec_us = validate_submission(fields, limits, prefix)
    raise_if(violations, "the job")
    return JobSpec(
        payload=payload, payload_kind=payload_kind, input_sha256=digest, constraints=constraints,
        priority=req.priority, ttl_us=ttl_us, max_attempts=attempts, execution_timeout_us=exec_us,
        idempotency_key=req.idempotency_key,
        fingerprint=hashlib.sha256(req.SerializeToString(deterministic=True)).digest(),
        metadata=fields.metadata,
    )  # fmt: skip


def set_time(ts: timestamp_pb2.Timestamp, us: int) -> None:
    """Set a Timestamp field in place (building one and copying it in costs twice as much)."""
    seconds, micros = divmod(us, 1_000_000)
    ts.seconds, ts.nanos = seconds, micros * 1000


def set_duration(d: duration_pb2.Duration, us: int) -> None:
    """d.FromMicroseconds(us), without its Python method calls: both fields set (so d is present, even at 0),
    nanos of the sign of seconds."""
    seconds, nanos = us // 1_000_000, us % 1_000_000 * 1000
    if seconds < 0 and nanos > 0:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    d.seconds, d.nanos = seconds, nanos


def job_message(job: Job, with_payload: bool = True) -> job_pb2.Job:
    return fill_job(job_pb2.Job(), job, with_payload)


def fill_job(msg: job_pb2.Job, job: Job, with_payload: bool = True) -> job_pb2.Job:
    """Write job into msg (empty, or a field of another message: an assignment's job is filled in place).

    Field by field, unset values skipped: this runs for every assignment and every job a client reads."""
    msg.job_id, msg.state, msg.client_id, msg.priority = job.job_id, job.state, job.client_id, job.priority
    msg.max_attempts, msg.attempt = job.max_attempts, job.attempt
    if job.idempotency_key:
        msg.idempotency_key = job.idempotency_key
    if job.miner_id:
        msg.miner_id = job.miner_id
    if job.terminal_reason:
        msg.terminal_reason = job.terminal_reason
    if job.terminal_message:
        msg.terminal_message = job.terminal_message
    c = job.constraints
    if c == _NO_CONSTRAINTS:
        msg.constraints.SetInParent()  # present though empty, as it always was on the wire
    else:
        mc = msg.constraints
        mc.gpu, mc.cuda, mc.min_vram_gb, mc.region, mc.max_price = (
            c.gpu,
            c.cuda,
            c.min_vram_gb,
            c.region,
            c.max_price,
        )
        mc.models.extend(c.models)
        mc.labels.update(c.labels)
    if job.metadata:
        msg.metadata.update(job.metadata)
    # a time field is read only when set: reading an unset one still makes a wrapper
    for name, us in (("created_at", job.created_us), ("updated_at", job.updated_us),
                     ("expires_at", job.expires_us), ("started_at", job.started_us),
                     ("finished_at", job.finished_us)):  # fmt: skip
        if us:
            set_time(getattr(msg, name), us)
    set_duration(msg.ttl, job.ttl_us)
    set_duration(msg.execution_timeout, job.execution_timeout_us)
    if with_payload:
        if job.payload_kind is PayloadKind.STRUCT:
            msg.payload.MergeFromString(job.payload)
        else:
            msg.payload_bytes = job.payload
    return msg


_NO_CONSTRAINTS = NO_CONSTRAINTS  # validate_submission skips its checks


def event_message(e: Event) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        job_id=e.job_id, sequence=e.sequence, from_state=0 if e.from_state is None else int(e.from_state),
        to_state=int(e.to_state), attempt=e.attempt, miner_id=e.miner_id, reason=e.reason, message=e.message,
        occurred_at=timestamp(e.occurred_us),
    )  # fmt: skip


def result_message(r: JobResult) -> job_pb2.JobResult:
    msg = job_pb2.JobResult(
        job_id=r.job_id, attempt=r.attempt, result_sha256=r.result_sha256, units=r.units, unit_type=r.unit_type,
        receipt_id=r.receipt_id, miner_id=r.miner_id, completed_at=timestamp(r.completed_us),
    )  # fmt: skip
    if r.output_kind is PayloadKind.STRUCT:
        msg.result.MergeFromString(r.output)
    else:
        msg.result_bytes = r.output
    return msg


def capabilities_from(c: miner_service_pb2.MinerCapabilities, limits: Limits) -> Capabilities:
    v: list[tuple[str, str]] = []
    if len(c.gpus) > 64:
        v.append(("capabilities.gpus", "at most 64"))
    if len(c.models) > 256 or any(len(m) > 256 for m in c.models):
        v.append(("capabilities.models", "at most 256 entries of at most 256 characters"))
    if c.slots > 1024:
        v.append(("capabilities.slots", "at most 1024"))
    check_labels(v, "capabilities.labels", tuple(c.labels.items()), limits)  # (as the constraints they meet)
    if len(c.region) > 64:
        v.append(("capabilities.region", "at most 64 characters"))
    check_price(v, "capabilities.price", c.price)
    check_cuda(v, "capabilities.cuda_version", c.cuda_version)
    raise_if(v, "hello")
    return Capabilities(
        gpus=tuple(Gpu(g.model[:256], g.memory_gb) for g in c.gpus), cuda_version=c.cuda_version,
        models=frozenset(c.models), price=c.price or "0", region=c.region, labels=tuple(sorted(c.labels.items())),
        slots=c.slots or 1, cpu_cores=c.cpu_cores, memory_gb=c.memory_gb,
    )  # fmt: skip


def capabilities_message(c: Capabilities) -> miner_service_pb2.MinerCapabilities:
    return miner_service_pb2.MinerCapabilities(
        gpus=[miner_service_pb2.Gpu(model=g.model, memory_gb=g.memory_gb) for g in c.gpus],
        cuda_version=c.cuda_version, models=sorted(c.models), price=c.price, region=c.region,
        labels=dict(c.labels), slots=c.slots, cpu_cores=c.cpu_cores, memory_gb=c.memory_gb,
    )  # fmt: skip


def result_in(r: miner_service_pb2.Result, limits: Limits) -> ResultIn:
    # the field bounds the interceptor leaves to us (bounds.CHECKED_BY_SERVICER): this result alone refused
    raise_if(violations_of(r), "the result", "INVALID_RESULT")
    kind = r.WhichOneof("output")
    if kind == "result":
        output = r.result.SerializeToString()
        digest, depth = struct_sha256(r.result) or _result_digest(r.result, limits)
        if depth > limits.max_struct_depth:
            raise invalid("result nested too deep", [("result", f"at most {limits.max_struct_depth} levels")],
                          "INVALID_RESULT")  # fmt: skip
        output_kind = PayloadKind.STRUCT
    elif kind == "result_bytes":
        output, output_kind = r.result_bytes, PayloadKind.BYTES
        digest = hashlib.sha256(output).digest()
    else:
        raise invalid("a result needs result or result_bytes", [("result", "required")], "INVALID_RESULT")
    v: list[tuple[str, str]] = []
    if len(output) > limits.max_result_bytes:
        v.append(("result", f"at most {limits.max_result_bytes} bytes"))
    check_decimal(v, "units", r.units)
    check_text(v, "unit_type", r.unit_type, 64)
    raise_if(v, "the result", "INVALID_RESULT")
    return ResultIn(
        job_id=r.job_id, attempt=r.attempt, output=output, output_kind=output_kind, result_sha256=digest,
        units=r.units or "0", unit_type=r.unit_type or "gpu_seconds", miner_report=r.miner_report,
        miner_signature=r.miner_signature,
    )  # fmt: skip


# A miner's Failure is bounded here, not by the interceptor (bounds.CHECKED_BY_SERVICER): it tells that a job
# failed, and refused, the job stayed held until its lease ran out (and on a stream, the stream ended with it)
_FAILURE = miner_service_pb2.Failure.DESCRIPTOR.full_name + "."
MAX_FAILURE_JOB_ID, MAX_FAILURE_CODE, MAX_FAILURE_MESSAGE = (LIMITS[_FAILURE + f] for f in ("job_id", "code", "message"))  # fmt: skip


def failure_id_wrong(job_id: str) -> str:
    """Why no job can have this failure's job id ("" when one may): it is refused, not cut (a cut id could name
    another job)."""
    if len(job_id) > MAX_FAILURE_JOB_ID:
        return f"at most {MAX_FAILURE_JOB_ID} characters (got {len(job_id)})"
    return NO_NUL if NUL in job_id else ""


def failure_in(f: miner_service_pb2.Failure) -> FailureIn:
    """f as the scheduler takes it, its text cut to its bounds rather than refused (its id checked before)."""
    return FailureIn(f.job_id, f.attempt, f.retryable, _failure_text(f.code, MAX_FAILURE_CODE),
                     _failure_text(f.message, MAX_FAILURE_MESSAGE))  # fmt: skip


def _failure_text(value: str, limit: int) -> str:
    """A failure's code or message as the job keeps it: NUL characters dropped (PostgreSQL's text cannot hold
    them), then cut to limit characters, as the Python SDK does before it sends one."""
    return value.replace(NUL, "")[:limit]


def _result_digest(result: struct_pb2.Struct, limits: Limits) -> tuple[bytes, int]:
    """The reference path of a result struct_sha256 could not take: its depth refused first, as always."""
    value, depth = struct_to_python(result)
    if depth > limits.max_struct_depth:  # (result_in refuses it next)
        return b"", depth
    try:
        return hashlib.sha256(canonical_struct(value)).digest(), depth
    except CanonicalError as exc:
        raise invalid(f"result is not valid JSON: {exc}", [("result", str(exc))], "INVALID_RESULT") from None
