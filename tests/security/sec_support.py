"""Support for the security tests: real coordinators on loopback with SQLite files, raw channels, status
details, certificates made on the spot, and a consistency check of the store.

Nothing of the coordinator is replaced: servers come from `coordinator.server.start`, channels are real
gRPC, the store is read back with sqlite3.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aitbc.coordinator.v1 import (
    admin_service_pb2,
    job_service_pb2,
    miner_service_pb2,
    receipt_service_pb2,
)
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordinator.config import ApiKeyEntry, Settings, validate
from coordinator.server import Coordinator, start

C = grpc.StatusCode

KEYS = {
    ("client", "alice"): "alice-key-000001",
    ("client", "bob"): "bob-key-0000002",
    ("miner", "m1"): "m1-miner-key-0001",
    ("miner", "m2"): "m2-miner-key-0002",
    ("admin", "ops"): "ops-admin-key-001",
}
HASHED_KEY = "carol-key-given-only-as-a-hash"  # configured as carol:sha256:<hex>
ALICE, BOB, M1, M2, OPS = (KEYS[k] for k in KEYS)
ROLE_KEYS = {"client": ALICE, "miner": M1, "admin": OPS}

FAST: dict[str, Any] = {
    "heartbeat_interval_seconds": 0.2,
    "heartbeat_timeout_seconds": 2.0,
    "lease_seconds": 2.0,
    "reconnect_grace_seconds": 0.5,
    "retry_backoff_base_seconds": 0.05,
    "retry_backoff_max_seconds": 0.2,
    "shutdown_grace_seconds": 0.1,
    "sqlite_synchronous": "NORMAL",
}


def key_entries(hmac: dict[str, str] | None = None) -> dict[str, tuple[ApiKeyEntry, ...]]:
    """The test keys as settings entries; hmac maps a name to its per-key signing secret."""
    hmac = hmac or {}
    out: dict[str, list[ApiKeyEntry]] = {"client": [], "miner": [], "admin": []}
    for (role, name), key in KEYS.items():
        out[role].append(ApiKeyEntry(name, role, key, hmac_secret=hmac.get(name, "")))
    carol = ApiKeyEntry("carol", "client", key_hash=hashlib.sha256(HASHED_KEY.encode()).digest())
    out["client"].append(carol)
    return {f"{role}_api_keys": tuple(entries) for role, entries in out.items()}


def make_settings(tmp_path: Path, *, hmac: dict[str, str] | None = None, **overrides: Any) -> Settings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    values = {"app_host": "127.0.0.1", "app_port": 0, "database_url": f"sqlite:///{tmp_path / 'coord.db'}",
              **FAST, **key_entries(hmac), **overrides}  # fmt: skip
    settings = Settings(**values)
    validate(settings)
    return settings


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **overrides: Any) -> AsyncIterator[Coordinator]:
    coord = await start(make_settings(tmp_path, **overrides))
    try:
        yield coord
    finally:
        await coord.stop(0.1)


def address(coord: Coordinator) -> str:
    return f"127.0.0.1:{coord.port}"


def md(key: str | None, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return ((("x-api-key", key),) if key else ()) + tuple(extra)


# ---------------------------------------------------------------------------------------------- RPCs
@dataclass(frozen=True)
class Rpc:
    service: str
    method: str
    request: type
    response: type
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/aitbc.coordinator.v1.{self.service}/{self.method}"


def all_rpcs() -> list[Rpc]:
    """Every RPC of every service, from the descriptors (a new RPC is covered without editing the tests)."""
    out = []
    for module in (job_service_pb2, miner_service_pb2, receipt_service_pb2, admin_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append(Rpc(service.name, m.name, GetMessageClass(m.input_type), GetMessageClass(m.output_type),
                               m.client_streaming, m.server_streaming))  # fmt: skip
    return out


def raw_unary(channel: grpc.aio.Channel, path: str) -> Callable:
    """A unary call sending bytes as they are (no serializer): for signatures and malformed bodies."""
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


# ---------------------------------------------------------------------------------------------- errors
@dataclass
class Failure:
    code: grpc.StatusCode
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_delay_s: float | None = None
    message: str = ""


def failure_of(exc: grpc.RpcError) -> Failure:
    """Code and google.rpc details (ErrorInfo, BadRequest, RetryInfo) parsed from grpc-status-details-bin."""
    out = Failure(exc.code(), message=exc.details() or "")
    status = rpc_status.from_call(exc)
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            out.retry_delay_s = retry.retry_delay.ToNanoseconds() / 1e9
    return out


async def fails(awaitable: Awaitable[Any]) -> Failure:
    try:
        result = await awaitable
    except grpc.aio.AioRpcError as exc:
        return failure_of(exc)
    raise AssertionError(f"the call succeeded but was expected to fail: {result!r}")


def expect(f: Failure, code: grpc.StatusCode, reason: str | None = None) -> Failure:
    assert f.code == code, f"expected {code.name}/{reason}, got {f.code.name}/{f.reason}: {f.message}"
    if reason is not None:
        assert f.reason == reason, f"expected reason {reason}, got {f.reason}: {f.message}"
    return f


async def eventually(probe: Callable[[], Any], within: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------- miners
class StreamMiner:
    """A hand-driven Connect stream: send exactly what the test says, read what comes back."""

    def __init__(self, channel: grpc.aio.Channel, key: str, *extra_md: tuple[str, str]) -> None:
        from aitbc.coordinator.v1 import miner_service_pb2_grpc

        self.call = miner_service_pb2_grpc.MinerServiceStub(channel).Connect(metadata=md(key, *extra_md))

    async def hello(self, running: list[tuple[str, int]] = (), slots: int = 2) -> miner_service_pb2.Welcome:  # type: ignore[assignment]
        mpb = miner_service_pb2
        await self.call.write(mpb.ConnectRequest(hello=mpb.Hello(
            capabilities=mpb.MinerCapabilities(slots=slots, cpu_cores=4, memory_gb=8),
            running_jobs=[mpb.RunningJob(job_id=j, attempt=a) for j, a in running])))  # fmt: skip
        first = await asyncio.wait_for(self.call.read(), 5)
        assert first.WhichOneof("message") == "welcome", first
        return first.welcome

    async def send(self, **message: Any) -> None:
        await self.call.write(miner_service_pb2.ConnectRequest(**message))

    async def next(self, kind: str, within: float = 5.0) -> Any:
        """The next message of that kind (skipping others)."""
        deadline = time.monotonic() + within
        while True:
            msg = await asyncio.wait_for(self.call.read(), max(0.01, deadline - time.monotonic()))
            assert msg is not grpc.aio.EOF, f"the stream ended while waiting for {kind}"
            if msg.WhichOneof("message") == kind:
                return getattr(msg, kind)

    async def result(self, job_id: str, attempt: int, data: bytes = b"out") -> None:
        mpb = miner_service_pb2
        await self.send(results=mpb.Results(results=[mpb.Result(job_id=job_id, attempt=attempt, result_bytes=data,
                                                                 units="1", unit_type="jobs")]))  # fmt: skip

    async def end_status(self, within: float = 5.0) -> grpc.StatusCode:
        """Read to the end; the stream's final status."""
        deadline = time.monotonic() + within
        try:
            while (
                await asyncio.wait_for(self.call.read(), max(0.01, deadline - time.monotonic()))
            ) is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return await self.call.code()

    def cancel(self) -> None:
        self.call.cancel()


