import datetime

from aitbc.coordinator.v1 import job_pb2 as _job_pb2
from aitbc.coordinator.v1 import job_service_pb2 as _job_service_pb2
from aitbc.coordinator.v1 import miner_service_pb2 as _miner_service_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MinerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MINER_STATUS_UNSPECIFIED: _ClassVar[MinerStatus]
    MINER_STATUS_ONLINE: _ClassVar[MinerStatus]
    MINER_STATUS_DRAINING: _ClassVar[MinerStatus]
    MINER_STATUS_DISCONNECTED: _ClassVar[MinerStatus]
MINER_STATUS_UNSPECIFIED: MinerStatus
MINER_STATUS_ONLINE: MinerStatus
MINER_STATUS_DRAINING: MinerStatus
MINER_STATUS_DISCONNECTED: MinerStatus

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StateCount(_message.Message):
    __slots__ = ("state", "count")
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    count: int
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., count: _Optional[int] = ...) -> None: ...

class WindowCounts(_message.Message):
    __slots__ = ("window", "submitted", "completed", "failed", "canceled", "expired")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    window: _duration_pb2.Duration
    submitted: int
    completed: int
    failed: int
    canceled: int
    expired: int
    def __init__(self, window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., submitted: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., canceled: _Optional[int] = ..., expired: _Optional[int] = ...) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("p50", "p95", "samples")
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    p50: _duration_pb2.Duration
    p95: _duration_pb2.Duration
    samples: int
    def __init__(self, p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p95: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., samples: _Optional[int] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("jobs_by_state", "queue_depth", "miners_online", "miners_draining", "slots_free", "slots_busy", "windows", "queue_wait", "run_time", "as_of")
    JOBS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MINERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    MINERS_DRAINING_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_FIELD_NUMBER: _ClassVar[int]
    RUN_TIME_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    jobs_by_state: _containers.RepeatedCompositeFieldContainer[StateCount]
    queue_depth: int
    miners_online: int
    miners_draining: int
    slots_free: int
    slots_busy: int
    windows: _containers.RepeatedCompositeFieldContainer[WindowCounts]
    queue_wait: LatencySummary
    run_time: LatencySummary
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, jobs_by_state: _Optional[_Iterable[_Union[StateCount, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., miners_online: _Optional[int] = ..., miners_draining: _Optional[int] = ..., slots_free: _Optional[int] = ..., slots_busy: _Optional[int] = ..., windows: _Optional[_Iterable[_Union[WindowCounts, _Mapping]]] = ..., queue_wait: _Optional[_Union[LatencySummary, _Mapping]] = ..., run_time: _Optional[_Union[LatencySummary, _Mapping]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AdminServiceListJobsRequest(_message.Message):
    __slots__ = ("states", "client_id", "miner_id", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_job_pb2.JobState]
    client_id: str
    miner_id: str
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_job_pb2.JobState, str]]] = ..., client_id: _Optional[str] = ..., miner_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AdminServiceListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListMinersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MinerInfo(_message.Message):
    __slots__ = ("miner_id", "session_id", "transport", "status", "capabilities", "running_jobs", "connected_at", "last_seen_at", "completed", "failed", "drain_pending", "offered_slots")
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_PENDING_FIELD_NUMBER: _ClassVar[int]
    OFFERED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    miner_id: str
    session_id: str
    transport: str
    status: MinerStatus
    capabilities: _miner_service_pb2.MinerCapabilities
    running_jobs: int
    connected_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    completed: int
    failed: int
    drain_pending: bool
    offered_slots: int
    def __init__(self, miner_id: _Optional[str] = ..., session_id: _Optional[str] = ..., transport: _Optional[str] = ..., status: _Optional[_Union[MinerStatus, str]] = ..., capabilities: _Optional[_Union[_miner_service_pb2.MinerCapabilities, _Mapping]] = ..., running_jobs: _Optional[int] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., drain_pending: _Optional[bool] = ..., offered_slots: _Optional[int] = ...) -> None: ...

class ListMinersResponse(_message.Message):
    __slots__ = ("miners",)
    MINERS_FIELD_NUMBER: _ClassVar[int]
    miners: _containers.RepeatedCompositeFieldContainer[MinerInfo]
    def __init__(self, miners: _Optional[_Iterable[_Union[MinerInfo, _Mapping]]] = ...) -> None: ...

class DrainMinerRequest(_message.Message):
    __slots__ = ("miner_id",)
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    miner_id: str
    def __init__(self, miner_id: _Optional[str] = ...) -> None: ...

class DrainMinerResponse(_message.Message):
    __slots__ = ("miner",)
    MINER_FIELD_NUMBER: _ClassVar[int]
    miner: MinerInfo
    def __init__(self, miner: _Optional[_Union[MinerInfo, _Mapping]] = ...) -> None: ...

class SetApiKeyEnabledRequest(_message.Message):
    __slots__ = ("name", "role", "enabled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    enabled: bool
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class SetApiKeyEnabledResponse(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ("accounts",)
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[_job_service_pb2.Account]
    def __init__(self, accounts: _Optional[_Iterable[_Union[_job_service_pb2.Account, _Mapping]]] = ...) -> None: ...
