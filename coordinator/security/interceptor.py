"""The server interceptor: who calls (API key, optional request signature, optional client certificate),
whether it may (role per service), and how much (failed authentications per peer address, message size,
rate per key and RPC group, calls and streams in flight per key, messages per stream). Maps errors to
statuses with google.rpc details.

Built on grpc-interceptor's AsyncServerInterceptor (through security/intercepting.py, which keeps each
method's wrapped handler), which passes both async-generator and read/write style streaming handlers through.
Cancellation is never swallowed: asyncio.CancelledError propagates untouched.

Request signing is checked against the request bytes as received. For every RPC of our package with a unary
request, the handler kept for it has no request deserializer, so intercept() receives the raw message bytes: it
authenticates, checks the size and the signature over exactly those bytes, and only then parses them (an
unparseable body is INVALID_ARGUMENT, not an exception inside gRPC). Re-serializing a parsed message instead would
make signatures depend on two protobuf implementations (the caller's and ours) producing the same bytes, which
protobuf does not promise (map order, unknown fields, field order). Streamed requests keep gRPC's deserializer (so
read/write style handlers still work) and are signed per call.
Interceptors placed before this one see the unary request as bytes.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aitbc.signing import NONCE, SIGNATURE, TIMESTAMP, body_digest, signature
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from ..config import Settings, parse_rate_limits
from ..domain.errors import CoordinatorError, Kind, invalid
from ..observability.metrics import rate_limited
from ..services.status import abort
from ..store.base import StoreFenced, store_unreachable
from .bounds import check_bounds
from .intercepting import CachingServerInterceptor
from .keys import REQUEST_GROUPS, Identity, KeyRing, KeyState
from .limits import ReplayGuard, StreamThrottle, TokenBucket
from .peers import AuthFailures, peer_key
from .tls import certificate_names

log = logging.getLogger("coordinator.rpc")

PACKAGE = "/aitbc.coordinator.v1."
ROLES_BY_SERVICE = {
    "JobService": frozenset({"client"}),
    "MinerService": frozenset({"miner"}),
    "AdminService": frozenset({"admin"}),
    "ReceiptService": frozenset({"client", "miner", "admin"}),
}
GROUP_BY_SERVICE = {
    "JobService": "read",
    "MinerService": "miner",
    "AdminService": "admin",
    "ReceiptService": "read",
}
SUBMIT_METHODS = frozenset({"SubmitJob", "SubmitJobs", "CancelJob"})
AUTH_FAILURES = "auth_failures"  # the RATE_LIMITS group, and the metric's group label

current_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("identity")


SUBMIT_JOBS = "/aitbc.coordinator.v1.JobService/SubmitJobs"


def _charge_batch(state: KeyState, spec: MethodSpec, jobs: int) -> None:
    """A batch costs one token per job, not per call: 1,000 jobs in one SubmitJobs must not pass a 200/s
    limit. The call already took one token; the rest is owed (the balance may go negative, so a large
    batch is never refused outright, and the next calls wait until it is paid off)."""
    bucket = state.buckets[spec.group]
    if bucket is not None and jobs > 1:
        bucket.owe(time.monotonic(), jobs - 1)


def identity() -> Identity:
    """The authenticated caller of the current RPC."""
    return current_identity.get()


@dataclass(frozen=True, slots=True)
class Policy:
    """The limits the interceptor enforces (from settings; the defaults are the settings' defaults)."""

    max_message_bytes: int = 8 << 20
    max_concurrent_calls: int = 512
    max_streams: int = 256
    replay_window_s: float = 300.0
    nonce_cache_size: int = 100_000
    stream_rate: tuple[float, float] | None = (500.0, 1000.0)
    stream_cutoff_s: float = 10.0
    client_cert_roles: frozenset[str] = frozenset()
    auth_failure_rate: tuple[float, float] | None = (10.0, 50.0)  # per peer: failures per second, burst
    auth_failure_peers: int = 100_000

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        rates = parse_rate_limits(s.rate_limits)
        return cls(
            max_message_bytes=s.max_message_bytes, max_concurrent_calls=s.max_concurrent_calls_per_key,
            max_streams=s.max_streams_per_identity, replay_window_s=s.hmac_replay_window_seconds,
            nonce_cache_size=s.hmac_nonce_cache_size, stream_rate=rates["stream"],
            stream_cutoff_s=s.stream_throttle_cutoff_seconds,
            client_cert_roles=frozenset({"miner"}) if s.tls_client_ca_file else frozenset(),
            auth_failure_rate=rates[AUTH_FAILURES], auth_failure_peers=s.auth_failure_peer_cache_size,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class MethodSpec:
    service: str
    roles: frozenset[str]
    group: int  # index into REQUEST_GROUPS
    request_streaming: bool
    response_streaming: bool
    parse: Callable[[bytes], Any]
    request_type: str


def method_table() -> dict[str, MethodSpec]:
    """Every RPC of the four services, from their descriptors."""
    from aitbc.coordinator.v1 import (
        admin_service_pb2,
        job_service_pb2,
        miner_service_pb2,
        receipt_service_pb2,
    )

    table = {}
    for module in (job_service_pb2, miner_service_pb2, receipt_service_pb2, admin_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                group = "submit" if service.name == "JobService" and m.name in SUBMIT_METHODS else None
                table[f"/{service.full_name}/{m.name}"] = MethodSpec(
                    service.name, ROLES_BY_SERVICE[service.name],
                    REQUEST_GROUPS.index(group or GROUP_BY_SERVICE[service.name]),
                    m.client_streaming, m.server_streaming, GetMessageClass(m.input_type).FromString,
                    m.input_type.name,
                )  # fmt: skip
    return table


def _unauthenticated(reason: str, message: str) -> CoordinatorError:
    return CoordinatorError(Kind.UNAUTHENTICATED, reason, message)


def _exhausted(reason: str, message: str, retry_after_s: float | None, **metadata: str) -> CoordinatorError:
    """RESOURCE_EXHAUSTED; with RetryInfo when waiting helps (a rate or a count), without when it cannot (a size)."""
    return CoordinatorError(Kind.RESOURCE_EXHAUSTED, reason, message, metadata=metadata,
                            retry_after_s=retry_after_s)  # fmt: skip


class AuthInterceptor(CachingServerInterceptor):
    def __init__(self, keyring: KeyRing, policy: Policy | None = None) -> None:
        super().__init__()
        self.keyring = keyring
        self.policy = policy or Policy()
        self.methods = method_table()
        self.replay = ReplayGuard(self.policy.replay_window_s, self.policy.nonce_cache_size)
        rate = self.policy.auth_failure_rate
        self.auth_failures = (
            None if rate is None else AuthFailures(rate[0], rate[1], self.policy.auth_failure_peers)
        )
        self._exhausted_logs = TokenBucket(1.0, 10.0, time.monotonic())

    def adapt(self, handler: grpc.RpcMethodHandler, method_name: str) -> grpc.RpcMethodHandler:
        if handler.request_streaming or method_name not in self.methods:
            return handler
        return handler._replace(request_deserializer=None)  # intercept() gets the request bytes

    async def intercept(
        self, method: Callable, request_or_iterator: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        spec = self.methods.get(method_name)
        if spec is None:
            return await _call(method, request_or_iterator, context)  # health, reflection: open
        try:
            state = self._admit(spec, request_or_iterator, context, method_name)
            if spec.request_streaming:
                request = self._messages(request_or_iterator, spec, state)
            else:
                request = _parse(spec, request_or_iterator)
                if method_name == SUBMIT_JOBS:
                    _charge_batch(state, spec, len(request.requests))
        except CoordinatorError as error:
            await abort(context, error)
            return None
        streaming = spec.request_streaming or spec.response_streaming
        state.usage.inflight += 1
        if streaming:
            state.usage.streams += 1
        current_identity.set(state.identity)
        released = False
        try:
            result = method(request, context)
            if inspect.isasyncgen(result):
                released = True  # the generator releases the call when it ends
                return _guard_stream(result, context, state, streaming)
            return await result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            released = True  # (before its status: see _answer_error)
            _release(state, streaming)
            await _answer_error(context, method_name, exc)
        finally:
            if not released:
                _release(state, streaming)

    # ------------------------------------------------------------------ admission
    def _admit(
        self, spec: MethodSpec, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> KeyState:
        """The checks of docs/security.md, behind the peer's budget of failed authentications.

        The budget is checked before anything of the call is read, so a peer guessing keys costs one dict
        lookup per call once it is over budget. Only UNAUTHENTICATED refusals are charged: a valid key
        never spends its peer's budget (nor refills it: interleaving good calls must not buy more guesses),
        and a wrong role or an oversized message is not a guess. Check and charge run without an await in
        between, so concurrent calls of one peer cannot all slip past a budget of one.
        """
        failures = self.auth_failures
        if failures is None:
            return self._check(spec, request, context, method_name)
        peer = peer_key(context.peer() or "")
        wait = failures.wait(peer, time.monotonic())
        if wait:
            rate_limited("", AUTH_FAILURES)  # aitbc_rate_limited_requests_total{key="anonymous", group}
            raise _exhausted("AUTH_RATE_LIMITED",
                             f"too many failed authentications from this address; retry in {wait:.3f} s",
                             wait, group=AUTH_FAILURES)  # fmt: skip
        try:
            return self._check(spec, request, context, method_name)
        except CoordinatorError as error:
            if error.kind is Kind.UNAUTHENTICATED:
                now = time.monotonic()
                failures.failed(peer, now)
                wait = failures.wait(peer, now)
                # the address is worth a log line (never a metric label), but many addresses must not
                # flood the log: at most one line a second overall, ten in a burst
                if wait and not self._exhausted_logs.take(now):
                    log.warning("%s spent its budget of failed authentications (last: %s); its calls are "
                                "refused for %.1f s", peer, error.reason, wait)  # fmt: skip
            raise

    def _check(
        self, spec: MethodSpec, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> KeyState:
        key = timestamp = nonce = sig = ""
        for name, value in context.invocation_metadata() or ():
            if name == "x-api-key" or (name == "authorization" and value[:7].lower() == "bearer "):
                presented = value if name == "x-api-key" else value[7:].strip()
                if key and presented != key:  # which one is the caller? neither, rather than a guess
                    raise _unauthenticated(
                        "UNAUTHENTICATED", "several different API keys in one call: send one"
                    )
                key = presented
            elif name == TIMESTAMP:
                timestamp = value
            elif name == NONCE:
                nonce = value
            elif name == SIGNATURE:
                sig = value
        if not key:
            raise _unauthenticated("UNAUTHENTICATED",
                                   "missing API key: send it as x-api-key metadata or authorization: Bearer KEY")  # fmt: skip
        state = self.keyring.lookup(key)
        if state is None:
            raise _unauthenticated("UNAUTHENTICATED", "unknown or disabled API key")
        who = state.identity
        if who.role not in spec.roles:
            raise CoordinatorError(Kind.PERMISSION_DENIED, "WRONG_ROLE", f"a {who.role} key cannot call {spec.service}",
                                   metadata={"role": who.role, "service": spec.service})  # fmt: skip
        if who.role in self.policy.client_cert_roles:
            self._check_certificate(who, context)
        limit = self.policy.max_message_bytes
        if not spec.request_streaming and len(request) > limit:
            raise _exhausted("MESSAGE_TOO_LARGE", f"the request is {len(request)} bytes; at most {limit} are accepted",
                             None, size=str(len(request)), limit=str(limit))  # fmt: skip
        if state.hmac_secret:
            body = None if spec.request_streaming else request
            self._check_signature(state.hmac_secret, method_name, body, timestamp, nonce, sig)
        bucket = state.buckets[spec.group]
        if bucket is not None:
            wait = bucket.take(time.monotonic())
            if wait:
                group = REQUEST_GROUPS[spec.group]
                rate_limited(who.name, group)  # aitbc_rate_limited_requests_total{key, group}
                raise _exhausted("RATE_LIMITED", f"rate limit of the {group} group reached for this key; retry in {wait:.3f} s",
                                 wait, group=group)  # fmt: skip
        if state.usage.inflight >= self.policy.max_concurrent_calls:
            raise _exhausted("TOO_MANY_CONCURRENT_CALLS",
                             f"at most {self.policy.max_concurrent_calls} calls in flight per key", 1.0,
                             limit=str(self.policy.max_concurrent_calls))  # fmt: skip
        if (
            spec.request_streaming or spec.response_streaming
        ) and state.usage.streams >= self.policy.max_streams:
            raise _exhausted("TOO_MANY_STREAMS", f"at most {self.policy.max_streams} open streams per identity", 1.0,
                             limit=str(self.policy.max_streams))  # fmt: skip
        return state

    @staticmethod
    def _check_certificate(who: Identity, context: grpc.aio.ServicerContext) -> None:
        names = certificate_names(context)
        if not names:
            raise _unauthenticated("CLIENT_CERTIFICATE_REQUIRED",
                                   f"{who.role} calls need a client certificate (mutual TLS)")  # fmt: skip
        if who.name.encode() not in names:
            raise CoordinatorError(Kind.PERMISSION_DENIED, "CERTIFICATE_MISMATCH",
                                   "the client certificate's identity is not the API key's identity",
                                   metadata={"identity": who.name})  # fmt: skip

    def _check_signature(
        self, secret: bytes, method_name: str, body: bytes | None, timestamp: str, nonce: str, sig: str
    ) -> None:
        if not (timestamp and nonce and sig):
            raise _unauthenticated("SIGNATURE_REQUIRED",
                                   f"this key signs its calls: send {TIMESTAMP}, {NONCE} and {SIGNATURE}")  # fmt: skip
        try:
            ts = float(timestamp)
        except ValueError:
            ts = math.nan
        if not math.isfinite(ts) or not 8 <= len(nonce) <= 128 or len(timestamp) > 32:
            raise _unauthenticated(
                "BAD_SIGNATURE", f"{TIMESTAMP} must be unix seconds; {NONCE} 8 to 128 characters"
            )
        expected = signature(secret, method_name, timestamp, nonce, "" if body is None else body_digest(body))
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise _unauthenticated("BAD_SIGNATURE", "the request signature does not match")
        refused = self.replay.check(nonce, ts, time.time())
        if refused == "STALE_TIMESTAMP":
            raise _unauthenticated(
                refused, f"the request timestamp is outside the {self.policy.replay_window_s:g} s window"
            )
        if refused:
            raise _unauthenticated(refused, "this nonce was used already")

    # ------------------------------------------------------------------ streamed requests
    async def _messages(self, requests: AsyncIterator, spec: MethodSpec, state: KeyState) -> AsyncIterator:
        """The request stream, with malformed messages refused and the message rate held to the budget.

        A key disabled (or removed by a reload) while its stream is open ends the stream at its next message.
        """
        policy = self.policy
        rate = policy.stream_rate
        throttle = (
            None
            if rate is None
            else StreamThrottle(rate[0], rate[1], policy.stream_cutoff_s, time.monotonic())
        )
        it = requests.__aiter__()
        while True:
            try:
                message = await it.__anext__()
            except StopAsyncIteration:
                return
            except DecodeError:
                raise invalid(f"a streamed message is not a valid {spec.request_type}",
                              [("message", UNPARSABLE)],
                              reason="MALFORMED_REQUEST") from None  # fmt: skip
            if state.disabled:
                raise _unauthenticated("KEY_DISABLED", "this API key was disabled")
            if throttle is not None:
                wait = throttle.on_message(time.monotonic())
                if wait < 0:
                    who = current_identity.get(None)
                    rate_limited(who.name if who else "", "stream")
                    raise _exhausted("STREAM_RATE_EXCEEDED",
                                     f"more than {rate[0]:g} messages per second for over {policy.stream_cutoff_s:g} s",  # type: ignore[index]
                                     policy.stream_cutoff_s)  # fmt: skip
                if wait:
                    await asyncio.sleep(wait)
            if message.ByteSize() > policy.max_message_bytes:
                raise _exhausted("MESSAGE_TOO_LARGE", f"a streamed message exceeds {policy.max_message_bytes} bytes",
                                 None, limit=str(policy.max_message_bytes))  # fmt: skip
            check_bounds(message)
            yield message


# The parser does not say why; these are the ways a well-meant message fails it.
UNPARSABLE = (
    "not a valid protobuf message of this type: malformed bytes, a string that is not UTF-8, or values nested "
    "deeper than the parser allows (a Struct payload or result nests at most 32 levels)"
)


def _parse(spec: MethodSpec, raw: bytes) -> Any:
    try:
        message = spec.parse(raw)
    except DecodeError:
        raise invalid(f"the request is not a valid {spec.request_type}",
                      [("request", UNPARSABLE)],
                      reason="MALFORMED_REQUEST") from None  # fmt: skip
    check_bounds(message)
    return message


def _release(state: KeyState, streaming: bool) -> None:
    state.usage.inflight -= 1
    if streaming:
        state.usage.streams -= 1


async def _call(method: Callable, request: Any, context: grpc.aio.ServicerContext) -> Any:
    result = method(request, context)
    if inspect.isasyncgen(result):
        return result
    return await result


async def _guard_stream(
    stream: AsyncIterator, context: grpc.aio.ServicerContext, state: KeyState, streaming: bool
) -> AsyncIterator:
    released = False
    try:
        async for item in stream:
            if state.disabled:
                raise _unauthenticated("KEY_DISABLED", "this API key was disabled")
            yield item
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        released = True  # (before its status: see _answer_error)
        _release(state, streaming)
        await _answer_error(context, "stream", exc)
    finally:
        if not released:
            _release(state, streaming)


async def _answer_error(context: grpc.aio.ServicerContext, method_name: str, exc: Exception) -> None:
    """End a call whose handler failed with exc, its status saying why. The caller has released the call first: the
    handler is over, though its status may wait long to be sent, or for ever. gRPC sends it after any message being
    written, and a stream whose peer stopped reading (a miner's process hung while its transport answers keepalive
    pings: the liveness check ends such a stream, STREAM_STALLED) never lets that write finish. Until its peer ended
    the call, such a call counted in its identity's open streams (MAX_STREAMS_PER_IDENTITY), and exc held, through
    its traceback and the error it was raised while handling, the handler's frames: a miner stream's session, with
    its outbox of assignments, payloads and all."""
    if isinstance(exc, CoordinatorError):
        _let_go_of_frames(exc)
        await abort(context, exc)  # (raises AbortError)
    else:
        await _internal(context, method_name, exc)


def _let_go_of_frames(exc: BaseException) -> None:
    """Cut exc from the frames it went through: its traceback, and the exception it was raised while handling (once
    logged, nothing reads them)."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None


async def _internal(context: grpc.aio.ServicerContext, method_name: str, exc: Exception) -> None:
    """An unexpected failure: logged with its trace; the caller gets INTERNAL, never a crash or hang."""
    if isinstance(exc, StoreFenced):  # (logged when found): this coordinator stops; a restarted one serves
        error = CoordinatorError(Kind.UNAVAILABLE, "STORE_LOST", "this coordinator lost its store to another process "
                                 "and is stopping; retry", retry_after_s=1.0)  # fmt: skip
    elif store_unreachable(exc):  # a blip, not a bug: nothing was stored, and the same call may be made again
        log.warning("store unreachable in %s: %r", method_name, exc)
        error = CoordinatorError(Kind.UNAVAILABLE, "STORE_UNAVAILABLE", "the coordinator could not reach its store; "
                                 "nothing was changed: retry", retry_after_s=1.0)  # fmt: skip
    else:
        log.exception("unexpected error in %s", method_name, exc_info=exc)
        error = CoordinatorError(Kind.INTERNAL, "INTERNAL", "internal error; see the coordinator log")
    _let_go_of_frames(exc)  # (see _answer_error)
    await abort(context, error)
