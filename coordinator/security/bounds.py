"""Bounds on every string and list a caller sends, checked on each parsed request (streamed ones included)
before any servicer sees it. A breach is INVALID_ARGUMENT with one field violation per field (the first
MAX_VIOLATIONS of them, then a count), and nothing runs; a miner's Result and Failure are held to them by their
servicer (CHECKED_BY_SERVICER): one result out of bounds is refused alone, a failure's text is cut to them.
Finer rules (payload size and depth, labels, decimals, ids) stay with the servicers' validation; these bounds
are the floor under all of it: no field of any message is unbounded.

Text holds no NUL character (U+0000); a failure's code and message have theirs dropped by the servicer. Struct
payloads are not walked here (their size and depth are the servicers' limits); bytes fields are bounded only
where named below (payload and result bytes are bounded by MAX_PAYLOAD_BYTES).
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ..domain.validation import Limits, raise_if

DEFAULT_STRING = 1024  # characters
# U+0000 is valid UTF-8, but PostgreSQL's text cannot hold it (the commit failed: INTERNAL) and C clients cut
# strings at it: no text field may carry it (Struct payloads are stored as JSON, escaped: not concerned)
NUL = "\x00"
NO_NUL = "no NUL (U+0000) characters"
DEFAULT_LIST = 1024  # entries
# Field violations named at most (a count of the others follows): the status travels in the call's trailers,
# which a gRPC client refuses past 8 KiB (grpc-core: at random up to 16 KiB, always beyond), ending the call
# RESOURCE_EXHAUSTED without any details; a SubmitJobs of 1000 entries each out of bounds named 1000 (69 KB).
MAX_VIOLATIONS = 20

_P = "aitbc.coordinator.v1."
LIMITS: dict[str, int] = {
    # ids
    _P + "RunningJob.job_id": 64, _P + "Accept.job_id": 64, _P + "Reject.job_id": 64, _P + "Progress.job_id": 64,
    _P + "Result.job_id": 64, _P + "Failure.job_id": 64, _P + "GetJobRequest.job_id": 64,
    _P + "GetJobResultRequest.job_id": 64, _P + "CancelJobRequest.job_id": 64, _P + "WatchJobRequest.job_id": 64,
    _P + "GetReceiptRequest.job_id": 64, _P + "ListReceiptsRequest.job_id": 64,
    _P + "HeartbeatRequest.session_id": 64, _P + "PollJobRequest.session_id": 64,
    _P + "SubmitResultRequest.session_id": 64, _P + "ReportFailureRequest.session_id": 64,
    _P + "DrainRequest.session_id": 64, _P + "RejectJobRequest.session_id": 64,
    # names and short texts
    _P + "AdminServiceListJobsRequest.client_id": 128, _P + "AdminServiceListJobsRequest.miner_id": 128,
    _P + "DrainMinerRequest.miner_id": 128, _P + "SetApiKeyEnabledRequest.name": 128,
    _P + "SetApiKeyEnabledRequest.role": 16, _P + "Hello.agent_version": 128,
    _P + "Gpu.model": 256, _P + "MinerCapabilities.cuda_version": 16, _P + "MinerCapabilities.price": 64,
    _P + "MinerCapabilities.region": 64, _P + "Constraints.max_price": 64, _P + "QuoteCostRequest.units": 64,
    _P + "Result.units": 64, _P + "Result.unit_type": 64, _P + "Failure.code": 64,
    _P + "ListJobsRequest.page_token": 512, _P + "AdminServiceListJobsRequest.page_token": 512,
    # free texts
    _P + "Reject.reason": 512, _P + "Progress.message": 512, _P + "MinerDrain.reason": 512,
    _P + "DrainRequest.reason": 512, _P + "CancelJobRequest.reason": 512, _P + "Failure.message": 4096,
    # bytes
    _P + "Result.miner_report": 16 << 10, _P + "Result.miner_signature": 256, _P + "Hello.receipt_public_key": 64,
    # lists
    _P + "Hello.running_jobs": 4096, _P + "MinerHeartbeat.running_jobs": 4096,
    _P + "HeartbeatRequest.running_jobs": 4096, _P + "ListJobsRequest.states": 16,
    _P + "AdminServiceListJobsRequest.states": 16, _P + "MinerCapabilities.gpus": 64,
    _P + "MinerCapabilities.models": 256, _P + "Constraints.models": 32,
    _P + "SubmitJobsRequest.requests": Limits().max_batch, _P + "Results.results": Limits().max_batch,
}  # fmt: skip
NOT_WALKED = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
# Bounded by their servicer, not here: a miner's Result, entry by entry (convert.result_in applies these same
# bounds to each, refused INVALID_RESULT). One out of bounds ended the whole stream, the other results of its
# Results unanswered: the contract refuses a bad result alone (`ResultAck.reason` INVALID_RESULT), as it does
# units in any form but a plain decimal. A miner's Failure: its code and message cut to these bounds, NUL
# characters dropped (services.convert.failure_in), its job_id held to its bound and refused alone (no job
# has such an id: JOB_NOT_HELD on a stream); refused, a report that a job failed left the job held until its
# lease ran out, and on a stream cost every other job of the stream its acks. Their messages stay bounded by
# MAX_MESSAGE_BYTES.
CHECKED_BY_SERVICER = frozenset({_P + "Result", _P + "Failure"})
_UNWALKED = NOT_WALKED | CHECKED_BY_SERVICER

_STRING, _BYTES, _MESSAGE = (
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_BYTES,
    FieldDescriptor.TYPE_MESSAGE,
)


def check_bounds(message: Message) -> None:
    raise_if(violations_of(message), "the request")


def violations_of(message: Message) -> list[tuple[str, str]]:
    """message's breaches of these bounds (its own fields walked, even of a type CHECKED_BY_SERVICER), at most
    MAX_VIOLATIONS of them named."""
    if _within(message):  # the common case: no breach to name, so no field path is built
        return []
    violations: list[tuple[str, str]] = []
    _walk(message, "", violations)
    if len(violations) > MAX_VIOLATIONS + 1:
        field, description = violations[MAX_VIOLATIONS]
        more = len(violations) - MAX_VIOLATIONS - 1
        violations[MAX_VIOLATIONS:] = [
            (field, f"{description} (and {more} more field violations, not listed)")
        ]
    return violations


# What _within checks of a field: its kind, its limit, and (repeated strings) each entry's limit. Kept per
# field descriptor: computed once, not per field of every message (2x faster on a 500-job SubmitJobs).
_SKIP, _TEXT, _TEXTS, _DATA, _ONE, _MANY, _TEXT_MAP, _COUNT = range(8)
_plans: dict[FieldDescriptor, tuple[int, int, int]] = {}


def _plan(field: FieldDescriptor) -> tuple[int, int, int]:
    """_walk's rules for field, as _within applies them."""
    plan = _plans.get(field)
    if plan is not None:
        return plan
    if field.is_repeated:
        kind = _COUNT
        if field.type == _MESSAGE:
            entry: Descriptor = field.message_type
            if entry.GetOptions().map_entry:
                keys, values = entry.fields_by_name["key"], entry.fields_by_name["value"]
                if keys.type == _STRING and values.type == _STRING:
                    kind = _TEXT_MAP
            elif entry.full_name not in _UNWALKED:
                kind = _MANY
        elif field.type == _STRING:
            kind = _TEXTS
        plan = (
            kind,
            LIMITS.get(field.full_name, DEFAULT_LIST),
            LIMITS.get(field.full_name + "[]", DEFAULT_STRING),
        )
    elif field.type == _STRING:
        plan = (_TEXT, LIMITS.get(field.full_name, DEFAULT_STRING), 0)
    elif field.type == _BYTES and LIMITS.get(field.full_name, 0):
        plan = (_DATA, LIMITS[field.full_name], 0)
    elif field.type == _MESSAGE and field.message_type.full_name not in _UNWALKED:
        plan = (_ONE, 0, 0)
    else:
        plan = (_SKIP, 0, 0)
    _plans[field] = plan
    return plan


