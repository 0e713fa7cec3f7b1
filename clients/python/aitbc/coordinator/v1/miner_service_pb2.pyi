import datetime

from aitbc.coordinator.v1 import job_pb2 as _job_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MinerCapabilities(_message.Message):
    __slots__ = ("gpus", "cuda_version", "models", "price", "region", "labels", "slots", "cpu_cores", "memory_gb")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_GB_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    cuda_version: str
    models: _containers.RepeatedScalarFieldContainer[str]
    price: str
    region: str
    labels: _containers.ScalarMap[str, str]
    slots: int
    cpu_cores: int
    memory_gb: int
    def __init__(self, gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., cuda_version: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., price: _Optional[str] = ..., region: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., slots: _Optional[int] = ..., cpu_cores: _Optional[int] = ..., memory_gb: _Optional[int] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("model", "memory_gb")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_GB_FIELD_NUMBER: _ClassVar[int]
    model: str
    memory_gb: int
    def __init__(self, model: _Optional[str] = ..., memory_gb: _Optional[int] = ...) -> None: ...

class RunningJob(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("capabilities", "receipt_public_key", "running_jobs", "agent_version", "batched_acks", "capacity")
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCHED_ACKS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    capabilities: MinerCapabilities
    receipt_public_key: bytes
    running_jobs: _containers.RepeatedCompositeFieldContainer[RunningJob]
    agent_version: str
    batched_acks: bool
    capacity: Capacity
    def __init__(self, capabilities: _Optional[_Union[MinerCapabilities, _Mapping]] = ..., receipt_public_key: _Optional[bytes] = ..., running_jobs: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ..., agent_version: _Optional[str] = ..., batched_acks: _Optional[bool] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "miner_id", "heartbeat_interval", "lease_duration", "resumed_jobs", "max_result_bytes", "max_message_bytes", "capacity_updates")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    RESUMED_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_UPDATES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    miner_id: str
    heartbeat_interval: _duration_pb2.Duration
    lease_duration: _duration_pb2.Duration
    resumed_jobs: _containers.RepeatedCompositeFieldContainer[RunningJob]
    max_result_bytes: int
    max_message_bytes: int
    capacity_updates: bool
    def __init__(self, session_id: _Optional[str] = ..., miner_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resumed_jobs: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ..., max_result_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., capacity_updates: _Optional[bool] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("job", "attempt", "lease_deadline", "execution_deadline")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    attempt: int
    lease_deadline: _timestamp_pb2.Timestamp
    execution_deadline: _timestamp_pb2.Timestamp
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., attempt: _Optional[int] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., execution_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("job_id", "attempt", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("job_id", "attempt", "fraction", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    fraction: float
    message: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("job_id", "attempt", "result", "result_bytes", "units", "unit_type", "miner_report", "miner_signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    UNIT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MINER_REPORT_FIELD_NUMBER: _ClassVar[int]
    MINER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    result: _struct_pb2.Struct
    result_bytes: bytes
    units: str
    unit_type: str
    miner_report: bytes
    miner_signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result_bytes: _Optional[bytes] = ..., units: _Optional[str] = ..., unit_type: _Optional[str] = ..., miner_report: _Optional[bytes] = ..., miner_signature: _Optional[bytes] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("job_id", "attempt", "retryable", "code", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    retryable: bool
    code: str
    message: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., retryable: _Optional[bool] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class MinerHeartbeat(_message.Message):
    __slots__ = ("running_jobs",)
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    running_jobs: _containers.RepeatedCompositeFieldContainer[RunningJob]
    def __init__(self, running_jobs: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ...) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: int
    def __init__(self, slots: _Optional[int] = ...) -> None: ...

class MinerDrain(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "accept", "reject", "progress", "results", "failure", "heartbeat", "drain", "capacity")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    accept: Accept
    reject: Reject
    progress: Progress
    results: Results
    failure: Failure
    heartbeat: MinerHeartbeat
    drain: MinerDrain
    capacity: Capacity
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., accept: _Optional[_Union[Accept, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., results: _Optional[_Union[Results, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., heartbeat: _Optional[_Union[MinerHeartbeat, _Mapping]] = ..., drain: _Optional[_Union[MinerDrain, _Mapping]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ...) -> None: ...

class Results(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Result]
    def __init__(self, results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("job_id", "attempt", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("job_id", "attempt", "accepted", "receipt_id", "reason", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    accepted: bool
    receipt_id: str
    reason: str
    message: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., accepted: _Optional[bool] = ..., receipt_id: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ResultAcks(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[ResultAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[ResultAck, _Mapping]]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class GoAway(_message.Message):
    __slots__ = ("reason", "reconnect_after")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_AFTER_FIELD_NUMBER: _ClassVar[int]
    reason: str
    reconnect_after: _duration_pb2.Duration
    def __init__(self, reason: _Optional[str] = ..., reconnect_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "assignments", "cancel", "result_ack", "drain", "go_away", "result_acks")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RESULT_ACK_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    GO_AWAY_FIELD_NUMBER: _ClassVar[int]
    RESULT_ACKS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignments: Assignments
    cancel: Cancel
    result_ack: ResultAck
    drain: Drain
    go_away: GoAway
    result_acks: ResultAcks
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., result_ack: _Optional[_Union[ResultAck, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., go_away: _Optional[_Union[GoAway, _Mapping]] = ..., result_acks: _Optional[_Union[ResultAcks, _Mapping]] = ...) -> None: ...

class RegisterMinerRequest(_message.Message):
    __slots__ = ("hello",)
    HELLO_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ...) -> None: ...

class RegisterMinerResponse(_message.Message):
    __slots__ = ("welcome",)
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id", "running_jobs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    running_jobs: _containers.RepeatedCompositeFieldContainer[RunningJob]
    def __init__(self, session_id: _Optional[str] = ..., running_jobs: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("cancels", "draining")
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    cancels: _containers.RepeatedCompositeFieldContainer[Cancel]
    draining: bool
    def __init__(self, cancels: _Optional[_Iterable[_Union[Cancel, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class PollJobRequest(_message.Message):
    __slots__ = ("session_id", "max_jobs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    max_jobs: int
    def __init__(self, session_id: _Optional[str] = ..., max_jobs: _Optional[int] = ...) -> None: ...

class PollJobResponse(_message.Message):
    __slots__ = ("assignments", "cancels", "draining")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    cancels: _containers.RepeatedCompositeFieldContainer[Cancel]
    draining: bool
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., cancels: _Optional[_Iterable[_Union[Cancel, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class SubmitResultRequest(_message.Message):
    __slots__ = ("session_id", "result")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    result: Result
    def __init__(self, session_id: _Optional[str] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class SubmitResultResponse(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: ResultAck
    def __init__(self, ack: _Optional[_Union[ResultAck, _Mapping]] = ...) -> None: ...

class ReportFailureRequest(_message.Message):
    __slots__ = ("session_id", "failure")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    failure: Failure
    def __init__(self, session_id: _Optional[str] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class ReportFailureResponse(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: ResultAck
    def __init__(self, ack: _Optional[_Union[ResultAck, _Mapping]] = ...) -> None: ...

class RejectJobRequest(_message.Message):
    __slots__ = ("session_id", "reject")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reject: Reject
    def __init__(self, session_id: _Optional[str] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ...) -> None: ...

class RejectJobResponse(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: ResultAck
    def __init__(self, ack: _Optional[_Union[ResultAck, _Mapping]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("running_jobs",)
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    running_jobs: int
    def __init__(self, running_jobs: _Optional[int] = ...) -> None: ...