# ---------------------------------------------------------------------------------------------- the store
class Store:
    """Read-only view of the coordinator's SQLite file."""

    def __init__(self, coord_or_path: Coordinator | Path) -> None:
        if isinstance(coord_or_path, Path):
            self.path = coord_or_path
        else:
            self.path = Path(coord_or_path.settings.database_url.removeprefix("sqlite:///"))

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
            return db.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: tuple = ()) -> Any:
        return self.rows(sql, params)[0][0]

    def snapshot(self) -> tuple:
        """Everything a refused call must leave alone."""
        return (self.rows("SELECT job_id, state, attempt, event_seq, miner_id FROM jobs ORDER BY job_id"),
                self.scalar("SELECT COUNT(*) FROM job_events"), self.scalar("SELECT COUNT(*) FROM job_results"),
                self.scalar("SELECT COUNT(*) FROM receipts"))  # fmt: skip

    def job(self, job_id: str) -> tuple:
        return self.rows("SELECT state, attempt, event_seq, miner_id FROM jobs WHERE job_id = ?", (job_id,))[
            0
        ]


# The legal transitions (DESIGN section 3), stated here independently of coordinator.domain.states.
QUEUED, ASSIGNED, RUNNING, COMPLETED, FAILED, CANCELED, EXPIRED = range(1, 8)
LEGAL = {
    (None, QUEUED), (QUEUED, ASSIGNED), (QUEUED, EXPIRED), (QUEUED, CANCELED), (ASSIGNED, RUNNING),
    (ASSIGNED, QUEUED), (ASSIGNED, FAILED), (ASSIGNED, CANCELED), (RUNNING, COMPLETED), (RUNNING, QUEUED),
    (RUNNING, FAILED), (RUNNING, CANCELED),
}  # fmt: skip
TERMINAL = {COMPLETED, FAILED, CANCELED, EXPIRED}


