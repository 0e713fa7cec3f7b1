"""Property: whatever a caller sends to any RPC (streams included), random bytes or random well-typed messages
full of real and made-up ids, under any key, the server answers with a status (no hang, never UNKNOWN or
INTERNAL), stays up, and leaves the store consistent.

The coordinator runs in its own thread and event loop; the test drives it with the synchronous gRPC client
so that hypothesis runs plain functions. Deadlines bound every call.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sec_support import KEYS, ROLE_KEYS, Rpc, Store, all_rpcs, consistency_problems, make_settings, md

from coordinator.server import Coordinator, start

BROKEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
          grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS}  # fmt: skip
WAITING = {"WatchJob", "GetJobResult", "PollJob"}  # may legitimately run into the caller's deadline
ROLES = {"JobService": "client", "MinerService": "miner", "AdminService": "admin", "ReceiptService": "client"}
RPCS = all_rpcs()


class ThreadedCoordinator:
    """A real coordinator served from a background thread's event loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coordinator", daemon=True)
        self.thread.start()
        self.coord: Coordinator = self.run(start(make_settings(tmp_path)))
        self.address = f"127.0.0.1:{self.coord.port}"

    def run(self, coro: Any, timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.run(self.coord.stop(0.1))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


# ---------------------------------------------------------------------------------------------- strategies
_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def strings(pool: list[str]) -> st.SearchStrategy[str]:
    """Mostly real ids and names (to get past validation), else short or overlong text."""
    real = st.sampled_from(pool)
    return st.one_of(real, real, real, st.text(max_size=24), st.text(min_size=60, max_size=700))


def scalar(field: FieldDescriptor, pool: list[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings(pool)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=48)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 40))
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    low, high = _INTS[t]
    small = st.integers(max(low, -1), 4)
    return st.one_of(small, small, small, st.integers(low, high))


def messages(desc: Descriptor, pool: list[str], depth: int = 0) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=8), JSON, max_size=4).map(lambda d: _struct(cls, d))
    if desc.full_name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        seconds = st.one_of(st.integers(0, 120), st.integers(-(10**7), 10**10))
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, st.integers(0, 10**9 - 1))
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            entry = f.message_type
            if entry.GetOptions().map_entry:
                optional[f.name] = st.dictionaries(strings(pool), strings(pool), max_size=4)
            elif depth < 4:
                inner = messages(entry, pool, depth + 1)
                optional[f.name] = st.lists(inner, max_size=3) if f.is_repeated else inner
        else:
            optional[f.name] = st.lists(scalar(f, pool), max_size=4) if f.is_repeated else scalar(f, pool)
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, desc, values))


def _struct(cls: type, value: dict) -> Message:  # type: ignore[type-arg]
    s = cls()
    s.update(value)
    return s


def _build(cls: type, desc: Descriptor, values: dict[str, Any]) -> Message:
    m = cls()
    for name, value in values.items():
        f = desc.fields_by_name[name]
        if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            getattr(m, name).update(value)
        elif f.type == FieldDescriptor.TYPE_MESSAGE and f.is_repeated:
            for item in value:
                getattr(m, name).add().CopyFrom(item)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(m, name).CopyFrom(value)
        elif f.is_repeated:
            getattr(m, name).extend(value)
        else:
            setattr(m, name, value)
    return m


def keys_for(rpc: Rpc) -> st.SearchStrategy[str | None]:
    """Mostly a key allowed to call rpc (to get past the interceptor), sometimes any other or none."""
    right = ROLE_KEYS[ROLES[rpc.service]]
    return st.one_of(st.just(right), st.just(right), st.just(right),
                     st.sampled_from([None, "garbage-key-123", *KEYS.values()]))  # fmt: skip


def bodies(rpc: Rpc, pool: list[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=256),
        *[messages(rpc.request.DESCRIPTOR, pool).map(lambda m: m.SerializeToString())] * 2,
    )


def stream_bodies(pool: list[str]) -> st.SearchStrategy[list[bytes]]:
    hello = mpb.ConnectRequest(
        hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=2))
    ).SerializeToString()
    one = bodies(next(r for r in RPCS if r.method == "Connect"), pool)
    return st.one_of(st.lists(one, max_size=4), st.lists(one, max_size=4).map(lambda rest: [hello, *rest]))


