"""The Python client SDK: submit jobs, follow them, fetch results and verifiable receipts."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import numbers
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from typing import Any, Self

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .channel import auth_metadata, open_channel
from .coordinator.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    receipt_service_pb2,
    receipt_service_pb2_grpc,
)
from .ids import uuid7
from .receipts import ConsistencyProof
from .signing import SigningChannel
from .tracing import with_trace_context

log = logging.getLogger("aitbc.client")

TERMINAL = {
    job_pb2.JOB_STATE_COMPLETED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELED,
    job_pb2.JOB_STATE_EXPIRED,
}
ROLE_NAMES = {1: "coordinator", 2: "attestation", 3: "log", 4: "miner"}
STATUS_NAMES = {1: "active", 2: "retired"}
DEFAULT_TIMEOUT_S = 30.0
# GetJobResult(wait=True) without a deadline of the caller's: the coordinator waits at most 15 minutes, then
# answers WAIT_TIMEOUT; the call's own deadline is that long, so that a lost connection cannot hang it.
RESULT_WAIT_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is made again after UNAVAILABLE (the coordinator unreachable, restarting, or its store
    briefly out: STORE_UNAVAILABLE), for a call that is safe to repeat: never a submit without an idempotency
    key (UNAVAILABLE may come after it was stored: a repeat could store it twice; the client gives every submit
    one unless told not to). A RetryInfo delay (at least backoff_s) is waited, jittered to 1 to RETRY_INFO_JITTER times itself;
    otherwise a jittered backoff from backoff_s doubling to backoff_max_s. All tries of a call share
    its deadline, and by default only the deadline ends them: a coordinator down for minutes is waited out
    by a call whose deadline is longer (a watch, without one, waits as long as it takes). RESOURCE_EXHAUSTED
    (a rate limit) is the application's to handle: error_details(exc) gives its retry_after_s; but a watch
    (wait() with it) waits out its RetryInfo delay, as it waits out a cut."""

    # most tries of one call (or failures in a row of a watch), the first included; 1: never again; None: no
    # cap, the deadline decides (a cap of 5 gave up on a coordinator down for more than about 3 s)
    attempts: int | None = None
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0

    def backoff(self, attempt: int) -> float:
        """The pause after the attempt-th failed try (1-based), jittered to half to all of it."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)
# A RetryInfo delay is the coordinator's "not before": never shortened (full jitter would retry early), only
# lengthened by up to a fifth, so that the clients one STORE_UNAVAILABLE answered (1 s) do not all come back at
# the same instant; spread over 200 ms, their tries no longer land as one burst on a store just back.
RETRY_INFO_JITTER = 1.2


def jittered(delay_s: float) -> float:
    """A RetryInfo delay as waited: delay_s times a random factor in [1, RETRY_INFO_JITTER]."""
    return delay_s * random.uniform(1.0, RETRY_INFO_JITTER)


GENERATED_KEY_PREFIX = "auto-"


def new_idempotency_key() -> str:
    """A key for a submit whose caller gave none: GENERATED_KEY_PREFIX and a UUIDv7 (as the coordinator's ids:
    48 bits of Unix milliseconds, a counter, 62 random bits). Time-ordered, so the store's unique (client_id,
    idempotency_key) index takes new keys at its end rather than all over; random enough never to meet another
    call's key (which would answer that call's job, or IDEMPOTENCY_KEY_REUSED). 41 characters (the
    coordinator takes 128)."""
    return GENERATED_KEY_PREFIX + uuid7()


@dataclass
class ErrorDetails:
    """The google.rpc details of a failed call: the ErrorInfo reason and metadata, the BadRequest field
    violations, the RetryInfo delay (None without one)."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None

    def __str__(self) -> str:
        """One line: CODE (REASON): message; each field violation; the retry delay."""
        text = (
            f"{self.code.name} ({self.reason}): {self.message}"
            if self.reason
            else f"{self.code.name}: {self.message}"
        )
        for name, description in self.violations:
            if f"{name}: {description}" not in self.message:
                text += f"; {name}: {description}"
        if self.retry_after_s is not None:
            text += f" (retry after {self.retry_after_s:g} s)"
        return text


