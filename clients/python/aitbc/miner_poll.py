"""The poll transport of `aitbc.miner.Miner` (`transport="poll"`): the unary MinerService RPCs, for a miner whose
network cannot hold a long-lived HTTP/2 stream (a proxy that cuts idle or long streams).

One session is RegisterMiner, then, until it ends: a long-poll (PollJob) asking for as many jobs as the miner has
free slots, a Heartbeat every `heartbeat_interval` of the registration's welcome (listing the jobs held: their
leases are renewed, and those the coordinator still has ASSIGNED move to RUNNING, the unary path's accept; cancels
and the news of a drain come back) and one ACCEPT_AFTER_S after jobs started if one still runs unlisted (as a
stream's Accept: a job done sooner costs no call), and a SubmitResult or ReportFailure per finished
job, kept in `Miner.unacked` and sent again until it is answered (a repeat of a result that landed is answered with
the same ack). The Miner's runners, slots, result encoding, limits, backoff and drain are the stream's own: a
session here takes the place of one stream in `Miner.run()`'s loop, and returns as a stream does, (why it ended,
the least to wait before the next).

A call failing for a reason that waiting cures (UNAVAILABLE: the coordinator restarting, the connection cut;
DEADLINE_EXCEEDED; a rate limit) is made again in the same session after a jittered backoff, once the channel is
connected again. The session ends when the coordinator no longer knows it (NOT_FOUND `SESSION_NOT_FOUND`: it
expired, or the coordinator restarted): the next registration lists the jobs running and those whose results await
their acks, so that the coordinator keeps them, and the results are sent again. It ends for good on
FAILED_PRECONDITION `SESSION_DRAINED` (an operator's drain, done) or once the miner's own drain is done.

It also ends (CONNECTION_STALE) when a call times out with nothing at all answered on the session for a heartbeat's
deadline while gRPC holds the connection READY: its keepalive pings are still answered (a coordinator that took the
connection and never serves it, a middlebox passing only HTTP/2 control frames), so keepalive never closes it, and
every call made again on it would time out for ever (a drain never getting its acks). So does a registration
unanswered for Miner.welcome_timeout_s whose connection then answers no probe for as long (connection_stale, as the stream's
hello awaiting its welcome). Miner.run() then goes on over a new connection (Miner._fresh_channel), registering again
as after SESSION_NOT_FOUND.

Miner.stop() gives back the jobs the miner will not finish, as a stream's leave does (Capacity 0, then a Reject
each): its runners canceled first, a Drain, then a RejectJob per job (queued at once, its attempt unspent), each call
made once, all within LEAVE_GRACE_S (_PollSession._leave). Silent, the session held them until its heartbeat timeout,
and the coordinator then for its reconnect grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from .channel import auth_metadata
from .coordinator.v1 import miner_service_pb2, miner_service_pb2_grpc
from .miner import (
    _NOT_ABOUT_A_MESSAGE,
    ACCEPT_AFTER_S,  # a job still running this long is told (a Heartbeat: RUNNING at the coordinator)
    CALL_TIMEOUT_S,  # every call but a poll (which waits Miner.poll_wait_s)
    FAILED_BY_REFUSAL,
    LEAVE_GRACE_S,  # how long stop() may spend telling the coordinator (the stream's leave has as long)
    QUIET_LEAST_S,
    STOPPING_REASON,
    JobFailed,
    Miner,
    channel_send_limit,
    connection_stale,
    coordinator_reason,
    failure_message,
    heartbeat_deadline_s,  # a Heartbeat call's deadline, and the silence that makes a connection stale
    retry_delay_s,
)
from .signing import SigningChannel
from .tracing import with_trace_context

log = logging.getLogger("aitbc.miner")

HEARTBEAT_TIMEOUT_LEAST_S = QUIET_LEAST_S  # a heartbeat's deadline: its interval, at least this
# what a unary request adds to the Result or Failure it carries: the session id (a UUID, 36 characters) and the
# tags and lengths (the stream's framing is smaller: the miner checks results against that first)
UNARY_FRAMING_BYTES = 64
_T = TypeVar("_T")


class _Ended(Exception):
    """The session is over: why (a stream's end reason, as Miner.run reads them)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _transient(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a call failed for a reason that waiting cures: made again in the same session."""
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return True  # (CANCELLED: not of this miner's making, which raises CancelledError instead)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return coordinator_reason(exc) in _NOT_ABOUT_A_MESSAGE  # a rate limit, not a message too large
    # grpc.aio's own INTERNAL when the connection goes mid-call (the coordinator's carries its details)
    return code == grpc.StatusCode.INTERNAL and coordinator_reason(exc) != "INTERNAL"


async def poll_session(miner: Miner, channel: grpc.aio.Channel) -> tuple[str, float]:
    """One unary session of miner: register, then work until it ends. Returns (why, the least to wait)."""
    stub = miner_service_pb2_grpc.MinerServiceStub(
        SigningChannel(channel, miner.hmac_secret) if miner.hmac_secret else channel
    )
    await miner._reachable(channel)
    miner._welcomed = False
    welcome = await _register(miner, channel, stub)
    if welcome is None:
        return "CONNECTION_STALE", 0.0
    return await _PollSession(miner, channel, stub, welcome).run()


async def _register(miner: Miner, channel: grpc.aio.Channel, stub: Any) -> Any:
    """RegisterMiner's welcome; None when the connection is stale: the registration unanswered for
    Miner.welcome_timeout_s (as a stream's hello: registrations come late in a reconnect storm, where a probe per
    waiting miner is only more load) and then a probe on its connection (connection_stale) unanswered as long, though
    gRPC holds it up (its keepalive pings answered). Made again on that connection, the registration would time out
    for ever (Miner.run() opens a new one on CONNECTION_STALE). So too when the registration's own deadline
    (CALL_TIMEOUT_S) ends before the probe does, as with the defaults (20 s, then a probe of 20 s, past 30 s). A probe
    answered: the coordinator is slow, not gone; the call waits on (to its deadline: DEADLINE_EXCEEDED, run() retries)."""
    call = stub.RegisterMiner(
        miner_service_pb2.RegisterMinerRequest(hello=miner.hello().hello),
        metadata=with_trace_context(auth_metadata(miner.api_key)),
        timeout=CALL_TIMEOUT_S,
    )
    answer = asyncio.ensure_future(call)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    try:
        while True:
            await asyncio.wait({answer}, timeout=miner.welcome_timeout_s)
            if _answered(answer):
                return answer.result().welcome
            # (the registration's deadline, CALL_TIMEOUT_S, may run out first, or while the probe is in flight: its
            # DEADLINE_EXCEEDED says no more than the silence does)
            stale = await connection_stale(channel, miner.welcome_timeout_s)
            if _answered(answer):
                return answer.result().welcome
            if stale:
                log.warning("no answer to the registration from the coordinator at %s for %.1f s, nor to a probe, "
                            "though the connection is up: a new connection", miner.address,
                            loop.time() - asked)  # fmt: skip
                return None
            # timed out on a connection that carries calls: a slow coordinator (run() retries)
            if answer.done():
                return answer.result().welcome
    finally:
        if not answer.done():
            call.cancel()
            await asyncio.gather(answer, return_exceptions=True)


def _answered(answer: asyncio.Future) -> bool:
    """Whether the registration's call ended otherwise than by its own deadline (a welcome, or the coordinator's
    error): on a stale connection it only times out."""
    if not answer.done():
        return False
    if answer.cancelled():
        return True  # (answer.result() raises it)
    exc = answer.exception()
    return not (isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED)


class _PollSession:
    """A registered session: its poll, heartbeat, report and delivery tasks, until one of them ends it."""

    def __init__(self, miner: Miner, channel: grpc.aio.Channel, stub: Any, welcome: Any) -> None:
        self.miner, self.channel, self.stub, self.welcome = miner, channel, stub, welcome
        self.session_id = welcome.session_id
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task] = set()
        self.slot_freed = asyncio.Event()  # a job finished or a canceled runner returned: poll again
        self.drain_wanted = asyncio.Event()  # Miner.drain() on this process: tell the coordinator
        self.polling = False  # a PollJob try is in flight (its answer may hold jobs); not between tries
        # Heartbeats are the unary path's accept (a job listed while ASSIGNED moves to RUNNING). Jobs started since
        # the last heartbeat was made, by attempt: one still running ACCEPT_AFTER_S after it started sets beat_soon,
        # and a heartbeat goes then rather than at the next interval (which may be many seconds away)
        self.unlisted: dict[str, int] = {}
        self.beat_soon = asyncio.Event()
        self.accept_timers: set[asyncio.TimerHandle] = set()  # canceled as the session ends
        # the loop's time the coordinator last answered a call of this session (the welcome first): a call timing out
        # with nothing answered for stale_s on a connection gRPC holds READY finds it stale
        self.answered_at = asyncio.get_running_loop().time()
        self.stale_s = heartbeat_deadline_s(max(0.05, welcome.heartbeat_interval.ToMilliseconds() / 1000))

    async def run(self) -> tuple[str, float]:
        miner = self.miner
        miner._welcomed = True  # from now on INVALID_ARGUMENT is about a message, not this miner's hello
        miner._welcomed_at = asyncio.get_running_loop().time()
        miner.session_id = self.session_id
        miner._coordinator_result_bytes = self.welcome.max_result_bytes
        miner._coordinator_message_bytes = self.welcome.max_message_bytes
        miner.connects += 1
        kept = {j.job_id for j in self.welcome.resumed_jobs}
        log.info("%s coordinator at %s (poll): session %s, %d slots, %d running jobs kept",
                 "connected to the" if miner.connects == 1 else "reconnected to the", miner.address,
                 self.session_id, miner.slots, len(kept))  # fmt: skip
        for job_id in [j for j in miner.running if j not in kept]:
            self._cancel(job_id)
        miner._on_drain = self.drain_wanted.set
        if miner.draining:
            self.drain_wanted.set()  # (asked before this session: it drains too)
        interval = max(0.05, self.welcome.heartbeat_interval.ToMilliseconds() / 1000)
        for job_id in list(miner.unacked):
            self._deliver_later(job_id)
        for coro in (self._poll(), self._heartbeat(interval), self._report(), self._drain()):
            self._spawn(coro)
        try:
            reason = await self.ended
        finally:
            miner._on_drain = None
            for timer in self.accept_timers:
                timer.cancel()
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            # stop() (its cancel canceled `ended` too): the jobs given back, unless the session was over already (a
            # second stop() cancels the leave: it ends at once)
            if miner.stopped.is_set() and (self.ended.cancelled() or not self.ended.done()):
                await self._leave()
        return reason, 0.0

    # ---------------------------------------------------------------- stop()
    async def _leave(self) -> None:
        """stop(): give back at once the jobs this miner will not finish, where its silence left them to the session's
        heartbeat timeout and then the reconnect grace. Their runners are canceled first (commands killed): a job
        given back must not run here and on another miner at once. The coordinator is told within LEAVE_GRACE_S,
        as a stream's leave: an unreachable coordinator or a stale connection holds stop() no longer."""
        miner = self.miner
        await miner._end_jobs()
        # running (or assigned and waiting for a slot); not a result or failure report awaiting its answer. (No
        # reject waits in _rejects here: a poll asks only for the free slots, so none is ever refused for want of one.)
        jobs = {j: r.attempt for j, r in miner.running.items()}
        try:
            await asyncio.wait_for(self._give_back(jobs), LEAVE_GRACE_S)
        except TimeoutError:
            log.info("the coordinator at %s did not answer within %g s; the jobs not given back are left to its "
                     "heartbeat timeout", miner.address, LEAVE_GRACE_S)  # fmt: skip

    async def _give_back(self, jobs: dict[str, int]) -> None:
        """A Drain, then a RejectJob per job, sent together (one round trip; not waiting for the Drain's answer: an
        answer held back must not keep the rejects from going). The Drain goes first, as a stream's Capacity 0: no
        job is assigned to the session any more (a poll the coordinator still serves would fill a rejected job's
        slot). Each job is queued at once, its attempt unspent; the session ends with its last job (Drain)."""
        drain = miner_service_pb2.DrainRequest(session_id=self.session_id, reason=STOPPING_REASON)
        rejects = [self._reject(job_id, attempt) for job_id, attempt in jobs.items()]
        # (gather starts their calls in this order: the Drain's first)
        await asyncio.gather(self._once(self.stub.Drain, drain), *rejects)

    async def _reject(self, job_id: str, attempt: int) -> None:
        reject = miner_service_pb2.Reject(job_id=job_id, attempt=attempt, reason=STOPPING_REASON)
        request = miner_service_pb2.RejectJobRequest(session_id=self.session_id, reject=reject)
        await self._once(self.stub.RejectJob, request)

    async def _once(self, method: Callable[..., Awaitable[Any]], request: Any) -> bool:
        """One try of a call made while leaving (no retry, no wait for the connection: the leave has a second in
        all); whether it was accepted. A refusal (JOB_NOT_HELD: the job was taken back meanwhile) changes nothing."""
        try:
            await method(request, metadata=with_trace_context(auth_metadata(self.miner.api_key)),
                         timeout=LEAVE_GRACE_S)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            log.debug("%s while leaving: %s %s", type(request).__name__.removesuffix("Request"), exc.code().name,
                      coordinator_reason(exc))  # fmt: skip
            return False
        return True

    # ---------------------------------------------------------------- tasks
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run one of the session's tasks: its end of the session (or its error) ends the session."""
        try:
            await coro
        except _Ended as end:
            self._end(end.reason)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # an error no retry cures (a refused key): run() decides
            if not self.ended.done():
                self.ended.set_exception(exc)

    def _end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)

    def _drained_when_done(self) -> None:
        """A drain is over once no job runs, no result awaits its ack and no poll may bring another job."""
        m = self.miner
        if m.draining and not m.running and not m.unacked and not self.polling:
            self._end("DRAINED")

    async def _call(self, method: Callable[..., Awaitable[_T]], request: Any, deadline_s: float) -> _T:
        """method(request), made again after failures that waiting cures (jittered backoff, the RetryInfo delay at
        least, once the channel is connected). The session's end (NOT_FOUND, SESSION_DRAINED, a stale connection: see
        _stale_or_not) raises _Ended."""
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                answer = await method(request, metadata=with_trace_context(auth_metadata(self.miner.api_key)),
                                      timeout=deadline_s)  # fmt: skip
                self.answered_at = loop.time()
                return answer
            except grpc.aio.AioRpcError as exc:
                reason = coordinator_reason(exc)
                # the coordinator's own word (a refusal, a rate limit): the connection carries answers
                if reason or not _transient(exc):
                    self.answered_at = loop.time()
                elif exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._stale_or_not()
                if exc.code() == grpc.StatusCode.NOT_FOUND and reason == "SESSION_NOT_FOUND":
                    raise _Ended("SESSION_NOT_FOUND") from None
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and reason == "SESSION_DRAINED":
                    self.miner.draining = True
                    raise _Ended("DRAINED") from None
                if not _transient(exc):
                    raise
                failures += 1
                wait = self.miner._jittered(self.miner._backoff(failures), retry_delay_s(exc))
                log.info("%s failed (%s %s); again in %.2f s", type(request).__name__.removesuffix("Request"),
                         exc.code().name, reason, wait)  # fmt: skip
            await asyncio.sleep(wait)
            await self.miner._reachable(self.channel)

    def _stale_or_not(self) -> None:
        """After a call timed out: end the session if nothing was answered for stale_s on a connection gRPC holds
        READY. Its keepalive pings are answered (else gRPC would have closed it: UNAVAILABLE, and a new connection),
        but no call is: retried on it, every call would time out for ever, and a drain would never get its acks."""
        silent = asyncio.get_running_loop().time() - self.answered_at
        if silent >= self.stale_s and self.channel.get_state() == grpc.ChannelConnectivity.READY:
            log.warning("nothing answered on the connection to the coordinator at %s for %.1f s, though it is up: "
                        "a new connection", self.miner.address, silent)  # fmt: skip
            raise _Ended("CONNECTION_STALE")

    async def _poll(self) -> None:
        """Long-poll for as many jobs as there are free slots, until the session drains."""
        m = self.miner
        while not m.draining:
            free = m._free_slots()
            if free <= 0:
                self.slot_freed.clear()
                try:  # (a second at most: a stuck runner's slot is counted again)
                    await asyncio.wait_for(self.slot_freed.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            request = miner_service_pb2.PollJobRequest(session_id=self.session_id, max_jobs=free)
            answer = await self._call(self._poll_try, request, m.poll_wait_s)
            # cancels first: an assignment may be a new attempt of a job canceled here
            self._cancels(answer.cancels)
            for a in answer.assignments:
                # decided for this poll before any drain: the coordinator waits for them (stop() gives them back)
                m._start(a)
            self._tell_when_running([(a.job.job_id, a.attempt) for a in answer.assignments])
            if answer.draining:
                m.draining = True
        self._drained_when_done()

    async def _poll_try(self, request: Any, **call: Any) -> Any:
        """One PollJob try (_call makes them): `polling` only while it is in flight. Between tries (waiting out a
        backoff, or the connection) the coordinator decides no job for the poll: a drain waiting only on it ends
        now, not at the next try (with the connection down, drain_ack_timeout_s). (A job decided for a try whose
        answer was lost would come only with a next try: the drain over, the coordinator takes it back.)"""
        self.polling = True
        try:
            return await self.stub.PollJob(request, **call)
        except grpc.aio.AioRpcError:
            self.polling = False
            self._drained_when_done()
            raise
        finally:
            self.polling = False

    def _tell_when_running(self, started: list[tuple[str, int]]) -> None:
        """Jobs one poll's answer started: those still running ACCEPT_AFTER_S from now, not listed by a heartbeat
        meanwhile, get one at once (the coordinator shows them RUNNING), as a stream's Accept. One timer per answer,
        not per job; a job done sooner costs nothing (its result implies the accept)."""
        if not started:
            return
        self.unlisted.update(started)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(ACCEPT_AFTER_S, lambda: self._beat_if_running(started, timer))
        self.accept_timers.add(timer)

    def _beat_if_running(self, started: list[tuple[str, int]], timer: asyncio.TimerHandle) -> None:
        self.accept_timers.discard(timer)
        running = self.miner.running
        for job_id, attempt in started:
            r = running.get(job_id)
            if r is not None and r.attempt == attempt and self.unlisted.get(job_id) == attempt:
                self.beat_soon.set()
                return

    async def _heartbeat(self, interval: float) -> None:
        """A heartbeat every interval, listing the jobs held (their leases are renewed, and those still ASSIGNED at
        the coordinator accepted); sooner when a job started ACCEPT_AFTER_S ago still runs unlisted
        (_tell_when_running); its cancels obeyed."""
        m = self.miner
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            # (from one heartbeat's start to the next's: a slow answer does not stretch the cadence)
            if not self.beat_soon.is_set():
                # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the event is
                # set (an early heartbeat due as the session ends), and this loop would then outlive its session,
                # whose end waits for it (the same wait as coordinator/scheduler/timers.py's)
                alarm = loop.call_later(max(0.0, next_at - loop.time()), self.beat_soon.set)
                try:
                    await self.beat_soon.wait()
                finally:
                    alarm.cancel()
            self.beat_soon.clear()
            self.unlisted.clear()  # (every job held is listed below)
            next_at = loop.time() + interval
            running = [miner_service_pb2.RunningJob(job_id=j, attempt=a) for j, a in m._held().items()]
            request = miner_service_pb2.HeartbeatRequest(session_id=self.session_id, running_jobs=running)
            answer = await self._call(self.stub.Heartbeat, request, heartbeat_deadline_s(interval))
            self._cancels(answer.cancels)
            if answer.draining:
                m.draining = True
                self._drained_when_done()

    async def _drain(self) -> None:
        """Miner.drain() on this process: the coordinator is told (Drain), so that it assigns nothing more."""
        await self.drain_wanted.wait()
        request = miner_service_pb2.DrainRequest(session_id=self.session_id, reason="SIGTERM")
        await self._call(self.stub.Drain, request, CALL_TIMEOUT_S)
        self._drained_when_done()

    async def _report(self) -> None:
        """Finished jobs (Miner._execute puts them on Miner._finished) become results or failure reports to send."""
        m = self.miner
        while True:
            job_id, attempt, outcome, encoded = await m._finished.get()
            running = m.running.get(job_id)
            if running is None or running.attempt != attempt:
                continue  # canceled meanwhile
            del m.running[job_id]
            message = encoded
            if isinstance(encoded, miner_service_pb2.Result) and self._too_large(encoded):
                message = m._encoded(job_id, attempt, outcome)  # (a new session's welcome took less)
            if isinstance(message, JobFailed):
                message = failure_message(job_id, attempt, message)
            m.unacked[job_id] = (attempt, message)
            m.completed += 1
            self._deliver_later(job_id)
            self.slot_freed.set()
            if m.draining and not m.running:
                m._arm_drain_timer()  # (its last result: the acks may never come)

    def _deliver_later(self, job_id: str) -> None:
        self._spawn(self._deliver(job_id))

    async def _deliver(self, job_id: str) -> None:
        """Send the job's unacked result or failure report until it is answered."""
        m = self.miner
        while (sent := m.unacked.get(job_id)) is not None:
            attempt, message = sent
            if isinstance(message, miner_service_pb2.Result) and (too_large := self._too_large(message)):
                failed = JobFailed("RESULT_TOO_LARGE", too_large, retryable=False)
                m.unacked[job_id] = (attempt, failure_message(job_id, attempt, failed))
                continue
            try:
                if isinstance(message, miner_service_pb2.Result):
                    request = miner_service_pb2.SubmitResultRequest(
                        session_id=self.session_id, result=message
                    )
                    answer = await self._call(self.stub.SubmitResult, request, CALL_TIMEOUT_S)
                else:
                    request = miner_service_pb2.ReportFailureRequest(
                        session_id=self.session_id, failure=message
                    )
                    answer = await self._call(self.stub.ReportFailure, request, CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                reason = coordinator_reason(exc) or exc.code().name
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise
                if (limit := channel_send_limit(exc)) and isinstance(message, miner_service_pb2.Result):
                    # this process's channel would not send it (its grpc.max_send_message_length, below the
                    # miner's max_result_bytes), not the coordinator: failed for good, and later ones at once
                    m.learn_send_limit(limit)
                    if m.unacked.get(job_id) == sent:
                        why = f"the result's request is over the {limit} bytes the miner's channel sends"
                        failed = JobFailed("RESULT_TOO_LARGE", f"{why} (grpc.max_send_message_length)", False)
                        m.unacked[job_id] = (attempt, failure_message(job_id, attempt, failed))
                    continue
                what = "result" if isinstance(message, miner_service_pb2.Result) else "failure report"
                log.warning("%s of job %s refused: %s %s", what, job_id, reason, exc.details())
                if m.unacked.get(job_id) != sent:
                    continue
                if what == "result" and exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                                       grpc.StatusCode.RESOURCE_EXHAUSTED):  # fmt: skip
                    # the job is still this miner's: reported failed, it fails (or runs again) now, not when its
                    # lease runs out (a result the coordinator cannot take, a bad signature, a message too large)
                    retryable = FAILED_BY_REFUSAL.get(reason, False)
                    code = reason if reason in FAILED_BY_REFUSAL else "RESULT_TOO_LARGE"
                    failed = JobFailed(code, exc.details() or reason, retryable)
                    m.unacked[job_id] = (attempt, failure_message(job_id, attempt, failed))
                    continue
                # STALE_ATTEMPT, JOB_NOT_HELD, NOT_STORED: the job is no longer this miner's (it runs again)
                del m.unacked[job_id]
                self._drained_when_done()
                return
            if m.unacked.get(job_id) == sent:
                del m.unacked[job_id]
                m.acked += 1
                m.last_ack_at = time.monotonic()
                log.debug("job %s acknowledged (receipt %s)", job_id, answer.ack.receipt_id)
            self._drained_when_done()

    # ---------------------------------------------------------------- helpers
    def _cancels(self, cancels: Any) -> None:
        for c in cancels:
            running = self.miner.running.get(c.job_id)
            if running is not None and running.attempt == c.attempt:
                self._cancel(c.job_id)

    def _cancel(self, job_id: str) -> None:
        """Cancel a running job (Miner._cancel: its slot is held until its runner returns); poll again then."""
        task = self.miner.running[job_id].task
        self.miner._cancel(job_id)
        task.add_done_callback(lambda _: self.slot_freed.set())
        task.add_done_callback(lambda _: self._drained_when_done())

    def _too_large(self, result: miner_service_pb2.Result) -> str:
        if why := self.miner._too_large(result):
            return why
        limit = self.miner._coordinator_message_bytes
        size = result.ByteSize() + UNARY_FRAMING_BYTES
        if limit and size > limit:
            return f"the result's request is {size} bytes; the coordinator takes {limit} at most"
        sends = self.miner._channel_send_bytes  # (learned from an earlier refusal: channel_send_limit)
        if sends and size > sends:
            return f"the result's request is {size} bytes; the miner's channel sends {sends} at most"
        return ""
