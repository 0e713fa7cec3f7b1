"""Chaos: a real coordinator drives several hundred jobs while its commits fail at random; once the failures
stop, every job ends and the coordinator's memory, its receipt log and the store agree.

Failures are real SQLite errors: triggers in the coordinator's file refuse a job's event rows (all of them,
or those of one reason) or its receipt while a rule in the table chaos_rules says so. A driver adds and
removes rules at random for live jobs (and now and then for every submit, or for every event: a short
outage), and sometimes holds the file's write lock for a few tens of milliseconds so that decisions pile
up behind one another. Meanwhile three hand-driven stream miners (1, 2 and 3 slots) and one SDK miner (2
slots) take the work, accept it, answer with results (batched), retryable and final failures and
rejects, lose jobs and vanish and come back listing what they hold; two clients submit jobs (single and
SubmitJobs batches, some under idempotency keys, some keys submitted again), cancel some, read and watch
others. See docs/operations.md, "When the store cannot write", for what is promised.

Now and then the driver also makes a hand miner send a message about a job it runs (an accept, a result, a
failure, a reject) while it holds the write lock; the miner vanishes and comes back (listing what it runs,
some of it, or nothing) while that write still waits, and then a rule mostly refuses the write: a change
decided on the miner's old session fails once it has a new one (at times with the clients holding back, so
that the new session gets no work the failing write's freed slot would take, and lives on). Each stream is
checked as its miner saw it (coord_support.Stream): never a cancel of a job it was neither given nor listed,
never a job it already runs, never more jobs than slots; while it runs, no session holds a job its stream was
neither given nor listed; at the end, no slot is left reserved.

Now and then the driver also drains a hand miner (AdminService.DrainMiner), at times while it holds the write
lock with a rule refusing a write of one of the miner's jobs; the miner finishes what it runs, and once its
stream ends (GoAway DRAINED) comes back later as a new session. Each stream is checked for it too: no
assignment after a Drain; a GoAway DRAINED only once the coordinator holds none of the stream's jobs (less
those it was told to drop: a cancel, a NOT_STORED refusal) for its miner (in memory, orphaned, being read
back, or as stored with no write of it waiting) and no change that freed one of its slots is still being
written, as the scheduler stands when the stream reads it; every drained session ends before the jobs
settle (none is left draining).

The run is seeded: the seed is printed, and AITBC_CHAOS_SEED=<n> runs the same decisions again (the
interleaving still depends on timing). AITBC_CHAOS_SECONDS sets the length of the chaos (9 s).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.miner import JobFailed, Miner, Outcome
from aitbc.receipts import MerkleTree, leaf_hash
from coord_support import (
    ASSIGNED,
    CANCELED,
    COMPLETED,
    QUEUED,
    RUNNING,
    Harness,
    Stream,
    StreamMiner,
    capabilities,
    miner_key,
    struct,
)

from coordinator.domain import states
from coordinator.domain.model import JobState
from coordinator.scheduler.sessions import UNSENT_ON_POLL, UNSENT_ON_STREAM
from coordinator.store.base import DependencyFailed

SEED = int(os.environ.get("AITBC_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
CHAOS_SECONDS = float(os.environ.get("AITBC_CHAOS_SECONDS") or 9.0)
SETTLE_SECONDS = 60.0  # bounded wait, once failures stop, for every job to end
HELD = (ASSIGNED, RUNNING)
ACTIVE = (QUEUED, ASSIGNED, RUNNING)
HAND_MINERS = (("miner-00", 1), ("miner-01", 2), ("miner-02", 3))
SDK_MINER = ("miner-03", 2)
# what a refused write raises, and what is refused because it builds on one
EXPECTED_ERRORS = (sqlite3.IntegrityError, DependencyFailed)

# A rule refuses its rows with RAISE(ABORT) (the statement fails) or RAISE(ROLLBACK) (the error also ends
# the writer's transaction on its own, as a full disk does).
SETUP = (
    "CREATE TABLE chaos_rules (tbl TEXT NOT NULL, job_id TEXT, reason TEXT, how TEXT NOT NULL);\n"
    + "".join(
        f"""
CREATE TRIGGER chaos_job_events_{how} BEFORE INSERT ON job_events
WHEN EXISTS (SELECT 1 FROM chaos_rules WHERE tbl = 'job_events' AND how = '{how}'
             AND (job_id IS NULL OR job_id = NEW.job_id) AND (reason IS NULL OR reason = NEW.reason))
BEGIN SELECT RAISE({how}, 'chaos: this write cannot be made'); END;
CREATE TRIGGER chaos_receipts_{how} BEFORE INSERT ON receipts
WHEN EXISTS (SELECT 1 FROM chaos_rules WHERE tbl = 'receipts' AND how = '{how}'
             AND (job_id IS NULL OR job_id = NEW.job_id))
