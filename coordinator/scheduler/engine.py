"""The scheduler: the live state of every non-terminal job, the miner sessions, and every rule that moves them.

One asyncio loop owns all of it, so a decision (pick a miner, fence a result) is atomic without locks: no
job can be handed out twice. Each decision changes memory at once, then commits a unit of work; messages to
miners and watchers leave only after that commit, so nothing a miner or client sees can be lost by a crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..domain import states
from ..domain.clock import MICROS, now_us
from ..domain.errors import CoordinatorError, Kind, job_not_found
from ..domain.ids import uuid7
from ..domain.matching import eligible, split_price
from ..domain.model import Capabilities, Constraints, Event, Job, JobResult, JobState, PayloadKind
from ..logs import info_later
from ..store.base import DependencyFailed, DrainRow, JobFilter, JobPage, Store, UnitOfWork
from .pending import Pending as _Pending
from .queues import Reach, ReadyQueues
from .recent import SPAN_S as RECENT_SPAN_S
from .recent import RecentTransitions
from .sessions import AckOut, AssignmentOut, CancelOut, DrainOut, GoAwayOut, Held, Session, check_capacity
from .stored_keys import StoredKeys
from .timers import TimerHeap
from .undo import Detached, UndoFailedCommits, exec_deadline

log = logging.getLogger("coordinator.scheduler")


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    heartbeat_interval_s: float = 10.0
    heartbeat_timeout_s: float = 30.0
    lease_s: float = 30.0
    grace_s: float = 30.0
    max_reassignments: int = 5
    retry_backoff_base_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    outbox_limit: int = 10_000


@dataclass(slots=True)
class JobSpec:
    """A validated submission, in domain terms."""

    payload: bytes
    payload_kind: PayloadKind
    input_sha256: bytes
    constraints: object
    priority: int
    ttl_us: int
    max_attempts: int
    execution_timeout_us: int
    idempotency_key: str
    fingerprint: bytes
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class ResultIn:
    job_id: str
    attempt: int
    output: bytes
    output_kind: PayloadKind
    result_sha256: bytes
    units: str
    unit_type: str
    miner_report: bytes = b""
    miner_signature: bytes = b""


@dataclass(slots=True)
class FailureIn:
    job_id: str
    attempt: int
    retryable: bool
    code: str
    message: str


ACTIVE = (JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING)
LEASE_RECHECK_US = 1_000_000
ELIGIBILITY_CACHE = 4096  # constraint sets whose eligibility a session remembers
MIN_REJECT_PAUSE_S = (
    0.1  # a rejected job offered to its miner again, at the soonest (RETRY_BACKOFF_BASE_SECONDS)
)
_NO_REFUSAL = (0, 0)  # (refusals, until when): a miner that never refused the job
_HELD = (JobState.ASSIGNED, JobState.RUNNING)  # states in which a job takes a slot of its miner


def _drain_outlives_session(session: Session) -> bool:
    """An operator's drain (DrainMiner) is the miner identity's, and outlives a stream lost or replaced; a drain
    the miner asked for is its process's (SIGTERM): the SDK asks again on its next stream, and a new process
    started in its place (a rolling restart) must not inherit it and stop at once."""
    return session.draining and session.drain_reason != "MINER_REQUESTED"


class ReceiptHook:
    """What the scheduler needs from the receipt issuer (see coordinator.receipts)."""

    def issue(
        self, job: Job, result: JobResult, session: Session, unit: UnitOfWork
    ) -> str:  # pragma: no cover
        raise NotImplementedError

    def committed(self, unit: UnitOfWork) -> None:  # pragma: no cover
        raise NotImplementedError

    def commit_failed(self, unit: UnitOfWork) -> None:  # pragma: no cover
        raise NotImplementedError


class Scheduler(UndoFailedCommits):
    def __init__(
        self, store: Store, settings: SchedulerSettings, receipts: ReceiptHook | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.receipts = receipts
        self.jobs: dict[str, Job] = {}  # every non-terminal job
        # non-terminal jobs by state as committed, kept per transition (metrics read it: no scan per scrape)
        self.active_counts: dict[JobState, int] = dict.fromkeys(ACTIVE, 0)
        self._unsettled: dict[str, _Pending] = {}  # job -> its latest commit not yet durable
        # miner -> the unsettled units that freed some of its slots: unit key -> [unit, slots freed]
        self._unsettled_frees: dict[str, dict[int, list]] = {}
        self._unit_keys = itertools.count(1)  # keys of units, for the writer's dependency check
        self._detached: dict[str, Detached] = {}  # jobs out of memory after a failed commit
        # job -> (new session, attempt) of a miner that listed it while a change taking it away is written
        self._listings: dict[str, tuple[Session, int]] = {}
        self._write_failures: dict[str, int] = {}  # job -> failed commits in a row (backoff on restore)
        self._failed_in_a_row = 0  # commits failed since one last landed (the refill of freed slots waits)
        self._failed_at_us = 0  # when the last of them failed (that wait counts from then)
        self._refills_due: dict[str, int] = {}  # session -> when its refill put off by that wait is due
        self._ends_stream: dict[int, Session] = {}  # id(decision) -> the stream its failed write ends
        # job -> miner that rejected it -> (times it did, until when it is not offered the job again): the job
        # goes to other miners meanwhile (two miners rejecting at once passed it back and forth, hundreds of
        # times a second). Kept while the job lives.
        self._refusals: dict[str, dict[str, tuple[int, int]]] = {}
        self.queues = ReadyQueues()
        self.sessions: dict[str, Session] = {}  # by session id
        self.by_miner: dict[str, Session] = {}  # live session per miner identity
        # sessions that may take work (free slots, online, not draining): a submit looks only at these, so a
        # fleet of busy miners costs nothing per submit. Kept by _assign (full: out) and _fill (freed: in).
        self.available: dict[str, Session] = {}
        self.orphans: dict[str, dict[str, Held]] = {}  # miner -> jobs held before a restart or disconnect
        # miner -> (why it drains, until when), for a miner drained by an operator whose stream dropped: back within
        # the grace period, or while jobs of it wait for it, its new session drains too (a drain must not end at the
        # first network blip; whether or not it held jobs then: its last result may have been being written)
        self._drains: dict[str, tuple[str, int]] = {}
        # miner -> created_us of its operator's drain as stored (table operator_drains: it outlives a restart), from
        # the drain's write landing until the drain is over (its row deleted then); and the drain writes in flight
        self._stored_drains: dict[str, int] = {}
        self._drain_writes: dict[str, asyncio.Future[Session | None]] = {}
        self.idempotency: dict[tuple[str, str], str] = {}
        self._inflight_keys: dict[tuple[str, str], asyncio.Future] = {}
        # the keys the store may hold: a key surely new is not looked up there (keys being written count)
        self.stored_keys = StoredKeys(store, lambda: list(self._inflight_keys))
        self.watchers: dict[str, set[asyncio.Queue]] = {}
        self.timers = TimerHeap(self._on_timer, self._timer_live, renewing=frozenset({"lease", "liveness"}))
        self.observers: list[Callable[[str, Job, Event], None]] = []
        self.samples_wait: deque[tuple[int, int]] = deque(maxlen=50_000)  # (at, queue wait us)
        self.samples_run: deque[tuple[int, int]] = deque(maxlen=50_000)
        # work the scheduler runs on its own, cancelled by stop(): read-backs of jobs after a failed commit, answers
        # to miners once their job is back (when-back-*), deletions of drains that ended (drain-over)
        self._background: set[asyncio.Task] = set()
        self.recent = RecentTransitions()  # the last hour's transitions, for GetStats
        self.stopping = False

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Rebuild live state from the store: queues, leases of held jobs (their miners get a grace period)."""
        now = now_us()
        grace_us = int(self.settings.grace_s * MICROS)
        for job in await self.store.load_active_jobs():
            self.jobs[job.job_id] = job
            self.active_counts[job.state] += 1
            if job.idempotency_key:
                self.idempotency[(job.client_id, job.idempotency_key)] = job.job_id
            if job.state is JobState.QUEUED:
                self._enqueue_or_wait(job, now)
            else:
                held = Held(job, job.attempt, now + grace_us, exec_deadline(job))
                self.orphans.setdefault(job.miner_id, {})[job.job_id] = held
                # (no TTL timer while it is held: requeued, it is timed then, or expires at once if its time ran out)
        for miner_id in self.orphans:
            self.timers.schedule(now + grace_us, "orphans", miner_id)
        await self._load_drains(now + grace_us)
        self.stored_keys.start()  # in the background: until it is complete, every key is looked up
        seeding = asyncio.get_running_loop().create_task(self._seed_recent(now), name="recent-transitions")
        self._background.add(seeding)
        seeding.add_done_callback(self._background.discard)
        self.timers.start()
        log.info("scheduler started: %d active jobs, %d queued", len(self.jobs), self.queues.depth)

    async def _seed_recent(self, until_us: int) -> None:
        """The hour's transitions before this start, counted once from the store (after it, memory counts them):
        until then GetStats reads the store."""
        try:
            rows = await self.store.count_transitions_by_second(until_us - RECENT_SPAN_S * MICROS, until_us)
        except Exception:  # (the store out: GetStats goes on reading it, as before)
            log.warning("cannot count the last hour's job transitions from the store; GetStats reads it instead",
                        exc_info=True)  # fmt: skip
            return
        self.recent.seed(rows)

    async def stop(self) -> None:
        """Tell every miner to go away (its jobs stay its own if it returns within the grace period)."""
        self.stopping = True
        for session in list(self.sessions.values()):
            session.send(GoAwayOut("SHUTTING_DOWN", 1.0))
        for queues in self.watchers.values():
            for q in queues:
                q.put_nowait(None)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.stored_keys.stop()
        await self.timers.stop()

    # ------------------------------------------------------------------ commits
    async def _commit(self, pending: _Pending) -> None:
        """Write pending's rows. Once durable, pending is applied (its messages leave, watchers hear of it);
        if the write fails, it is undone in memory. The caller does either when it resumes; a caller that
        went away meanwhile (a miner's stream closed) leaves it to the write's callback, one loop turn later,
        as the caller would have: outcomes are concluded in the order the writer settles the writes."""
        await self.finish_commit(pending, self.queue_commit(pending))

    def queue_commit(self, pending: _Pending) -> asyncio.Future | None:
        """Hand pending's rows to the writer now: writes land in the order they are queued, so a decision
        is queued before anything else can run (no await between deciding and queueing). The future (None
        when there is nothing to write) goes to finish_commit, or to abandon_commit."""
        if not pending.unit:
            return None
        self._unsettle(pending)
        try:
            written = self.store.enqueue(pending.unit)
        except Exception as exc:  # the store is closed
            self._conclude(pending, exc)  # undoes it, and raises exc
            raise
        pending.enqueued = True
        outcome = asyncio.get_running_loop().create_future()  # its result: the write's error, or None
        written.add_done_callback(lambda w: self._written(pending, w, outcome))
        return outcome

    async def finish_commit(self, pending: _Pending, outcome: asyncio.Future | None) -> None:
        """Wait until the queued write is durable, then apply pending (or undo it, and raise the error)."""
        if outcome is None:
            self._conclude(pending, None)
            return
        try:
            error = await outcome
        except asyncio.CancelledError:
            if outcome.done() and not outcome.cancelled():  # cancelled as the outcome arrived: conclude here
                self._conclude(pending, outcome.result(), quiet=True)
            raise
        self._conclude(pending, error)

    def abandon_commit(self, pending: _Pending, outcome: asyncio.Future | None) -> None:
        """The caller will not wait: the write's callback concludes it (now, if the outcome is known)."""
        if outcome is None:
            self._conclude(pending, None)
        elif not outcome.done():
            outcome.cancel()
        else:
            self._conclude(pending, outcome.result(), quiet=True)

    def _written(self, pending: _Pending, written: asyncio.Future, outcome: asyncio.Future) -> None:
        error = RuntimeError("the write was cancelled") if written.cancelled() else written.exception()
        if not outcome.done():
            outcome.set_result(error)  # the caller concludes
        else:  # the caller went away: conclude for it, in the turn it would have
            asyncio.get_running_loop().call_soon(
                functools.partial(self._conclude, pending, error, quiet=True)
            )

    def _conclude(self, pending: _Pending, error: BaseException | None, *, quiet: bool = False) -> None:
        """Apply a durable decision, or undo a failed one; then what runs either way. Raises the write's
        error, unless quiet (nobody waits to hear it: it is logged)."""
        try:
            if error is None:
                self._apply(pending)
            else:
                if quiet:
                    log.error("a commit failed after its caller went away", exc_info=error)
                self._failed(pending)
        finally:
            self._run_always(pending)
        if error is not None and not quiet:
            raise error

    @staticmethod
    def _run_always(pending: _Pending) -> None:
        actions, pending.always = pending.always, []
        for action in actions:
            action()

    def _unsettle(self, pending: _Pending) -> None:
        """Mark the jobs this commit changes: reads of them wait until it is durable, so no caller sees a
        state (COMPLETED, say) before the rows that go with it (its result, its receipt) can be read.

        The unit requires the earlier unsettled units it is built on, so that the writer refuses it if one
        of them fails: those changing the same jobs, and, when it gives a miner a job in a slot that another
        unsettled unit freed, that unit (the slot may have been freed by a cancel that then fails)."""
        pending.settled = asyncio.get_running_loop().create_future()
        unit = pending.unit
        unit.key = next(self._unit_keys)
        requires: set[int] = set()
        by_job, frees = self._unsettled, self._unsettled_frees
        filling: list[str] = []  # miners this unit gives jobs to
        for job, event in pending.notes:
            previous = by_job.get(job.job_id)
            if previous is not None and previous is not pending:
                requires.add(previous.unit.key)
                pending.earlier[job.job_id] = previous
            by_job[job.job_id] = pending
            if event.to_state is JobState.ASSIGNED:
                if event.miner_id in frees and event.miner_id not in filling:
                    filling.append(event.miner_id)
            elif event.from_state in _HELD and event.to_state not in _HELD:  # frees a slot of its miner
                freeing = frees.get(event.miner_id)
                if freeing is None:
                    freeing = frees[event.miner_id] = {}
                entry = freeing.get(unit.key)
                if entry is None:
                    freeing[unit.key] = [pending, 1]
                    pending.miners.append(event.miner_id)
                else:
                    entry[1] += 1
        for target, message in pending.sends:
            if isinstance(message, list):  # assignments: a Drain decided meanwhile leaves after them
                target.assigning[unit.key] = pending
        for miner in pending.miners:  # a draining session may end once this unit has settled
            session = self.by_miner.get(miner)
            if session is not None and session.draining:
                pending.always.append(functools.partial(self._close_if_drained, session))
        for miner in filling:
            # Should the other units freeing this miner's slots fail, their jobs come back: if the miner
            # could not hold them besides what it holds now, its new jobs took their slots.
            others = [(key, n) for key, (other, n) in frees[miner].items() if other is not pending]
            session = self.by_miner.get(miner)
            returning = sum(n for _, n in others)
            if others and (
                session is None or len(session.held) + session.reserved + returning > session.offered
            ):
                requires.update(key for key, _ in others)
        if requires:
            unit.requires = tuple(requires)

    def _settle(self, pending: _Pending) -> None:
        settled = pending.settled
        if settled is None or settled.done():
            return
        settled.set_result(None)
        pending.earlier = {}
        for target, message in pending.sends:
            if isinstance(message, list):
                target.assigning.pop(pending.unit.key, None)
        for job, _ in pending.notes:
            if self._unsettled.get(job.job_id) is pending:
                del self._unsettled[job.job_id]
        for miner in pending.miners:
            freeing = self._unsettled_frees.get(miner)
            if freeing is not None:
                freeing.pop(pending.unit.key, None)
                if not freeing:
                    del self._unsettled_frees[miner]

    async def _settled(self, job_id: str) -> None:
        """Wait until every commit changing job_id is durable."""
        while (pending := self._unsettled.get(job_id)) is not None:
            await asyncio.shield(pending.settled)  # type: ignore[arg-type]

    def _apply(self, pending: _Pending) -> None:
        self._settle(pending)
        if pending.enqueued:  # (a write landed: not a decision that wrote nothing)
            self._failed_in_a_row = 0
        if self._write_failures:  # these jobs' writes land again
            for job, _ in pending.notes:
                self._write_failures.pop(job.job_id, None)
        if self.receipts is not None and pending.unit.receipts:
            self.receipts.committed(pending.unit)
            for observer in self.observers:
                observer("receipts", pending.unit.receipts, None)  # type: ignore[arg-type]
        for session, message in pending.sends:
            session.send(message)  # type: ignore[arg-type]
        for job, event in pending.notes:
            self._notify(job, event)
        for action in pending.after:
            action()

    def _notify(self, job: Job, event: Event) -> None:
        counts = self.active_counts
        if event.from_state in counts:
            counts[event.from_state] -= 1  # type: ignore[index]
        if event.to_state in counts:
            counts[event.to_state] += 1
        self.recent.count(event)
        for observer in self.observers:
            observer("transition", job, event)
        queues = self.watchers.get(job.job_id)
        if queues:
            snapshot = job.snapshot()
            for q in queues:
                q.put_nowait((snapshot, event))

    # ------------------------------------------------------------------ clients
    async def submit(self, client_id: str, specs: list[JobSpec]) -> list[tuple[Job, bool]]:
        """Store new jobs (idempotently) and hand each to an idle eligible miner if there is one."""
        if self.stopping:
            raise CoordinatorError(Kind.UNAVAILABLE, "SHUTTING_DOWN", "the coordinator is shutting down")
        out: list[tuple[Job, bool] | None] = [None] * len(specs)
        pending = _Pending()
        now = now_us()
        hits = await self._idempotent_hits(client_id, specs)  # before any claim or job: no await after it
        created: list[Job] = []
        try:
            for i, spec in enumerate(specs):
                if spec.idempotency_key:
                    existing = hits.get(i)
                    if existing is not None:
                        out[i] = (existing, False)
                        continue
                    # Other submits with this key wait until this one's outcome is known (durable or not).
                    key = (client_id, spec.idempotency_key)
                    future = asyncio.get_running_loop().create_future()
                    self._inflight_keys[key] = future
                    self.stored_keys.add(key)
                    pending.always.append(functools.partial(self._release_key, key, future))
                job = Job(
                    job_id=uuid7(), client_id=client_id, state=JobState.QUEUED, payload=spec.payload,
                    payload_kind=spec.payload_kind, input_sha256=spec.input_sha256,
                    constraints=spec.constraints, priority=spec.priority, ttl_us=spec.ttl_us,
                    max_attempts=spec.max_attempts, execution_timeout_us=spec.execution_timeout_us,
                    idempotency_key=spec.idempotency_key, request_fingerprint=spec.fingerprint,
                    created_us=now, updated_us=now, metadata=spec.metadata, queued_us=now,
                )  # type: ignore[arg-type]  # fmt: skip
                event = states.submitted_event(job)
                pending.unit.add_new_job(job)
                pending.unit.add_event(event)
                pending.notes.append((job, event))
                if spec.idempotency_key:
                    pending.after.append(functools.partial(self.idempotency.__setitem__, key, job.job_id))
                out[i] = (job, True)
                created.append(job)
            # Only now, with no await before the write is queued, do the jobs become visible (to dispatch, to
            # their expiry timer): one taken by a miner, or expired, while a later key of the batch was looked
            # up had that change written before its insert. The assignment rides in the same commit as the
            # insert: the miner hears of the job the moment the client's call returns.
            for job in created:
                self.jobs[job.job_id] = job
                session = self._pick_session(job)
                if session is not None:
                    self._assign(job, session, pending, now)
                else:
                    self.queues.push(job)
                    self._time_to_live(job)
            # The answer is what this write holds: the live jobs may change meanwhile (assigned in a miner's
            # welcome, say), and that change may fail to land.
            out = [None if o is None else (o[0].snapshot() if o[1] else o[0], o[1]) for o in out]
            await self._commit(pending)
        except BaseException:
            if not pending.enqueued:  # refused before its write was queued: nothing of it may stay
                freed: dict[str, Session] = {}
                for job, _ in pending.notes:
                    self._forget_failed_insert(job, freed)
                self._run_always(pending)
                if not self.stopping:
                    self._refill_after_failure(freed.values())
            raise  # once queued, the write's outcome keeps or forgets the jobs, even if this call was cancelled
        return [o for o in out if o is not None]

    async def _idempotent_hits(self, client_id: str, specs: list[JobSpec]) -> dict[int, Job]:
        """The jobs already submitted under the specs' idempotency keys (by index), once none of the others
        is claimed by a submit in flight. Looked up before claiming any key, and again if one was claimed or
        stored meanwhile: a batch never waits while holding claims (two batches with crossed keys waited on
        each other for ever), and two submits of one key never both insert it."""
        keys = [
            (i, (client_id, spec.idempotency_key)) for i, spec in enumerate(specs) if spec.idempotency_key
        ]
        first_of: dict[tuple[str, str], int] = {}
        for i, key in keys:  # the entries are named by position: the servicer makes field paths of them
            first = first_of.setdefault(key, i)
            if first != i:
                raise CoordinatorError(Kind.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                                       f"entry {i} repeats the idempotency key of entry {first} of the batch",
                                       metadata={"index": str(i), "first_index": str(first)})  # fmt: skip
        while True:
            hits: dict[int, Job] = {}
            unknown: list[int] = []  # keys of no job in memory the store may hold: looked up in one read
            for i, key in keys:
                existing = await self._idempotent_hit_in_memory(key)
                if existing is not None:
                    hits[i] = _same_request(existing, specs[i], i)
                elif self.stored_keys.may_hold(key):
                    unknown.append(i)
            if unknown:
                stored = await self.store.find_by_idempotency_keys(
                    client_id, [specs[i].idempotency_key for i in unknown]
                )
                for i in unknown:
                    existing = stored.get(specs[i].idempotency_key)
                    if existing is not None:
                        hits[i] = _same_request(existing, specs[i], i)
            if not any(
                i not in hits and (key in self._inflight_keys or key in self.idempotency) for i, key in keys
            ):
                return hits

    def _release_key(self, key: tuple[str, str], future: asyncio.Future) -> None:
        if self._inflight_keys.get(key) is future:
            del self._inflight_keys[key]
        if not future.done():
            future.set_result(None)

    async def _idempotent_hit_in_memory(self, key: tuple[str, str]) -> Job | None:
        """The job of an active job's key (a copy, as landed), once a submit in flight with it is decided."""
        inflight = self._inflight_keys.get(key)
        if inflight is not None:
            await asyncio.shield(inflight)
        job_id = self.idempotency.get(key)
        if job_id:
            await self._settled(job_id)  # a change being written may fail: answer with what has landed
        job = self.jobs.get(job_id) if job_id else None
        return None if job is None else job.snapshot()

    async def get_job(self, job_id: str, client_id: str | None) -> Job:
        """The job as durably stored (or later); NOT_FOUND for unknown ids and for another client's jobs
        (client_id None: admin)."""
        await self._settled(job_id)
        job = self.jobs.get(job_id)
        if job is None:
            job = await self.store.get_job(job_id)
        if job is None or (client_id is not None and job.client_id != client_id):
            raise job_not_found(job_id)
        return job

    async def get_result(self, job_id: str, client_id: str, wait: bool) -> tuple[Job, JobResult]:
        job = await self.get_job(job_id, client_id)
        if wait and not job.state.terminal:
            async for snapshot, _ in self.watch(job_id, client_id):
                job = snapshot
        if job.state is not JobState.COMPLETED:
            raise CoordinatorError(
                Kind.FAILED_PRECONDITION,
                "JOB_NOT_COMPLETED",
                f"job {job_id} has no result: it is {job.state.name}",
                metadata={"job_id": job_id, "state": job.state.name},
            )
        result = await self.store.get_result(job_id)
        if result is None:  # pragma: no cover - COMPLETED and its result commit together
            raise CoordinatorError(Kind.NOT_FOUND, "RESULT_NOT_FOUND", f"job {job_id} has no stored result")
        return job, result

    async def watch(
        self, job_id: str, client_id: str | None, after: int = 0
    ) -> AsyncIterator[tuple[Job, Event | None]]:
        """The job now, then after each change, ending after the terminal state. Resuming a cut watch (after: the
        sequence of the last change it saw), the stored changes since take the place of the first snapshot."""
        q: asyncio.Queue = asyncio.Queue()
        self.watchers.setdefault(job_id, set()).add(q)
        try:
            job = await self.get_job(job_id, client_id)
            snapshot = job.snapshot()
            if after:
                for missed in await self._events_after(snapshot, after):
                    yield snapshot, missed
            else:
                yield snapshot, None
            if snapshot.state.terminal:  # not the live job: it may have finished while the snapshot was sent,
                return  # and then its terminal event waits in q
            seen = snapshot.event_seq
            while True:
                # A stop (its None wakes the wait) ends a watch with nothing left to send, UNAVAILABLE at once: the
                # client resumes it at the next coordinator, rather than be cut by gRPC at the grace's end.
                if self.stopping and q.empty():
                    raise CoordinatorError(
                        Kind.UNAVAILABLE, "SHUTTING_DOWN", "the coordinator is shutting down"
                    )
                item = await q.get()
                if item is None:
                    continue
                snapshot, event = item
                if event.sequence <= seen:
                    continue  # already in the first snapshot (it waited for that commit to land)
                yield snapshot, event
                if event.to_state.terminal:
                    return
        finally:
            queues = self.watchers.get(job_id)
            if queues is not None:
                queues.discard(q)
                if not queues:
                    del self.watchers[job_id]

    async def _events_after(self, snapshot: Job, after: int) -> list[Event]:
        """The job's stored changes after sequence `after` up to the snapshot's (all committed: the snapshot is of
        the job as stored); the live ones follow from the watch. A sequence past the job's last change was never
        sent for this job (sequences are the job's own, 1 its submission): OUT_OF_RANGE (gRPC's code for a read
        past the current end), not a silent wait for changes that may never come. The watcher got it elsewhere:
        another job's watch, or a store since restored from an older copy. (A sequence of another job that is
        within this job's range cannot be told apart: it replays this job's own changes after it.)"""
        if after > snapshot.event_seq:
            raise CoordinatorError(
                Kind.OUT_OF_RANGE, "SEQUENCE_OUT_OF_RANGE",
                f"after_sequence {after} is past job {snapshot.job_id}'s last change ({snapshot.event_seq}): "
                "resume with a sequence this job's watch sent, or 0 for the job as it is now",
                field_violations=[("after_sequence", f"at most {snapshot.event_seq}")],
                metadata={"job_id": snapshot.job_id, "after_sequence": str(after),
                          "last_sequence": str(snapshot.event_seq)},
            )  # fmt: skip
        events = await self.store.get_events(snapshot.job_id)
        return [e for e in events if after < e.sequence <= snapshot.event_seq]

    async def cancel(self, job_id: str, client_id: str | None, reason: str) -> Job:
        job = self.jobs.get(job_id)
        if job is not None and job.state.terminal and job_id in self._unsettled:
            # Its end (a result, a last failure, an expiry) is being written and may fail, and the job then
            # comes back: JOB_TERMINAL now would lose the cancel. Decide on what lands.
            await self._settled(job_id)
            job = self.jobs.get(job_id)
        if job is None and job_id in self._detached:
            await self._restored(job_id)
            job = self.jobs.get(job_id)
        if job is None or (client_id is not None and job.client_id != client_id):
            stored = await self.get_job(job_id, client_id)  # NOT_FOUND, or a terminal job
            states.check(stored, JobState.CANCELED)  # raises JOB_TERMINAL
            raise CoordinatorError(Kind.UNAVAILABLE, "JOB_RESTORING",
                                   f"job {job_id} is being read back from the store after a failed write; retry",
                                   metadata={"job_id": job_id})  # fmt: skip
        now = now_us()
        pending = _Pending()
        was = job.state
        holder = self._holder(job)
        pending.record(
            job, states.transition(job, JobState.CANCELED, "CANCELED_BY_CLIENT", now, message=reason)
        )
        if was is JobState.QUEUED:
            self.queues.discard(job)
        if holder is not None:
            held = holder.held.pop(job.job_id)
            self._untold_if_so(held, pending)
            self._cancel_or_withdraw(holder, held, "CANCELED_BY_CLIENT", pending)
            self._fill(holder, pending, now)
        elif was in _HELD:  # an orphan: should this fail, no session's slot is the job's
            pending.unheld.add(job.job_id)
            self._unorphan(job, pending)
        self._finish(job, pending)
        await self._commit(pending)
        return job

    async def transitions_since(self, since_us: int) -> dict[str, int]:
        """Transitions from since_us on, by kind (GetStats' windows): counted in memory once the hour before this
        start is (_seed_recent); until then read from the store's events."""
        if self.recent.seeded:
            return self.recent.since(since_us)
        return await self.store.count_transitions_since(since_us)

    async def list_jobs(self, flt: JobFilter, limit: int, before: str | None) -> JobPage:
        """The store's page, its jobs as live as memory knows them; where the store stopped looking, as it said."""
        page = await self.store.list_jobs(flt, limit, before)
        rows = {job.job_id: job for job in page.jobs}
        # The store may lag memory by the writes in flight, which may yet fail: wait for those of the page's
        # jobs and read them again (a few rounds: while one is waited for, another may start a write).
        for _ in range(3):
            writing = [job_id for job_id in rows if job_id in self._unsettled]
            if not writing:
                break
            for job_id in writing:
                await self._settled(job_id)
            for job_id in writing:
                rows[job_id] = await self.store.get_job(job_id) or rows[job_id]
        # No await from here: a live job with no write in flight is as stored or newer; one being written is
        # answered as stored.
        jobs = [
            live if (live := self.jobs.get(job_id)) is not None and job_id not in self._unsettled else row
            for job_id, row in rows.items()
        ]
        return JobPage(jobs, page.scanned_to)

    # ------------------------------------------------------------------ miners: sessions
    def open_session(
        self,
        miner_id: str,
        caps: Capabilities,
        transport: str,
        running: list[tuple[str, int]],
        receipt_public_key: bytes = b"",
        offered: int | None = None,
    ) -> tuple[Session, list[tuple[str, int]], _Pending]:
        """A new session for miner_id. Returns it, the running jobs it keeps, and writes to commit.

        A live session of the same identity is replaced (told to go away); the jobs it or a previous
        session held move to the new session if the miner lists them as running, and are requeued if not.
        `offered`: the jobs it takes at once from the start (the hello's capacity; None: caps.slots).
        """
        if self.stopping:
            raise CoordinatorError(Kind.UNAVAILABLE, "SHUTTING_DOWN", "the coordinator is shutting down")
        if offered is not None:  # (refused before anything changes: a previous session is replaced below)
            check_capacity(offered, caps, "hello.capacity.slots")
        now = now_us()
        pending = _Pending()
        inherited: dict[str, Held] = dict(self.orphans.pop(miner_id, {}))
        drain_reason, drain_until = self._drains.pop(miner_id, ("", 0))
        if drain_until <= now and not inherited:
            drain_reason = ""  # not back in time: its drain is over
        previous = self.by_miner.get(miner_id)
        if previous is not None:
            if _drain_outlives_session(previous):
                drain_reason = previous.drain_reason
            inherited.update(previous.held)
            previous.held.clear()
            self._close(previous, pending, "SESSION_REPLACED", requeue=False)
        if not drain_reason:
            self._drain_over(miner_id)  # (back past its grace period: its stored drain goes too)
        session = Session(
            session_id=uuid7(), miner_id=miner_id, caps=caps, transport=transport, connected_us=now,
            receipt_public_key=receipt_public_key, last_seen_us=now, opened_key=next(self._unit_keys),
        )  # fmt: skip
        if offered is not None:  # before the fill below (a Capacity read after it takes no assignment back)
            session.offered = offered
        self.sessions[session.session_id] = session
        self.by_miner[miner_id] = session
        listed = dict(running)
        if self._detached:  # slots of this miner's jobs being read back are reserved on its new session
            self._reserve_on(session, listed)
        kept: list[tuple[str, int]] = []
        lease_us = now + int(self.settings.lease_s * MICROS)
        for job_id, held in inherited.items():
            job = self.jobs.get(job_id)
            if job is None or job.state.terminal or job.attempt != held.attempt:
                continue
            if listed.get(job_id) == held.attempt:
                held.lease_us = lease_us
                held.told = True  # (its miner lists it: it heard of it)
                session.held[job_id] = held
                self.timers.schedule(lease_us, "lease", job_id, held.attempt)
                self.timers.schedule(held.exec_deadline_us, "exec", job_id, held.attempt)
                kept.append((job_id, held.attempt))
            else:
                pending.unheld.add(job_id)
                self._requeue_held(job, held, "MINER_LOST_JOB", now, pending)
        for job_id, attempt in running:
            if job_id in session.held:
                continue
            marker = self._detached.get(job_id)
            if marker is not None and marker.runs(session, listed, job_id):
                # being read back after a failed commit, and this miner ran it at this attempt: it keeps
                # running it (the welcome names it), and gets it back with a fresh lease (else NOT_HELD then)
                kept.append((job_id, attempt))
            elif self._unsettled and self._listed_while_written(session, job_id, attempt):
                kept.append((job_id, attempt))  # (NOT_HELD once the change that took it lands)
            else:  # (sent even if this write fails: see UndoFailedCommits._not_held_all_the_same)
                pending.sends.append((session, CancelOut(job_id, attempt, "NOT_HELD")))
        self.timers.schedule(
            now + int(self.settings.heartbeat_timeout_s * MICROS), "liveness", session.session_id
        )
        if drain_reason:  # it was draining, and still is: no new job; it ends once its jobs are done
            session.draining, session.drain_reason = True, drain_reason
            self._tell_drain_once_written(session)
            # (as in drain: changes that freed its slots are still being written; it ends once they land)
            for other, _ in self._unsettled_frees.get(miner_id, {}).values():
                other.always.append(functools.partial(self._close_if_drained, session))
        for observer in self.observers:
            observer("session_open", session, None)  # type: ignore[arg-type]
        info_later(log, "miner connected", {"event": "miner.connect", "miner_id": miner_id,
                 "session_id": session.session_id, "transport": transport, "slots": caps.slots, "kept": len(kept)})  # fmt: skip
        self._fill(session, pending, now)
        return session, kept, pending

    async def commit_pending(self, pending: _Pending) -> None:
        await self._commit(pending)

    async def commit_opening(self, pending: _Pending) -> None:
        await self.finish_opening(pending, self.queue_commit(pending))

    async def finish_opening(self, pending: _Pending, outcome: asyncio.Future | None) -> None:
        """finish_commit for a session's opening decision (open_session). Refused only because an earlier write
        it builds on failed (one of another session of the same miner, whose jobs it took over), with no row
        of its own (a receipt key), the session stands: what it changed is undone and read back, as after any
        failed commit; its miner is told NOT_HELD all the same for the jobs its hello listed that are no longer
        its own (UndoFailedCommits._not_held_all_the_same). (It used to end: one connection's failed write
        ended the next one too.)"""
        try:
            await self.finish_commit(pending, outcome)
        except DependencyFailed:
            if pending.unit.keys:
                raise  # its own key is not stored: its receipts would name a key nobody can look up
            log.warning("a new session's changes to its miner's jobs built on a write that failed; read back")

    def session(self, session_id: str, miner_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.closed or session.miner_id != miner_id:
            raise CoordinatorError(
                Kind.NOT_FOUND,
                "SESSION_NOT_FOUND",
                f"session {session_id!r} not found or expired: register again",
            )
        session.called_us = session.last_seen_us = now_us()
        return session

    async def disconnected(self, session: Session, reason: str) -> None:
        """The stream of session ended: its jobs wait out the grace period for the miner to come back; those of a
        miner that left on purpose (_left_on_purpose) are queued again at once."""
        if session.closed:
            return
        session.stream_task = None  # (its handler's last step: nothing of the stream is left to end)
        now = now_us()
        pending = _Pending()
        if _left_on_purpose(session, reason) and not self.stopping:
            for job_id, held in list(session.held.items()):
                if (job := self.jobs.get(job_id)) is not None:
                    self._requeue_held(job, held, "MINER_GONE", now, pending, session)
            session.held.clear()
        self._orphan_held(session, now, pending)
        self._remember_drain(session, now)
        self._close(session, pending, reason, requeue=False)
        await self._commit(pending)

    def _orphan_held(self, session: Session, now: int, pending: _Pending) -> None:
        """The jobs of session, whose miner is gone (its stream lost, or a unary miner silent), wait out the grace
        period for it to come back listing them (open_session), and are requeued MINER_GONE if it does not."""
        if not session.held or self.stopping:
            return
        # An assignment its miner never heard of (a stream's decided as it ended, or queued behind a write that
        # never finished; a unary one no poll handed out): back to the queue now, its attempt unspent; it
        # waited out the grace period for a miner that could not come back with it, and cost an attempt.
        for job_id, held in [(j, h) for j, h in session.held.items() if not h.told]:
            del session.held[job_id]
            job = self.jobs.get(job_id)
            if job is not None:
                self._give_back(job, held, "MINER_GONE", held.unsent, now, pending, session)
        grace_end = now + int(self.settings.grace_s * MICROS)
        for held in session.held.values():
            held.lease_us = grace_end
            held.lost = "MINER_GONE"
        if session.held:
            self.orphans.setdefault(session.miner_id, {}).update(session.held)
            self.timers.schedule(grace_end, "orphans", session.miner_id)
        session.held = {}

    def _unorphan(self, job: Job, pending: _Pending) -> None:
        """job, an orphan, is no longer its away miner's (canceled): it no longer waits for the miner, nor counts
        as its running job (ListMiners showed the miner away running it until the grace period ended). Should
        the change fail, the job read back waits for the miner again (UndoFailedCommits._place), as untold if
        it was (noted in pending)."""
        orphans = self.orphans.get(job.miner_id)
        held = orphans.get(job.job_id) if orphans is not None else None
        if held is None or held.job is not job or held.attempt != job.attempt:
            return
        del orphans[job.job_id]  # type: ignore[union-attr]
        if not orphans:
            del self.orphans[job.miner_id]
        self._untold_if_so(held, pending)

    def _remember_drain(self, session: Session, now: int) -> None:
        """An operator's drain of a session whose stream is lost holds for the miner's next session, if it comes
        back within the grace period (see _drains)."""
        if _drain_outlives_session(session) and not self.stopping and not session.closed:
            grace_end = now + int(self.settings.grace_s * MICROS)
            self._drains[session.miner_id] = (session.drain_reason, grace_end)
            self.timers.schedule(grace_end, "orphans", session.miner_id)  # (forgotten then, if not back)

    def _close(self, session: Session, pending: _Pending, reason: str, *, requeue: bool) -> None:
        if session.closed:
            return
        now = now_us()
        session.closed = True
        self.available.pop(session.session_id, None)
        if requeue:
            for job_id, held in list(session.held.items()):
                job = self.jobs.get(job_id)
                if job is not None:
                    self._requeue_held(job, held, reason, now, pending, session)
        session.held.clear()
        self.sessions.pop(session.session_id, None)
        if session.reach is not None:
            self.queues.release(session.reach)
            session.reach = None
        if self.by_miner.get(session.miner_id) is session:
            del self.by_miner[session.miner_id]
        # After the commit, like every message: sent now, the stream would end (and its reader be canceled)
        # while this decision's commit is still in flight, losing its acks and watcher notifications.
        pending.sends.append((session, GoAwayOut(reason, 1.0)))
        session.wakeup.set()
        if session.stream_task is not None and not session.stream_task.done():
            # its GoAway leaves after the write its stream's writer is in: see _end_unread_stream
            at = (session.write_blocked_since_us or now) + int(self.settings.heartbeat_timeout_s * MICROS)
            self.timers.schedule(at, "stream_end", session)
        for observer in self.observers:
            observer("session_close", session, reason)  # type: ignore[arg-type]
        info_later(log, "miner disconnected", {"event": "miner.disconnect", "miner_id": session.miner_id,
                 "session_id": session.session_id, "reason": reason})  # fmt: skip

    def drain(self, session: Session, reason: str) -> None:
        if session.draining:
            if reason != "MINER_REQUESTED":  # an operator's drain, the identity's, outlives the miner's own
                session.drain_reason = reason
            return
        session.draining = True
        session.drain_reason = reason
        self.available.pop(session.session_id, None)
        self._tell_drain_once_written(session)
        freeing = self._unsettled_frees.get(session.miner_id)
        if not freeing:
            self._close_if_drained(session)
            return
        # changes that freed its slots are still being written: should one fail, its job comes back
        for other, _ in freeing.values():
            other.always.append(functools.partial(self._close_if_drained, session))

    def _tell_drain_once_written(self, session: Session) -> None:
        """Assignments decided before the drain leave once their writes are durable: the Drain leaves after
        them ("take no new ones" holds on the stream): once the last write of each job it holds settles, and
        every write giving it assignments (of jobs it may no longer hold: canceled meanwhile, say)."""
        writing = {id(p): p for job_id in session.held if (p := self._unsettled.get(job_id)) is not None}
        writing.update((id(p), p) for p in session.assigning.values())
        if not writing:
            self._tell_drain(session)
            return
        left = [len(writing)]

        def settled() -> None:
            left[0] -= 1
            if not left[0]:
                self._tell_drain(session)

        for other in writing.values():
            other.always.append(settled)

    @staticmethod
    def _tell_drain(session: Session) -> None:
        if not session.drain_told:
            session.drain_told = True
            session.send(DrainOut(session.drain_reason))

    def _close_if_drained(self, session: Session) -> None:
        """A draining session ends once nothing of it is left: no job held, none being read back after a
        failed commit (reserved), no message of it waiting to be answered, no change that freed one of its
        slots still being written."""
        if (
            session.closed
            or not session.draining
            or session.held
            or session.reserved
            or session.answering  # (its acks must leave before the GoAway)
            or self._unsettled_frees.get(session.miner_id)
        ):
            return
        self._tell_drain(session)  # (before its GoAway, had it waited for a write that failed)
        if session.transport == "unary" and (_drain_outlives_session(session) or session.pending_cancels):
            # No stream carries a GoAway: the session waits for the miner's next call to tell it (end_if_drained),
            # and its cancels first (closed, they were lost: the miner ran on a job taken from it)
            session.drained = True
            session.wakeup.set()  # (a waiting poll tells it now)
            return
        pending = _Pending()
        self._close(session, pending, "DRAINED", requeue=False)
        self._drain_over(session.miner_id)  # drained to the end
        self._spawn_commit(pending)

    def end_if_drained(self, session: Session) -> None:
        """A unary session drained with nothing left (an operator's drain, or cancels left to tell): ended DRAINED
        now that its miner calls, and the call refused SESSION_DRAINED: the miner stops (as a stream's does on
        its GoAway DRAINED) rather than register again and take new work. Its drain is over then."""
        if not self.end_drained(session):
            return
        raise CoordinatorError(
            Kind.FAILED_PRECONDITION,
            "SESSION_DRAINED",
            f"session {session.session_id!r} is drained ({session.drain_reason}): its jobs are done and it takes "
            "no new work; stop (register again only to take work once more)",
            metadata={"session_id": session.session_id, "drain_reason": session.drain_reason},
        )

    async def drain_miner(self, miner_id: str) -> Session | None:
        """An operator's drain: of the miner's session, or, for a miner away within its grace period (None is
        returned), of the session it comes back with. Stored before it takes effect (table operator_drains: it
        outlives a restart); a write that fails changes nothing and raises its error. A miner already drained by
        an operator is drained as it is (an away one's grace period renewed), with no write."""
        if self.stopping:
            raise CoordinatorError(Kind.UNAVAILABLE, "SHUTTING_DOWN", "the coordinator is shutting down")
        # (a drain of it being written counts: its miner may have gone meanwhile, and it takes effect all the same)
        known = (self.by_miner, self.orphans, self._drains, self._drain_writes)
        if not any(miner_id in m for m in known):
            raise CoordinatorError(
                Kind.NOT_FOUND,
                "MINER_NOT_FOUND",
                f"miner {miner_id!r} has no session",
                metadata={"miner_id": miner_id},
            )
        if miner_id in self._stored_drains:
            return self._apply_drain(miner_id)
        applied = self._drain_writes.get(miner_id)  # (two calls at once: one write, both wait for it)
        if applied is None:
            applied = self._store_drain(DrainRow(miner_id, "ADMIN", now_us()))
        # (shielded: a caller that goes away leaves the write, and its taking effect once it lands, as they are)
        return await asyncio.shield(applied)

    def _store_drain(self, row: DrainRow) -> asyncio.Future[Session | None]:
        """Queue the drain's row; the future returned tells what _apply_drain did once it landed, or the error."""
        unit = UnitOfWork()
        unit.drains.append(row)
        written = self.store.enqueue(unit)
        applied: asyncio.Future[Session | None] = asyncio.get_running_loop().create_future()
        applied.add_done_callback(_retrieved)  # (its callers may all have gone away)
        self._drain_writes[row.miner_id] = applied
        written.add_done_callback(functools.partial(self._drain_stored, row, applied))
        return applied

    def _drain_stored(
        self, row: DrainRow, applied: asyncio.Future[Session | None], written: asyncio.Future[None]
    ) -> None:
        """The drain's write settled: landed, the drain takes effect (even if its callers went away meanwhile);
        failed, nothing changed (its callers hear the error)."""
        if self._drain_writes.get(row.miner_id) is applied:
            del self._drain_writes[row.miner_id]
        error = RuntimeError("the write was cancelled") if written.cancelled() else written.exception()
        if error is not None:
            applied.set_exception(error)
        elif self.stopping:  # not applied here: the next start loads it (said so, not answered "away")
            applied.set_exception(CoordinatorError(
                Kind.UNAVAILABLE, "SHUTTING_DOWN",
                "the coordinator is shutting down: the drain is stored, and takes effect at the next start"))  # fmt: skip
        else:
            self._stored_drains[row.miner_id] = row.created_us
            applied.set_result(self._apply_drain(row.miner_id))

    def _apply_drain(self, miner_id: str) -> Session | None:
        session = self.by_miner.get(miner_id)
        if session is not None:
            self.drain(session, "ADMIN")
            return session
        now = now_us()
        until = max(self._drains.get(miner_id, ("", 0))[1], now + int(self.settings.grace_s * MICROS))
        self._drains[miner_id] = ("ADMIN", until)
        self.timers.schedule(until, "orphans", miner_id)  # (forgotten then, if not back)
        return None

    async def _load_drains(self, until: int) -> None:
        """Operators' drains stored by an earlier process (start): each waits for its miner's next session as
        after a lost stream, until the grace period's end counted from this start (the coordinator was down)."""
        rows = await self.store.load_drains()
        for row in rows:
            self._stored_drains[row.miner_id] = row.created_us
            self._drains[row.miner_id] = (row.reason, until)
            self.timers.schedule(until, "orphans", row.miner_id)  # (forgotten then, if not back)
        if rows:
            log.info("scheduler: %d operator drains kept from before the start", len(rows))

    def _drain_over(self, miner_id: str) -> None:
        """The operator's drain of miner_id (if one is stored) is over: its row is deleted, in a write of its own
        tried again until it lands (a row left would drain the miner again after a restart)."""
        created_us = self._stored_drains.pop(miner_id, None)
        if created_us is None:
            return
        unit = UnitOfWork()
        unit.drains_over.append(DrainRow(miner_id, "", created_us))
        # queued now, not from a task: a stop right after still writes it (a closed store: the next start gives
        # the drain a grace period, and ends it)
        try:
            written = self.store.enqueue(unit)
        except RuntimeError:
            log.warning("the end of miner %s's drain is not stored: the store is closed", miner_id)
            return
        task = asyncio.get_running_loop().create_task(self._delete_drain(unit, written), name="drain-over")
        self._background.add(task)  # (stop() cancels its retries; what it queued is written all the same)
        task.add_done_callback(self._background.discard)

    async def _delete_drain(self, unit: UnitOfWork, written: asyncio.Future[None]) -> None:
        delay = 0.05
        while True:
            try:
                await written
                return
            except Exception:
                if self.stopping:  # (left to the next start: the drain then waits a grace period, and ends)
                    return
                log.warning("cannot store the end of miner %s's drain; retrying", unit.drains_over[0].miner_id,
                            exc_info=True)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                written = self.store.enqueue(unit)
            except RuntimeError:  # (the store closed)
                return

    def end_drained(self, session: Session) -> bool:
        """Close a drained unary session (see end_if_drained), its miner's call to tell it so; whether it is over."""
        if not session.drained or session.pending_cancels:  # (its last cancels are told first)
            return False
        if not session.closed:
            pending = _Pending()
            self._close(session, pending, "DRAINED", requeue=False)
            self._drain_over(session.miner_id)  # drained to the end
            self._spawn_commit(pending)
        return True

    def drains_pending(self) -> dict[str, str]:
        """Miners away with an operator's drain their next session inherits: miner -> why."""
        return {
            miner_id: reason
            for miner_id, (reason, _) in self._drains.items()
            if miner_id not in self.by_miner
        }

    def miners_away(self) -> set[str]:
        """Miners gone within their grace period: jobs of theirs, or an operator's drain, wait for them."""
        return (self.orphans.keys() | self.drains_pending().keys()) - self.by_miner.keys()

    def miners_draining(self) -> int:
        """Miners whose drain is not over: connected and draining, or away with a drain pending (GetStats, the
        gauge and ListMiners count the same)."""
        return sum(1 for s in self.by_miner.values() if s.draining) + len(self.drains_pending())

    # ------------------------------------------------------------------ miners: work
    def heartbeat(self, session: Session, running: list[tuple[str, int]]) -> None:
        now = now_us()
        session.last_seen_us = session.heartbeat_us = now
        lease_us = now + int(self.settings.lease_s * MICROS)
        for job_id, attempt in running:
            held = session.held.get(job_id)
            if held is not None and held.attempt == attempt:
                held.lease_us = lease_us

    def progress(self, session: Session, job_id: str, attempt: int) -> None:
        self.heartbeat(session, [(job_id, attempt)])

    async def offer(self, session: Session, slots: int) -> None:
        """A stream's Capacity: the miner takes `slots` jobs at once from now on. Raised, the slots freed are
        filled now (as after a finished job); lowered, the session leaves `available` until its jobs are fewer."""
        session.last_seen_us = now_us()
        if not session.offer(slots):
            self._refresh_available(session)
            return
        now = now_us()
        if self._refill_wait_until() > now:
            # Commits keep failing (a full disk): filled now, the raised slots' write would fail too, taking
            # queued jobs out with it, once per raise of a miner that flaps its capacity (0, N, 0, N...): a
            # failing write per message. They are filled as the undo's refills are, after its backoff.
            self._refresh_available(session)
            self._refill_after_failure([session])
            return
        pending = _Pending()
        self._fill(session, pending, now)
        try:
            await self._commit(pending)
        except Exception:  # (undone already: its jobs are read back, the slots it freed refilled)
            # The Capacity itself needs no write: a failed fill is the coordinator's, not the miner's. Raised, it
            # ended the stream, while the refill of the slots it freed went to that stream: never told, the job
            # was lost when the miner came back without it (its attempt spent).
            log.warning("the jobs for miner %s's raised capacity could not be written; read back",
                        session.miner_id, exc_info=True)  # fmt: skip

    async def accept(self, session: Session, job_id: str, attempt: int) -> None:
        await self._unless_detached(session, job_id)
        held = self._fenced(session, job_id, attempt)
        job = held.job
        if job.state is not JobState.ASSIGNED:
            return  # a repeated accept changes nothing
        pending = _Pending()
        _record_accept(pending, job, now_us())
        await self._commit_message(session, pending)

    def assigned_among(self, session: Session, running: list[tuple[str, int]]) -> list[Held]:
        """Of the jobs a unary Heartbeat lists, those session holds at the listed attempt and still ASSIGNED: its
        miner runs them, so they are accepted (accept_listed), as a stream's Accept would. Jobs RUNNING already, at
        a stale attempt, not held (finished, taken back, out of memory being read back after a failed commit)
        are not: most heartbeats find none, and cost no write. None either while commits keep failing (a full
        disk): each heartbeat would add a failing write; the first after the refill's backoff accepts them."""
        if self._refill_wait_until() > now_us():
            return []
        found = []
        for job_id, attempt in running:
            held = session.held.get(job_id)
            if held is not None and held.attempt == attempt and held.job.state is JobState.ASSIGNED:
                found.append(held)
        return found

    async def accept_listed(self, session: Session, listed: list[Held]) -> None:
        """Accept the ASSIGNED jobs a unary Heartbeat listed (assigned_among): ASSIGNED -> RUNNING, reason ACCEPTED,
        as a stream's Accept, in one commit. A failed write is undone as an accept's is (the jobs taken out, read
        back from the store: ASSIGNED, still the session's) and logged, not raised: the heartbeat itself needed no
        write (its leases are renewed, its cancels due), and the next heartbeat listing them accepts them."""
        now = now_us()
        pending = _Pending()
        for held in listed:
            # (no await since assigned_among: checked again all the same, as a guard against a caller's await)
            if session.held.get(held.job.job_id) is held and held.job.state is JobState.ASSIGNED:
                _record_accept(pending, held.job, now)
        try:
            await self._commit_message(session, pending)
        except Exception:
            log.warning("the accept of %d jobs listed by miner %s's heartbeat could not be written; read back",
                        len(listed), session.miner_id, exc_info=True)  # fmt: skip

    async def reject(self, session: Session, job_id: str, attempt: int, reason: str) -> None:
        await self._unless_detached(session, job_id)
        held = self._fenced(session, job_id, attempt)
        job = held.job
        now = now_us()
        pending = _Pending()
        session.held.pop(job_id, None)
        # A miner offering no slot (Capacity 0: leaving, or every slot held by a stuck runner) gives the job back
        # rather than refuses it: no pause for its identity (a miner restarted at once would wait it out).
        until = None if session.offered == 0 else self._refused(job, session.miner_id, now)
        self._give_back(job, held, "REJECTED", reason, now, pending, session)
        self._fill(session, pending, now)
        await self._commit_message(session, pending)
        # The job goes to other miners meanwhile. Should none take it, this miner (whichever session it has
        # then) is offered it again once the pause is over: a refusal is often for a moment (a slot still busy),
        # and nothing else may fill its slot meanwhile.
        if until is not None:
            self.timers.schedule(until, "refusal_over", session.miner_id)

    def _refused(self, job: Job, miner_id: str, now: int) -> int:
        """Note that miner_id rejected job: until when it is not offered the job again (the pause doubles with
        each of its refusals of the job, as a retry's backoff does with each attempt)."""
        refusals = self._refusals.setdefault(job.job_id, {})
        count = refusals.get(miner_id, _NO_REFUSAL)[0] + 1
        until = now + int(reject_pause_s(self.settings, count) * MICROS)
        refusals[miner_id] = (count, until)
        return until

    def _refuses(self, job: Job, miner_id: str, now: int) -> bool:
        """Whether miner_id rejected job and its pause is not over."""
        refusals = self._refusals.get(job.job_id)
        return refusals is not None and refusals.get(miner_id, _NO_REFUSAL)[1] > now

    async def complete(
        self,
        session: Session,
        results: list[ResultIn],
        acks: list[AckOut] | None = None,
        later: Callable[[AckOut], None] | None = None,
        *,
        in_background: bool = False,
    ) -> list[AckOut]:
        """Accept results (fenced), issue one receipt each, refill the freed slots; all in one commit.

        The acks are appended to acks (returned) once their results are durable: should a later write fail (a
        result waiting for a read-back, retried), the caller still has those of the results that landed, to
        send before the error. With `later` (a stream), a result for a job coming back to this miner after a
        failed commit is answered through it once the job is back, and the call does not wait for that.
        `in_background`: called so, by that answer (_when_back): its write failing does not end the stream."""
        now = now_us()
        session.last_seen_us = now
        pending = _Pending()
        if acks is None:
            acks = []
        decided: list[AckOut] = []  # this commit's: they join acks once it is durable
        unmatched: list[ResultIn] = []
        # No await until the commit is queued: receipts' log leaves must reach the writer in issue order.
        for r in results:
            held = self._running(session, r.job_id, r.attempt)
            if held is None:
                unmatched.append(r)
                continue
            job = held.job
            if job.state is JobState.ASSIGNED:  # a result implies the accept
                pending.record(job, states.transition(job, JobState.RUNNING, "ACCEPTED", now))
            result = JobResult(
                job.job_id, job.attempt, r.output, r.output_kind, r.result_sha256, r.units, r.unit_type,
                session.miner_id, now, miner_report=r.miner_report, miner_signature=r.miner_signature,
            )  # fmt: skip
            try:
                receipt_id = self.receipts.issue(job, result, session, pending.unit) if self.receipts else ""
            except CoordinatorError as exc:
                decided.append(AckOut(r.job_id, r.attempt, False, reason=exc.reason, message=exc.message))
                continue
            except Exception:  # a result intake let through: refused alone (the batch's others are decided)
                log.exception("could not issue the receipt of job %s attempt %d", r.job_id, r.attempt)
                decided.append(AckOut(r.job_id, r.attempt, False, reason="INVALID_RESULT",
                                      message="the result cannot be receipted (see the coordinator log)"))  # fmt: skip
                continue
            result.receipt_id = receipt_id
            pending.unit.add_result(result)
            pending.record(job, states.transition(job, JobState.COMPLETED, "COMPLETED", now))
            del session.held[job.job_id]
            session.completed += 1
            self.samples_run.append((now, now - job.started_us))
            self._finish(job, pending)
            decided.append(AckOut(job.job_id, job.attempt, True, receipt_id=receipt_id))
        # Which jobs are coming back to this miner, as of now: read back while the commit below waits, one is
        # no longer "coming back" then, yet its result is still answered through `later` (its own write failing
        # must not end the stream, with no answer: it is refused NOT_STORED after WRITE_TRIES, as otherwise).
        coming = {r.job_id for r in unmatched if later is not None and self._coming_back(session, r.job_id)}
        self._fill(session, pending, now)
        await self._commit_message(session, pending, in_background=in_background)
        acks.extend(decided)
        for r in unmatched:
            if later is not None and (r.job_id in coming or self._coming_back(session, r.job_id)):
                self._when_back(session, r.job_id, r.attempt, "result",
                                functools.partial(self.complete, session, [r], in_background=True), later)  # fmt: skip
                continue
            await self._unless_detached(session, r.job_id)
            # read back meanwhile (while this call waited for it, or for the commit above): try it again
            if self._running(session, r.job_id, r.attempt) is not None:
                await self.complete(session, [r], acks, in_background=in_background)
            else:
                acks.append(await self._refusal_or_repeat(session, r.job_id, r.attempt, result=r))
        return acks

    @staticmethod
    def _running(session: Session, job_id: str, attempt: int) -> Held | None:
        """The session's hold of job_id at attempt, if the job runs there (a result for it may land)."""
        held = session.held.get(job_id)
        if held is None or held.attempt != attempt or held.job.state not in _HELD:
            return None
        return held

    async def _refusal_or_repeat(
        self, session: Session, job_id: str, attempt: int, failure: FailureIn | None = None,
        result: ResultIn | None = None,
    ) -> AckOut:  # fmt: skip
        """A result (or a failure report) not matching a held attempt: the same ack again if it repeats an
        accepted one (sent again, its ack lost with a stream: the result is stored, the same output and units,
        or the report recorded in the job's events as it made them); refused otherwise (another output is no
        repeat: no receipt certifies it)."""
        if failure is not None:
            events = await self.store.get_events(job_id)
            if states.records_failure(
                events, session.miner_id, attempt, failure.retryable, _code(failure), failure.message
            ):
                return AckOut(job_id, attempt, True)
        elif job_id not in self.jobs:
            stored = await self.store.get_result(job_id)
            if stored is not None and stored.attempt == attempt and stored.miner_id == session.miner_id:
                if result is None or _same_result(stored, result):
                    return AckOut(job_id, attempt, True, receipt_id=stored.receipt_id)
                return AckOut(job_id, attempt, False, reason="JOB_NOT_HELD",
                              message=f"job {job_id} attempt {attempt} was completed with another result (receipt "
                                      f"{stored.receipt_id}): this one is not taken")  # fmt: skip
        job = self.jobs.get(job_id)
        if job is not None and job.miner_id == session.miner_id and job.attempt != attempt:
            return AckOut(job_id, attempt, False, reason="STALE_ATTEMPT",
                          message=f"attempt {attempt} is stale; the job is at attempt {job.attempt}")  # fmt: skip
        return AckOut(job_id, attempt, False, reason="JOB_NOT_HELD",
                      message=f"this miner does not hold job {job_id} attempt {attempt}")  # fmt: skip

    async def fail(
        self,
        session: Session,
        failure: FailureIn,
        later: Callable[[AckOut], None] | None = None,
        *,
        in_background: bool = False,
    ) -> AckOut | None:
        """A miner's failure report. With `later` (a stream), one about a job coming back to this miner after a
        failed commit is answered through it once the job is back (None now). `in_background`: called so, by
        that answer (_when_back): its write failing does not end the stream."""
        if later is not None and self._coming_back(session, failure.job_id):

            async def again() -> list[AckOut]:
                ack = await self.fail(session, failure, in_background=True)
                return [] if ack is None else [ack]

            self._when_back(session, failure.job_id, failure.attempt, "failure report", again, later)
            return None
        now = now_us()
        session.last_seen_us = now
        if await self._unless_detached(session, failure.job_id):
            now = now_us()
        held = session.held.get(failure.job_id)
        if held is None or held.attempt != failure.attempt:
            if failure.job_id in self._unsettled:
                # A change to the job is being written: this very report's first copy, say (its ack lost with
                # its stream), its job already queued again and back on this miner at the next attempt. What
                # lands decides: the report is then recorded (a repeat), or it failed and the job is as before.
                await self._settled(failure.job_id)
                return await self.fail(session, failure, later, in_background=in_background)
            return await self._refusal_or_repeat(session, failure.job_id, failure.attempt, failure)
        job = held.job
        pending = _Pending()
        del session.held[job.job_id]
        session.failed += 1
        self._retry_or_fail(job, failure.retryable, _code(failure), failure.message, now, pending)
        self._fill(session, pending, now)
        await self._commit_message(session, pending, in_background=in_background)
        return AckOut(job.job_id, failure.attempt, True)

    def _fenced(self, session: Session, job_id: str, attempt: int) -> Held:
        held = session.held.get(job_id)
        if held is None:
            raise CoordinatorError(Kind.FAILED_PRECONDITION, "JOB_NOT_HELD",
                                   f"this miner does not hold job {job_id}", metadata={"job_id": job_id})  # fmt: skip
        if held.attempt != attempt:
            raise CoordinatorError(Kind.FAILED_PRECONDITION, "STALE_ATTEMPT",
                                   f"attempt {attempt} is stale; the job is at attempt {held.attempt}",
                                   metadata={"job_id": job_id})  # fmt: skip
        return held

    async def poll(
        self, session: Session, max_jobs: int, timeout_s: float
    ) -> tuple[list[AssignmentOut], list[CancelOut]]:
        """Long-poll for the unary path: wait until there is news for the miner (work assigned to session, a
        cancel, its drain not yet told) or timeout_s passes; at most max_jobs assignments are taken (the rest
        wait for another poll). Raises SESSION_DRAINED once an operator's drain is done (end_if_drained)."""
        self.end_if_drained(session)
        deadline = asyncio.get_running_loop().time() + timeout_s
        session.poll_waiting += 1
        session.poll_asks += max_jobs
        try:
            while True:
                if self.stopping and not _poll_news(session) and not session.closed:
                    # (stop()'s go-away wakes it: waiting on, it was cut only at the grace's end, holding the stop)
                    raise CoordinatorError(
                        Kind.UNAVAILABLE, "SHUTTING_DOWN", "the coordinator is shutting down"
                    )
                if not _poll_news(session) and not session.closed:
                    pending = _Pending()
                    # what the waiting polls ask for, less what is already decided for them
                    room = max(0, session.poll_asks - session.untold())
                    self._fill(session, pending, now_us(), limit=room)
                    if pending.unit or pending.sends or pending.always:  # (always: a drained session's end)
                        await self._commit(pending)
                if _poll_news(session) or session.closed:
                    break
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                session.wakeup.clear()
                try:
                    await asyncio.wait_for(session.wakeup.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            session.poll_waiting -= 1
            session.poll_asks -= max_jobs
        session.last_seen_us = now_us()
        self.end_if_drained(session)
        assignments = session.pending_assignments[:max_jobs]
        del session.pending_assignments[:max_jobs]
        assignments = self.deliverable(session, assignments)
        if session.pending_assignments:
            session.wakeup.set()  # for another poll of the session waiting meanwhile
        return assignments, self.take_cancels(session)

    def take_cancels(self, session: Session) -> list[CancelOut]:
        cancels, session.pending_cancels = session.pending_cancels, []
        return cancels

    @staticmethod
    def report_drain(session: Session) -> bool:
        """Whether a unary answer says the session drains (noted: a waiting poll no longer returns to say so)."""
        if session.drain_told:
            session.drain_reported = True
        return session.drain_told

    # ------------------------------------------------------------------ matching and dispatch
    def _eligible(self, session: Session, constraints: Constraints) -> bool:
        base, limit = split_price(constraints) if constraints.max_price else (constraints, None)
        if limit is not None and session.price > limit:
            return False
        return self._eligible_base(session, base)

    @staticmethod
    def _eligible_base(session: Session, base: Constraints) -> bool:
        """Whether session meets constraints without a price limit: cached per session, up to
        ELIGIBILITY_CACHE entries (the oldest goes first), since clients choose the constraint sets."""
        cache = session.eligibility
        cached = cache.get(base)
        if cached is None:
            if len(cache) >= ELIGIBILITY_CACHE:
                del cache[next(iter(cache))]
            cached = cache[base] = eligible(base, session.caps)
        return cached

    def deliverable(self, session: Session, assignments: list[AssignmentOut]) -> list[AssignmentOut]:
        """Of assignments about to leave for session's miner (a poll's answer, a stream write), those to send:
        the ones it still holds at their attempt (told from now on), and those it held at that attempt when a
        failed commit took their job out to be read back (the miner may as well have them: the read-back puts a
        job still its own back on its session). Not one given back meanwhile (its session replaced, its lease
        run out before it left): its attempt unspent, it would run twice at that attempt. Nor a second one of an
        attempt already told (Session.tell): the miner would run it twice too."""
        session.unsent.difference_update((a.job.job_id, a.attempt) for a in assignments)
        return [a for a in assignments if session.tell(a) or self._held_when_detached(session, a)]

    def _held_when_detached(self, session: Session, a: AssignmentOut) -> bool:
        marker = self._detached.get(a.job.job_id)
        if marker is None or marker.holder is not session or marker.attempt != a.attempt or marker.told:
            return False  # (told: it left before, or its miner listed it; a second one would run it twice)
        marker.told = True  # (read back, it spends its attempt if lost: its miner may run it)
        return True

    def _pick_session(self, job: Job, exclude: Session | None = None) -> Session | None:
        """The idle eligible miner for job: least loaded, then best record. None once the coordinator stops."""
        if self.stopping:
            return None  # (every miner was told to go away: an assignment sent after that is never read)
        best: Session | None = None
        best_key: tuple[float, float] | None = None
        c = job.constraints  # split once, not per session: hashing constraints is most of a cache lookup
        base, limit = split_price(c) if c.max_price else (c, None)
        # whether base is met, once per capability set (sessions sharing a reach share it), not per session:
        # an idle fleet that cannot take the job costs a lookup per miner, not a hash of the constraints
        verdicts: dict[Reach, bool] = {}
        # rejected by some miner: those in their pause are passed over
        refused = job.job_id in self._refusals
        now = now_us() if refused else 0
        for session in self.available.values():
            reach = session.reach
            fits = None if reach is None else verdicts.get(reach)
            if fits is None:
                fits = self._eligible_base(session, base)
                if reach is not None:
                    verdicts[reach] = fits
            if not fits or session is exclude or not session.takes_work:
                continue
            if limit is not None and session.price > limit:
                continue
            if refused and self._refuses(job, session.miner_id, now):
                continue
            # load by the slots it offers now (takes_work: at least 1), not its hello's: a miner offering 2 of 8
            # and holding 1 is half loaded, not an eighth
            key = (len(session.held) / session.offered, -session.record_score())
            if best_key is None or key < best_key:
                best, best_key = session, key
                if key[0] == 0.0 and key[1] == -1.0:
                    break  # an idle miner with a clean record: nothing beats it
        return best

    def _assign(self, job: Job, session: Session, pending: _Pending, now: int) -> AssignmentOut:
        pending.record(
            job, states.transition(job, JobState.ASSIGNED, "ASSIGNED", now, miner_id=session.miner_id)
        )
        lease_us = now + int(self.settings.lease_s * MICROS)
        exec_us = now + job.execution_timeout_us
        # Not told yet: a unary miner hears of it when a poll hands it out, a stream's once the stream's writer
        # begins to write it (Session.tell); until then, a lost session gives it back with its attempt unspent.
        session.held[job.job_id] = Held(
            job, job.attempt, lease_us, exec_us, told=False, transport=session.transport
        )
        if session.free <= 0:
            self.available.pop(session.session_id, None)
        self.timers.schedule(lease_us, "lease", job.job_id, job.attempt)
        self.timers.schedule(exec_us, "exec", job.job_id, job.attempt)
        self.samples_wait.append((now, now - job.queued_us))
        out = AssignmentOut(job, job.attempt, lease_us, exec_us)
        pending.sends.append((session, [out]))
        return out

    def _fill(self, session: Session, pending: _Pending, now: int, *, limit: int | None = None) -> None:
        """Give session queued work up to its free slots (one batched message); close a drained session.

        Every path that frees a slot ends here, so this is also where a session rejoins `available`."""
        if limit is None and session.transport == "unary":
            # A unary miner takes what its polls ask for (max_jobs), when they ask: a waiting poll fills itself.
            # (Filled here, jobs waited unseen, their leases running, and a poll answered more than max_jobs.)
            limit = 0
            session.wakeup.set()
        try:
            self._fill_slots(session, pending, now, limit)
        finally:
            self._refresh_available(session)

    def _refresh_available(self, session: Session) -> None:
        if session.free > 0 and not (session.closed or session.draining):
            self.available[session.session_id] = session
        else:
            self.available.pop(session.session_id, None)

    def _fill_slots(self, session: Session, pending: _Pending, now: int, limit: int | None) -> None:
        if session.draining and not session.held and not session.reserved:
            # once this decision is settled (applied, or undone: its job may come back to the session)
            pending.always.append(functools.partial(self._close_if_drained, session))
        if session.closed or session.draining or self.stopping:
            return  # (stopping: its GoAway is the last message its stream sends; a job decided after it is lost)
        want = session.free if limit is None else min(limit, session.free)
        batch: list[AssignmentOut] = []
        reach = session.reach = self.queues.reach(session.caps, session.reach)  # its shapes, no others
        # jobs the miner rejected, in their pause, are passed over: left in their place for other miners
        refused = (
            functools.partial(self._refuses, miner_id=session.miner_id, now=now) if self._refusals else None
        )
        while len(batch) < want:
            job = self.queues.pop_in(reach, session.price, refused)
            if job is None:
                break
            out = self._assign(job, session, pending, now)
            pending.sends.pop()  # merged into one message below
            batch.append(out)
        if batch:
            pending.sends.append((session, batch))

    def _dispatch_or_queue(self, job: Job, exclude: Session | None = None) -> None:
        """A job became ready outside a client call (requeue, backoff over): push it or queue it."""
        if job.state is not JobState.QUEUED or job.in_queue or self.jobs.get(job.job_id) is not job:
            return  # no longer queued, already in the queues, or taken out after a failed commit
        if job.expires_us <= now_us():  # its time to live ran out while it was out (with a miner, read back)
            self._on_timer("ttl", (job.job_id,))
            return
        session = self._pick_session(job, exclude)
        if session is None:
            self.queues.push(job)
            self._time_to_live(job)
            return
        pending = _Pending()
        self._assign(job, session, pending, now_us())
        self._spawn_commit(pending)

    def _spawn_commit(self, pending: _Pending) -> None:
        # Queued now, in decision order: a task queues only when it first runs, after whatever was decided
        # in between (a cancel of the same job was written first, then overwritten by this assignment).
        try:
            outcome = self.queue_commit(pending)
        except Exception:
            log.exception("background commit failed")
            return
        task = asyncio.get_running_loop().create_task(self.finish_commit(pending, outcome))
        task.add_done_callback(_log_failure)

    # ------------------------------------------------------------------ leases, retries, timers
    def _holder(self, job: Job) -> Session | None:
        session = self.by_miner.get(job.miner_id)
        if session is not None and job.job_id in session.held:
            return session
        return None

    def _requeue_held(self, job: Job, held: Held, reason: str, now: int, pending: _Pending,
                      session: Session | None = None) -> None:  # fmt: skip
        """A held job its miner lost: the attempt is spent, unless the miner never heard of it (a unary
        assignment no poll handed out, a stream's its writer never wrote: given back unspent, to another miner
        than session's first)."""
        if held.told:
            self._lose_lease(job, reason, now, pending)
        else:
            self._give_back(job, held, reason, held.unsent, now, pending, session)

    def _give_back(self, job: Job, held: Held, reason: str, message: str, now: int, pending: _Pending,
                   session: Session | None) -> None:  # fmt: skip
        """The attempt held goes back unspent (the miner refused the job, or never heard of it): the job is
        queued at once as it was before its assignment, for another miner first. Fencing still holds: the
        holder is checked too."""
        event = states.transition(job, JobState.QUEUED, reason, now, message=message)
        job.attempt -= 1
        pending.record(job, dataclasses.replace(event, attempt=job.attempt))
        pending.given_back[job.job_id] = held.attempt  # (the attempt its miner held, should this write fail)
        self._untold_if_so(held, pending)
        pending.after.append(lambda: self._dispatch_or_queue(job, exclude=session))

    @staticmethod
    def _cancel_or_withdraw(session: Session, held: Held, reason: str, pending: _Pending) -> None:
        """Held's job, just taken from session, is no longer its miner's. A miner that may have heard of it is
        sent a Cancel once the change is durable. One that never did hears nothing: its assignment, still in
        the stream's outbox or waiting for a poll, is withdrawn (a Cancel would name a job it never had). The
        writer already passes it over (deliverable: the session no longer holds it), so it cannot leave after
        this decision; should the change fail, the job read back decides whether it still leaves."""
        if held.told:
            pending.sends.append((session, CancelOut(held.job.job_id, held.attempt, reason)))
        else:
            pending.after.append(functools.partial(session.withdraw, held.job.job_id, held.attempt))

    @staticmethod
    def _untold_if_so(held: Held, pending: _Pending) -> None:
        """Note in pending that it takes held's job from a session whose miner never heard of it (should the
        write fail, the job read back is still untold there: see UndoFailedCommits._detach)."""
        if not held.told:
            pending.untold[held.job.job_id] = held.transport

    def _lose_lease(self, job: Job, reason: str, now: int, pending: _Pending) -> None:
        """The miner lost the job (lease expired, stream gone past grace): requeue with attempt+1, or fail."""
        job.reassignments += 1
        if job.reassignments > self.settings.max_reassignments:
            pending.record(job, states.transition(job, JobState.FAILED, "REASSIGNMENTS_EXHAUSTED", now,
                                                  message=f"lost by miners {job.reassignments} times ({reason})"))  # fmt: skip
            self._finish(job, pending)
            return
        self._retry_or_fail(job, True, reason, "", now, pending, backoff=False)

    def _retry_or_fail(self, job: Job, retryable: bool, code: str, message: str, now: int, pending: _Pending,
                       *, backoff: bool = True) -> None:  # fmt: skip
        to_state, reason, detail = states.after_failure(
            job.attempt, retryable, code, message, job.attempt >= job.max_attempts
        )
        if to_state is JobState.FAILED:
            pending.record(job, states.transition(job, JobState.FAILED, reason, now, message=detail))
            self._finish(job, pending)
            return
        event = states.transition(job, JobState.QUEUED, reason, now, message=detail)
        if backoff:
            delay = min(
                self.settings.retry_backoff_base_s * 2 ** (job.attempt - 1), self.settings.retry_backoff_max_s
            )
            job.not_before_us = now + int(
                delay * MICROS
            )  # before the row is taken: stored, it outlives a restart
            self.timers.schedule(job.not_before_us, "ready", job.job_id)
            self._time_to_live(job)  # (it may run out while the job waits)
        else:
            pending.after.append(lambda: self._dispatch_or_queue(job))
        pending.record(job, event)

    def _enqueue_or_wait(self, job: Job, now: int) -> None:
        if job.not_before_us > now:
            self.timers.schedule(job.not_before_us, "ready", job.job_id)
        else:
            self.queues.push(job)
        self._time_to_live(job)

    def _time_to_live(self, job: Job) -> None:
        """A timer for job's time to live, which only a job waiting for a miner can run out of. Scheduled the
        first time it waits, not at submit: most jobs are assigned at once, and a timer each was one more heap
        entry per job left for the sweep. One per job object: kept by the sweep while the job is live, it stays
        due whenever the job waits again."""
        if not job.ttl_timed:
            job.ttl_timed = True
            self.timers.schedule(job.expires_us, "ttl", job.job_id)

    def _finish(self, job: Job, pending: _Pending) -> None:
        """Forget a terminal job once its terminal state is durable: until then reads must see it here,
        since the store may still hold the previous state."""
        pending.after.append(functools.partial(self._forget, job))

    def _forget(self, job: Job) -> None:
        if self.jobs.get(job.job_id) is job:
            del self.jobs[job.job_id]
            self._refusals.pop(job.job_id, None)
            key = (job.client_id, job.idempotency_key)
            if job.idempotency_key and self.idempotency.get(key) == job.job_id:
                # the store's unique index answers for it from now on (kept, the map grew with every key used)
                del self.idempotency[key]

    def _timer_live(self, at_us: int, kind: str, args: tuple) -> bool:
        """Whether a timer may still act when it fires (TimerHeap sweeps the others): its job is live (or being
        read back), at the attempt it names for a lease or deadline, and its session open. Whatever comes back
        later (a job read back, a miner reconnecting) schedules timers of its own."""
        if kind in ("ttl", "ready"):
            return args[0] in self.jobs or args[0] in self._detached
        if kind in ("lease", "exec"):
            job = self.jobs.get(args[0])
            held = job is not None and job.attempt == args[1] and job.state in _HELD
            return held or args[0] in self._detached
        if kind in ("liveness", "refill"):
            return args[0] in self.sessions
        if kind == "orphans":
            return args[0] in self.orphans or args[0] in self._drains
        if kind == "stream_end":
            return args[0].stream_task is not None and not args[0].stream_task.done()
        return True  # refusal_over (a pause over soon), and any kind added later

    def _on_timer(self, kind: str, args: tuple) -> None:
        now = now_us()
        if kind == "ttl":
            job = self.jobs.get(args[0])
            if job is not None and job.state is JobState.QUEUED and job.expires_us <= now:
                pending = _Pending()
                pending.record(job, states.transition(job, JobState.EXPIRED, "TTL_EXPIRED", now,
                                                      message="no miner took the job before its time to live ran out"))  # fmt: skip
                self.queues.discard(job)
                self._finish(job, pending)
                self._spawn_commit(pending)
        elif kind == "ready":
            job = self.jobs.get(args[0])
            if job is not None and job.state is JobState.QUEUED and job.not_before_us <= now:
                job.not_before_us = 0
                if job.expires_us <= now:
                    self._on_timer("ttl", (job.job_id,))
                else:
                    self._dispatch_or_queue(job)
        elif kind in ("lease", "exec"):
            self._on_job_deadline(kind, args[0], args[1], now)
        elif kind == "liveness":
            session = self.sessions.get(args[0])
            if session is None or session.closed:
                return
            timeout_us = int(self.settings.heartbeat_timeout_s * MICROS)
            blocked = session.write_blocked_since_us
            if blocked and now - blocked >= timeout_us and session.stream_task is not None:
                # The miner still talks but stopped reading: a write has waited a whole timeout for HTTP/2
                # flow control. End the stream; its jobs wait out the grace period like any lost stream's.
                session.end_reason = "STREAM_STALLED"
                session.stream_task.cancel()
                return
            # While the coordinator itself handles one of its messages (waiting for a slow store, say), the
            # stream is not read: the miner's heartbeats wait there, and its silence is ours.
            # A unary miner's long-poll waiting here is the miner present, waiting for us, as well.
            waiting = session.handling or session.poll_waiting
            deadline = now + timeout_us if waiting else session.last_seen_us + timeout_us
            if blocked:
                deadline = min(deadline, blocked + timeout_us)
            if deadline > now:
                self.timers.schedule(deadline, "liveness", session.session_id)
                return
            pending = _Pending()
            self._remember_drain(session, now)
            if session.transport == "unary":
                # A unary miner has no connection to lose: its silence is how a network outage or a failed proxy
                # looks (what a stream's dropped connection is). Its jobs wait out the grace period, as a lost
                # stream's do, for it to register again listing them.
                # (While the coordinator stops, they stay held, as a lost stream's do then: the next start's.)
                self._orphan_held(session, now, pending)
            # (A stream silent while its connection stays up is a stuck miner, not a lost one: a lost connection
            # ends the stream, or keepalive does. Its jobs go back to the queue now.)
            self._close(session, pending, "HEARTBEAT_TIMEOUT", requeue=session.transport != "unary")
            self._spawn_commit(pending)
        elif kind == "orphans":
            self._expire_orphans(args[0], now)
        elif kind == "refill":
            session = self.sessions.get(args[0])
            if session is not None:
                self._refill([session], now)
        elif kind == "refusal_over":  # (by miner: its session may have been replaced meanwhile)
            session = self.by_miner.get(args[0])
            if session is not None:
                self._refill([session], now)
        elif kind == "stream_end":
            self._end_unread_stream(args[0], now)

    def _end_unread_stream(self, session: Session, now: int) -> None:
        """A closed session's stream whose handler still runs: its GoAway waits behind a write its miner does not
        read (a process hung, or reading nothing, while its transport answers keepalive pings). Closed, the session is
        out of the liveness check, which ends such a stream while its session is open: its handler, its outbox (the
        jobs in it, payloads and all) and its identity's count of open streams were held until the miner's side
        ended the call, if ever. Once that write has waited a whole heartbeat timeout, the stream ends as a stalled
        one does (UNAVAILABLE STREAM_STALLED); until then it is checked again."""
        task = session.stream_task
        if task is None or task.done() or self.stopping:  # (stopping: the server's stop ends every call)
            return
        timeout_us = int(self.settings.heartbeat_timeout_s * MICROS)
        blocked = session.write_blocked_since_us
        if blocked and now - blocked >= timeout_us:
            session.end_reason = "STREAM_STALLED"
            task.cancel()
            return
        self.timers.schedule((blocked or now) + timeout_us, "stream_end", session)

    def _expire_orphans(self, miner_id: str, now: int) -> None:
        """Jobs of a miner that did not come back within the grace period go back to the queue."""
        orphans = self.orphans.get(miner_id)
        if not orphans:
            self._forget_drain_if_over(miner_id, now)
            return
        pending = _Pending()
        for job_id, held in list(orphans.items()):
            if held.lease_us > now:
                continue
            del orphans[job_id]
            job = self.jobs.get(job_id)
            if job is not None and job.attempt == held.attempt and not job.state.terminal:
                pending.unheld.add(job_id)
                # (one untold: a job read back after a failed commit whose miner never heard of it)
                self._requeue_held(job, held, held.lost, now, pending)
        if orphans:
            self.timers.schedule(min(h.lease_us for h in orphans.values()), "orphans", miner_id)
        else:
            del self.orphans[miner_id]
            self._forget_drain_if_over(miner_id, now)  # (if not yet, its own timer forgets it)
        self._spawn_commit(pending)

    def _forget_drain_if_over(self, miner_id: str, now: int) -> None:
        drain = self._drains.get(miner_id)
        if drain is not None and drain[1] <= now:
            del self._drains[miner_id]  # not back in time: its drain is over
            self._drain_over(miner_id)

    def _silent_unary(self, session: Session, held: Held) -> bool:
        """Whether held's lease, run out, was not renewed because its unary miner is silent (no Heartbeat since the
        lease's last renewal, no call begun since it ran out), rather than because the miner dropped the job (a
        Heartbeat not listing it) or stopped renewing it (calls, no heartbeat). Silence is how a network outage
        looks on the unary path, and its session's liveness check ends it then, its jobs kept for the grace period
        (_orphan_held): expired first (LEASE_SECONDS is no longer than HEARTBEAT_TIMEOUT_SECONDS, and a poll waiting
        here keeps the session open), they were lost all the same. Bounded: a miner still silent is closed within
        a heartbeat timeout (after the polls it left waiting here end, 60 s at most); one that calls ends this."""
        if session.transport != "unary" or not held.told:
            # (a stream's connection carries its heartbeats: lost, the stream ends; silent, it is stuck. An
            # assignment no poll handed out goes back unspent now: its miner never heard of it)
            return False
        renewed_us = held.lease_us - int(self.settings.lease_s * MICROS)
        return session.heartbeat_us <= renewed_us and session.called_us < held.lease_us

    def _back_from_silence(self, session: Session, held: Held) -> bool:
        """Whether held's lease ran out while its unary miner was silent (_silent_unary) and the miner is back, with
        a call, before its session's liveness check, but has not yet said whether it still runs the job (no
        Heartbeat since). Its first call back is a poll, say, its heartbeat retried on a backoff of its own: lost
        then, the job would cost it more than a longer silence does (its session closed, it registers again listing
        the job, and keeps it). It gets a fresh lease, as a miner registering again does; a Heartbeat not listing
        the job, or none, loses it then, LEASE_EXPIRED."""
        if held.silent_lease_us != held.lease_us or session.transport != "unary":
            return False  # (renewed since: a heartbeat listed it)
        return session.heartbeat_us <= held.lease_us - int(self.settings.lease_s * MICROS)

    def _on_job_deadline(self, kind: str, job_id: str, attempt: int, now: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state not in (JobState.ASSIGNED, JobState.RUNNING):
            return
        session = self._holder(job)
        if session is None:
            return  # orphaned: the grace timer decides
        held = session.held[job_id]
        pending = _Pending()
        if kind == "lease":
            if held.lease_us > now:
                self.timers.schedule(held.lease_us, "lease", job_id, attempt)
                return
            if session.handling and session.handling_since_us <= held.lease_us:
                # one of its messages has been handled since before the lease ran out: its heartbeats may
                # wait unread behind it (a stream read between messages renews or drops leases as usual)
                self.timers.schedule(now + LEASE_RECHECK_US, "lease", job_id, attempt)
                return
            if self._silent_unary(session, held):
                # the liveness check decides: a silent unary session's jobs wait out the grace period once it closes
                if not (session.poll_waiting or held.fresh_lease_us == held.lease_us):
                    # silent indeed (a poll waiting is the miner there as likely as not: its next poll, no
                    # heartbeat, loses the job), and not on the fresh lease of its last return
                    held.silent_lease_us = held.lease_us
                self.timers.schedule(now + LEASE_RECHECK_US, "lease", job_id, attempt)
                return
            if self._back_from_silence(session, held):
                held.lease_us = held.fresh_lease_us = now + int(self.settings.lease_s * MICROS)
                self.timers.schedule(held.lease_us, "lease", job_id, attempt)
                return
            del session.held[job_id]
            self._cancel_or_withdraw(session, held, "LEASE_EXPIRED", pending)
            self._requeue_held(job, held, "LEASE_EXPIRED", now, pending, session)
        else:
            if held.exec_deadline_us > now:
                return
            del session.held[job_id]
            self._cancel_or_withdraw(session, held, "EXECUTION_TIMEOUT", pending)
            if held.told:
                session.failed += 1
                self._retry_or_fail(job, True, "EXECUTION_TIMEOUT",
                                    f"attempt {attempt} ran longer than {job.execution_timeout_us / MICROS:g} s", now, pending)  # fmt: skip
            else:  # it never ran (its stream's writer stuck, no poll came): back unspent, not the miner's failure
                self._requeue_held(job, held, "EXECUTION_TIMEOUT", now, pending, session)
        self._fill(session, pending, now)
        self._spawn_commit(pending)


def _record_accept(pending: _Pending, job: Job, now: int) -> None:
    """The miner runs job: ASSIGNED -> RUNNING, reason ACCEPTED (a stream's Accept, a unary Heartbeat listing it)."""
    pending.record(job, states.transition(job, JobState.RUNNING, "ACCEPTED", now))


def _same_request(job: Job, spec: JobSpec, index: int) -> Job:
    """job, found under spec's idempotency key, if it was submitted with the same request; spec is entry index of
    the submitted list (named in the refusal: a client's batch may hold hundreds)."""
    if job.request_fingerprint != spec.fingerprint:
        raise CoordinatorError(
            Kind.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
            f"idempotency key {spec.idempotency_key!r} was used for a different request (job {job.job_id})",
            metadata={"job_id": job.job_id, "index": str(index)},
        )
    return job


def reject_pause_s(settings: SchedulerSettings, refusals: int) -> float:
    """How long a miner is not offered a job it rejected, after its nth refusal of it: RETRY_BACKOFF_BASE_SECONDS
    (0.1 s at the soonest), doubling with each refusal up to RETRY_BACKOFF_MAX_SECONDS (a miner rejecting a
    job forever sees it ever more rarely, and none of its attempts spent, until its time to live runs out)."""
    base = max(settings.retry_backoff_base_s, MIN_REJECT_PAUSE_S)
    return min(base * 2 ** min(refusals - 1, 30), max(settings.retry_backoff_max_s, base))


def _left_on_purpose(session: Session, reason: str) -> bool:
    """Whether session's miner left on purpose: it offered no slot (Capacity 0), then closed its side of the stream
    (the SDK's stop(): its running jobs were rejected before). It sends nothing more on it, and does not come back
    for what it still holds: assignments that crossed its Capacity 0, read after its side was closed."""
    return reason == "STREAM_CLOSED" and session.transport == "stream" and session.offered == 0


def _poll_news(session: Session) -> bool:
    """What a waiting poll returns for: work, cancels, a drain the miner has not heard of, its drain done."""
    if session.pending_assignments or session.pending_cancels or session.drained:
        return True
    return session.drain_told and not session.drain_reported


def _same_result(stored: JobResult, result: ResultIn) -> bool:
    """Whether result repeats the stored one (a resend whose ack was lost), not another claim on the job."""
    return (stored.result_sha256, stored.units, stored.unit_type) == (
        result.result_sha256, result.units, result.unit_type)  # fmt: skip


def _code(failure: FailureIn) -> str:
    return failure.code or "MINER_FAILURE"


def _retrieved(future: asyncio.Future) -> None:
    """Marks a future's error as seen: those who wait for it hear it; if none does, asyncio need not log it."""
    if not future.cancelled():
        future.exception()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background commit failed", exc_info=task.exception())