def _within(message: Message) -> bool:
    """True when _walk would find nothing; False at the first breach (_walk then names them all)."""
    for field, value in message.ListFields():
        kind, limit, each = _plans.get(field) or _plan(field)
        if kind == _SKIP:
            continue
        if kind == _TEXT:
            if len(value) > limit or NUL in value:
                return False
        elif kind == _ONE:
            if not _within(value):
                return False
        elif kind == _DATA:
            if len(value) > limit:
                return False
        elif len(value) > limit:  # repeated: the count first, as _walk does
            return False
        elif kind == _MANY:
            for item in value:
                if not _within(item):
                    return False
        elif kind == _TEXTS:
            for item in value:
                if len(item) > each or NUL in item:
                    return False
        elif kind == _TEXT_MAP:
            for key, item in value.items():
                if len(key) > DEFAULT_STRING or len(item) > DEFAULT_STRING or NUL in key or NUL in item:
                    return False
    return True


def _walk(message: Message, prefix: str, v: list[tuple[str, str]]) -> None:
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.is_repeated:
            limit = LIMITS.get(field.full_name, DEFAULT_LIST)
            if len(value) > limit:
                v.append((name, f"at most {limit} entries (got {len(value)})"))
                continue
            if field.type == _MESSAGE:
                entry: Descriptor = field.message_type
                if entry.GetOptions().map_entry:
                    _map(entry, value, name, v)
                elif entry.full_name not in _UNWALKED:
                    for i, item in enumerate(value):
                        _walk(item, f"{name}[{i}].", v)
            elif field.type == _STRING:
                limit = LIMITS.get(field.full_name + "[]", DEFAULT_STRING)
                if any(len(item) > limit for item in value):
                    v.append((name, f"each entry at most {limit} characters"))
                elif any(NUL in item for item in value):
                    v.append((name, NO_NUL))
        elif field.type == _STRING:
            limit = LIMITS.get(field.full_name, DEFAULT_STRING)
            if len(value) > limit:
                v.append((name, f"at most {limit} characters (got {len(value)})"))
            elif NUL in value:
                v.append((name, NO_NUL))
        elif field.type == _BYTES:
            limit = LIMITS.get(field.full_name, 0)
            if limit and len(value) > limit:
                v.append((name, f"at most {limit} bytes (got {len(value)})"))
        elif field.type == _MESSAGE and field.message_type.full_name not in _UNWALKED:
            _walk(value, name + ".", v)


def _map(entry: Descriptor, value, name: str, v: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    """map<string, string> (labels, metadata): keys and values bounded like strings."""
    if entry.fields_by_name["key"].type != _STRING or entry.fields_by_name["value"].type != _STRING:
        return
    for key, item in value.items():
        if len(key) > DEFAULT_STRING or len(item) > DEFAULT_STRING:
            v.append((f"{name}[{key[:40]}]", f"keys and values at most {DEFAULT_STRING} characters"))
            return
        if NUL in key or NUL in item:
            v.append((f"{name}[{key[:40].replace(NUL, '?')}]", NO_NUL))
            return