BEGIN SELECT RAISE({how}, 'chaos: this write cannot be made'); END;
"""
        for how in ("ABORT", "ROLLBACK")
    )
)

# reasons a rule may refuse, for a job held by a miner and for a queued one (None: any event of the job)
HELD_REASONS = ["COMPLETED"] * 3 + ["ACCEPTED", "CANCELED_BY_CLIENT", "CANCELED_BY_CLIENT", "FLAKY",
                "REJECTED", "LEASE_EXPIRED", "MINER_GONE", "MINER_LOST_JOB", "HEARTBEAT_TIMEOUT",
                None, None]  # fmt: skip
QUEUED_REASONS = ["ASSIGNED"] * 4 + ["CANCELED_BY_CLIENT", "TTL_EXPIRED", None, None]
# the messages of a requeue that gives the attempt back: the miner never heard of the assignment
GIVEN_BACK = {UNSENT_ON_STREAM, UNSENT_ON_POLL}


class Phase:
    """chaos: failures and misbehaviour on; calm: every rule gone, miners just work; over: stop. hush: the
    clients hold back (calls in flight go on) while the chaos wants the ready queue empty."""

    def __init__(self) -> None:
        self.calm = asyncio.Event()
        self.over = asyncio.Event()
        self.hush = False

    @property
    def chaos(self) -> bool:
        return not self.calm.is_set()


@dataclass
class Book:
    """What the clients and miners were told, to be checked against the store at the end."""

    told: dict[str, str] = field(default_factory=dict)  # job id -> client, from successful submits
    keys: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    canceled: set[str] = field(default_factory=set)  # cancels answered with CANCELED
    not_found: set[str] = field(default_factory=set)  # the chaos's cancels answered NOT_FOUND
    reads: list[tuple[str, int, int]] = field(default_factory=list)  # GetJob: (job, state, attempt)
    watched: dict[str, list[tuple]] = field(default_factory=dict)  # job -> events a watcher heard
    watch_ends: dict[str, int] = field(default_factory=dict)  # job -> last state a finished watch saw
    calls: Counter = field(default_factory=Counter)  # (call, outcome)
    unexpected: list[str] = field(default_factory=list)  # errors no call should get
    samples: int = 0
    failed_writes: list[Any] = field(default_factory=list)  # the scheduler's pending changes that failed
    # session -> (job, attempt) it held in memory when it was drained (decided before the Drain)
    held_at_drain: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    # found while sampling during the run: kind -> (times, first seen, the jobs involved then)
    violations: dict[str, tuple[int, str, tuple[str, ...]]] = field(default_factory=dict)

    def violation(self, kind: str, detail: str, jobs: tuple[str, ...] = ()) -> None:
        times, first, involved = self.violations.get(kind, (0, detail, jobs))
        self.violations[kind] = (times + 1, first, involved)

    def error(self, call: str, exc: grpc.aio.AioRpcError, allowed: tuple[grpc.StatusCode, ...]) -> None:
        self.calls[(call, exc.code().name)] += 1
        if exc.code() not in allowed:
            self.unexpected.append(f"{call}: {exc.code().name} {exc.details()}")


# ------------------------------------------------------------------------------------------ failures
class Chaos:
    """Adds and removes rules that make the coordinator's commits fail; holds the write lock at times."""

    def __init__(self, coord: Harness, rng: random.Random, phase: Phase, book: Book,
                 clients: dict[str, Any], hand: list[HandMiner]) -> None:  # fmt: skip
        self.coord, self.rng, self.phase, self.book, self.clients = coord, rng, phase, book, clients
        self.hand = hand
        self.conn = sqlite3.connect(coord.db_path, isolation_level=None, timeout=10)
        self.conn.executescript(SETUP)
        self.rules: list[tuple[float, int]] = []  # (until, rowid)
        self.added: Counter = Counter()
        self.came_back: Counter = Counter()  # come_back_while_writing: what was done, what became of it
        self.tasks: set[asyncio.Task] = set()

    def close(self) -> None:
        self.conn.close()

    def add(self, tbl: str, job_id: str | None, reason: str | None, lifetime: float) -> None:
        how = "ROLLBACK" if self.rng.random() < 0.3 else "ABORT"
        cur = self.conn.execute("INSERT INTO chaos_rules VALUES (?, ?, ?, ?)", (tbl, job_id, reason, how))
        self.rules.append((time.monotonic() + lifetime, cur.lastrowid))
        self.added[(tbl, reason if job_id else f"all:{reason}")] += 1
        self.added[how] += 1

    def expire(self, everything: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for until, rowid in self.rules:
            if everything or until <= now:
                self.conn.execute("DELETE FROM chaos_rules WHERE rowid = ?", (rowid,))
            else:
                keep.append((until, rowid))
        self.rules = keep
        if everything:
            self.conn.execute("DELETE FROM chaos_rules")

    def pick_rule(self) -> None:
        rng, scheduler = self.rng, self.coord.coordinator.scheduler
        live = sorted(scheduler.jobs.items())
        held = [(j, job) for j, job in live if job.state in (JobState.ASSIGNED, JobState.RUNNING)]
        queued = [(j, job) for j, job in live if job.state is JobState.QUEUED]
        r = rng.random()
        if r < 0.04:
            self.add("job_events", None, "SUBMITTED", rng.uniform(0.03, 0.2))  # every submit fails
            return
        if r < 0.06:
            self.add("job_events", None, None, rng.uniform(0.02, 0.08))  # every write fails: an outage
            return
        if held and (r < 0.75 or not queued):
            self.refuse_held(*rng.choice(held))
        elif queued:
            job_id, job = rng.choice(queued)
            reason = rng.choice(QUEUED_REASONS)
            self.add("job_events", job_id, reason, rng.uniform(0.05, 0.4))
            self.cancel_at_times(job_id, job, reason)

    def refuse_held(self, job_id: str, job: Any) -> None:
        """A rule refusing a write of a job a miner holds (at times its receipt)."""
        rng = self.rng
        reason = rng.choice(HELD_REASONS)
        if reason == "COMPLETED" and rng.random() < 0.5:
            self.add("receipts", job_id, None, rng.uniform(0.05, 0.4))
        else:
            self.add("job_events", job_id, reason, rng.uniform(0.05, 0.4))
        self.cancel_at_times(job_id, job, reason)

    def cancel_at_times(self, job_id: str, job: Any, reason: str | None) -> None:
        rng = self.rng
        if reason == "CANCELED_BY_CLIENT" and rng.random() < 0.7:  # and have the client cancel it now
            client = self.clients[job.client_id]
            task = asyncio.create_task(cancel(client, job_id, self.book, "chaos"))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def hold_lock(self) -> None:
        """Hold the write lock a few tens of ms; rules may change inside, landing when it is released."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.rng.random() < 0.5:
                self.pick_rule()
            await asyncio.sleep(self.rng.uniform(0.01, 0.06))
            if self.rng.random() < 0.5:
                self.expire()
        finally:
            self.conn.execute("COMMIT")
        self.added["lock held"] += 1

    async def come_back_while_writing(self) -> None:
        """A hand miner sends a message about a job it runs while the write lock is held, vanishes and comes
        back (listing what it runs, some of it or nothing) while that write still waits; then, mostly, a rule
        refuses the write. The decision was made on the miner's old session, its failure lands on the new.

        A new session whose first jobs take a slot the waiting write frees is refused with it (its stream
        ends), so half the time the clients hold back and the miner comes back to an empty ready queue: its
        new session lives on, to see what becomes of its miner's old job."""
        rng = self.rng
        if not any(m.ready_to_drive() for m in self.hand):
            return
        refuse, hush = rng.random() < 0.65, rng.random() < 0.5
        started = time.monotonic()
        try:
            if hush:
                self.phase.hush = True
                await self.queue_empty(0.4)
            await self._come_back_while_writing(refuse, hush)
        finally:
            self.phase.hush = False
            self.came_back["seconds"] += time.monotonic() - started

    async def queue_empty(self, within: float) -> bool:
        queues = self.coord.coordinator.scheduler.queues
        for _ in range(int(within / 0.005)):
            if not queues.depth:
                return True
            await asyncio.sleep(0.005)
        return not queues.depth

    async def _come_back_while_writing(self, refuse: bool, hush: bool) -> None:
        rng, scheduler = self.rng, self.coord.coordinator.scheduler
        miners = [m for m in self.hand if m.ready_to_drive()]
        if not miners:
            return
        m = rng.choice(miners)
        job_id, attempt = rng.choice(sorted(m.sm.held.items()))
        live = scheduler.jobs.get(job_id)
        kinds = ["result", "result", "retry", "fail", "reject"]
        if live is not None and live.state is JobState.ASSIGNED:
            kinds += ["accept"] * 3
        kind = rng.choice(kinds)
        how = rng.choice(("all", "all", "some", "none"))

        def listing(runs: dict[str, int]) -> dict[str, int]:
            if how == "all":
                return runs
            return {j: a for j, a in sorted(runs.items()) if how == "some" and rng.random() < 0.5}

        async def hushed() -> None:  # (the other miners' jobs are decided in memory: the queue drains)
            self.came_back[
                "back to an empty queue" if await self.queue_empty(0.2) else "back to a queue"
            ] += 1

        self.conn.execute("BEGIN IMMEDIATE")
        locked = time.monotonic()
        try:
            write = await m.say_then_come_back(job_id, attempt, kind, rng.uniform(0.0, 0.03), listing,
                                               hushed if hush else None)  # fmt: skip
            if refuse:
                if kind == "result" and rng.random() < 0.4:
                    self.add("receipts", job_id, None, rng.uniform(0.02, 0.3))
                else:
                    reasons = {"accept": "ACCEPTED", "result": "COMPLETED", "retry": "FLAKY", "fail": "BROKEN",
                               "reject": "REJECTED"}  # fmt: skip
                    reason = reasons[kind] if rng.random() < 0.6 else None
                    self.add("job_events", job_id, reason, rng.uniform(0.02, 0.3))
            await asyncio.sleep(rng.uniform(0.0, 0.02))
        finally:
            self.conn.execute("COMMIT")
            self.came_back["seconds locked"] += time.monotonic() - locked
        self.came_back[(kind, how, "refused" if refuse else "allowed")] += 1
        if write is not None:
            task = asyncio.create_task(self.outcome(write, kind))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.came_back["no write"] += 1

    async def outcome(self, write: Any, kind: str) -> None:
        """Whether the write decided on the miner's old session landed or failed (after it came back)."""
        await asyncio.wait({write.settled}, timeout=10)
        failed = any(w is write for w in self.book.failed_writes)
        self.came_back[f"{kind} failed" if failed else f"{kind} landed"] += 1
        self.came_back["failed" if failed else "landed"] += 1

    def drained(self) -> int:
        return sum(n for k, n in self.added.items() if isinstance(k, str) and k.startswith("drain"))

    async def drain(self) -> None:
        """Drain a hand miner through the admin API; half the time while the write lock is held, mostly with
        a rule refusing a write of one of its jobs (or of any job: an outage), so that the writes freeing its
        slots (and its last one) fail or wait."""
        rng, scheduler = self.rng, self.coord.coordinator.scheduler
        miners = [m for m in self.hand if m.connected and not m.sm.closed.is_set()]
        if not miners:
            return
        m = rng.choice(miners)
        locked = rng.random() < 0.5
        if locked:
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            session = scheduler.by_miner.get(m.name)
            held = sorted((j, h.job) for j, h in session.held.items()) if session is not None else []
            if locked and rng.random() < 0.8:
                if held and rng.random() < 0.85:
                    self.refuse_held(*rng.choice(held))
                else:
                    self.add("job_events", None, None, rng.uniform(0.02, 0.08))
            # (its row is stored before it takes effect: while locked, the call waits behind the lock, and the
            # writes decided meanwhile race with it)
            drain = asyncio.ensure_future(self.coord.admin().drain(m.name))
            if locked:
                await asyncio.sleep(rng.uniform(0.01, 0.05))
        finally:
            if locked:
                self.conn.execute("COMMIT")
        try:
            await drain
            self.added[f"drain{' locked' if locked else ''}, {len(held)} held"] += 1
        except grpc.aio.AioRpcError as exc:  # between two streams: no session
            self.book.error("drain", exc, (grpc.StatusCode.NOT_FOUND,))

    async def run(self) -> None:
        rounds = 0
        while self.phase.chaos:
            await asyncio.sleep(self.rng.uniform(0.01, 0.05))
            if not self.phase.chaos:
                break
            self.expire()
            r = self.rng.random()
            rounds += 1
            # (a few drains in every run, however few rounds a slow machine leaves: the check below counts them)
            if self.drained() < 3 and rounds % 6 == 0:
                await self.drain()
            elif self.came_back["failed"] < 3 and rounds % 6 == 3:  # (likewise for the check of these)
                await self.come_back_while_writing()
            elif r < 0.1:
                await self.hold_lock()
            elif r < 0.25:
                await self.come_back_while_writing()
            elif r < 0.33:
                await self.drain()
            elif len(self.rules) < 8:
                self.pick_rule()
        self.expire(everything=True)


# ------------------------------------------------------------------------------------------ clients
async def cancel(client: Any, job_id: str, book: Book, why: str) -> None:
    try:
        job = (await client.jobs.CancelJob(jpb.CancelJobRequest(job_id=job_id, reason=why),
                                           metadata=client.metadata)).job  # fmt: skip
    except grpc.aio.AioRpcError as exc:
        # JOB_TERMINAL (FAILED_PRECONDITION), a failed commit (INTERNAL), read back meanwhile (UNAVAILABLE);
        # the chaos picks jobs from memory, some still being inserted: if the insert fails, NOT_FOUND
        allowed = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
        if why == "chaos" and exc.code() is grpc.StatusCode.NOT_FOUND:
            book.not_found.add(job_id)  # (checked at the end: never stored)
            allowed += (grpc.StatusCode.NOT_FOUND,)
        book.error("cancel", exc, allowed)
        return
    book.calls[("cancel", "OK")] += 1
    if job.state != CANCELED:
        book.unexpected.append(f"cancel of {job_id} answered OK in state {job.state}")
    book.canceled.add(job_id)


async def watch(client: Any, job_id: str, book: Book) -> None:
    seen = book.watched.setdefault(job_id, [])
    last = None
    try:
        async for update in client.watch(job_id):
            if update.HasField("event"):
                e = update.event
                seen.append((e.sequence, e.from_state, e.to_state, e.attempt, e.miner_id, e.reason))
            last = update.job.state
    except grpc.aio.AioRpcError as exc:
        book.error("watch", exc, ())
        return
    book.watch_ends[job_id] = last


async def client_loop(name: str, client: Any, rng: random.Random, phase: Phase, book: Book,
                      tasks: set[asyncio.Task]) -> None:  # fmt: skip
    """Submit (single, batches, keyed, keys again), cancel, read and watch, until the chaos ends."""
    n = 0
    keyed: dict[str, tuple[dict, dict]] = {}  # key -> (payload, options): submitted again as they were
    mine: list[str] = []

    def fresh() -> tuple[str, dict, dict]:
        nonlocal n
        n += 1
        payload = {"client": name, "n": n}
        options: dict[str, Any] = {"priority": rng.randint(0, 3), "max_attempts": rng.choice((4, 8, 8))}
        if rng.random() < 0.08:
            options["ttl_s"] = 1  # may expire while queued behind failures
        key = ""
        if rng.random() < 0.35:
            key = f"{name}-k{n}"
            options["idempotency_key"] = key
            keyed[key] = (payload, options)
        return key, payload, options

    def again() -> tuple[str, dict, dict]:
        key = rng.choice(sorted(keyed))
        return key, *keyed[key]

    def told(key: str, job: Any) -> None:
        book.told[job.job_id] = name
        mine.append(job.job_id)
        if key:
            book.keys[(name, key)].add(job.job_id)
        if job.job_id not in book.watched and rng.random() < 0.25:  # (a key submitted again: the same job)
            task = asyncio.create_task(watch(client, job.job_id, book))
            tasks.add(task)

    while phase.chaos:
        if phase.hush:
            await asyncio.sleep(0.01)
            continue
        r = rng.random()
        call = "submit" if r < 0.4 else "batch" if r < 0.65 or (r < 0.75 and not keyed) else "again"
        try:
            if r < 0.4:
                key, payload, options = fresh()
                job = await client.submit(payload, **options)
                told(key, job)
                book.calls[("submit", "OK")] += 1
            elif r < 0.65 or (r < 0.75 and not keyed):
                size = rng.choice((2, 3, 4, 5, 8)) if rng.random() > 0.06 else 25  # at times a burst: a queue
                items = [fresh() for _ in range(size)]
                if keyed and rng.random() < 0.3:
                    old = again()
                    if all(old[0] != k for k, _, _ in items):
                        items.insert(rng.randrange(len(items) + 1), old)
                requests = [client.request(p, **dict(o)) for _, p, o in items]
                response = await client.jobs.SubmitJobs(jpb.SubmitJobsRequest(requests=requests),
                                                        metadata=client.metadata)  # fmt: skip
                for (key, _, _), r_ in zip(items, response.responses, strict=True):
                    told(key, r_.job)
                book.calls[("batch", "OK")] += 1
            elif r < 0.75:
                key, payload, options = again()
                job = await client.submit(payload, **dict(options))
                told(key, job)
                book.calls[("again", "OK")] += 1
            elif r < 0.87 and mine:
                await cancel(client, rng.choice(mine[-20:]), book, "client")
            elif mine:
                call = "get"
                job_id = rng.choice(mine[-30:])
                job = await client.get(job_id)
                book.reads.append((job_id, job.state, job.attempt))
        except grpc.aio.AioRpcError as exc:  # a submit whose commit failed: INTERNAL
            book.error(call, exc, (grpc.StatusCode.INTERNAL,) if call != "get" else ())
        await asyncio.sleep(rng.uniform(0.01, 0.06))


# ------------------------------------------------------------------------------------------ miners
class HandMiner:
    """A StreamMiner driven by a task: accepts some assignments, answers after a short random delay (results
    batched per tick), fails, rejects or loses some, vanishes and comes back listing what it holds."""

    def __init__(self, coord: Harness, name: str, slots: int, rng: random.Random, phase: Phase,
                 book: Book) -> None:  # fmt: skip
        self.coord, self.name, self.slots, self.rng, self.phase, self.book = (
            coord,
            name,
            slots,
            rng,
            phase,
            book,
        )
        self.sm: StreamMiner | None = None
        self.ready: list[tuple[str, int, str]] = []  # (job, attempt, what to answer) once connected
        self.work: set[asyncio.Task] = set()
        self.dropped: set[tuple[str, int]] = set()  # jobs it lost (never answered)
        self.connected = False
        self.busy = False  # the chaos drives it (say_then_come_back): its own loop stands aside
        self.stats: Counter = Counter()

    async def run(self) -> None:
        self.sm = await self.coord.stream_miner(self.name, slots=self.slots, connect=False)
        self.sm.on_message = self._observed
        await self.sm.connect()
        self.connected = True
        next_kill = time.monotonic() + self.rng.expovariate(1 / 2.5)
        try:
            while not self.phase.over.is_set():
                if self.busy:
                    await asyncio.sleep(0.01)
                    continue
                self._take()
                self._flush()
                if self.sm.closed.is_set():
                    if drained(self.sm.streams[-1]):  # it comes back later, as a new session
                        self.stats["drained"] += 1
                        await self._reconnect(self.rng.uniform(0.05, 0.5))
                    else:
                        self.stats["stream ended"] += 1
                        await self._reconnect(self.rng.uniform(0.0, 0.2))
                elif self.phase.chaos and time.monotonic() >= next_kill:
                    self.stats["killed"] += 1
                    await self._reconnect(self.rng.uniform(0.0, 0.8))  # at times past the grace period
                    next_kill = time.monotonic() + self.rng.expovariate(1 / 2.5)
                await asyncio.sleep(0.01)
        finally:
            for task in self.work:
                task.cancel()

    def _observed(self, stream: Stream, kind: str, body: Any) -> None:
        """As the stream reads a GoAway DRAINED: the coordinator holds none of the stream's jobs for this
        miner, reads none back, and writes no change that freed one of its slots."""
        if kind != "go_away" or body.reason != "DRAINED":
            return
        scheduler, name = self.coord.coordinator.scheduler, self.name
        # what it was given or listed, less what it was told to drop: a cancel (NOT_HELD at its welcome, say:
        # a job of its miner whose requeue then failed is read back and requeued, not this stream's any more),
        # or a result or failure report refused NOT_STORED (its miner drops the job: undo.py's _dropped). Such
        # a job's requeue (MINER_LOST_JOB) may fail too: it then waits out the write backoff held for no
        # stream, an orphan in memory, stored as still this miner's, or is read back again; none is this
        # stream's, and a GoAway DRAINED meanwhile is right.
        dropped = {(c.job_id, c.attempt) for way, k, c in stream.log if way == "in" and told_to_drop(k, c)}
        had = (stream.assigned | set(stream.listed)) - dropped
        found: dict[str, str] = {}
        orphans = scheduler.orphans.get(name, {})
        for job_id, job in list(scheduler.jobs.items()):
            if job.state in (JobState.ASSIGNED, JobState.RUNNING) and job.miner_id == name:
                if (job_id, job.attempt) in had:
                    holders = [x.session_id for x in scheduler.sessions.values() if job_id in x.held]
                    found[job_id] = f"held ({job.state.name} attempt {job.attempt}; by sessions {holders})"
        for job_id, held in orphans.items():
            if (job_id, held.attempt) in had:
                found[job_id] = f"orphaned (attempt {held.attempt}, {held.lost})"
        for job_id, marker in list(scheduler._detached.items()):
            mine = marker.miner_id == name and (job_id, marker.attempt) in had
            if mine or (marker.reserved is not None and marker.reserved.session_id == stream.session_id):
                found[job_id] = f"being read back (ran attempt {marker.attempt} on {marker.miner_id})"
        for job_id, attempt in sorted(had):
            if job_id in found or job_id in scheduler._unsettled:
                continue
            row = self.coord.db.query("SELECT state, attempt, miner_id FROM jobs WHERE job_id = ?", (job_id,))
            if row and row[0][0] in HELD and row[0][1:] == (attempt, name):
                found[job_id] = (
                    f"stored as held (state {row[0][0]} attempt {attempt}), no write of it waiting"
                )
        frees = scheduler._unsettled_frees.get(name)
        if found or frees:
            self.book.violation(
                "GoAway DRAINED while the coordinator holds a job for the stream",
                f"{name} session {stream.session_id} read GoAway DRAINED while {found}; changes freeing its "
                f"slots still being written: {sorted(frees or {})}",
                tuple(found),
            )

    def _take(self) -> None:
        if len(self.sm.held) > self.slots:  # (its pump took an assignment on top of what it holds)
            book, held = self.book, dict(self.sm.held)
            book.violation(
                "miner over its slots", f"{self.name} holds {held} on {self.slots} slots", tuple(held)
            )
        queue = self.sm.inbox["assignment"]
        while not queue.empty():
            a = queue.get_nowait()
            self.stats["assigned"] += 1
            task = asyncio.create_task(self._work(a.job.job_id, a.attempt))
            self.work.add(task)
            task.add_done_callback(self.work.discard)

    async def _work(self, job_id: str, attempt: int) -> None:
        sm, rng = self.sm, self.rng
        if rng.random() < 0.6:
            sm.send(accept=mpb.Accept(job_id=job_id, attempt=attempt))
        await asyncio.sleep(rng.uniform(0.01, 0.12))
        if sm.held.get(job_id) != attempt:
            return  # canceled meanwhile
        outcome = "result"
        if self.phase.chaos:
            r = rng.random()
            if r < 0.07:
                outcome = "retry"
            elif r < 0.09:
                outcome = "reject"
            elif r < 0.10:
                outcome = "fail"
            elif r < 0.13:
                sm.held.pop(job_id, None)  # lost: never answered, no longer in its heartbeats
                self.dropped.add((job_id, attempt))
                self.stats["lost"] += 1
                return
        self.ready.append((job_id, attempt, outcome))

    def _flush(self) -> None:
        if not self.connected or self.sm.closed.is_set() or not self.ready:
            return
        sm, results = self.sm, []
        for job_id, attempt, outcome in self.ready:
            if sm.held.get(job_id) != attempt:
                continue  # canceled, or not kept across a reconnect
            self.stats[outcome] += 1
            if outcome == "result":
                del sm.held[job_id]
                results.append(mpb.Result(job_id=job_id, attempt=attempt, result=struct({"ok": True}),
                                          units="1", unit_type="jobs"))  # fmt: skip
            elif outcome == "reject":
                del sm.held[job_id]
                sm.send(reject=mpb.Reject(job_id=job_id, attempt=attempt, reason="chaos"))
            else:
                sm.failure(job_id, attempt, retryable=outcome == "retry",
                           code="FLAKY" if outcome == "retry" else "BROKEN")  # fmt: skip
        self.ready = []
        if results:
            sm.send(results=mpb.Results(results=results))

    def ready_to_drive(self) -> bool:
        """Connected, idle, and running something (for say_then_come_back)."""
        return self.connected and not self.busy and not self.sm.closed.is_set() and bool(self.sm.held)

    async def say_then_come_back(self, job_id: str, attempt: int, kind: str, pause: float,
                                 listing: Callable[[dict[str, int]], dict[str, int]],
                                 before: Callable[[], Awaitable[None]] | None = None) -> Any:  # fmt: skip
        """Send kind ("accept", "result", "retry", "fail", "reject") about a job it runs, wait (briefly) until
        the write it causes is queued, vanish, and come back (after pause, and before()) listing listing(what
        it runs). The caller holds the file's write lock, so that write is still waiting when the miner is
        back. Returns the write (the scheduler's pending change, None if the message caused none)."""
        sm, scheduler = self.sm, self.coord.coordinator.scheduler
        self.busy = True
        try:
            earlier = scheduler._unsettled.get(job_id)
            if kind == "accept":
                sm.send(accept=mpb.Accept(job_id=job_id, attempt=attempt))
            elif kind == "result":
                del sm.held[job_id]
                sm.send(results=mpb.Results(results=[mpb.Result(
                    job_id=job_id, attempt=attempt, result=struct({"ok": True}), units="1", unit_type="jobs")]))  # fmt: skip
            elif kind == "reject":
                del sm.held[job_id]
                sm.send(reject=mpb.Reject(job_id=job_id, attempt=attempt, reason="chaos"))
            else:
                sm.failure(
                    job_id, attempt, retryable=kind == "retry", code="FLAKY" if kind == "retry" else "BROKEN"
                )
            self.stats[f"{kind}, gone"] += 1
            for _ in range(60):  # its write queued (waiting for the lock), or 0.15 s: none comes
                if (write := scheduler._unsettled.get(job_id)) is not earlier:
                    break
                await asyncio.sleep(0.0025)
            await self._reconnect(pause, listing, before)
            return write if write is not earlier else None
        finally:
            self.busy = False

    async def _reconnect(self, pause: float, listing: Callable[[dict[str, int]], dict[str, int]] | None = None,
                         before: Callable[[], Awaitable[None]] | None = None) -> None:  # fmt: skip
        sm = self.sm
        self.connected = False
        await sm.kill()
        self._take()  # what it read before it went
        await asyncio.sleep(pause if self.phase.chaos else 0.02)
        if before is not None:
            await before()
        listed = dict(sm.held)
        if listing is not None:
            listed = listing(listed)
        elif self.phase.chaos and listed and self.rng.random() < 0.2:
            del listed[self.rng.choice(sorted(listed))]  # it lost one of them
            self.stats["lost on reconnect"] += 1
        while True:
            try:
                await sm.connect(tuple(listed.items()))
                break
            except (grpc.aio.AioRpcError, AssertionError, TimeoutError) as exc:
                self.stats[f"connect failed: {type(exc).__name__}"] += 1
                await sm.kill()
                if self.phase.over.is_set():
                    return
                await asyncio.sleep(0.1)
        # It keeps running what it listed, until told NOT_HELD (its pump drops those): connect() kept only
        # the jobs resumed at once, but a job being read back after a failed commit comes back later.
        sm.held = {j: a for j, a in listed.items() if (j, a) not in self.dropped}  # (lost while connecting)
        self.connected = True


def sdk_runner(rng: random.Random, phase: Phase, book: Book, slots: int):  # type: ignore[no-untyped-def]
    running = 0

    async def run(job) -> Outcome:  # type: ignore[no-untyped-def]
        nonlocal running
        running += 1
        try:
            if running > slots:
                book.violation(
                    "sdk miner over its slots", f"{SDK_MINER[0]} runs {running} jobs on {slots} slots"
                )
            await asyncio.sleep(rng.uniform(0.01, 0.1))
            if phase.chaos and rng.random() < 0.07:
                raise JobFailed("FLAKY", "chaos", retryable=True)
            return Outcome({"ok": True}, units="1", unit_type="jobs")
        finally:
            running -= 1

    return run


# ------------------------------------------------------------------------------------------ sampling
async def sample(coord: Harness, hand: list[HandMiner], phase: Phase, book: Book) -> None:
    """While it runs: no session over its slots (a miner's own view included); queue counts exact.

    (The store may hold a job as still held by a miner that came back without it while that job is read
    back after a failed commit: the miner lost it, its slot is free, and it is requeued once read back.)"""
    scheduler = coord.coordinator.scheduler
    suspects: dict[tuple[str, str, int], float] = {}  # (session, job, attempt) held, not yet explained: since
    while not phase.over.is_set():
        await asyncio.sleep(0.02)
        book.samples += 1
        now, unexplained = time.monotonic(), set()
        for m in hand:
            session = scheduler.by_miner.get(m.name)
            if session is None or m.sm is None:
                continue
            stream = m.sm.streams[-1] if m.sm.streams else None
            if (
                not m.connected
                or m.sm.closed.is_set()
                or stream is None
                or stream.session_id != session.session_id
            ):
                continue  # between two streams: what the coordinator sends may not reach it
            for job_id, held in list(session.held.items()):
                if stream.had(job_id, held.attempt):
                    continue
                # Its assignment may be on the way: it leaves once written. Once the job is as stored (no
                # write of it waits), the miner must have it soon (or the session must let it go).
                key = (session.session_id, job_id, held.attempt)
                if (
                    coord.db.scalar("SELECT event_seq FROM jobs WHERE job_id = ?", (job_id,))
                    != held.job.event_seq
                ):
                    continue
                unexplained.add(key)
                if now - suspects.setdefault(key, now) >= 0.3:
                    book.violation("a job on a session that never had it",
                                   f"{m.name} session {session.session_id} (listed {dict(stream.listed)}) holds "
                                   f"{job_id} attempt {held.attempt}, never assigned to it nor listed", (job_id,))  # fmt: skip
        for key in set(suspects) - unexplained:
            del suspects[key]
        for session in list(scheduler.sessions.values()):
            # (A job given in a slot that a write since failed would free is over the slots until its own write,
            # which builds on the failed one, is refused: it was never sent. Only jobs as stored count.)
            if (
                len(session.held) + session.reserved > session.slots
                and sum(
                    coord.db.scalar("SELECT event_seq FROM jobs WHERE job_id = ?", (j,)) == h.job.event_seq
                    for j, h in list(session.held.items())
                )
                + session.reserved
                > session.slots
            ):
                held = {j: (h.attempt, h.job.state.name) for j, h in session.held.items()}
                book.violation("session over its slots", f"{session.miner_id} (session {session.session_id}): "
                               f"{held} held + {session.reserved} reserved on {session.slots} slots",
                               tuple(held))  # fmt: skip
        for m in hand:
            if m.sm is not None and m.sm.peak_held > m.slots:
                book.violation(
                    "miner peak over its slots", f"{m.name} held {m.sm.peak_held} jobs on {m.slots} slots"
                )
        in_queue = [j for j in scheduler.jobs.values() if j.in_queue]
        if scheduler.queues.depth != len(in_queue) or any(j.state is not JobState.QUEUED for j in in_queue):
            book.violation("queue depth", f"queue depth {scheduler.queues.depth}, {len(in_queue)} queued jobs "
                           f"in memory; in the queues twice: {queued_twice(scheduler.queues)}")  # fmt: skip


def told_to_drop(kind: str, body: Any) -> bool:
    """Whether a message a stream read tells its miner to drop a job's attempt: a cancel, or the refusal
    NOT_STORED of its result or failure report."""
    return kind == "cancel" or (kind == "result_ack" and not body.accepted and body.reason == "NOT_STORED")


def drained(stream: Stream) -> bool:
    """Whether the stream ended with GoAway DRAINED."""
    return any(k == "go_away" and b.reason == "DRAINED" for w, k, b in stream.log if w == "in")


def check_streams(hand: list[HandMiner], book: Book) -> list[str]:
    """Each stream, replayed as its miner saw it: no cancel of a job it was neither given nor listed, no job
    given while it runs it, never more jobs than slots (what it listed and was given, less what it answered
    with a result, failure or reject and what it was told to cancel); no job given after a Drain, no GoAway
    DRAINED without one, and no stream still open, drained, at the end."""
    problems = []
    for m in hand:
        for n, stream in enumerate(m.sm.streams):
            name = f"{m.name} stream {n} (session {stream.session_id}, listed {dict(stream.listed)})"
            runs, had = dict(stream.listed), set(stream.listed)
            drain = None  # the Drain it read, if any
            for way, kind, body in stream.log:
                if (way, kind) == ("in", "drain"):
                    drain = drain or body
                elif (way, kind) == ("in", "go_away") and body.reason == "DRAINED" and drain is None:
                    problems.append(f"{name} was told GoAway DRAINED, never told to drain")
                if (way, kind) == ("in", "assignments") and drain is not None:
                    given = [(a.job.job_id, a.attempt) for a in body.assignments]
                    before = book.held_at_drain.get(stream.session_id, set())
                    when = "decided before it" if set(given) <= before else "decided after it"
                    problems.append(f"{name} was given {given} after a Drain ({drain.reason}), {when}")
                if (way, kind) == ("in", "assignments"):
                    for a in body.assignments:
                        job_id = a.job.job_id
                        if job_id in runs:
                            problems.append(f"{name} was given {job_id} attempt {a.attempt} while it runs "
                                            f"attempt {runs[job_id]}")  # fmt: skip
                        runs[job_id] = a.attempt
                        had.add((job_id, a.attempt))
                    if len(runs) > m.slots:
                        problems.append(f"{name} runs {sorted(runs.items())} on {m.slots} slots")
                elif (way, kind) == ("in", "cancel"):
                    if (body.job_id, body.attempt) not in had:
                        problems.append(f"{name} was told to cancel {body.job_id} attempt {body.attempt} "
                                        f"({body.reason}), never given to it nor listed")  # fmt: skip
                    if runs.get(body.job_id) == body.attempt:
                        del runs[body.job_id]
                elif way == "out" and kind in ("results", "failure", "reject"):
                    for r in body.results if kind == "results" else (body,):
                        if runs.get(r.job_id) == r.attempt:
                            del runs[r.job_id]
        last = m.sm.streams[-1] if m.sm.streams else None
        if (
            last is not None
            and any(k == "drain" for w, k, _ in last.log if w == "in")
            and not m.sm.closed.is_set()
        ):
            problems.append(
                f"{m.name}'s last stream (session {last.session_id}) was drained and is still open"
            )
    return problems


def queued_twice(queues: Any) -> list[str]:
    """Jobs with more than one entry in the ready queues (for the failure message)."""
    entries = Counter(
        job.job_id
        for shape in queues.shapes.values()
        for level in shape.levels.values()
        for fifo in level.clients.values()
        for job in fifo
        if job.in_queue
    )
    return [job_id for job_id, n in entries.items() if n > 1]


# ------------------------------------------------------------------------------------------ the test
async def test_commits_failing_at_random_leave_memory_and_store_in_agreement(
    coord: Harness, caplog, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    print(f"\nchaos seed {SEED} (AITBC_CHAOS_SEED={SEED} to run it again), {CHAOS_SECONDS:g} s of chaos")
    caplog.set_level(logging.WARNING)
    scheduler = coord.coordinator.scheduler
    failed: Counter = Counter()  # failed commits, as the scheduler undoes them
    undo = scheduler._failed
    phase, book = Phase(), Book()

    def counting(pending) -> None:  # type: ignore[no-untyped-def]
        unit = pending.unit
        book.failed_writes.append(pending)
        failed["commits"] += 1
        failed["with inserts"] += bool(unit.new_jobs)
        failed["with receipts"] += bool(unit.receipts)
        failed["with changes"] += bool(unit.job_updates)
        undo(pending)

    monkeypatch.setattr(scheduler, "_failed", counting)
    drain = scheduler.drain

    def draining(session, reason: str) -> None:  # type: ignore[no-untyped-def]
        book.held_at_drain.setdefault(session.session_id, {(j, h.attempt) for j, h in session.held.items()})
        drain(session, reason)

    monkeypatch.setattr(scheduler, "drain", draining)
    clients = {name: coord.client(name) for name in ("alice", "bob")}
    hand = [
        HandMiner(coord, name, slots, random.Random(f"{SEED}-{name}"), phase, book)
        for name, slots in HAND_MINERS
    ]
    sdk = Miner(coord.address, miner_key(SDK_MINER[0]),
                sdk_runner(random.Random(f"{SEED}-sdk"), phase, book, SDK_MINER[1]),
                capabilities(slots=SDK_MINER[1]), own_connection=True, backoff_max_s=1.0)  # fmt: skip
    chaos = Chaos(coord, random.Random(f"{SEED}-chaos"), phase, book, clients, hand)
    watchers: set[asyncio.Task] = set()
    background: list[asyncio.Task] = []
    client_tasks: list[asyncio.Task] = []
    try:
        background += [asyncio.create_task(m.run()) for m in hand]
        coord.run_miner(sdk)
        background.append(asyncio.create_task(sample(coord, hand, phase, book)))
        chaos_task = asyncio.create_task(chaos.run())
        client_tasks = [
            asyncio.create_task(client_loop(name, c, random.Random(f"{SEED}-{name}"), phase, book, watchers))
            for name, c in clients.items()
        ]
        await asyncio.sleep(CHAOS_SECONDS)
        # A slow machine leaves fewer rounds: go on, for a while at most, until the rare cases checked below
        # have happened (a miner back while its old session's write fails, a few drains).
        deadline = time.monotonic() + 30
        while (chaos.came_back["failed"] < 3 or chaos.drained() < 3) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)

        # the failures stop: no more rules, no more misbehaviour; the miners keep working
        phase.calm.set()
        await asyncio.wait_for(chaos_task, 10)
        assert not chaos.conn.execute("SELECT count(*) FROM chaos_rules").fetchone()[0]
        done, stuck = await asyncio.wait([*client_tasks, *chaos.tasks], timeout=30)
        assert not stuck, f"seed {SEED}: client calls still waiting 30 s after the chaos: {stuck}"
        for task in done:
            task.result()
        calm_at = time.monotonic()
        await settle(coord, book)
        settled_in = time.monotonic() - calm_at
        _, stuck = await asyncio.wait(watchers, timeout=15) if watchers else (set(), set())
        assert not stuck, (
            f"seed {SEED}: {len(stuck)} WatchJob calls never ended though every job is terminal: "
            f"{sorted(set(book.watched) - set(book.watch_ends))[:5]}"
        )
        phase.over.set()
        await asyncio.gather(*background)
        sdk.stop()

        completed = coord.db.scalar("SELECT count(*) FROM jobs WHERE state = ?", (COMPLETED,))
        by_state = dict(coord.db.query("SELECT state, count(*) FROM jobs GROUP BY state"))
        restores = sum("jobs restored from the store" in r.getMessage() for r in caplog.records)
        print(f"seed {SEED}: {len(book.told)} jobs {by_state} (states), settled {settled_in:.1f} s after the "
              f"chaos; {failed['commits']} failed commits {dict(failed)}, {restores} read-backs; rules "
              f"{dict(chaos.added)}; came back while writing {dict(chaos.came_back)}; calls {dict(book.calls)}; miners "
              f"{ {m.name: dict(m.stats) for m in hand} }, sdk {sdk.completed} done {sdk.connects} connects")  # fmt: skip
        await check_everything(coord, book, hand, caplog)
        # not vacuous: commits did fail (inserts, changes and receipts), and many jobs still completed
        assert failed["commits"] >= 20 and failed["with changes"] >= 5 and failed["with receipts"] >= 1, (
            f"seed {SEED}: too few failed commits to prove anything: {dict(failed)}"
        )
        assert restores >= 5, f"seed {SEED}: only {restores} read-backs after failed commits"
        # and some of those were changes decided on a miner's old session that failed once it was back
        assert chaos.came_back["failed"] >= 3, (
            f"seed {SEED}: too few writes failed after their miner came back: {dict(chaos.came_back)}"
        )
        # and miners were drained (at times with writes failing); how many of their streams ended DRAINED
        # during the chaos depends on timing (a miner that keeps its jobs until the calm ends it then)
        assert chaos.drained() >= 3, f"seed {SEED}: {chaos.drained()} drains"
        assert completed >= 100 and completed >= len(book.told) // 2, (
            f"seed {SEED}: only {completed} of {len(book.told)} jobs completed: {by_state}"
        )
    finally:
        phase.calm.set()
        phase.over.set()
        for task in [*background, *client_tasks, *watchers, *chaos.tasks]:
            task.cancel()
        await asyncio.gather(*background, *client_tasks, *watchers, *chaos.tasks, return_exceptions=True)
        chaos.close()


