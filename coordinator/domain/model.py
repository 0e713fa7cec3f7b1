"""The domain's records: jobs, their constraints, miner capabilities and state-change events."""

from __future__ import annotations

import enum
import functools
import json
import operator
from dataclasses import asdict, dataclass, field, fields


class JobState(enum.IntEnum):
    """Values equal the contract's JobState numbers, so conversion is free."""

    QUEUED = 1
    ASSIGNED = 2
    RUNNING = 3
    COMPLETED = 4
    FAILED = 5
    CANCELED = 6
    EXPIRED = 7

    @property
    def terminal(self) -> bool:
        return self >= JobState.COMPLETED


class PayloadKind(enum.IntEnum):
    STRUCT = 1  # serialized google.protobuf.Struct (opaque bytes here)
    BYTES = 2


@dataclass(frozen=True, slots=True)
class Constraints:
    gpu: str = ""
    cuda: str = ""
    min_vram_gb: int = 0
    models: tuple[str, ...] = ()
    region: str = ""
    max_price: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> str:
        return _constraints_json(self)

    @classmethod
    def from_json(cls, text: str) -> Constraints:
        return _constraints_from_json(text)


# Jobs share few constraint sets: converting each once (not once per stored or loaded job) keeps asdict and
# json off the per-job path, and jobs loaded at start-up share one Constraints object per set.
@functools.lru_cache(maxsize=4096)
def _constraints_json(c: Constraints) -> str:
    return json.dumps(asdict(c), separators=(",", ":"), sort_keys=True)


@functools.lru_cache(maxsize=4096)
def _constraints_from_json(text: str) -> Constraints:
    raw = json.loads(text)
    return Constraints(
        gpu=raw["gpu"],
        cuda=raw["cuda"],
        min_vram_gb=raw["min_vram_gb"],
        models=tuple(raw["models"]),
        region=raw["region"],
        max_price=raw["max_price"],
        labels=tuple((k, v) for k, v in raw["labels"]),
    )


@dataclass(frozen=True, slots=True)
class Gpu:
    model: str
    memory_gb: int


@dataclass(frozen=True, slots=True)
class Capabilities:
    gpus: tuple[Gpu, ...] = ()
    cuda_version: str = ""
    models: frozenset[str] = frozenset()
    price: str = "0"
    region: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    slots: int = 1
    cpu_cores: int = 0
    memory_gb: int = 0


@dataclass(slots=True)
class Job:
    """A job. Mutable only through `domain.states.transition` (state) and the scheduler (lease fields)."""

    job_id: str
    client_id: str
    state: JobState
    payload: bytes
    payload_kind: PayloadKind
    input_sha256: bytes
    constraints: Constraints
    priority: int
    ttl_us: int
    max_attempts: int
    execution_timeout_us: int
    idempotency_key: str
    request_fingerprint: bytes
    created_us: int
    updated_us: int
    attempt: int = 0
    miner_id: str = ""
    started_us: int = 0
    finished_us: int = 0
    terminal_reason: str = ""
    terminal_message: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    reassignments: int = 0  # times a lease was lost; capped by settings
    event_seq: int = 0  # last event sequence number
    not_before_us: int = 0  # retry backoff: not dispatched before this time
    queued_us: int = 0  # when it last entered the queue (for queue-wait figures)
    # in the scheduler's ready queues right now (a QUEUED job waiting out a retry backoff is not): kept by
    # ReadyQueues, so its counts stay exact without scanning the queues
    in_queue: bool = field(default=False, compare=False, repr=False)
    # its time to live has a timer in the scheduler: scheduled the first time it waits for a miner (a job
    # assigned at once needs none), once per job object in memory
    ttl_timed: bool = field(default=False, compare=False, repr=False)

    @property
    def expires_us(self) -> int:
        return self.created_us + self.ttl_us

    def snapshot(self) -> Job:
        """A copy, for an answer or a watcher that must not see later changes: dataclasses.replace costs ~4.4 us
        (it looks the fields up each time), this ~0.8 us, once per job a batched SubmitJobs answers."""
        return Job(*_job_values(self))


# every field, in __init__'s order (all are init fields): Job.snapshot passes them positionally
_job_values = operator.attrgetter(*(f.name for f in fields(Job)))


@dataclass(frozen=True, slots=True)
class Event:
    """One state change, appended to the job's event log in the same transaction as the change."""

    job_id: str
    sequence: int
    from_state: JobState | None
    to_state: JobState
    attempt: int
    miner_id: str
    reason: str
    message: str
    occurred_us: int


@dataclass(slots=True)
class JobResult:
    job_id: str
    attempt: int
    output: bytes
    output_kind: PayloadKind
    result_sha256: bytes
    units: str
    unit_type: str
    miner_id: str
    completed_us: int
    receipt_id: str = ""
    miner_report: bytes = b""  # what the miner signed (receipts spec section 3), empty if unsigned
    miner_signature: bytes = b""