# ---------------------------------------------------------------------------------------------- calls
def call(channel: grpc.Channel, rpc: Rpc, key: str | None, body: bytes | list[bytes]) -> grpc.StatusCode:
    timeout = 0.5 if rpc.method in WAITING else 3.0
    try:
        if rpc.client_streaming:
            responses = channel.stream_stream(rpc.path, request_serializer=None, response_deserializer=None)(
                iter(body),
                metadata=md(key),
                timeout=timeout,  # type: ignore[arg-type]
            )
            for _ in responses:
                pass
        elif rpc.server_streaming:
            for _ in channel.unary_stream(rpc.path, request_serializer=None, response_deserializer=None)(
                body, metadata=md(key), timeout=timeout
            ):
                pass
        else:
            channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)(
                body, metadata=md(key), timeout=timeout
            )
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]


def seed(channel: grpc.Channel) -> list[str]:
    """Jobs in several states and a live unary miner session, whose ids the fuzzer then reuses."""
    unary = lambda path, req, resp, key: channel.unary_unary(  # noqa: E731
        path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString
    )
    submit = unary(
        "/aitbc.coordinator.v1.JobService/SubmitJob", jpb.SubmitJobRequest, jpb.SubmitJobResponse, None
    )
    ids = [submit(jpb.SubmitJobRequest(payload_bytes=f"job {i}".encode()), metadata=md(ROLE_KEYS["client"])).job.job_id
           for i in range(6)]  # fmt: skip
    register = unary("/aitbc.coordinator.v1.MinerService/RegisterMiner", mpb.RegisterMinerRequest,
                     mpb.RegisterMinerResponse, None)  # fmt: skip
    hello = mpb.Hello(capabilities=mpb.MinerCapabilities(slots=3))
    session = register(
        mpb.RegisterMinerRequest(hello=hello), metadata=md(ROLE_KEYS["miner"])
    ).welcome.session_id
    poll = unary("/aitbc.coordinator.v1.MinerService/PollJob", mpb.PollJobRequest, mpb.PollJobResponse, None)
    got = poll(mpb.PollJobRequest(session_id=session, max_jobs=3), metadata=md(ROLE_KEYS["miner"]), timeout=3)
    held = [(a.job.job_id, a.attempt) for a in got.assignments]
    assert held, "the seeded miner got no work"
    result = unary("/aitbc.coordinator.v1.MinerService/SubmitResult", mpb.SubmitResultRequest,
                   mpb.SubmitResultResponse, None)  # fmt: skip
    job_id, attempt = held[0]
    result(mpb.SubmitResultRequest(session_id=session, result=mpb.Result(job_id=job_id, attempt=attempt,
                                   result_bytes=b"done", units="1")), metadata=md(ROLE_KEYS["miner"]))  # fmt: skip
    return [*ids, session, "m1", "m2", "alice", "client", "miner", "admin", "1", ""]


def test_random_and_malformed_messages_to_every_rpc(tmp_path: Path) -> None:
    server = ThreadedCoordinator(tmp_path)
    try:
        channel = grpc.insecure_channel(server.address)
        health = health_pb2_grpc.HealthStub(channel)
        pool = seed(channel)
        seen: dict[str, set[str]] = {}

        @settings(max_examples=500, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(data=st.data())
        def one_call(data: st.DataObject) -> None:
            rpc = data.draw(st.sampled_from(RPCS), label="rpc")
            key = data.draw(keys_for(rpc), label="key")
            body = data.draw(stream_bodies(pool) if rpc.client_streaming else bodies(rpc, pool), label="body")
            code = call(channel, rpc, key, body)
            seen.setdefault(rpc.path, set()).add(code.name)
            assert code not in BROKEN, f"{rpc.path} answered {code.name}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                assert rpc.method in WAITING, f"{rpc.path} did not answer before its deadline"
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.SERVING

        one_call()
        # every RPC was exercised, and past the interceptor for most of them
        assert {r.path for r in RPCS} <= set(seen), sorted({r.path for r in RPCS} - set(seen))
        channel.close()
    finally:
        server.stop()
    problems = consistency_problems(Store(tmp_path / "coord.db"))
    assert problems == [], problems


def test_the_consistency_check_can_fail(tmp_path: Path) -> None:
    """The store check above is not vacuous: a row out of step with its events is caught."""
    import sqlite3

    server = ThreadedCoordinator(tmp_path)
    try:
        channel = grpc.insecure_channel(server.address)
        seed(channel)
        channel.close()
    finally:
        server.stop()
    store = Store(tmp_path / "coord.db")
    assert consistency_problems(store) == []
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE jobs SET state = 4 WHERE state = 1")  # QUEUED rows claim COMPLETED
    assert any("events end in" in p for p in consistency_problems(store))
