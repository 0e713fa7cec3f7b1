"""MinerService: the bidirectional Connect stream and the unary fallback, over one scheduler."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from aitbc.coordinator.v1 import miner_service_pb2 as pb
from aitbc.coordinator.v1 import miner_service_pb2_grpc

from ..domain.clock import now_us
from ..domain.errors import CoordinatorError, Kind, invalid
from ..domain.validation import Limits, check_id
from ..observability import metrics as obs
from ..observability import tracing
from ..receipts.issuer import ReceiptIssuer
from ..scheduler.engine import Scheduler
from ..scheduler.sessions import AckOut, AssignmentOut, CancelOut, DrainOut, GoAwayOut, Session
from ..security.interceptor import identity
from ..store.base import StoreFenced, store_unreachable
from .convert import capabilities_from, failure_id_wrong, failure_in, fill_job, result_in, set_time

log = logging.getLogger("coordinator.miners")

HELLO_TIMEOUT_S = 30.0
MAX_POLL_S = 60.0
POLL_WAY_BACK_S = 1.0  # of a long-poll's time left, at most this is kept for its answer's way back


def poll_wait_s(remaining: float | None) -> float:
    """How long a PollJob waits for news, its caller's deadline `remaining` seconds away (None: none). A quarter
    of that time, 1 s at most, is kept for the answer to reach the miner across the network (a WAN, a proxy):
    an answer arriving after the miner's deadline is lost, and the assignments in it with it (handed out, they
    come back only when their leases run out, their attempts spent)."""
    if remaining is None:
        return MAX_POLL_S
    return max(0.0, min(MAX_POLL_S, remaining - min(POLL_WAY_BACK_S, remaining / 4)))


def welcome(session: Session, kept: list[tuple[str, int]], heartbeat_s: float, lease_s: float,
            limits: Limits) -> pb.Welcome:  # fmt: skip
    msg = pb.Welcome(session_id=session.session_id, miner_id=session.miner_id,
                     resumed_jobs=[pb.RunningJob(job_id=j, attempt=a) for j, a in kept],
                     max_result_bytes=limits.max_result_bytes, max_message_bytes=limits.max_message_bytes,
                     capacity_updates=session.transport == "stream")  # (unary: PollJob's max_jobs asks)  # fmt: skip
    msg.heartbeat_interval.FromMilliseconds(int(heartbeat_s * 1000))
    msg.lease_duration.FromMilliseconds(int(lease_s * 1000))
    return msg


def assignment(a: AssignmentOut) -> pb.Assignment:
    msg = pb.Assignment(attempt=a.attempt)
    fill_job(msg.job, a.job)
    set_time(msg.lease_deadline, a.lease_us)
    set_time(msg.execution_deadline, a.exec_deadline_us)
    if tracing.ENABLED:
        tracing.decorate_assignment(msg)  # the job's trace context, for the miner's spans
    return msg


def cancel(c: CancelOut) -> pb.Cancel:
    return pb.Cancel(job_id=c.job_id, attempt=c.attempt, reason=c.reason)


def ack(a: AckOut) -> pb.ResultAck:
    return pb.ResultAck(job_id=a.job_id, attempt=a.attempt, accepted=a.accepted, receipt_id=a.receipt_id,
                        reason=a.reason, message=a.message)  # fmt: skip


def outbound(message: object) -> pb.ConnectResponse:
    if isinstance(message, tuple):  # acks coalesced for a miner that takes batched acks: one message
        for a in message:
            obs.stream_sent(a)  # counted per ack, as when each had a message of its own
        return pb.ConnectResponse(result_acks=pb.ResultAcks(acks=[ack(a) for a in message]))
    obs.stream_sent(message)  # counted by type (and assignments' dispatch latency) as it leaves
    if isinstance(message, list):
        return pb.ConnectResponse(assignments=pb.Assignments(assignments=[assignment(a) for a in message]))
    if isinstance(message, CancelOut):
        return pb.ConnectResponse(cancel=cancel(message))
    if isinstance(message, AckOut):
        return pb.ConnectResponse(result_ack=ack(message))
    if isinstance(message, DrainOut):
        return pb.ConnectResponse(drain=pb.Drain(reason=message.reason))
    if isinstance(message, GoAwayOut):
        go = pb.GoAway(reason=message.reason)
        go.reconnect_after.FromMilliseconds(int(message.reconnect_after_s * 1000))
        return pb.ConnectResponse(go_away=go)
    raise TypeError(f"unknown outbound message {message!r}")


_READER_DONE = object()  # queued on a session's outbox when its stream reader ends
# Results messages of one stream waiting for their commits at once (see _read), and their bytes: a message
# joins others in flight only below this total, so a stream holds little more than before (one message)
RESULTS_IN_FLIGHT, RESULTS_IN_FLIGHT_BYTES = 4, 1 << 20
MAX_COALESCED = 512  # assignments per coalesced message
MAX_COALESCED_BYTES = 1 << 20  # payload bytes per coalesced message (one message stays far below the limit)


class _Deciding:
    """The Results messages of one stream being decided (each waiting for its commit) while its reader reads on
    (MinerServicer._read). The first to fail stops the reader: nothing more is read, and the stream ends with
    that error."""

    def __init__(self, reader: asyncio.Task) -> None:
        self.reader = reader
        self.tasks: dict[asyncio.Task, int] = {}  # (their messages' sizes)
        self.errors: list[BaseException] = []
        self.reading = True
        self.stopped_reader = False

    async def start(self, handle: Callable[[], Coroutine[Any, Any, None]], size: int) -> None:
        """Handle one more Results message (of size bytes) once there is room for it."""
        while self.tasks and (
            len(self.tasks) >= RESULTS_IN_FLIGHT or sum(self.tasks.values()) + size > RESULTS_IN_FLIGHT_BYTES
        ):
            await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(handle())
        self.tasks[task] = size
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        del self.tasks[task]
        if task.cancelled() or (error := task.exception()) is None:
            return
        self.errors.append(error)
        if self.reading and not self.stopped_reader:
            self.stopped_reader = True
            self.reader.cancel()

    async def none_left(self) -> None:
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    async def settle(self) -> None:
        """Until every one is decided, reading no more (one failing now stops nothing); cancelled: cancel them."""
        self.reading = False
        try:
            await self.none_left()
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def _coalesce_acks(first: AckOut, outbox: asyncio.Queue) -> tuple[AckOut | tuple[AckOut, ...], object]:
    """first plus the acks queued right behind it (a tuple when several); and the next message if taken."""
    if outbox.empty():
        return first, None
    batch = [first]
    while not outbox.empty() and len(batch) < MAX_COALESCED:
        nxt = outbox.get_nowait()
        if not isinstance(nxt, AckOut):
            return (tuple(batch) if len(batch) > 1 else first), nxt
        batch.append(nxt)
    return (tuple(batch) if len(batch) > 1 else first), None


def _coalesce(first: list, outbox: asyncio.Queue) -> tuple[list, object]:
    """first plus the assignment lists queued right behind it; returns (batch, the next message if taken)."""
    if outbox.empty():
        return first, None
    batch = list(first)
    size = sum(len(a.job.payload) for a in batch)
    while not outbox.empty() and len(batch) < MAX_COALESCED and size < MAX_COALESCED_BYTES:
        nxt = outbox.get_nowait()
        if not isinstance(nxt, list):
            return batch, nxt
        batch.extend(nxt)
        size += sum(len(a.job.payload) for a in nxt)
    return batch, None


def _by_size(assignments: list) -> list[list]:
    """Assignments split so no message carries much more than MAX_COALESCED_BYTES of payload (a single
    large job still travels alone): the whole batch of a many-slot miner could exceed the message limit."""
    parts: list[list] = [[]]
    size = 0
    for a in assignments:
        if parts[-1] and size + len(a.job.payload) > MAX_COALESCED_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(a)
        size += len(a.job.payload)
    return parts


def running(jobs) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return [(j.job_id, j.attempt) for j in jobs[:4096]]


async def _send(session: Session, context: grpc.aio.ServicerContext, message: pb.ConnectResponse) -> None:
    """Write one message, marking how long it waits: the scheduler's liveness check ends a stream whose
    writes stay blocked (a miner that stopped reading) though its heartbeats keep arriving."""
    session.write_blocked_since_us = now_us()
    await context.write(message)
    session.write_blocked_since_us = 0


class MinerServicer(miner_service_pb2_grpc.MinerServiceServicer):
    def __init__(self, scheduler: Scheduler, limits: Limits, issuer: ReceiptIssuer) -> None:
        self.scheduler = scheduler
        self.limits = limits
        self.issuer = issuer
        s = scheduler.settings
        self.heartbeat_s, self.lease_s = s.heartbeat_interval_s, s.lease_s

    # ------------------------------------------------------------------ the stream
    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> None:
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            raise CoordinatorError(
                Kind.INVALID_ARGUMENT, "HELLO_REQUIRED", "send hello first, within 30 s"
            ) from None
        obs.stream_received(first.WhichOneof("message"))
        if first.WhichOneof("message") != "hello":
            raise CoordinatorError(Kind.INVALID_ARGUMENT, "HELLO_REQUIRED", "the first message must be hello")
        hello = first.hello
        caps = capabilities_from(hello.capabilities, self.limits)
        key = self._receipt_key(hello.receipt_public_key)
        session, kept, pending = self._open(hello, caps, "stream", key)
        session.stream_task = asyncio.current_task()
        reason = ""  # as _write ends the stream; one cut off otherwise: _cut_off
        reader = asyncio.create_task(
            self._read(session, request_iterator), name=f"miner-read-{session.miner_id}"
        )
        try:
            # Queued before the welcome is written: a decision made meanwhile (a client's cancel of a job this
            # session gave up) must be written after the session's, not before and then overwritten by it.
            committing = self.scheduler.queue_commit(pending)
            try:
                await context.write(pb.ConnectResponse(welcome=self._welcome(session, kept)))
            except BaseException:
                self.scheduler.abandon_commit(pending, committing)
                raise
            obs.stream_sent("welcome")
            await self.scheduler.finish_opening(pending, committing)
            reason = await self._write(session, context, reader, hello.batched_acks)
            if reason == "OUTBOX_OVERFLOW":  # (an OK end told the miner nothing: it looks like a close)
                raise CoordinatorError(Kind.UNAVAILABLE, "OUTBOX_OVERFLOW",
                                       "the miner read its stream too slowly: more than "
                                       f"{self.scheduler.settings.outbox_limit} messages waited for it; reconnect")  # fmt: skip
        except asyncio.CancelledError:
            reason = session.end_reason or self._cut_off("STREAM_CANCELLED")
            task = asyncio.current_task()
            if reason == "STREAM_STALLED" and task is not None and task.uncancel() == 0:
                # Cancelled by the liveness check, not by gRPC: a cancelled handler ends nothing towards the
                # miner (its call stays open, with no status). End the call with a status instead.
                raise CoordinatorError(Kind.UNAVAILABLE, "STREAM_STALLED",
                                       "the miner stopped reading its stream; reconnect") from None  # fmt: skip
            raise  # never swallow gRPC's cancellation: grpcio leaks native memory otherwise
        finally:
            reader.cancel()
            reason = reason or self._cut_off("STREAM_CLOSED")  # (an error ended it: a write failed, say)
            await asyncio.shield(self.scheduler.disconnected(session, reason))

    def _cut_off(self, otherwise: str) -> str:
        """Why a stream ended that its writer did not end. Once the coordinator stops, SHUTTING_DOWN: every stream
        was told to go away, and the miner leaving on it (the SDK cancels its call as it reads the go-away) or gRPC
        cutting it off at the grace's end cancels the call, maybe before its handler is back from the go-away's
        write: `STREAM_CANCELLED` ("the connection dropped") misled operators on every restart now and then."""
        return "SHUTTING_DOWN" if self.scheduler.stopping else otherwise

    async def _write(self, session: Session, context: grpc.aio.ServicerContext, reader: asyncio.Task,
                     batched_acks: bool = False) -> str:  # fmt: skip
        """Send what the scheduler queued for session until go-away or the miner closes its side.

        One await per message and no task per message: the reader's end arrives through the outbox too.
        Assignments queued together (one submit, several submits while a write was in flight) leave in one
        Assignments message, and so do acks (ResultAcks) for a miner that asked for batched acks: under
        load the batches grow by themselves; idle, nothing waits.
        """
        outbox = session.outbox
        reader.add_done_callback(lambda _: outbox.put_nowait(_READER_DONE))
        held: object = None
        while True:
            if held is not None:
                message, held = held, None
            else:
                message = await outbox.get()
            if message is _READER_DONE:
                if not reader.cancelled() and reader.exception() is not None:
                    error = reader.exception()
                    # a store lost or unreachable ends the call with its status (the interceptor's UNAVAILABLE
                    # STORE_LOST / STORE_UNAVAILABLE, RetryInfo), as on unary calls: an OK close looks final
                    if isinstance(error, CoordinatorError | StoreFenced) or store_unreachable(error):
                        raise error
                    # (with its trace: a unit's rows refused by the store, or a bug, is found from where it was raised)
                    log.warning("miner stream reader failed: %r", error, exc_info=error)
                return "STREAM_CLOSED"
            if isinstance(message, list):
                message, held = _coalesce(message, outbox)
            elif batched_acks and isinstance(message, AckOut):
                message, held = _coalesce_acks(message, outbox)
            if isinstance(message, GoAwayOut):
                # the session's last message: what was queued behind it (acks of its last results) goes first
                while not outbox.empty():
                    queued = outbox.get_nowait()
                    if isinstance(queued, list):
                        for part in _by_size(queued):
                            if part := self.scheduler.deliverable(session, part):
                                await _send(session, context, outbound(part))
                    elif not isinstance(queued, GoAwayOut) and queued is not _READER_DONE:
                        await _send(session, context, outbound(queued))
                await _send(session, context, outbound(message))
                return message.reason
            if isinstance(message, list):
                for part in _by_size(message):  # one fill can hold more payload than one message may carry
                    # from the write's start the miner may have them (a write cut short may have left): a lost
                    # stream spends their attempts; what never left the outbox it gives back. One given back
                    # meanwhile does not leave (Scheduler.deliverable): it would run twice at its attempt.
                    if part := self.scheduler.deliverable(session, part):
                        await _send(session, context, outbound(part))
            else:
                await _send(session, context, outbound(message))
            if outbox.qsize() > self.scheduler.settings.outbox_limit:
                return "OUTBOX_OVERFLOW"  # the miner stopped reading: treat the stream as stalled

    async def _read(self, session: Session, requests: AsyncIterator[pb.ConnectRequest]) -> None:
        """Handle the miner's messages in order, but for Results: up to RESULTS_IN_FLIGHT of them (the first of any
        size, then up to RESULTS_IN_FLIGHT_BYTES in all) wait for their commits together while the reader reads on.
        Read one at a time, a stream took one Results message per commit (~30 ms under load) and the miner's slots
        waited on it: the batched run's jobs/s was bounded by its slots over that wait. Any other message waits
        until the results read before it are decided. One that fails (its write, or a refusal of the whole
        message) ends the stream with its error, as before, once the others in flight are decided: their acks go
        first."""
        reader = asyncio.current_task()
        assert reader is not None
        deciding = _Deciding(reader)
        try:
            async for req in requests:
                kind = req.WhichOneof("message")
                obs.stream_received(kind)
                if kind == "results":
                    await deciding.start(
                        functools.partial(self._handle_one, session, req, kind), req.ByteSize()
                    )
                    continue
                await deciding.none_left()
                await self._handle_one(session, req, kind)
        except asyncio.CancelledError:
            if not deciding.stopped_reader or reader.cancelling() > 1:  # the stream ends: they go with it
                deciding.cancel()
                raise
            reader.uncancel()  # stopped by a failed Results message: its error ends the stream, below
        except Exception:
            await deciding.settle()  # (their acks before the error)
            raise
        await deciding.settle()
        if deciding.errors:
            raise deciding.errors[0]

    async def _handle_one(self, session: Session, req: pb.ConnectRequest, kind: str | None) -> None:
        with session.handling_one():
            await self._handle(session, req, kind)

    async def _handle(self, session: Session, req: pb.ConnectRequest, kind: str | None) -> None:
        s = self.scheduler
        if kind == "results":
            limit = self.limits.max_batch
            if not 1 <= len(req.results.results) <= limit:
                raise invalid(f"results: 1 to {limit} per message", [("results", f"1 to {limit} entries")])
            valid, acks = [], []
            for r in req.results.results:
                try:
                    valid.append(result_in(r, self.limits))
                except CoordinatorError as exc:
                    acks.append(AckOut(r.job_id, r.attempt, False, reason=exc.reason, message=exc.message))
            try:
                await s.complete(session, valid, acks, later=session.send)
            finally:  # (on a failed write, the acks of the results that landed go before the error)
                for a in acks:
                    session.send(a)
        elif kind == "heartbeat":
            s.heartbeat(session, running(req.heartbeat.running_jobs))
        elif kind == "accept":
            await self._fenced(session, s.accept(session, req.accept.job_id, req.accept.attempt),
                               req.accept.job_id, req.accept.attempt)  # fmt: skip
        elif kind == "reject":
            r = req.reject
            await self._fenced(session, self._reject(session, r), r.job_id, r.attempt)
        elif kind == "failure":
            f = req.failure
            if wrong := failure_id_wrong(f.job_id):  # held by no one: refused alone, as a job not held is
                session.send(AckOut(f.job_id, f.attempt, False, reason="JOB_NOT_HELD",
                                    message=f"no job has this id: job_id {wrong}"))  # fmt: skip
                return
            answer = await s.fail(session, failure_in(f), later=session.send)
            if answer is not None:
                session.send(answer)
        elif kind == "progress":
            s.progress(session, req.progress.job_id, req.progress.attempt)
        elif kind == "drain":
            s.drain(session, "MINER_REQUESTED")
        elif kind == "capacity":
            await s.offer(session, req.capacity.slots)
        elif kind == "hello":
            raise CoordinatorError(
                Kind.FAILED_PRECONDITION, "HELLO_REPEATED", "hello is sent once per stream"
            )
        else:
            raise invalid("empty message", [("message", "exactly one field must be set")])

    @staticmethod
    async def _fenced(session: Session, action, job_id: str, attempt: int) -> None:  # type: ignore[no-untyped-def]
        """Fencing refusals on the stream are answered with a refused ack; the stream stays up."""
        try:
            await action
        except CoordinatorError as exc:
            if exc.kind is not Kind.FAILED_PRECONDITION:
                raise
            session.send(AckOut(job_id, attempt, False, reason=exc.reason, message=exc.message))

    async def _reject(self, session: Session, r: pb.Reject) -> None:
        """A job given back, its attempt unspent (a stream's Reject, RejectJob). Its reason is bounded before it gets
        here (security.bounds: `Reject.reason`, 512 characters, refused INVALID_ARGUMENT); cut all the same."""
        await self.scheduler.reject(session, r.job_id, r.attempt, r.reason[: self.limits.max_long_string])

    def _open(self, hello: pb.Hello, caps, transport: str, key: bytes):  # type: ignore[no-untyped-def]
        miner_id = identity().name
        if key:
            self.issuer.check_miner_key(miner_id, key)  # before the session opens (it would replace the last)
        # the hello's capacity: the stream's (a unary miner asks for what it takes: PollJobRequest.max_jobs)
        offered = hello.capacity.slots if transport == "stream" and hello.HasField("capacity") else None
        session, kept, pending = self.scheduler.open_session(
            miner_id, caps, transport, running(hello.running_jobs), key, offered
        )
        if key:
            pending.unit.keys.extend(self.issuer.register_miner_key(miner_id, key).keys)
        return session, kept, pending

    @staticmethod
    def _receipt_key(key: bytes) -> bytes:
        if key and len(key) != 32:
            raise invalid(
                "receipt_public_key must be 32 bytes (Ed25519)", [("hello.receipt_public_key", "32 bytes")]
            )
        return key

    # ------------------------------------------------------------------ the unary path
    async def RegisterMiner(
        self, request: pb.RegisterMinerRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterMinerResponse:
        if not request.HasField("hello"):
            raise invalid("RegisterMiner needs a hello", [("hello", "required")])
        caps = capabilities_from(request.hello.capabilities, self.limits)
        key = self._receipt_key(request.hello.receipt_public_key)
        session, kept, pending = self._open(request.hello, caps, "unary", key)
        try:
            await self.scheduler.commit_opening(pending)
        except BaseException:
            # The miner never hears of this session: it ends now, as a stream's does (it stayed open, listed,
            # until its liveness check, and the jobs it kept were requeued then rather than wait out the grace)
            await asyncio.shield(self.scheduler.disconnected(session, "STREAM_CLOSED"))
            raise
        return pb.RegisterMinerResponse(welcome=self._welcome(session, kept))

    def _welcome(self, session: Session, kept: list[tuple[str, int]]) -> pb.Welcome:
        return welcome(session, kept, self.heartbeat_s, self.lease_s, self.limits)

    def _session(self, session_id: str) -> Session:
        check_id("session_id", session_id)
        return self.scheduler.session(session_id, identity().name)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        session = self._session(request.session_id)
        self.scheduler.end_if_drained(session)
        listed = running(request.running_jobs)
        self.scheduler.heartbeat(session, listed)
        # The unary path has no Accept: a job listed while still ASSIGNED runs, and shows RUNNING from now on.
        # Only then is a write awaited; a heartbeat with nothing to accept stays free.
        if accepting := self.scheduler.assigned_among(session, listed):
            with session.handling_one():  # (its miner waits for the write: its silence meanwhile is ours)
                await self.scheduler.accept_listed(session, accepting)
        cancels = self.scheduler.take_cancels(session)
        return pb.HeartbeatResponse(cancels=[cancel(c) for c in cancels],
                                    draining=self.scheduler.report_drain(session))  # fmt: skip

    async def PollJob(
        self, request: pb.PollJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.PollJobResponse:
        session = self._session(request.session_id)
        wait_s = poll_wait_s(context.time_remaining())
        assignments, cancels = await self.scheduler.poll(session, max(1, request.max_jobs), wait_s)
        obs.dispatched(assignments)
        return pb.PollJobResponse(assignments=[assignment(a) for a in assignments],
                                  cancels=[cancel(c) for c in cancels],
                                  draining=self.scheduler.report_drain(session))  # fmt: skip

    async def SubmitResult(
        self, request: pb.SubmitResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitResultResponse:
        if not request.HasField("result"):
            raise invalid("SubmitResult needs a result", [("result", "required")])
        session = self._session(request.session_id)
        with session.handling_one():
            [result] = await self.scheduler.complete(session, [result_in(request.result, self.limits)])
        return pb.SubmitResultResponse(ack=ack(self._accepted(result)))

    async def ReportFailure(
        self, request: pb.ReportFailureRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportFailureResponse:
        if not request.HasField("failure"):
            raise invalid("ReportFailure needs a failure", [("failure", "required")])
        session = self._session(request.session_id)
        if wrong := failure_id_wrong(request.failure.job_id):
            raise invalid(f"failure.job_id: {wrong}", [("failure.job_id", wrong)])
        with session.handling_one():
            result = await self.scheduler.fail(session, failure_in(request.failure))
        return pb.ReportFailureResponse(ack=ack(self._accepted(result)))

    async def RejectJob(
        self, request: pb.RejectJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.RejectJobResponse:
        if not request.HasField("reject"):
            raise invalid("RejectJob needs a reject", [("reject", "required")])
        session = self._session(request.session_id)
        r = request.reject
        with session.handling_one():  # (fencing refusals raise FAILED_PRECONDITION, as for SubmitResult)
            await self._reject(session, r)
        return pb.RejectJobResponse(ack=pb.ResultAck(job_id=r.job_id, attempt=r.attempt, accepted=True))

    async def Drain(self, request: pb.DrainRequest, context: grpc.aio.ServicerContext) -> pb.DrainResponse:
        session = self._session(request.session_id)
        self.scheduler.drain(session, "MINER_REQUESTED")
        running_jobs = len(session.held) + session.reserved  # (reserved: being read back)
        self.scheduler.end_drained(session)  # drained already by an operator: this answer (0 jobs) tells it
        return pb.DrainResponse(running_jobs=running_jobs)

    @staticmethod
    def _accepted(a: AckOut) -> AckOut:
        if not a.accepted:
            kind = (
                Kind.INVALID_ARGUMENT
                if a.reason in ("BAD_MINER_SIGNATURE", "INVALID_RESULT")
                else Kind.FAILED_PRECONDITION
            )
            raise CoordinatorError(
                kind, a.reason, a.message, metadata={"job_id": a.job_id, "attempt": str(a.attempt)}
            )
        return a