def error_details(exc: grpc.aio.AioRpcError) -> ErrorDetails:
    """What a failed call says, from its grpc-status-details-bin trailer (just code and message without it)."""
    out = ErrorDetails(exc.code(), exc.details() or "")
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # a status that disagrees with its details: keep the code and message
        status = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.violations += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            out.retry_after_s = info_retry.retry_delay.ToMilliseconds() / 1000
    return out


# A try cut on its way: UNAVAILABLE, or CANCELLED, which is what gRPC answers a call a stopping coordinator had
# received but not started (nothing of it was done). Not this client's own cancel: close() ends the retries.
_CUT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


# Whether a call may be made again after this failure: a flag, or a test of the error (a mutation safe to repeat
# only after an answer saying nothing was done, e.g. STORE_UNAVAILABLE).
Repeatable = bool | Callable[[grpc.aio.AioRpcError], bool]


def retry_pause(
    exc: grpc.aio.AioRpcError,
    repeatable: Repeatable,
    attempt: int,
    policy: RetryPolicy,
    *,
    waits_out_limits: bool = False,
) -> float | None:
    """How long to wait before trying a failed call again; None: do not. waits_out_limits: a RESOURCE_EXHAUSTED
    whose RetryInfo says when to come back (a rate or a count; a size has none) is waited out too: a watch's,
    which the SDK resumes by itself (every watch of an application at once after an outage) and which has no
    deadline of its own to keep to. Elsewhere a rate limit is the application's to handle."""
    spent = policy.attempts is not None and attempt >= policy.attempts
    delay = error_details(exc).retry_after_s
    limited = waits_out_limits and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
    cut = exc.code() in _CUT and (repeatable(exc) if callable(repeatable) else repeatable)
    if spent or not (cut or limited):
        return None
    # (a delay of 0, from a proxy say, is taken as the first backoff's: no try again at once, until the deadline)
    return policy.backoff(attempt) if delay is None else jittered(max(delay, policy.backoff_s))


def closed_error() -> grpc.aio.AioRpcError:
    """The error of a call ended by Client.close() between its tries (CANCELLED, as one ended in flight)."""
    return grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                "the client was closed")  # fmt: skip


def closed_in_flight(closed: asyncio.Event) -> bool:
    """Whether the asyncio.CancelledError a call raised is the client's close() (grpc.aio raises one for a
    call its closed channel cancelled), not a cancellation of the caller's task (left to propagate)."""
    task = asyncio.current_task()
    return closed.is_set() and (task is None or not task.cancelling())


def _deadline_s(timeout: float | None) -> float | None:
    """A call's timeout as gRPC takes it: None or math.inf is none (grpc failed an infinite one at once)."""
    if timeout is None or timeout == math.inf:
        return None
    if math.isnan(timeout):
        raise ValueError(f"timeout_s: a number of seconds or None, not {timeout}")
    return timeout


_DEFAULT: Any = object()  # "the client's default timeout" (None means no deadline)


@dataclass
class _Followed:
    """How far a watch got: its last update and the last failure that cut it since (a resumed stream that has
    sent nothing yet cannot be told from one still cut)."""

    update: job_service_pb2.WatchJobResponse | None = None
    failure: grpc.aio.AioRpcError | None = None

    def timeout_message(self, job_id: str, timeout_s: float | None) -> str:
        if self.update is None:
            text = f"job {job_id} not seen in {timeout_s:g} s"
        else:
            state = job_pb2.JobState.Name(self.update.job.state).removeprefix("JOB_STATE_")
            text = f"job {job_id} not terminal after {timeout_s:g} s (last seen {state}, sequence {self.update.sequence})"
        if self.failure is not None:
            text += f"; last cut: {error_details(self.failure)}"
        return text


