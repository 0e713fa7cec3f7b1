"""Chaos on the network of poll miners (`Miner(transport="poll")`): SDK miners on the unary RPCs reach a real
coordinator through TCP relays of their own that cut their connection (a reset or a FIN), stall it (nothing flows
for a while, then it heals or is cut), blackhole it (silent for good: the miner's keepalive must find it) and
delay the coordinator's answers, while a client submits jobs. Now and then a miner is stopped and started again
(its jobs lost), or drained (its run() must return with nothing left) and started again, the coordinator restarts
on the same SQLite file, and a runner fails retryable (the job runs again).

Then the network heals and, within a bound:
- every job the client was told of is COMPLETED (none may fail: attempts and reassignments are plentiful);
- each has exactly one COMPLETED event and one receipt, which verifies offline (the coordinator's signature, and
  the miner's for a miner that signs) and names the attempt and miner its result names; its events are gapless
  and follow the state machine; the result is the job's own (the runners echo);
- no job ran at an attempt the coordinator never recorded, none ran twice at one attempt (but one a stopped miner
  gave back, its attempt unspent), and none ran more often than its attempts;
- no miner ran more jobs at once than its slots;
- no result of the attempt that completed a job was refused (a repeat after a lost answer gets the same ack);
- drained, every miner's run() returns with nothing running and no result awaiting its ack, and the coordinator
  holds no job for any of them.

The run is seeded: the seed is printed (and named in every failure); AITBC_POLL_CHAOS_SEED=<n> makes the same
decisions again (the interleaving still depends on timing); AITBC_POLL_CHAOS_SECONDS sets the chaos's length.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import JobFailed, Outcome, job_input
from aitbc.receipts import KeySet
from coord_support import COMPLETED, Harness
from google.protobuf.json_format import MessageToDict
from test_network_chaos import check_events, miner_behind, verified_bundle

from tests.chaos_support import assert_no_problems, cut, stall, until_terminal
from tests.tcp_relay import DOWN, Link, Relay

SEED = int(os.environ.get("AITBC_POLL_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
CHAOS_SECONDS = float(os.environ.get("AITBC_POLL_CHAOS_SECONDS") or 12.0)
SETTLE_SECONDS = 30.0  # once the network heals, for every job to end
DRAIN_BOUND = 20.0  # for a drained miner's run() to return (its last results' acks included)
MAX_RESTARTS = 2  # coordinator restarts in one run
FLAKY = 0.05  # the share of runs failing retryable (FLAKY): their jobs run again
# (identity, slots, signs its results)
MINERS = (("miner-20", 1, True), ("miner-21", 2, False), ("miner-22", 3, True))
SETTINGS = {
    "heartbeat_interval_seconds": 0.2,
    "heartbeat_timeout_seconds": 1.0,
    "lease_seconds": 1.0,
    "reconnect_grace_seconds": 2.0,
    "max_reassignments": 1000,  # jobs lost to the chaos are requeued again and again: none may fail for it
    "job_max_attempts": 100,
    "shutdown_grace_seconds": 0.2,
}


class ChaosRelay(Relay):
    """A miner's relay: on top of Relay's cuts, stalls and blackholes, it may hold back what the coordinator sends
    (its answers) for a while, chunk by chunk."""

    def __init__(self, upstream_port: int, rng: random.Random) -> None:
        super().__init__("127.0.0.1", upstream_port)
        self.rng = rng
        self.delaying = False

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if self.delaying and direction == DOWN:
            await asyncio.sleep(self.rng.uniform(0.05, 0.6))
        return data


@dataclass
class Book:
    runs: list[tuple[str, int, str]] = field(default_factory=list)  # (job, attempt, miner) each run started
    now: Counter = field(default_factory=Counter)  # miner -> jobs running at this moment
    peak: Counter = field(default_factory=Counter)  # miner -> the most jobs it ran at once
    told: list[str] = field(default_factory=list)  # job ids, from successful submits
    actions: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def make_runner(name: str, rng: random.Random, book: Book):  # type: ignore[no-untyped-def]
    async def run(job: job_pb2.Job) -> Outcome:
        book.runs.append((job.job_id, job.attempt, name))
        book.now[name] += 1
        book.peak[name] = max(book.peak[name], book.now[name])
        try:
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            if rng.random() < FLAKY:
                raise JobFailed("FLAKY", "a flaky runner")
            return Outcome(job_input(job), units="1", unit_type="jobs")
        finally:
            book.now[name] -= 1

    return run


class PollMiner:
    """A poll-transport SDK Miner of one identity, behind its relay; kill() drops the Miner (and what it ran)."""

    def __init__(self, name: str, slots: int, signs: bool, relay: ChaosRelay, book: Book) -> None:
        self.name, self.slots, self.signs, self.relay, self.book = name, slots, signs, relay, book
        self.rng = random.Random(f"{SEED}-{name}")
        self.generations = 0
        self.start()

    def start(self) -> None:
        self.generations += 1
        runner = make_runner(self.name, self.rng, self.book)
        self.channel, self.miner = miner_behind(self.relay.port, self.name, self.slots, self.signs, runner,
                                                transport="poll", poll_wait_s=self.rng.choice([0.5, 1.0, 2.0]))  # fmt: skip
        self.task = asyncio.create_task(self.miner.run(), name=f"poll-chaos-{self.name}-{self.generations}")

    async def kill(self) -> None:
        self.miner.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5)
        except TimeoutError:
            self.book.problems.append(f"{self.name}: run() still running 5 s after stop()")
            self.task.cancel()
        except (asyncio.CancelledError, Exception) as exc:
            self.book.problems.append(f"{self.name}: run() raised {exc!r} after stop()")
        await self.channel.close()

    async def drain(self) -> None:
        """drain(): run() returns once its jobs are done and acknowledged, with nothing left."""
        self.miner.drain()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), DRAIN_BOUND)
        except TimeoutError:
            self.book.problems.append(f"{self.name}: run() still running {DRAIN_BOUND:g} s after drain(): running "
                                      f"{list(self.miner.running)}, unacked {list(self.miner.unacked)}")  # fmt: skip
        except Exception as exc:
            self.book.problems.append(f"{self.name}: run() raised {exc!r} after drain()")
        if self.miner.running or self.miner.unacked:
            self.book.problems.append(f"{self.name}: drained with jobs running {list(self.miner.running)} and "
                                      f"results unacked {list(self.miner.unacked)}")  # fmt: skip
        await self.kill()


class Chaos:
    """One action at a time per relay (and per miner), several at once; the coordinator restarts now and then."""

    def __init__(self, coord: Harness, rng: random.Random, book: Book, miners: list[PollMiner]) -> None:
        self.coord, self.rng, self.book, self.miners = coord, rng, book, {m.name: m for m in miners}
        self.busy: set[str] = set()
        self.restarts = 0

    async def act(self) -> None:
        rng, book = self.rng, self.book
        name = rng.choice([*sorted(self.miners), "coordinator"])
        roll = rng.random()
        key = name if name == "coordinator" else f"{'net' if roll < 0.85 else 'run'}:{name}"
        if key in self.busy:
            return
        self.busy.add(key)
        try:
            if name == "coordinator":
                if self.restarts < MAX_RESTARTS and roll < 0.2:
                    self.restarts += 1
                    book.actions["coordinator-restart"] += 1
                    coordinator, self.coord.coordinator = self.coord.coordinator, None
                    await asyncio.wait_for(coordinator.stop(grace=0.2), 15)
                    await asyncio.sleep(rng.uniform(0, 1.0))
                    await self.coord.start()
                return
            m = self.miners[name]
            relay = m.relay
            if roll < 0.25:
                cut(relay, rng, book.actions, ["rst", "fin"])
            elif roll < 0.5:
                await stall(relay, rng, book.actions, ["heal", "heal", "rst", "fin"], (0.3, 3.5))
            elif roll < 0.75:
                book.actions["delay"] += 1
                relay.delaying = True
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                relay.delaying = False
            elif (
                roll < 0.85
            ):  # silent for good: the keepalive (6.5 s) ends it, and the calls on it fail UNAVAILABLE
                book.actions["blackhole"] += 1
                relay.blackhole()
                await asyncio.sleep(rng.uniform(1.0, 3.0))
            elif rng.random() < 0.6:
                book.actions["miner-restart"] += 1
                await m.kill()
                await asyncio.sleep(rng.uniform(0, 1.0))
                m.start()
            else:
                book.actions["miner-drain"] += 1
                await m.drain()
                await asyncio.sleep(rng.uniform(0, 1.0))
                m.start()
        finally:
            self.busy.discard(key)


async def submitter(client, rng: random.Random, book: Book, stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    n = 0
    while not stop.is_set():
        n += 1
        job = await client.submit({"n": n, "seed": SEED}, max_attempts=100)
        book.told.append(job.job_id)
        await asyncio.sleep(rng.uniform(0.02, 0.2))


async def test_poll_miners_under_network_chaos(coord: Harness, caplog) -> None:  # type: ignore[no-untyped-def]
    print(f"\npoll chaos seed {SEED} (AITBC_POLL_CHAOS_SEED={SEED} to run it again), {CHAOS_SECONDS:g} s")
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    caplog.set_level(logging.WARNING)
    with socket.socket() as sock:  # the same port across restarts (the relays keep their upstream)
        sock.bind(("127.0.0.1", 0))
        coord.overrides.update(SETTINGS, app_port=sock.getsockname()[1])
    await coord.restart()
    port = coord.coordinator.port
    book = Book()
    rng = random.Random(f"{SEED}-chaos")
    miners: list[PollMiner] = []
    stop = asyncio.Event()
    background: list[asyncio.Task] = []
    try:
        for name, slots, signs in MINERS:
            relay = ChaosRelay(port, random.Random(f"{SEED}-relay-{name}"))
            await relay.start()
            miners.append(PollMiner(name, slots, signs, relay, book))
        client = coord.client("alice")
        submitting = asyncio.create_task(submitter(client, random.Random(f"{SEED}-client"), book, stop))
        chaos = Chaos(coord, rng, book, miners)
        started = time.monotonic()
        while time.monotonic() - started < CHAOS_SECONDS:
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            background.append(asyncio.create_task(chaos.act()))
        stop.set()
        await asyncio.wait_for(submitting, 30)
        await asyncio.wait_for(asyncio.gather(*background), 30)
        for m in miners:
            m.relay.heal()
            if m.task.done():
                book.problems.append(f"{m.name}: run() ended on its own: {m.task!r}")

        db = coord.db
        settled = await until_terminal(db.not_terminal, seed=SEED, bound_s=SETTLE_SECONDS, actions=book.actions,
                                       detail=lambda rows: f"events of the first: {db.events(rows[0][0])}")  # fmt: skip

        # drained, every miner ends with nothing running and nothing unacknowledged
        await asyncio.gather(*(m.drain() for m in miners))
        scheduler = coord.coordinator.scheduler
        for session in scheduler.sessions.values():
            if session.held or session.reserved:
                book.problems.append(f"session {session.miner_id}: held {list(session.held)} reserved "
                                     f"{session.reserved} after the drain")  # fmt: skip
        if scheduler.jobs:
            book.problems.append(
                f"jobs in the scheduler's memory after the drain: {list(scheduler.jobs)[:5]}"
            )

        await check_jobs(coord, client, book)
        check_runs(coord, book)
        refusals = check_refusals(coord, caplog, book)
        for m in miners:
            if book.peak[m.name] > m.slots:
                book.problems.append(f"{m.name}: {book.peak[m.name]} jobs ran at once on {m.slots} slots")
        for record in caplog.records:
            if record.name.startswith("coordinator") and (record.levelno >= logging.ERROR or record.exc_info):
                book.problems.append(f"{record.name} logged: {record.getMessage()} {record.exc_info!r}")
            if record.name == "aitbc.miner" and record.levelno >= logging.ERROR:
                book.problems.append(f"the miner logged: {record.getMessage()} {record.exc_info!r}")
        states = Counter(job_pb2.JobState.Name(s) for (s,) in db.query("SELECT state FROM jobs"))
        print(f"seed {SEED}: {len(book.told)} jobs, {dict(states)}, {len(book.runs)} runs, settled {settled:.1f} s "
              f"after healing; refusals {dict(refusals)}; peaks {dict(book.peak)}; actions {dict(book.actions)}; connects "
              f"{[(m.name, m.miner.connects) for m in miners]}")  # fmt: skip
        assert_no_problems(SEED, book.problems)
        assert len(book.told) >= 20, f"seed {SEED}: only {len(book.told)} jobs submitted"
    finally:
        stop.set()
        for t in background:
            t.cancel()
        for m in miners:
            m.miner.stop()
        await asyncio.gather(*(m.task for m in miners), *background, return_exceptions=True)
        for m in miners:
            await m.relay.close()
            await m.channel.close()


async def check_jobs(coord: Harness, client, book: Book) -> None:  # type: ignore[no-untyped-def]
    db, problems = coord.db, book.problems
    stored = {row[0]: row for row in db.query("SELECT job_id, state, attempt FROM jobs")}
    if sorted(stored) != sorted(book.told):
        problems.append(f"the store has {len(stored)} jobs, the client was told of {len(book.told)}")
    keyset = KeySet.load(await client.signing_keys())
    signers = {name for name, _, signs in MINERS if signs}
    completed_events, receipts = db.completions()
    for job_id, (_, state, attempt) in stored.items():
        events = db.events(job_id)
        if state != COMPLETED:
            problems.append(f"job {job_id} ended {job_pb2.JobState.Name(state)}: {events[-3:]}")
            continue
        if completed_events[job_id] != 1 or receipts[job_id] != 1:
            problems.append(f"job {job_id}: {completed_events[job_id]} COMPLETED events, {receipts[job_id]} "
                            f"receipts")  # fmt: skip
        check_events(job_id, state, attempt, events, problems)
        miner_id = events[-1]["miner_id"]
        if (verified := await verified_bundle(client, job_id, keyset, miner_id in signers, problems)) is None:
            continue
        answer = await client.result(job_id)
        r, p = answer.result, verified.payload
        if p["job_id"] != job_id or (r.receipt_id, p["attempt"], p["provider"], p["result_sha256"]) != (
            verified.receipt_id, attempt, miner_id, r.result_sha256.hex()
        ):  # fmt: skip
            problems.append(f"job {job_id} (attempt {attempt} by {miner_id}): receipt {p}, result names receipt "
                            f"{r.receipt_id} attempt {r.attempt} by {r.miner_id}")  # fmt: skip
        if MessageToDict(r.result) != MessageToDict(answer.job.payload):
            problems.append(f"job {job_id}: result {MessageToDict(r.result)}, input "
                            f"{MessageToDict(answer.job.payload)}")  # fmt: skip


def check_runs(coord: Harness, book: Book) -> None:
    """No job ran at an attempt the store never recorded, twice at one attempt, or more often than its attempts;
    the attempt that completed it ran on the miner the store names. A run a stopped miner gave back (a REJECTED
    event: its attempt unspent, run again at the same number elsewhere) is not counted."""
    db = coord.db
    runs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for job_id, attempt, name in book.runs:
        runs[job_id].append((attempt, name))
    for job_id, (state, attempt, miner_id) in {
        j: (s, a, m) for j, s, a, m in db.query("SELECT job_id, state, attempt, miner_id FROM jobs")
    }.items():
        ran = runs.get(job_id, [])
        events = db.events(job_id)
        recorded = {(e["attempt"], e["miner_id"]) for e in events if e["miner_id"]}
        # (a REJECTED event names the attempt as given back: one less than the one its miner held and ran)
        given_back = Counter((e["attempt"] + 1, e["miner_id"]) for e in events if e["reason"] == "REJECTED")
        counted = [run for run in ran if not _spend(given_back, run)]
        attempts = [a for a, _ in counted]
        if len(counted) > attempt or len(set(attempts)) != len(attempts):
            problems = f"job {job_id}: ran {sorted(ran)}, attempt {attempt}"
            book.problems.append(f"{problems}; events {db.events(job_id)}")
        for a, name in ran:
            if (a, name) not in recorded:
                book.problems.append(f"job {job_id}: ran at attempt {a} on {name}, never assigned so: "
                                     f"{sorted(recorded)}")  # fmt: skip
        if state == COMPLETED and (attempt, miner_id) not in ran:
            book.problems.append(f"job {job_id}: completed at attempt {attempt} by {miner_id}, which never ran it: "
                                 f"{sorted(ran)}")  # fmt: skip


def _spend(given_back: Counter, run: tuple[int, str]) -> bool:
    """Whether run is one its miner gave back (one fewer left to match)."""
    if given_back[run] > 0:
        given_back[run] -= 1
        return True
    return False


def check_refusals(coord: Harness, caplog, book: Book) -> Counter:  # type: ignore[no-untyped-def]
    """A result refused though its attempt completed the job: a repeat after a lost answer must get the same
    ack, not a refusal. (The log names the attempt of a STALE_ATTEMPT only: a job run once, by the attempt that
    completed it, tells the others.) Returns the refusals by reason."""
    done = dict(coord.db.query("SELECT job_id, attempt FROM jobs WHERE state = ?", (int(COMPLETED),)))
    runs = Counter(job_id for job_id, _, _ in book.runs)
    reasons: Counter = Counter()
    for record in caplog.records:
        message = record.getMessage()
        if record.name != "aitbc.miner" or " refused: " not in message:
            continue
        what, job_id, reason = record.args[:3]  # type: ignore[index,misc]
        reasons[f"{what}:{reason}"] += 1
        attempt = re.search(r"attempt (\d+)", message)
        if (
            what == "result"
            and job_id in done
            and ((attempt and done[job_id] == int(attempt[1])) or (not attempt and runs[job_id] == 1))
        ):
            book.problems.append(f"a result of job {job_id} (attempt {done[job_id]} completed it, runs "
                                 f"{runs[job_id]}) was refused: {message}")  # fmt: skip
    return reasons