async def settle(coord: Harness, book: Book) -> None:
    """Wait (bounded) until every job is terminal and the scheduler holds nothing; fail listing the rest."""
    scheduler = coord.coordinator.scheduler
    terminal = tuple(int(s) for s in JobState if s.terminal)
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        rows = coord.db.query(f"SELECT job_id, state FROM jobs WHERE state NOT IN ({','.join('?' * len(terminal))})",
                              terminal)  # fmt: skip
        draining = [s.miner_id for s in scheduler.sessions.values() if s.draining]
        quiet = not (scheduler.jobs or scheduler._detached or scheduler._background or scheduler._unsettled
                     or scheduler.orphans or draining)  # fmt: skip
        if not rows and quiet:
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    lines = []
    for job_id, state in rows[:10]:
        where = ("in memory" if job_id in scheduler.jobs else "") + (" detached" if job_id in scheduler._detached
                                                                     else "")  # fmt: skip
        holders = [s.miner_id for s in scheduler.sessions.values() if job_id in s.held]
        events = [(e["sequence"], e["reason"], e["to_state"], e["attempt"], e["miner_id"])
                  for e in coord.db.events(job_id)]  # fmt: skip
        lines.append(f"  {job_id} state {state} {where} held by {holders}: {events}")
    raise AssertionError(
        f"seed {SEED}: {len(rows)} jobs not terminal {SETTLE_SECONDS:g} s after the failures stopped "
        f"(scheduler: {len(scheduler.jobs)} jobs, {len(scheduler._detached)} detached, "
        f"{len(scheduler._background)} background tasks, {len(scheduler._unsettled)} unsettled, orphans "
        f"{ {m: sorted(o) for m, o in scheduler.orphans.items()} }; draining sessions "
        f"{ {s.miner_id: (sorted(s.held), s.reserved) for s in scheduler.sessions.values() if s.draining} }):\n"
        + "\n".join(lines)
    )


