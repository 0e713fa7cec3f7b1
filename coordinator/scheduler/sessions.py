"""Miner sessions: what the scheduler knows of a connected miner, and how it talks to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from ..domain.clock import now_us
from ..domain.errors import invalid
from ..domain.matching import decimal
from ..domain.model import Capabilities, Constraints, Job
from .queues import Reach

# Why an assignment its miner never heard of goes back unspent (the event's message), by its session's transport
UNSENT_ON_STREAM = "its stream never sent the assignment"
UNSENT_ON_POLL = "no poll took the assignment"


@dataclass(slots=True)
class Held:
    """A job out to a miner: the attempt it holds, its lease and its execution deadline."""

    job: Job
    attempt: int
    lease_us: int
    exec_deadline_us: int
    lost: str = "MINER_GONE"  # an orphan's requeue reason once its time runs out
    # whether the miner may have heard of it: a unary assignment is handed out by a poll, a stream's is being
    # written by its writer (until then, its job is the session's only for that: taken back unspent if it never
    # happens)
    told: bool = True
    transport: str = ""  # that of the session it was assigned on ("": not known, a job loaded at a start)
    # the lease (lease_us) that ran out while its unary miner was silent, left to the liveness check: back before
    # that check, the miner gets a fresh lease (Scheduler._back_from_silence), that one (fresh_lease_us) only
    # once until a Heartbeat renews it (a miner calling without heartbeats loses the job one lease later)
    silent_lease_us: int = 0
    fresh_lease_us: int = 0

    @property
    def unsent(self) -> str:
        """Why it goes back unspent if it is taken from its miner untold (the event's message)."""
        return UNSENT_ON_STREAM if self.transport == "stream" else UNSENT_ON_POLL


@dataclass(slots=True)
class AssignmentOut:
    job: Job
    attempt: int
    lease_us: int
    exec_deadline_us: int


@dataclass(slots=True)
class CancelOut:
    job_id: str
    attempt: int
    reason: str


@dataclass(slots=True)
class AckOut:
    job_id: str
    attempt: int
    accepted: bool
    receipt_id: str = ""
    reason: str = ""
    message: str = ""


@dataclass(slots=True)
class DrainOut:
    reason: str


@dataclass(slots=True)
class GoAwayOut:
    reason: str
    reconnect_after_s: float


Outbound = list[AssignmentOut] | CancelOut | AckOut | DrainOut | GoAwayOut


def check_capacity(slots: int, caps: Capabilities, field_name: str) -> None:
    """A miner's offer of `slots` jobs at once (a Capacity message, or its hello's): 0 to its hello's count."""
    if slots > caps.slots:
        raise invalid(f"{field_name} is {slots}; this stream's hello offered {caps.slots} slots at most",
                      [(field_name, f"0 to {caps.slots} (the hello's capabilities.slots)")])  # fmt: skip


@dataclass(eq=False, slots=True)
class Session:
    session_id: str
    miner_id: str
    caps: Capabilities
    transport: str  # "stream" | "unary"
    connected_us: int
    receipt_public_key: bytes = b""
    held: dict[str, Held] = field(default_factory=dict)
    reserved: int = 0  # slots kept for jobs out of memory after a failed commit, until read back
    draining: bool = False
    drain_reason: str = ""  # why it drains; told to the miner once what was decided before it has left
    drain_told: bool = False
    # unary path: whether an answer (Heartbeat, PollJob) has told the miner it drains: a waiting poll returns
    # at once to tell it, once
    drain_reported: bool = False
    # unary path, an operator's drain (or cancels left to tell): nothing is left to the session, which stays open
    # (taking no work) until the miner's next call is told SESSION_DRAINED; closed there and then, the miner
    # would hear only SESSION_NOT_FOUND, register again, and take new work at once
    drained: bool = False
    closed: bool = False
    write_blocked_since_us: int = 0  # a write to the stream has waited since then (0: none waiting)
    stream_task: asyncio.Task | None = None  # the Connect handler, cancelled when the stream stalls
    end_reason: str = ""  # why the scheduler ended the stream (for the disconnect line)
    last_seen_us: int = 0
    # unary path: when its miner's latest call began, and when its latest Heartbeat was handled (a lease run out
    # while its miner is silent waits for the liveness check: Scheduler._silent_unary)
    called_us: int = 0
    heartbeat_us: int = 0
    handling: int = 0  # its messages (or unary calls) being handled now: a stream is not read meanwhile
    # when each of those began (overlapping unary calls): the oldest one still handled is what counts
    handling_starts: list[int] = field(default_factory=list)
    answering: int = 0  # its messages answered in the background once their jobs are back: a drain waits
    opened_key: int = 0  # a unit key taken when it opened: units with smaller keys were decided before it
    # unit key -> an unsettled decision (scheduler Pending) that gives it assignments: a Drain waits for them
    assigning: dict[int, object] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    # constraint set (without price limit) -> whether the miner meets it; bounded (Scheduler._eligible_base)
    eligibility: dict[Constraints, bool] = field(default_factory=dict)
    reach: Reach | None = None  # the queue shapes it is eligible for (ReadyQueues.reach), from its first fill
    price: Decimal = field(init=False)  # caps.price as a number, for jobs' price limits
    # jobs it takes at once now (a stream's Capacity message), at most caps.slots, the hello's count: the
    # ceiling, kept apart so that capacity may rise again; held jobs beyond it stay (free goes below 0)
    offered: int = field(init=False)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    # unary path: what the next poll or heartbeat returns
    pending_assignments: list[AssignmentOut] = field(default_factory=list)
    # (job, attempt) of assignments queued for its miner (the outbox, the next poll) not yet through
    # Scheduler.deliverable: whether an untold assignment may still leave
    unsent: set[tuple[str, int]] = field(default_factory=set)
    pending_cancels: list[CancelOut] = field(default_factory=list)
    poll_waiting: int = 0
    poll_asks: int = 0  # the waiting polls' max_jobs, summed: what they can take between them
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.price = decimal(self.caps.price)
        self.offered = self.caps.slots

    @contextlib.contextmanager
    def handling_one(self) -> Iterator[None]:
        """While the coordinator handles one of the miner's messages or calls (waiting for a slow store, say),
        the miner waits for it: its silence meanwhile is the coordinator's, not the miner's. The miner counts
        as seen when it ends (its heartbeats may have waited behind it)."""
        started = now_us()
        self.handling_starts.append(started)
        self.handling += 1
        try:
            yield
        finally:
            self.handling -= 1
            self.handling_starts.remove(started)
            self.last_seen_us = now_us()

    @property
    def handling_since_us(self) -> int:
        """When the oldest message or call still being handled began (0: none is). Not the first of a run of
        overlapping ones: that one may be long over, while the one left began after a lease ran out."""
        return min(self.handling_starts, default=0)

    @property
    def slots(self) -> int:
        """The hello's count: the most it may offer."""
        return self.caps.slots

    @property
    def free(self) -> int:
        return self.offered - len(self.held) - self.reserved

    def offer(self, slots: int) -> bool:
        """Take `slots` jobs at once from now on (0 to the hello's count; 0: none new, not a drain). Returns
        whether slots were freed (the caller fills them now, as after a finished job)."""
        check_capacity(slots, self.caps, "capacity.slots")
        raised = slots > self.offered
        self.offered = slots
        return raised

    @property
    def takes_work(self) -> bool:
        if self.closed or self.draining or self.free <= 0:
            return False
        return self.transport == "stream" or self.untold() < self.poll_asks

    def untold(self) -> int:
        """Assignments its miner has not heard of: on the unary path, decided for its waiting polls (or waiting
        for the next one). The polls waiting take no more than they ask for: a job beyond that would wait
        unseen for another poll, its lease running, while another miner may be idle."""
        if self.transport == "stream":
            return 0
        return sum(1 for held in self.held.values() if not held.told)

    def tell(self, a: AssignmentOut) -> bool:
        """A poll is about to hand a out, or the stream's writer to write it: the miner has it from now on.
        Whether the session still holds it at that attempt, untold (see Scheduler.deliverable). Told already,
        a is a second assignment of that attempt: one given back unspent while it waited to leave (its writer
        stuck, say) and assigned to the session again at the same attempt before the first left. Only the first
        to leave goes: the miner would run the attempt twice."""
        held = self.held.get(a.job.job_id)
        if held is None or held.attempt != a.attempt or held.told:
            return False
        held.told = True
        return True

    def send(self, message: Outbound) -> None:
        if isinstance(message, list):
            self.unsent.update((a.job.job_id, a.attempt) for a in message)
        if self.transport == "stream":
            self.outbox.put_nowait(message)
            return
        if isinstance(message, list):
            self.pending_assignments.extend(message)
        elif isinstance(message, CancelOut) and not self._withdraw(message):
            self.pending_cancels.append(message)
        self.wakeup.set()

    def _withdraw(self, cancel: CancelOut) -> bool:
        """Take back an assignment no poll has handed out yet: the miner never hears of the job, nor of its cancel
        (handed out after the cancel, it would start a job already taken from it)."""
        return self.withdraw(cancel.job_id, cancel.attempt)

    def withdraw(self, job_id: str, attempt: int) -> bool:
        """Take back an assignment of the job's attempt still waiting for a poll, if there is one (whether so).
        A stream's is left in its outbox: its writer passes over one the session no longer holds
        (Scheduler.deliverable), and forgets it in `unsent` then."""
        for i, a in enumerate(self.pending_assignments):
            if a.job.job_id == job_id and a.attempt == attempt:
                del self.pending_assignments[i]
                self.unsent.discard((job_id, attempt))
                return True
        return False

    def record_score(self) -> float:
        """Recent record: share of jobs completed (1.0 with no history)."""
        total = self.completed + self.failed
        return 1.0 if total == 0 else self.completed / total