def consistency_problems(store: Store) -> list[str]:
    """Every way the store could disagree with itself; empty when consistent."""
    problems: list[str] = []
    events: dict[str, list[tuple]] = {}
    for row in store.rows(
        "SELECT job_id, sequence, from_state, to_state FROM job_events ORDER BY job_id, sequence"
    ):
        events.setdefault(row[0], []).append(row[1:])
    results = {}
    for job_id, attempt in store.rows("SELECT job_id, attempt FROM job_results"):
        results.setdefault(job_id, []).append(attempt)
    receipts = {}
    for job_id, attempt in store.rows("SELECT job_id, attempt FROM receipts"):
        receipts.setdefault(job_id, []).append(attempt)
    jobs = store.rows("SELECT job_id, state, attempt, event_seq, finished_us FROM jobs")
    for job_id, state, attempt, seq, finished in jobs:
        evs = events.pop(job_id, [])
        if seq != len(evs) or [e[0] for e in evs] != list(range(1, len(evs) + 1)):
            problems.append(f"{job_id}: event_seq {seq} but events {[e[0] for e in evs]}")
            continue
        previous = None
        for sequence, from_state, to_state in evs:
            if from_state != previous or (from_state, to_state) not in LEGAL:
                problems.append(f"{job_id}: event {sequence} {from_state}->{to_state} after state {previous}")
            previous = to_state
        if previous != state:
            problems.append(f"{job_id}: state {state} but its events end in {previous}")
        if (state in TERMINAL) != bool(finished):
            problems.append(f"{job_id}: state {state} with finished_us {finished}")
        want = [attempt] if state == COMPLETED else []
        if sorted(results.get(job_id, [])) != want:
            problems.append(f"{job_id}: state {state} attempt {attempt} but results {results.get(job_id)}")
        if sorted(receipts.get(job_id, [])) != want:
            problems.append(f"{job_id}: state {state} attempt {attempt} but receipts {receipts.get(job_id)}")
    if events:
        problems.append(f"events of unknown jobs: {sorted(events)[:5]}")
    leaves = [r[0] for r in store.rows("SELECT leaf_index FROM log_leaves ORDER BY leaf_index")]
    if leaves != list(range(len(leaves))) or len(leaves) != store.scalar("SELECT COUNT(*) FROM receipts"):
        problems.append(f"log leaves {len(leaves)} do not match the receipts")
    return problems


# ---------------------------------------------------------------------------------------------- certificates
@dataclass
class Pki:
    """A CA and certificates issued by it, written as PEM files into a directory."""

    directory: Path
    name: str = "test-ca"

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self._cert = self._build(subject, subject, self._key.public_key(), ca=True, sans=[])
        self.ca = self._write(f"{self.name}.crt", self._pem(self._cert))

    def issue(self, common_name: str, sans: list[str] = (), server: bool = False) -> tuple[Path, Path]:  # type: ignore[assignment]
        """(certificate file, key file) for common_name; server certificates also name localhost/127.0.0.1."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        names = [*sans, *(["localhost", "127.0.0.1"] if server else [])]
        cert = self._build(subject, self._cert.subject, key.public_key(), ca=False, sans=names)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        return (
            self._write(f"{common_name}.crt", self._pem(cert)),
            self._write(f"{common_name}.key", key_pem),
        )

    def _build(self, subject, issuer, public_key, *, ca: bool, sans: list[str]):  # type: ignore[no-untyped-def]
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if sans:
            entries: list[x509.GeneralName] = []
            for s in sans:
                try:
                    entries.append(x509.IPAddress(ipaddress.ip_address(s)))
                except ValueError:
                    entries.append(x509.DNSName(s))
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    @staticmethod
    def _pem(cert) -> bytes:  # type: ignore[no-untyped-def]
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.PEM)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path