def _rfc3339(ts) -> str | None:  # type: ignore[no-untyped-def]
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RetryingCalls:
    """Unary calls over one channel with a deadline each (all its tries included), made again as the retry
    policy allows; close() ends the calls in flight and those waiting to try again (CANCELLED). The base of
    Client and of the admin CLI's AdminClient."""

    def __init__(
        self, channel: grpc.aio.Channel, api_key: str, *, timeout_s: float | None, retry: RetryPolicy
    ) -> None:
        self.timeout_s = timeout_s
        self.retry = retry
        self._closed = asyncio.Event()  # set by close(): a call waiting to try again ends CANCELLED
        self.channel = channel
        self._auth = auth_metadata(api_key)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The API key, plus the current span's W3C trace context when the application traces."""
        return with_trace_context(self._auth)

    @metadata.setter
    def metadata(self, value: tuple[tuple[str, str], ...]) -> None:
        self._auth = value

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        await self.channel.close()

    async def _pause(self, seconds: float) -> None:
        """Waits before a call's next try; a close() meanwhile ends the call CANCELLED, as it ends the calls
        in flight (not after the pause, with the closed channel's UsageError)."""
        if self._closed.is_set():
            raise closed_error()
        try:
            await asyncio.wait_for(self._closed.wait(), seconds)
        except TimeoutError:
            return
        raise closed_error()

    async def _unary(
        self,
        rpc: Callable[..., Awaitable[Any]],
        request: Any,
        *,
        repeatable: Repeatable,
        timeout_s: float | None = _DEFAULT,
        settle_repeat: Callable[[grpc.aio.AioRpcError, float | None], Awaitable[Any]] | None = None,
    ) -> Any:
        """One call, tried again as the retry policy allows within its deadline. settle_repeat: called with
        the error of a try made after an earlier one may have taken effect, and the seconds left of the
        call's deadline (None: none), which any call it makes must keep to; what it returns (not None) is
        the call's answer (a cancel repeated after the first canceled the job)."""
        timeout = _deadline_s(self.timeout_s if timeout_s is _DEFAULT else timeout_s)
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        attempt = 0
        while True:
            attempt += 1
            try:
                return await rpc(request, metadata=self.metadata, timeout=remaining())
            except asyncio.CancelledError:
                if closed_in_flight(self._closed):
                    raise closed_error() from None
                raise
            except grpc.aio.AioRpcError as exc:
                if (
                    attempt > 1
                    and settle_repeat is not None
                    and (answer := await settle_repeat(exc, remaining())) is not None
                ):
                    return answer
                pause = retry_pause(exc, repeatable, attempt, self.retry)
                if pause is None or (deadline is not None and time.monotonic() + pause >= deadline):
                    raise
            await self._pause(pause)