async def check_everything(coord: Harness, book: Book, hand: list[HandMiner], caplog) -> None:  # type: ignore[no-untyped-def]
    db, scheduler, issuer = coord.db, coord.coordinator.scheduler, coord.coordinator.issuer
    problems = [f"during the run, {n} times: {first}" for n, first, _ in book.violations.values()]
    problems += [f"unexpected call outcome: {u}" for u in book.unexpected[:10]]

    # --- jobs: exactly those the clients were told about, each terminal, its event log a valid chain
    jobs = {r[0]: r[1:] for r in db.query("SELECT job_id, state, attempt, event_seq, client_id, idempotency_key "
                                          "FROM jobs")}  # fmt: skip
    if set(jobs) != set(book.told):
        problems.append(f"stored jobs never told to a client: {sorted(set(jobs) - set(book.told))[:5]}; "
                        f"told but not stored: {sorted(set(book.told) - set(jobs))[:5]}")  # fmt: skip
    events: dict[str, list[tuple]] = defaultdict(list)
    for row in db.query("SELECT job_id, sequence, from_state, to_state, attempt, miner_id, reason, message "
                        "FROM job_events ORDER BY job_id, sequence"):  # fmt: skip
        events[row[0]].append(row[1:])
    results = defaultdict(list)
    for job_id, attempt, receipt_id in db.query("SELECT job_id, attempt, receipt_id FROM job_results"):
        results[job_id].append((attempt, receipt_id))
    receipts = defaultdict(list)
    for receipt_id, job_id, attempt in db.query("SELECT receipt_id, job_id, attempt FROM receipts"):
        receipts[job_id].append((attempt, receipt_id))
    for job_id, (state, attempt, event_seq, client, _key) in jobs.items():
        chain = events.get(job_id, [])
        where = f"{job_id}: {[(e[0], e[5], e[2], e[3]) for e in chain]}"
        if not JobState(state).terminal:
            problems.append(f"not terminal: {where}")
        if [e[0] for e in chain] != list(range(1, len(chain) + 1)) or len(chain) != event_seq:
            problems.append(f"event sequence with a gap (event_seq {event_seq}): {where}")
            continue
        if chain[-1][2] != state or chain[-1][3] != attempt:
            problems.append(f"stored state {state} attempt {attempt} is not the last event's: {where}")
        if (chain[0][1], chain[0][2], chain[0][5]) != (None, QUEUED, "SUBMITTED"):
            problems.append(f"does not start SUBMITTED: {where}")
        for prev, e in itertools.pairwise(chain):
            legal = JobState(e[2]) in states.ALLOWED.get(JobState(prev[2]), frozenset())
            # an assignment starts the next attempt; a reject, or an assignment its miner never heard of, gives
            # it back; nothing else changes it
            step = 1 if e[2] == ASSIGNED else -1 if e[5] == "REJECTED" or e[6] in GIVEN_BACK else 0
            if e[1] != prev[2] or not legal or e[3] - prev[3] != step:
                problems.append(f"illegal step {prev[5]} -> {e[5]}: {where}")
                break
        n_completed = sum(e[2] == COMPLETED for e in chain)
        got_results, got_receipts = results.get(job_id, []), receipts.get(job_id, [])
        attempts = [attempt] if state == COMPLETED else []
        if (
            n_completed != len(attempts)
            or [a for a, _ in got_results] != attempts
            or [a for a, _ in got_receipts] != attempts
        ):
            problems.append(f"{n_completed} COMPLETED events, results {got_results}, receipts {got_receipts}: "
                            f"{where}")  # fmt: skip
        elif attempts and got_results[0][1] != got_receipts[0][1]:
            problems.append(f"its result names receipt {got_results[0][1]}, stored {got_receipts[0][1]}")
        if book.told.get(job_id) not in (None, client):
            problems.append(f"{job_id} stored for {client}, told to {book.told[job_id]}")
    for (client, key), ids in book.keys.items():
        stored = [j for j, r in jobs.items() if (r[3], r[4]) == (client, key)]
        if len(ids) != 1 or sorted(stored) != sorted(ids):
            problems.append(f"key {client}/{key}: answered with {sorted(ids)}, stored {stored}")

    # --- what callers were told landed: acknowledged cancels, reads, watchers, miners' messages
    for job_id in sorted(book.not_found & set(jobs)):
        problems.append(
            f"a cancel of {job_id} was answered NOT_FOUND, but it is stored: {events.get(job_id)}"
        )
    for job_id in sorted(book.canceled):
        if jobs.get(job_id, (None,))[0] != CANCELED or events[job_id][-1][5] != "CANCELED_BY_CLIENT":
            problems.append(f"a cancel answered CANCELED did not land: {job_id} {events.get(job_id)}")
    for job_id, state, attempt in book.reads:
        if not any((e[2], e[3]) == (state, attempt) for e in events.get(job_id, [])):
            problems.append(f"GetJob read {job_id} as state {state} attempt {attempt}, never stored: "
                            f"{events.get(job_id)}")  # fmt: skip
    for job_id, seen in book.watched.items():
        stored = {e[0]: e[1:6] for e in events.get(job_id, [])}
        for seq, *rest in seen:
            from_state = rest[0] or None  # UNSPECIFIED on the wire for the submission
            if stored.get(seq) != (from_state, *rest[1:]):
                problems.append(f"a watcher of {job_id} heard event {seq} {rest}, stored {stored.get(seq)}")
        if [s[0] for s in seen] != sorted({s[0] for s in seen}):
            problems.append(f"a watcher of {job_id} heard events out of order: {[s[0] for s in seen]}")
        if job_id in book.watch_ends and book.watch_ends[job_id] != jobs.get(job_id, (None,))[0]:
            problems.append(f"a watcher of {job_id} ended on state {book.watch_ends[job_id]}, stored "
                            f"{jobs.get(job_id)}")  # fmt: skip
    receipt_of = {rid: (job_id, a) for job_id, rs in receipts.items() for a, rid in rs}
    for m in hand:
        for kind, body in m.sm.log:
            if kind == "assignments":
                for a in body.assignments:
                    if not any((e[2], e[3], e[4]) == (ASSIGNED, a.attempt, m.name)
                               for e in events.get(a.job.job_id, [])):  # fmt: skip
                        problems.append(f"{m.name} was assigned {a.job.job_id} attempt {a.attempt}, never "
                                        f"stored: {events.get(a.job.job_id)}")  # fmt: skip
            elif kind == "cancel" and body.reason != "NOT_HELD":
                if not any(e[3] == body.attempt and e[1] in HELD and e[2] not in HELD and e[4] == m.name
                           for e in events.get(body.job_id, [])):  # fmt: skip
                    problems.append(f"{m.name} was told to cancel {body.job_id} attempt {body.attempt} "
                                    f"({body.reason}), never stored: {events.get(body.job_id)}")  # fmt: skip
            elif kind == "result_ack" and body.accepted:
                if body.receipt_id:
                    if receipt_of.get(body.receipt_id) != (body.job_id, body.attempt):
                        problems.append(f"{m.name}'s result for {body.job_id} attempt {body.attempt} was "
                                        f"accepted with receipt {body.receipt_id}, not stored")  # fmt: skip
                elif not any(e[3] == body.attempt and e[1] in HELD and e[2] not in HELD
                             for e in events.get(body.job_id, [])):  # fmt: skip
                    problems.append(f"{m.name}'s answer for {body.job_id} attempt {body.attempt} was "
                                    f"accepted, never stored: {events.get(body.job_id)}")  # fmt: skip
        if m.sm.peak_held > m.slots:
            problems.append(f"{m.name} held {m.sm.peak_held} jobs at once on {m.slots} slots")

    # --- the receipt log: leaves 0..n-1, one per receipt, and the coordinator's tree equal to it
    leaves = db.query("SELECT leaf_index, leaf_hash FROM log_leaves ORDER BY leaf_index")
    if [i for i, _ in leaves] != list(range(len(leaves))):
        problems.append(f"log leaves with a gap: {[i for i, _ in leaves][:20]}...")
    stored_leaves = dict(leaves)
    rows = db.query("SELECT leaf_index, envelope FROM receipts ORDER BY leaf_index")
    if [i for i, _ in rows] != list(range(len(leaves))):
        problems.append(
            f"receipts' leaf indexes are not 0..{len(leaves) - 1}: {[i for i, _ in rows][:20]}..."
        )
    bad = [i for i, envelope in rows if stored_leaves.get(i) != leaf_hash(envelope)]
    if bad:
        problems.append(f"receipts whose leaf is not their envelope's hash: {bad[:10]}")
    tree = issuer.tree
    if (tree.size, issuer.committed_size) != (len(leaves), len(leaves)) or issuer._arrived:
        problems.append(f"the coordinator's receipt tree has {tree.size} leaves (committed "
                        f"{issuer.committed_size}, waiting {sorted(issuer._arrived)}), the store {len(leaves)}")  # fmt: skip
    elif leaves and await issuer.root(tree.size) != MerkleTree([h for _, h in leaves]).root(len(leaves)):
        problems.append("the coordinator's receipt tree is not the stored log")
    ledger = Counter(db.query("SELECT receipt_id, kind FROM ledger_entries"))
    if (
        set(ledger.values()) - {1}
        or {rid for rid, _ in ledger} != set(receipt_of)
        or len(ledger) != 2 * len(receipt_of)
    ):
        problems.append("ledger entries are not one client and one miner entry per stored receipt")
    booked = {(a, k): (b, n, u) for a, k, b, n, u in db.query(
        "SELECT account_id, kind, sum(amount_nano), count(*), sum(units_nano) FROM ledger_entries "
        "GROUP BY account_id, kind")}  # fmt: skip
    in_memory = {
        key: (a["balance_nano"], a["receipts"], a["units_nano"]) for key, a in issuer.accounts.items()
    }
    if booked != in_memory:
        problems.append(f"accounts in memory {in_memory} are not the stored ledger {booked}")

    # --- the scheduler: nothing left, counts as stored, no slot over-used
    counts = dict(
        db.query("SELECT state, count(*) FROM jobs WHERE state IN (?, ?, ?) GROUP BY state", ACTIVE)
    )
    active = {int(s): n for s, n in scheduler.active_counts.items()}
    if any(active.get(s, 0) != counts.get(s, 0) for s in ACTIVE):
        problems.append(f"scheduler.active_counts {active}, stored {counts}")
    queued_in_memory = sum(1 for j in scheduler.jobs.values() if j.state is JobState.QUEUED and j.in_queue)
    if scheduler.queues.depth != queued_in_memory or scheduler.jobs:
        problems.append(f"queue depth {scheduler.queues.depth}, {queued_in_memory} queued in memory; "
                        f"jobs left in memory {sorted(scheduler.jobs)[:5]}")  # fmt: skip
    leftovers = {name: getattr(scheduler, name) for name in ("_detached", "_background", "_unsettled",
                 "_unsettled_frees", "_write_failures", "_inflight_keys", "orphans")}  # fmt: skip
    if any(leftovers.values()):
        problems.append(f"scheduler bookkeeping left over: { {k: v for k, v in leftovers.items() if v} }")
    for session in scheduler.sessions.values():
        if session.draining:
            problems.append(f"{session.miner_id} (session {session.session_id}) is still draining")
        if session.held or session.reserved:
            problems.append(
                f"{session.miner_id} still holds {sorted(session.held)}, {session.reserved} reserved"
            )
    problems += check_streams(hand, book)

    # --- errors: only the refused writes themselves (and what was built on them), nothing else
    for record in caplog.records:
        if not record.name.startswith("coordinator"):
            continue
        error = record.exc_info[1] if record.exc_info else None
        if error is None and "miner stream reader failed" in record.getMessage():
            error = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if error is not None and not isinstance(error, EXPECTED_ERRORS):
            problems.append(f"unexpected error logged by {record.name}: {record.getMessage()} {error!r}")
        elif "could not place" in record.getMessage() or "failed unexpectedly" in record.getMessage():
            problems.append(f"{record.name}: {record.getMessage()}")
    for _, _, involved in book.violations.values():  # the history of the jobs involved
        for job_id in involved:
            problems.append(f"  {job_id}: {[(e[0], e[5], e[2], e[3], e[4]) for e in events.get(job_id, [])]}")
    assert not problems, f"seed {SEED}: {len(problems)} problems:\n" + "\n".join(problems[:40])
