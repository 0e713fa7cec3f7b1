"""Support for the integration tests: a real coordinator in-process, real channels, a hand-driven miner.

Nothing here replaces a component of the product: the coordinator is `coordinator.server.start`, the store a
SQLite file, the channels real gRPC over loopback. The helpers only drive and observe them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aitbc.channel import open_channel
from aitbc.client import TERMINAL, Client
from aitbc.coordinator.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
    miner_service_pb2_grpc,
)
from aitbc.coordinator.v1 import (
    miner_service_pb2 as mpb,
)
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordinator.config import ApiKeyEntry, Settings, validate
from coordinator.server import Coordinator, start

S = job_pb2  # JobState values: S.JOB_STATE_QUEUED ...
QUEUED, ASSIGNED, RUNNING = S.JOB_STATE_QUEUED, S.JOB_STATE_ASSIGNED, S.JOB_STATE_RUNNING
COMPLETED, FAILED, CANCELED, EXPIRED = (
    S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELED, S.JOB_STATE_EXPIRED,
)  # fmt: skip

CLIENT_KEYS = {"alice": "alice-key-0001", "bob": "bob-key-00002"}
ADMIN_KEY = "admin-key-0001"
N_MINER_KEYS = 24


def miner_key(name: str) -> str:
    return f"{name}-secret-key"


MINER_NAMES = [f"miner-{i:02d}" for i in range(N_MINER_KEYS)]

DEFAULTS: dict[str, Any] = {
    "heartbeat_interval_seconds": 0.2,
    "heartbeat_timeout_seconds": 1.0,
    "lease_seconds": 1.0,
    "reconnect_grace_seconds": 0.5,
    "retry_backoff_base_seconds": 0.05,
    "retry_backoff_max_seconds": 0.2,
    "shutdown_grace_seconds": 0.2,
    "sqlite_synchronous": "NORMAL",
}


def make_settings(db_path: Path, **overrides: Any) -> Settings:
    # app_host "localhost" listens on 127.0.0.1 and ::1 both; app_port 0 picks a free port at each start
    values: dict[str, Any] = {"app_host": "127.0.0.1", "app_port": 0, **DEFAULTS}
    values.update(overrides)
    settings = Settings(
        database_url=f"sqlite:///{db_path}",
        client_api_keys=tuple(ApiKeyEntry(n, "client", k) for n, k in CLIENT_KEYS.items()),
        miner_api_keys=tuple(ApiKeyEntry(n, "miner", miner_key(n)) for n in MINER_NAMES),
        admin_api_keys=(ApiKeyEntry("admin", "admin", ADMIN_KEY),),
        **values,
    )  # fmt: skip
    validate(settings)
    return settings


# ---------------------------------------------------------------------------------------------- waiting
async def eventually(
    probe: Callable[[], Any], *, within: float = 5.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll probe (sync or async) until it returns a truthy value; fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within:.1f} s waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------------- errors
@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    has_error_info: bool


def details_of(exc: grpc.aio.AioRpcError) -> ErrorDetails:
    """The google.rpc details of a failed call, parsed from grpc-status-details-bin."""
    status = rpc_status.from_call(exc)
    assert status is not None, f"{exc.code()} carries no grpc-status-details-bin: {exc.details()}"
    info = None
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    return ErrorDetails(
        code=exc.code(), reason=info.reason if info else "", domain=info.domain if info else "",
        metadata=dict(info.metadata) if info else {}, violations=violations, has_error_info=info is not None,
    )  # fmt: skip


async def rpc_error(awaitable: Awaitable[Any]) -> ErrorDetails:
    """Await a call that must fail; return its parsed details."""
    try:
        result = await awaitable
    except grpc.aio.AioRpcError as exc:
        return details_of(exc)
    raise AssertionError(f"the call succeeded but was expected to fail: {result!r}")


def expect_error(details: ErrorDetails, code: grpc.StatusCode, reason: str) -> None:
    assert details.code == code, (details.code, details.reason)
    assert details.has_error_info, "no ErrorInfo detail"
    assert details.domain == "coordinator.aitbc"
    assert details.reason == reason, (details.reason, reason)


# ---------------------------------------------------------------------------------------------- SQLite
class Db:
    """A direct, independent sqlite3 connection to the coordinator's file (observation only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def scalar(self, sql: str, params: tuple = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def not_terminal(self) -> list[tuple]:
        """(job_id, state, attempt, miner_id) of every job not in a terminal state yet."""
        terminal = tuple(int(s) for s in TERMINAL)
        marks = ",".join("?" * len(terminal))
        return self.query(
            f"SELECT job_id, state, attempt, miner_id FROM jobs WHERE state NOT IN ({marks})", terminal
        )

    def state_counts_off(self) -> dict[int, tuple[int, int]]:
        """States whose kept count (job_state_counts, schema 7) is not the jobs' own: state -> (kept, counted)."""
        kept = {s: n for s, n in self.query("SELECT state, jobs FROM job_state_counts") if n}
        counted = dict(self.query("SELECT state, count(*) FROM jobs GROUP BY state"))
        return {s: (kept.get(s, 0), counted.get(s, 0)) for s in kept.keys() | counted.keys()
                if kept.get(s, 0) != counted.get(s, 0)}  # fmt: skip

    def completions(self) -> tuple[Counter, Counter]:
        """Per job id: its COMPLETED events, and its receipts (a job completes once: one of each)."""
        events = Counter(
            j for (j,) in self.query("SELECT job_id FROM job_events WHERE to_state = ?", (int(COMPLETED),))
        )
        return events, Counter(j for (j,) in self.query("SELECT job_id FROM receipts"))

    def job_state(self, job_id: str) -> int | None:
        return self.scalar("SELECT state FROM jobs WHERE job_id = ?", (job_id,))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT sequence, from_state, to_state, attempt, miner_id, reason, message, occurred_us "
            "FROM job_events WHERE job_id = ? ORDER BY sequence",
            (job_id,),
        )
        keys = (
            "sequence",
            "from_state",
            "to_state",
            "attempt",
            "miner_id",
            "reason",
            "message",
            "occurred_us",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def count(self, table: str, job_id: str) -> int:
        return self.scalar(f"SELECT COUNT(*) FROM {table} WHERE job_id = ?", (job_id,))


# ---------------------------------------------------------------------------------------------- harness
@dataclass
class Harness:
    """One coordinator on loopback with its SQLite file; everything opened through it is closed after."""

    tmp_path: Path
    overrides: dict[str, Any]
    coordinator: Coordinator | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    miners: list[Any] = field(default_factory=list)
    stream_miners: list[StreamMiner] = field(default_factory=list)
    _admin: AdminStub | None = None

    @property
    def db_path(self) -> Path:
        return self.tmp_path / "coordinator.db"

    @property
    def db(self) -> Db:
        return Db(self.db_path)

    @property
    def settings(self) -> Settings:
        return make_settings(self.db_path, **self.overrides)

    @property
    def address(self) -> str:
        assert self.coordinator is not None
        return f"127.0.0.1:{self.coordinator.port}"

    async def start(self) -> Harness:
        self.coordinator = await start(self.settings)
        return self

    async def stop(self) -> None:
        for m in self.miners:
            m.stop()
        for sm in self.stream_miners:
            await sm.close()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await t
        self.tasks.clear()
        self.miners.clear()
        self.stream_miners.clear()
        for ch in self.channels:
            await ch.close()
        self.channels.clear()
        self._admin = None
        if self.coordinator is not None:
            await self.coordinator.stop(grace=0.2)
            self.coordinator = None
            # every commit of every test keeps the count of jobs by state (GetStats' jobs_by_state) exact
            if self.settings.database_url == f"sqlite:///{self.db_path}" and self.db_path.exists():
                assert self.db.state_counts_off() == {}, "job_state_counts drifted from the jobs"

    async def __aenter__(self) -> Harness:
        """`async with Harness(tmp_path, overrides) as coord:` started, stopped at the end (a fixture's body)."""
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def restart(self) -> None:
        """Stop the coordinator (and every channel), start a new one on the same database file."""
        await self.stop()
        await self.start()

    async def finished(self, client: Client, job_id: str, within: float = 10.0) -> job_pb2.Job:
        """The job once terminal (followed with WatchJob); on timeout, fail showing its event log."""
        try:
            return await asyncio.wait_for(client.wait(job_id), within)
        except TimeoutError:
            raise AssertionError(
                f"job {job_id} not terminal after {within} s; its events: {self.db.events(job_id)}"
            ) from None

    # channels and stubs
    def channel(self, own_connection: bool = False) -> grpc.aio.Channel:
        ch = open_channel(self.address, own_connection=own_connection)
        self.channels.append(ch)
        return ch

    def client(self, name: str = "alice") -> Client:
        return Client(self.address, CLIENT_KEYS[name], channel=self.channel())

    def jobs_stub(self) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(self.channel())

    def admin(self) -> AdminStub:
        """AdminService with the admin key (one channel, reused: tests poll it)."""
        if self._admin is None:
            self._admin = AdminStub(admin_service_pb2_grpc.AdminServiceStub(self.channel()))
        return self._admin

    def miner_stub(self, own_connection: bool = True) -> miner_service_pb2_grpc.MinerServiceStub:
        return miner_service_pb2_grpc.MinerServiceStub(self.channel(own_connection))

    async def stream_miner(self, name: str = "miner-00", *, connect: bool = True, heartbeat: bool = True,
                           running_jobs: tuple[tuple[str, int], ...] = (), **caps: Any) -> StreamMiner:  # fmt: skip
        sm = StreamMiner(self, name, capabilities(**caps), heartbeat=heartbeat)
        self.stream_miners.append(sm)
        if connect:
            await sm.connect(running_jobs)
        return sm

    def run_miner(self, miner: Any) -> asyncio.Task:
        """Run an aitbc.miner.Miner until the test ends."""
        self.miners.append(miner)
        task = asyncio.create_task(miner.run(), name=f"miner-run-{miner.api_key[:8]}")
        self.tasks.append(task)
        return task


class AdminStub:
    def __init__(self, stub: admin_service_pb2_grpc.AdminServiceStub) -> None:
        self.stub = stub
        self.md = (("x-api-key", ADMIN_KEY),)

    async def miners(self) -> dict[str, admin_service_pb2.MinerInfo]:
        r = await self.stub.ListMiners(admin_service_pb2.ListMinersRequest(), metadata=self.md)
        return {m.miner_id: m for m in r.miners}

    async def drain(self, miner_id: str) -> admin_service_pb2.DrainMinerResponse:
        return await self.stub.DrainMiner(
            admin_service_pb2.DrainMinerRequest(miner_id=miner_id), metadata=self.md
        )


def capabilities(
    *, slots: int = 1, gpus: tuple[tuple[str, int], ...] = (), region: str = "", price: str = "",
    models: tuple[str, ...] = (), cuda: str = "", labels: dict[str, str] | None = None,
) -> mpb.MinerCapabilities:  # fmt: skip
    return mpb.MinerCapabilities(
        slots=slots, gpus=[mpb.Gpu(model=m, memory_gb=g) for m, g in gpus], region=region, price=price,
        models=list(models), cuda_version=cuda, labels=labels or {}, cpu_cores=2, memory_gb=4,
    )  # fmt: skip


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def gone(pid: int) -> bool:
    """Whether pid no longer runs (gone, or a zombie left to a parent that does not reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ---------------------------------------------------------------------------------------------- a miner by hand
@dataclass
class Stream:
    """One Connect stream of a StreamMiner as its miner saw it: what its hello listed, the session it was
    welcomed into, and its messages in order, received ("in") and handed to the sender ("out")."""

    listed: tuple[tuple[str, int], ...]
    session_id: str = ""  # from the welcome ("" if none came)
    assigned: set[tuple[str, int]] = field(default_factory=set)  # (job, attempt) of every assignment
    log: list[tuple[str, str, Any]] = field(default_factory=list)

    def had(self, job_id: str, attempt: int) -> bool:
        """Whether this stream was given the job's attempt, or its hello listed it."""
        return (job_id, attempt) in self.assigned or (job_id, attempt) in self.listed


class StreamMiner:
    """A miner driven message by message over a real Connect stream (generated stubs, no SDK runtime).

    A pump task reads every message the coordinator sends into per-kind queues (and a full log). Writes go
    through one sender task (grpc allows one write in flight). With heartbeat=True it sends a heartbeat
    every 0.2 s listing `self.held` (job id -> attempt), which the test may edit to stop renewing a lease.
    `streams` keeps, per connect, what its hello listed and what went each way on it (see Stream).
    """

    def __init__(self, harness: Harness, name: str, caps: mpb.MinerCapabilities, *, heartbeat: bool) -> None:
        self.harness = harness
        self.name = name
        self.caps = caps
        self.heartbeat_enabled = heartbeat
        self.held: dict[str, int] = {}
        self.peak_held = 0  # most jobs this miner held at once (assigned and not yet answered)
        self.log: list[tuple[str, Any]] = []
        self.streams: list[Stream] = []  # one per connect, the current one last
        self.inbox: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self.closed = asyncio.Event()  # the coordinator ended the stream (EOF or error)
        self.end_status: grpc.StatusCode | None = None
        self.welcome: mpb.Welcome | None = None
        self.call: Any = None
        self.channel: grpc.aio.Channel | None = None
        self._out: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        # called with (stream, kind, body) as each message is read, before it is handed on (a test's probe)
        self.on_message: Callable[[Stream, str, Any], None] | None = None

    async def connect(self, running_jobs: tuple[tuple[str, int], ...] = ()) -> mpb.Welcome:
        if self not in self.harness.stream_miners:  # e.g. reconnecting after a coordinator restart
            self.harness.stream_miners.append(self)
        stream = Stream(tuple(running_jobs))
        self.streams.append(stream)
        self.channel = open_channel(self.harness.address, own_connection=True)
        stub = miner_service_pb2_grpc.MinerServiceStub(self.channel)
        self.call = stub.Connect(metadata=(("x-api-key", miner_key(self.name)),))
        self.closed = asyncio.Event()
        self.inbox = defaultdict(asyncio.Queue)
        self._out = asyncio.Queue()
        await self.call.write(mpb.ConnectRequest(hello=mpb.Hello(
            capabilities=self.caps, agent_version="itest-hand-miner",
            running_jobs=[mpb.RunningJob(job_id=j, attempt=a) for j, a in running_jobs],
        )))  # fmt: skip
        first = await asyncio.wait_for(self.call.read(), 5)
        assert first is not grpc.aio.EOF and first.WhichOneof("message") == "welcome", first
        self.welcome = first.welcome
        stream.session_id = first.welcome.session_id
        self.held = {r.job_id: r.attempt for r in self.welcome.resumed_jobs}
        self._tasks = [asyncio.create_task(self._pump(stream)), asyncio.create_task(self._send())]
        if self.heartbeat_enabled:
            self._tasks.append(asyncio.create_task(self._beat()))
        return self.welcome

    async def _pump(self, stream: Stream) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    break
                kind = msg.WhichOneof("message")
                body = getattr(msg, kind)
                self.log.append((kind, body))
                stream.log.append(("in", kind, body))
                if self.on_message is not None:
                    self.on_message(stream, kind, body)
                if kind == "assignments":
                    for a in body.assignments:
                        stream.assigned.add((a.job.job_id, a.attempt))
                        self.held[a.job.job_id] = a.attempt
                        self.inbox["assignment"].put_nowait(a)
                    self.peak_held = max(self.peak_held, len(self.held))
                    continue
                if kind == "cancel" and self.held.get(body.job_id) == body.attempt:
                    del self.held[body.job_id]
                self.inbox[kind].put_nowait(body)
        except grpc.aio.AioRpcError as exc:
            self.end_status = exc.code()
        except asyncio.CancelledError:
            pass
        finally:
            self.closed.set()

    async def _send(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError):
            while True:
                await self.call.write(await self._out.get())

    async def _beat(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(0.2)
                self.send(heartbeat=mpb.MinerHeartbeat(
                    running_jobs=[mpb.RunningJob(job_id=j, attempt=a) for j, a in self.held.items()]))  # fmt: skip

    def send(self, **message: Any) -> None:
        if self.streams:
            [(kind, body)] = message.items()
            self.streams[-1].log.append(("out", kind, body))
        self._out.put_nowait(mpb.ConnectRequest(**message))

    # convenience messages
    def accept(self, a: mpb.Assignment) -> None:
        self.send(accept=mpb.Accept(job_id=a.job.job_id, attempt=a.attempt))

    def result(self, job_id: str, attempt: int, output: dict[str, Any] | None = None) -> None:
        self.held.pop(job_id, None)
        r = mpb.Result(job_id=job_id, attempt=attempt, result=struct(output or {"ok": True}), units="1",
                       unit_type="jobs")  # fmt: skip
        self.send(results=mpb.Results(results=[r]))

    def failure(self, job_id: str, attempt: int, *, retryable: bool, code: str = "FLAKY") -> None:
        self.held.pop(job_id, None)
        self.send(failure=mpb.Failure(job_id=job_id, attempt=attempt, retryable=retryable, code=code,
                                      message="test failure"))  # fmt: skip

    async def next(self, kind: str, within: float = 5.0) -> Any:
        """The next message of kind ('assignment', 'cancel', 'result_ack', 'drain', 'go_away')."""
        try:
            return await asyncio.wait_for(self.inbox[kind].get(), within)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {kind} within {within} s; received {[k for k, _ in self.log]}"
            ) from None

    async def assignments(self, n: int, within: float = 5.0) -> list[mpb.Assignment]:
        return [await self.next("assignment", within) for _ in range(n)]

    def pending(self, kind: str) -> int:
        return self.inbox[kind].qsize()

    async def wait_closed(self, within: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.closed.wait(), within)
        except TimeoutError:
            raise AssertionError(f"{self.name}: stream still open after {within} s") from None

    async def kill(self) -> None:
        """Vanish abruptly: cancel the call and close the channel (its TCP connection)."""
        for t in self._tasks:
            t.cancel()
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            await self.channel.close()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks = []

    async def close(self) -> None:
        await self.kill()


class GatedRunner:
    """An SDK miner's runner that holds every job until `gate` is set, recording the attempts it ran."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.runs: list[int] = []

    async def __call__(self, job: Any) -> Any:
        from aitbc.miner import Outcome, job_input

        self.runs.append(job.attempt)
        await self.gate.wait()
        return Outcome(job_input(job), units="1", unit_type="jobs")


def sdk_miner(address: str, runner: Any, slots: int = 1, **options: Any) -> Any:
    """The SDK miner (aitbc.miner.Miner) of identity miner-00 with runner: its own connection and a 0.2 s
    backoff unless options say otherwise."""
    from aitbc.miner import Miner, probe_capabilities

    options = {"own_connection": True, "backoff_base_s": 0.2, **options}
    return Miner(address, miner_key("miner-00"), runner=runner, capabilities=probe_capabilities(slots=slots),
                 **options)  # fmt: skip


def gated_sdk_miner(address: str, **options: Any) -> tuple[Any, GatedRunner]:
    """The SDK miner of identity miner-00 (one slot, its own connection, 0.2 s backoff) with a GatedRunner."""
    runner = GatedRunner()
    return sdk_miner(address, runner, **options), runner


def empty_env_file(tmp_path: Path) -> Path:
    """A settings file with nothing in it (`serve --env-file`): the settings are the defaults and the flags."""
    path = tmp_path / "empty.env"
    path.write_text("")
    return path