class Client(RetryingCalls):
    """An asyncio client of JobService and ReceiptService. Use as `async with Client(address, key) as c:`."""

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        channel: grpc.aio.Channel | None = None,
        hmac_secret: str | bytes | None = None,
        tls_ca: bytes | str | None = None,
        tls_cert: bytes | str | None = None,
        tls_key: bytes | str | None = None,
        channel_options: dict[str, Any] | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        generate_idempotency_keys: bool = True,
    ) -> None:
        """hmac_secret: sign every call with the key's signing secret; tls_*: TLS (see open_channel).
        channel_options: open_channel's other settings (tls, tls_server_name, keepalive_s, keepalive_timeout_s,
        reconnect_max_s), as Miner takes them; with channel, neither these nor tls_* apply (the channel has its own).

        timeout_s: the deadline of each call (None: none), all its tries included; a waiting GetJobResult
        defaults to RESULT_WAIT_TIMEOUT_S and a watch to no deadline. retry: see RetryPolicy (NO_RETRY: none).
        generate_idempotency_keys: a submitted job without an idempotency_key gets one (new_idempotency_key),
        made once per call, so that its submit is tried again after UNAVAILABLE like any call safe to repeat;
        False: jobs without a key are sent without one, and such a submit is never tried again.
        """
        channel = channel or open_channel(address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                          **(channel_options or {}))  # fmt: skip
        super().__init__(channel, api_key, timeout_s=timeout_s, retry=retry)
        self.generate_idempotency_keys = generate_idempotency_keys
        calls = SigningChannel(self.channel, hmac_secret) if hmac_secret else self.channel
        self.jobs = job_service_pb2_grpc.JobServiceStub(calls)
        self.receipts = receipt_service_pb2_grpc.ReceiptServiceStub(calls)

    async def __aenter__(self) -> Client:
        return self

    @staticmethod
    def request(payload: dict[str, Any] | bytes, **options: Any) -> job_service_pb2.SubmitJobRequest:
        """A SubmitJobRequest: payload a dict of JSON data (payload) or bytes (payload_bytes); options
        constraints (a dict of Constraints fields, or None), priority, max_attempts, idempotency_key,
        metadata (a dict of strings), ttl_s and execution_timeout_s (seconds). A payload or option of the
        wrong kind is a TypeError (ValueError for a bad value) naming it; the coordinator checks the ranges."""
        req = job_service_pb2.SubmitJobRequest(
            constraints=_constraints(options.pop("constraints", None)),
            priority=options.pop("priority", 0), max_attempts=options.pop("max_attempts", 0),
            idempotency_key=options.pop("idempotency_key", ""), metadata=options.pop("metadata", {}),
        )  # fmt: skip
        if isinstance(payload, bytes | bytearray | memoryview):
            req.payload_bytes = bytes(payload)
        elif isinstance(payload, Mapping):
            req.payload.SetInParent()  # set even when empty: {} is a payload, not a missing one
            try:
                req.payload.update(payload)
            except (TypeError, ValueError, OverflowError) as exc:  # protobuf's own words name neither
                error, where = _not_json(payload) or (type(exc), str(exc))
                raise error(f"payload: {where}") from None
        else:
            raise TypeError(f"payload: a dict (a JSON object) or bytes, not {type(payload).__name__}")
        if (ttl := options.pop("ttl_s", None)) is not None:
            req.ttl.FromMilliseconds(_milliseconds(ttl, "ttl_s"))
        if (timeout := options.pop("execution_timeout_s", None)) is not None:
            req.execution_timeout.FromMilliseconds(_milliseconds(timeout, "execution_timeout_s"))
        if options:
            raise TypeError(f"unknown options: {sorted(options)}")
        return req

    def _keyed(self, request: job_service_pb2.SubmitJobRequest) -> job_service_pb2.SubmitJobRequest:
        """The request as sent: with a key of its own generated for this call when it has none (a copy: the
        caller's request stays keyless, and sent again by another call makes another job, as it always did)."""
        if request.idempotency_key or not self.generate_idempotency_keys:
            return request
        keyed = job_service_pb2.SubmitJobRequest()
        keyed.CopyFrom(request)
        keyed.idempotency_key = new_idempotency_key()
        return keyed

    async def submit(self, payload: dict[str, Any] | bytes, **options: Any) -> job_pb2.Job:
        """Submits a job. Tried again after UNAVAILABLE with its idempotency_key (one job, whatever happened
        to the first try): the caller's, else one generated for this call (shown as the job's idempotency_key;
        see generate_idempotency_keys). Without a key (generation turned off), UNAVAILABLE may mean it was
        stored: a retry could store two, so it is not tried again."""
        request = self._keyed(self.request(payload, **options))
        response = await self._unary(self.jobs.SubmitJob, request, repeatable=bool(request.idempotency_key))
        return response.job

    async def submit_many(self, payloads: list[dict[str, Any] | bytes], **options: Any) -> list[job_pb2.Job]:
        """Submits jobs in one call (all or none), with the same options for each (submit_requests: keys and
        options of their own per job). The jobs come back without their input (SubmitJobs; get() has it)."""
        return await self.submit_requests([self.request(p, **dict(options)) for p in payloads])

    async def submit_requests(self, requests: list[job_service_pb2.SubmitJobRequest]) -> list[job_pb2.Job]:
        """SubmitJobs with requests made by Client.request, each without a key given one for this call (as by
        submit); tried again after UNAVAILABLE only when every request has an idempotency key."""
        requests = [self._keyed(r) for r in requests]
        repeatable = all(r.idempotency_key for r in requests)
        response = await self._unary(self.jobs.SubmitJobs, job_service_pb2.SubmitJobsRequest(requests=requests),
                                     repeatable=repeatable)  # fmt: skip
        return [r.job for r in response.responses]

    async def get(self, job_id: str) -> job_pb2.Job:
        return await self._get(job_id)

    async def _get(self, job_id: str, timeout_s: float | None = _DEFAULT) -> job_pb2.Job:
        request = job_service_pb2.GetJobRequest(job_id=job_id)
        return (await self._unary(self.jobs.GetJob, request, repeatable=True, timeout_s=timeout_s)).job

    async def result(
        self, job_id: str, *, wait: bool = False, deadline_s: float | None = None
    ) -> job_service_pb2.GetJobResultResponse:
        """The job's result; with wait, waits for the job to end until deadline_s (default: the coordinator's
        longest wait, 15 minutes; it answers DEADLINE_EXCEEDED with reason WAIT_TIMEOUT just before)."""
        timeout = (
            deadline_s if deadline_s is not None else (RESULT_WAIT_TIMEOUT_S if wait else self.timeout_s)
        )
        request = job_service_pb2.GetJobResultRequest(job_id=job_id, wait=wait)
        return await self._unary(self.jobs.GetJobResult, request, repeatable=True, timeout_s=timeout)

    async def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """Cancels a job. Tried again after UNAVAILABLE: should an earlier try have canceled it, the job
        (CANCELED) is the answer, not the JOB_TERMINAL of the repeat."""

        async def canceled_by_an_earlier_try(
            exc: grpc.aio.AioRpcError, left_s: float | None
        ) -> job_pb2.Job | None:
            if error_details(exc).reason != "JOB_TERMINAL":
                return None
            # read within what is left of the cancel's deadline (a deadline of its own outlived the caller's)
            job = await self._get(job_id, timeout_s=left_s)
            return job if job.state == job_pb2.JOB_STATE_CANCELED else None

        request = job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        response = await self._unary(
            self.jobs.CancelJob, request, repeatable=True, settle_repeat=canceled_by_an_earlier_try
        )
        return response if isinstance(response, job_pb2.Job) else response.job

    async def list(
        self, states: list[int] | None = None, page_size: int = 0, page_token: str = ""
    ) -> job_service_pb2.ListJobsResponse:
        request = job_service_pb2.ListJobsRequest(
            states=states or [], page_size=page_size, page_token=page_token
        )
        return await self._unary(self.jobs.ListJobs, request, repeatable=True)

    async def quote(
        self, constraints: dict[str, Any] | None = None, units: str | int | Decimal = ""
    ) -> job_service_pb2.QuoteCostResponse:
        """QuoteCost: what a job with these constraints would cost on the miners eligible now (its prices and
        costs are decimal strings, empty when no miner is eligible). units: a decimal string ("10", "2.5"),
        an int or a Decimal; "" means 1. Never a float: 0.1 as a float is not one tenth, and money is exact."""
        request = job_service_pb2.QuoteCostRequest(
            constraints=_constraints(constraints), units=_decimal_text(units, "units")
        )
        return await self._unary(self.jobs.QuoteCost, request, repeatable=True)

    async def usage(self) -> job_service_pb2.Account:
        """GetUsage: the caller's account as the coordinator booked it from its receipts (balance and units
        as decimal strings; a client's balance is negative: what it spent)."""
        response = await self._unary(self.jobs.GetUsage, job_service_pb2.GetUsageRequest(), repeatable=True)
        return response.account

    async def watch(self, job_id: str) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        """The job as it is now, then at each change until it is terminal. A stream cut on the way
        (UNAVAILABLE, or ended before the terminal state) is resumed after the last sequence received: no
        change is missed or repeated. A watch has no deadline: it waits out a coordinator that is down for as
        long as it takes (bound it with wait(timeout_s) or asyncio.timeout), unless the retry policy caps
        the failures in a row; a resume refused by a rate limit (RESOURCE_EXHAUSTED with RetryInfo) waits
        that delay. A coordinator whose history of the job ends before the last sequence received
        (a store restored from an older copy) answers OUT_OF_RANGE (SEQUENCE_OUT_OF_RANGE), raised."""
        async for update in self._follow(job_id, _Followed()):
            yield update

    async def _follow(
        self, job_id: str, followed: _Followed
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        """watch(), noting in followed the last update and the last failure (for wait()'s timeout error)."""
        after, failures = 0, 0
        while True:
            call = self.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after),
                                      metadata=self.metadata)  # fmt: skip
            try:
                async for update in call:
                    after, failures = update.sequence, 0
                    followed.update, followed.failure = update, None
                    yield update
                    if update.job.state in TERMINAL:
                        return
                exc = None  # ended before the terminal state: a coordinator going away
            except asyncio.CancelledError:
                if closed_in_flight(self._closed):
                    raise closed_error() from None
                raise
            except grpc.aio.AioRpcError as error:
                exc = error
            finally:
                call.cancel()  # a consumer that stopped early: the stream goes with it
            failures += 1
            if exc is None:  # ended early: as a cut (UNAVAILABLE), and said so should the policy give up
                exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           "the watch kept ending before the job was terminal")  # fmt: skip
            followed.failure = exc
            pause = retry_pause(exc, True, failures, self.retry, waits_out_limits=True)
            if pause is None:
                raise exc
            if failures == 1:  # once per outage: a watch waiting out a coordinator that is down says so
                log.warning("watch of job %s cut (%s): resuming after sequence %d once the coordinator answers",
                            job_id, error_details(exc), after)  # fmt: skip
            await self._pause(pause)

    async def wait(self, job_id: str, timeout_s: float | None = None) -> job_pb2.Job:
        """The job once terminal (follows WatchJob, resuming cut streams and waiting out a coordinator that is
        down); TimeoutError after timeout_s, saying the job's last state seen and the failure that was being
        waited out, if any."""
        if timeout_s is not None and math.isnan(timeout_s):  # (was a TimeoutError at once)
            raise ValueError("timeout_s: a number of seconds or None, not nan")
        followed = _Followed()
        try:
            async with asyncio.timeout(timeout_s):
                async for _ in self._follow(job_id, followed):
                    pass
        except TimeoutError as exc:
            raise TimeoutError(followed.timeout_message(job_id, timeout_s)) from exc
        assert followed.update is not None and followed.update.job.state in TERMINAL
        return followed.update.job

    # ------------------------------------------------------------------ receipts
    async def receipt(self, job_id: str) -> receipt_service_pb2.GetReceiptResponse:
        request = receipt_service_pb2.GetReceiptRequest(job_id=job_id)
        return await self._unary(self.receipts.GetReceipt, request, repeatable=True)

    async def list_receipts(self, job_id: str) -> list[receipt_service_pb2.Receipt]:
        """ListReceipts: every receipt of the job, oldest first (one per completed attempt)."""
        request = receipt_service_pb2.ListReceiptsRequest(job_id=job_id)
        return list((await self._unary(self.receipts.ListReceipts, request, repeatable=True)).receipts)

    async def checkpoint(self) -> receipt_service_pb2.Checkpoint:
        """GetCheckpoint: the log's latest signed checkpoint. Its `note` is what the verifier checks
        (verify_checkpoint(note, keys)) and what verify_bundle's older_checkpoint takes: keep it to check
        later that the log only grew (consistency_proof)."""
        request = receipt_service_pb2.GetCheckpointRequest()
        return (await self._unary(self.receipts.GetCheckpoint, request, repeatable=True)).checkpoint

    async def inclusion_proof(
        self, leaf_index: int, tree_size: int = 0
    ) -> receipt_service_pb2.InclusionProof:
        """GetInclusionProof: the RFC 9162 proof of a leaf in the tree of tree_size leaves (0: the latest
        checkpoint's size), for merkle.verify_inclusion against that checkpoint's root."""
        request = receipt_service_pb2.GetInclusionProofRequest(leaf_index=leaf_index, tree_size=tree_size)
        return (await self._unary(self.receipts.GetInclusionProof, request, repeatable=True)).proof

    async def consistency_proof(self, first_size: int, second_size: int = 0) -> ConsistencyProof:
        """GetConsistencyProof: the RFC 9162 proof that the tree of second_size leaves (0: the latest
        checkpoint's size) extends the one of first_size, as the verifier takes it
        (verify_bundle(..., older_checkpoint=note, consistency_proof=proof))."""
        request = receipt_service_pb2.GetConsistencyProofRequest(
            first_size=first_size, second_size=second_size
        )
        proof = (await self._unary(self.receipts.GetConsistencyProof, request, repeatable=True)).proof
        return ConsistencyProof(proof.first_size, proof.second_size, tuple(proof.hashes))

    async def signing_keys(self) -> bytes:
        """The coordinator's keys as a key set file (docs/receipts.md section 4), to pin for offline checks."""
        request = receipt_service_pb2.GetSigningKeysRequest()
        response = await self._unary(self.receipts.GetSigningKeys, request, repeatable=True)
        keys = []
        for k in response.keys:
            entry: dict[str, Any] = {"key_id": k.key_id, "role": ROLE_NAMES[k.role], "status": STATUS_NAMES[k.status],
                                     "public_key": k.public_key.hex(), "valid_from": _rfc3339(k.valid_from)}  # fmt: skip
            if until := _rfc3339(k.valid_until):
                entry["valid_until"] = until
            if k.note_verifier_key:
                entry["note_verifier_key"] = k.note_verifier_key
            if k.owner:
                entry["owner"] = k.owner
            keys.append(entry)
        return json.dumps({"keys": keys}, indent=1).encode()

    async def bundle(self, job_id: str) -> bytes:
        """A receipt bundle (docs/receipts.md section 7) for offline verification."""
        r = await self.receipt(job_id)
        return json.dumps({
            "envelope": base64.b64encode(r.receipt.envelope).decode(),
            "leaf_index": r.inclusion_proof.leaf_index,
            "inclusion_proof": {"tree_size": r.inclusion_proof.tree_size,
                                "hashes": [h.hex() for h in r.inclusion_proof.hashes]},
            "checkpoint": r.checkpoint.note,
        }).encode()  # fmt: skip


def _decimal_text(value: str | int | Decimal, name: str) -> str:
    """A decimal as the contract's decimal strings have it: a str as given (the coordinator checks it), an int,
    or a Decimal in plain notation (never an exponent: "1E+1" is refused). A float (or bool) is refused here:
    its binary value is not the decimal written."""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{name}: a decimal string, int or Decimal, not {type(value).__name__}")


def _constraints(given: dict[str, Any] | None) -> job_pb2.Constraints:
    """Constraints from a dict of its fields (None: none); max_price as units are (a float was protobuf's
    "bad argument type for built-in operation")."""
    fields = dict(given or {})
    if isinstance(
        fields.get("models"), str | bytes
    ):  # (protobuf took "llama" as the models "l", "l", "a", ...)
        raise TypeError(f"constraints.models: a list of str, not {fields['models']!r}")
    if fields.get("max_price") is not None:
        fields["max_price"] = _decimal_text(fields["max_price"], "constraints.max_price")
    return job_pb2.Constraints(**fields)


def _milliseconds(seconds: float, name: str) -> int:
    """A duration option in whole milliseconds; a str or bool is refused (ttl_s="60" was "60" * 1000)."""
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real | Decimal):
        raise TypeError(f"{name}: a number of seconds, not {type(seconds).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"{name}: a finite number of seconds, not {seconds}")
    return int(seconds * 1000)


def _not_json(value: Any, path: str = "$") -> tuple[type[Exception], str] | None:
    """Where value holds what a Struct cannot (the error and its text, the path in it first); None: nothing.
    (Struct.update takes any mapping; inside it, only a dict.)"""
    if isinstance(value, Mapping if path == "$" else dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return TypeError, f"{path}: a key of type {type(key).__name__} (JSON keys are strings)"
            if found := _not_json(item, f"{path}.{key}"):
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if found := _not_json(item, f"{path}[{index}]"):
                return found
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1.7976931348623157e308:
        return ValueError, f"{path}: an integer too large for a JSON number (a double)"
    elif value is not None and not isinstance(value, str | int | float):
        return TypeError, f"{path}: a {type(value).__name__} is not JSON"
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A job's input or result as the client submitted it and the miner gets it (see struct_json)."""
    return struct_json(struct)


def struct_json(value: struct_pb2.Struct | struct_pb2.ListValue | struct_pb2.Value) -> Any:
    """A Struct, ListValue or Value as plain JSON data, integral numbers below 2^53 as ints ({"n": 3}, not
    {"n": 3.0}; beyond, a double may not be the integer sent: left a float, as MessageToDict leaves it)."""
    if isinstance(value, struct_pb2.Struct):
        return {key: struct_json(item) for key, item in value.fields.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [struct_json(item) for item in value.values]
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind in ("struct_value", "list_value"):
        return struct_json(getattr(value, kind))
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None  # null_value, or unset
