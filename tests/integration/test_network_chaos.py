"""Chaos on the network: SDK miners reach a real coordinator through TCP proxies that cut, reset, stall and
blackhole their connections, while miners are killed, drained and restarted mid-job (Miner objects, and one
`aitbc miner run` process: SIGKILL or SIGTERM), the coordinator restarts on the same SQLite file, and a client
(through a proxy of its own) submits jobs, half of them under idempotency keys (retried after errors, and now
and then submitted again), and watches some.

Each miner identity has its own proxy (one TCP connection per miner: `own_connection`). A proxy may:
- cut every connection with a TCP reset (SO_LINGER 0) or a clean FIN;
- stall them: no byte flows either way for a few seconds (the sockets stay open), then flowing again, or cut;
- blackhole them (in-process miners): the connections so far go silent for good, FIN included, as when a NAT
  drops its entry; new connections work. The miner's keepalive (5.5 s + 1 s) must find it and reconnect.

Then the network heals, every miner runs again, and within a bound:
- every job the client was told of is COMPLETED; no other job exists but those of submits whose answer was
  lost (an unkeyed submit that failed: the job may or may not have been stored); an idempotency key names
  one job;
- each completed job has exactly one COMPLETED event and exactly one receipt; the receipt verifies offline
  (bundle: coordinator and, for miners that sign, miner signatures, checkpoint, inclusion proof) and names
  the attempt, miner and result the job's result names; the result is the job's own (the runners echo);
- each job's events are gapless, chain (from_state of one is to_state of the one before), follow the state
  machine, and end in the job's state; GetJob, ListJobs and WatchJob say the same; each update a watcher
  heard during the chaos is in the stored history, in order, with the job as of its event;
- no result of the attempt that completed a job was refused (a repeat after a lost ack gets the same ack);
- no miner stopped on its own, drains end within a bound, and every miner is connected again (its Miner has
  a session, the admin view lists it ONLINE with that session, the scheduler has one session per miner, no
  orphans, nothing left in its books), the metrics agree (no disconnected or draining miner, no job in
  flight, every slot free); the coordinator, the miners and the process stop within a bound, even with
  connections stalled and blackholed.

The run is seeded: the seed is printed, and AITBC_CHAOS_SEED=<n> runs the same decisions again (the
interleaving still depends on timing). AITBC_CHAOS_SECONDS sets the length of the chaos (12 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aitbc.channel import open_channel
from aitbc.client import Client
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import Miner, Outcome, job_input, probe_capabilities
from aitbc.receipts import KeySet, Policy, Signer, VerifiedReceipt, verify_bundle
from coord_support import CLIENT_KEYS, COMPLETED, Harness, miner_key
from google.protobuf.json_format import MessageToDict
from prometheus_client.parser import text_string_to_metric_families

from coordinator.domain import states
from coordinator.domain.model import JobState
from tests.chaos_support import assert_no_problems, cut, stall, until_terminal
from tests.tcp_relay import Relay

SEED = int(os.environ.get("AITBC_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
CHAOS_SECONDS = float(os.environ.get("AITBC_CHAOS_SECONDS") or 12.0)
SETTLE_SECONDS = 30.0  # bounded wait, once the network heals, for every job to end
# a draining miner's jobs take 0.7 s at most; a stall (3.5 s at most), a coordinator restart and a reconnect may
# delay their acks
DRAIN_BOUND = 15.0
# (identity, slots, signs its results); the last one runs as an `aitbc miner run` process
IN_PROCESS = (("miner-10", 1, True), ("miner-11", 2, False), ("miner-12", 2, True))
PROCESS = ("miner-13", 1)
SETTINGS = {
    "heartbeat_interval_seconds": 0.2,
    "heartbeat_timeout_seconds": 1.0,
    "lease_seconds": 1.0,
    "reconnect_grace_seconds": 1.0,
    "max_reassignments": 1000,  # jobs lost to the chaos go on being requeued: none may fail for it
    "job_max_attempts": 100,
    "shutdown_grace_seconds": 0.2,
}


def seed_hex(name: str) -> str:
    return random.Random(f"signer-{name}").randbytes(32).hex()


def miner_behind(
    port: int, name: str, slots: int, signs: bool, runner: Any, **options: Any
) -> tuple[grpc.aio.Channel, Miner]:
    """An SDK Miner of this identity reaching the coordinator through the proxy on port, on a connection of its
    own with the shortest keepalive the coordinator permits (a connection gone silent is found in 6.5 s); signing
    with its seeded key if it signs. Its channel (to close) and the Miner (to run)."""
    channel = open_channel(f"127.0.0.1:{port}", own_connection=True, keepalive_s=5.5, keepalive_timeout_s=1.0)
    miner = Miner(f"127.0.0.1:{port}", miner_key(name), runner=runner, capabilities=probe_capabilities(slots=slots),
                  signer=Signer(seed_hex(name)) if signs else None, channel=channel, backoff_base_s=0.1,
                  backoff_max_s=1.0, **options)  # fmt: skip
    return channel, miner


# ---------------------------------------------------------------------------------------------- the proxy
class ChaosProxy(Relay):
    """Relays TCP from its own port to the coordinator's; cuts (RST or FIN), stalls and blackholes on request."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__("127.0.0.1", upstream_port)


# ---------------------------------------------------------------------------------------------- miners
@dataclass
class Book:
    runs: list[tuple[str, int, str]] = field(default_factory=list)  # (job, attempt, miner) each run started
    told: dict[int, str] = field(default_factory=dict)  # n -> job id, from a successful submit
    keyed: set[int] = field(default_factory=set)  # n submitted under an idempotency key
    lost: set[int] = field(default_factory=set)  # n whose (unkeyed) submit failed: stored or not, unknown
    # job -> per watch, the events it heard: (sequence, from, to)
    heard: dict[str, list[list[tuple[int, int, int]]]] = field(default_factory=lambda: defaultdict(list))
    actions: Counter = field(default_factory=Counter)
    disconnections: dict[str, float] = field(default_factory=dict)  # by reason, since the last restart
    submit_s: list[tuple[float, int]] = field(default_factory=list)  # (seconds, n) of successful submits
    blackhole_s: list[float] = field(default_factory=list)  # how long miners took to leave a dead connection
    problems: list[str] = field(default_factory=list)


def make_runner(name: str, rng: random.Random, book: Book):  # type: ignore[no-untyped-def]
    async def run(job: job_pb2.Job) -> Outcome:
        book.runs.append((job.job_id, job.attempt, name))
        await asyncio.sleep(rng.uniform(0.05, 0.7))
        return Outcome(job_input(job), units="1", unit_type="jobs")

    return run


class InProcessMiner:
    """An SDK Miner of one identity behind its proxy; kill() drops the Miner object (and what it ran)."""

    def __init__(self, name: str, slots: int, signs: bool, proxy: ChaosProxy, rng: random.Random,
                 book: Book) -> None:  # fmt: skip
        self.name, self.slots, self.signs, self.proxy, self.rng, self.book = (
            name,
            slots,
            signs,
            proxy,
            rng,
            book,
        )
        self.miner: Miner | None = None
        self.task: asyncio.Task | None = None
        self.channel: grpc.aio.Channel | None = None
        self.generations = 0

    def start(self) -> None:
        self.generations += 1
        runner = make_runner(self.name, self.rng, self.book)
        self.channel, self.miner = miner_behind(self.proxy.port, self.name, self.slots, self.signs, runner)
        self.task = asyncio.create_task(self.miner.run(), name=f"chaos-{self.name}-{self.generations}")

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def kill(self) -> None:
        assert self.miner is not None and self.task is not None
        self.miner.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5)
        except TimeoutError:
            self.book.problems.append(f"{self.name}: Miner.run() still running 5 s after stop()")
            self.task.cancel()
        except (asyncio.CancelledError, Exception):
            pass
        assert self.channel is not None
        await self.channel.close()
        self.miner = self.task = self.channel = None

    def session_id(self) -> str:
        return self.miner.session_id if self.miner is not None else ""


class ProcessMiner:
    """`aitbc miner run` in a process of its own, behind its proxy; kill() is SIGKILL."""

    def __init__(self, name: str, slots: int, proxy: ChaosProxy, log_path: Path) -> None:
        self.name, self.slots, self.proxy, self.log_path = name, slots, proxy, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.generations = 0

    async def start(self) -> None:
        self.generations += 1
        aitbc = str(Path(sys.executable).parent / "aitbc")
        out = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            aitbc, "miner", "run", "--address", f"127.0.0.1:{self.proxy.port}",
            "--api-key", miner_key(self.name), "--slots", str(self.slots),
            "--runner", "cmd:sh -c 'sleep 0.3; cat'", "--signing-key-hex", seed_hex(self.name),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
        out.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)
            await asyncio.wait_for(self.proc.wait(), 10)
        self.proc = None


# ---------------------------------------------------------------------------------------------- the test
async def test_network_chaos(coord: Harness, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    print(f"\nnetwork chaos seed {SEED} (AITBC_CHAOS_SEED={SEED} to run it again), {CHAOS_SECONDS:g} s")
    caplog.set_level(logging.WARNING)
    # the same port across restarts (the proxies and the client keep their address)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    coord.overrides.update(SETTINGS, app_port=coord.coordinator.port, metrics_port=metrics_port)
    await coord.restart()
    port = coord.coordinator.port
    book = Book()
    rng = random.Random(f"{SEED}-chaos")
    proxies = {name: ChaosProxy(port) for name, *_ in (*IN_PROCESS, PROCESS)}
    for p in proxies.values():
        await p.start()
    miners = [InProcessMiner(n, s, signs, proxies[n], random.Random(f"{SEED}-{n}"), book)
              for n, s, signs in IN_PROCESS]  # fmt: skip
    proc = ProcessMiner(PROCESS[0], PROCESS[1], proxies[PROCESS[0]], tmp_path / "process-miner.log")
    for m in miners:
        m.start()
    await proc.start()
    client_proxy = ChaosProxy(port)  # the client's connection is cut too (its answers lost)
    await client_proxy.start()
    channel = open_channel(f"127.0.0.1:{client_proxy.port}")
    client = Client(f"127.0.0.1:{client_proxy.port}", CLIENT_KEYS["alice"], channel=channel)
    stop = asyncio.Event()
    background: list[asyncio.Task] = []
    try:
        background.append(asyncio.create_task(submitter(client, random.Random(f"{SEED}-client"), book, stop)))
        background.append(asyncio.create_task(watcher(client, random.Random(f"{SEED}-watch"), book, stop)))
        chaos = Chaos(coord, rng, book, proxies, client_proxy, miners, proc)
        started = time.monotonic()
        while time.monotonic() - started < CHAOS_SECONDS:
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            background.append(asyncio.create_task(chaos.act()))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*background, return_exceptions=True), 30)
        # the network heals; every miner runs
        for p in (*proxies.values(), client_proxy):
            p.heal()
        for m in miners:
            if not m.alive:
                book.problems.append(f"{m.name}: Miner.run() ended on its own: {m.task!r}")
                m.start()
        if not proc.alive:
            book.problems.append(f"{proc.name}: the process exited on its own ({proc.proc!r})")
            await proc.start()
        db = coord.db
        settled = await until_terminal(db.not_terminal, seed=SEED, bound_s=SETTLE_SECONDS, actions=book.actions,
                                       detail=lambda rows: f"events of the first: {db.events(rows[0][0])}")  # fmt: skip
        for record in caplog.records:  # a dropped connection is no error of the coordinator's
            if record.name.startswith("coordinator") and (record.levelno >= logging.ERROR or record.exc_info):
                book.problems.append(f"{record.name} logged: {record.getMessage()} {record.exc_info!r}")
        await check_jobs(coord, client, book)
        # a result refused though its attempt completed the job: a repeat (its ack lost with a stream) must
        # be answered with the same ack, not refused
        done = dict(db.query("SELECT job_id, attempt FROM jobs WHERE state = ?", (int(COMPLETED),)))
        for record in caplog.records:
            if record.name == "aitbc.miner" and " refused: " in record.getMessage():
                _, job_id, reason, message = record.args  # type: ignore[misc]
                attempt = re.search(r"attempt (\d+)", message)
                if attempt and done.get(job_id) == int(attempt[1]):
                    book.problems.append(f"the result of job {job_id} attempt {attempt[1]}, which completed it, "
                                         f"was refused: {reason} {message}")  # fmt: skip
        await check_miners(coord, miners, proc, book)
        by_state = Counter(JobState(s).name for (s,) in db.query("SELECT state FROM jobs"))
        refusals = Counter(r.args[2] for r in caplog.records if " refused: " in r.getMessage())  # type: ignore[index]
        slowest = sorted(seconds for seconds, _ in book.submit_s)[-1:]
        print(f"seed {SEED}: {len(book.told)} jobs told ({len(book.keyed)} keyed, {len(book.lost)} unkeyed submits "
              f"lost), {dict(by_state)}, {len(book.runs)} in-process runs, settled {settled:.1f} s after healing; "
              f"slowest submit {slowest} s; actions {dict(book.actions)}; dead connections left in "
              f"{book.blackhole_s} s; disconnections since the last start {book.disconnections}; results "
              f"refused {dict(refusals)}")  # fmt: skip
        assert_no_problems(SEED, book.problems)
        assert len(book.told) >= 20, f"seed {SEED}: only {len(book.told)} jobs submitted"
        # shutting down is bounded too, even with connections stalled
        proxies[miners[0].name].blackhole()
        proxies[miners[1].name].stall()
        proxies[PROCESS[0]].stall()
        t0 = time.monotonic()
        await asyncio.wait_for(coord.coordinator.stop(grace=0.2), 10)
        coord.coordinator = None
        t1 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(m.kill() for m in miners)), 10)
        t2 = time.monotonic()
        await proc.kill(signal.SIGTERM)
        t3 = time.monotonic()
        print(f"shutdown: coordinator {t1 - t0:.2f} s, miners {t2 - t1:.2f} s, process {t3 - t2:.2f} s")
        assert t3 - t0 < 10
        assert not book.problems, "\n".join(book.problems)
    finally:
        stop.set()
        for t in background:
            t.cancel()
        for m in miners:
            if m.alive:
                m.miner.stop()  # type: ignore[union-attr]
                m.task.cancel()  # type: ignore[union-attr]
        if proc.alive:
            await proc.kill()
        for p in (*proxies.values(), client_proxy):
            await p.close()
        await channel.close()


BLACKHOLE_BOUND = 12.0  # keepalive 5.5 s + 1 s, the reconnect, and a margin for a loaded machine


class Chaos:
    """One action at a time per target (a miner with its proxy, the client's proxy, the coordinator), many
    targets at once."""

    def __init__(self, coord: Harness, rng: random.Random, book: Book, proxies: dict[str, ChaosProxy],
                 client_proxy: ChaosProxy, miners: list[InProcessMiner], proc: ProcessMiner) -> None:  # fmt: skip
        self.coord, self.rng, self.book, self.proxies, self.client_proxy = (
            coord,
            rng,
            book,
            proxies,
            client_proxy,
        )
        self.miners = {m.name: m for m in miners}
        self.proc = proc
        self.busy: set[str] = set()
        self.restarts = 0

    async def blackhole(self, m: InProcessMiner) -> None:
        """The miner's connection goes silent for good: its keepalive must find it and reconnect."""
        before, generation = m.session_id(), m.generations
        if not before or not m.proxy.blackhole():
            return
        self.book.actions["blackhole"] += 1
        t0 = time.monotonic()
        while m.session_id() == before and m.alive:
            if time.monotonic() - t0 > BLACKHOLE_BOUND:
                self.book.problems.append(
                    f"{m.name}: no new session {BLACKHOLE_BOUND:g} s after its connection died"
                )
                return
            await asyncio.sleep(0.1)
        if m.generations == generation:  # (not restarted meanwhile)
            self.book.blackhole_s.append(round(time.monotonic() - t0, 1))

    async def act(self) -> None:
        rng, book = self.rng, self.book
        target = rng.choice([*self.proxies, "client", "coordinator"])
        roll = rng.random()
        # the network and the miner's process are separate targets: a miner may restart while its link stalls
        key = target if target in ("client", "coordinator") else f"{'net' if roll < 0.6 else 'run'}:{target}"
        if key in self.busy:
            return
        self.busy.add(key)
        try:
            if target == "coordinator":
                if self.restarts < 2 and roll < 0.25:
                    self.restarts += 1
                    book.actions["coordinator-restart"] += 1
                    t0 = time.monotonic()
                    coordinator, self.coord.coordinator = self.coord.coordinator, None
                    await asyncio.wait_for(coordinator.stop(grace=0.2), 15)
                    if (took := time.monotonic() - t0) > 5:
                        book.problems.append(f"coordinator stop took {took:.1f} s")
                    await asyncio.sleep(rng.uniform(0, 1.0))
                    await self.coord.start()
                return
            proxy = self.client_proxy if target == "client" else self.proxies[target]
            if roll < 0.1 and target in self.miners:
                await self.blackhole(self.miners[target])
            elif roll < 0.35:
                cut(proxy, rng, book.actions, ["rst", "fin"])
            elif roll < 0.6:
                seconds = (0.3, 4.0) if target == "client" else (0.5, 3.5)
                await stall(proxy, rng, book.actions, ["heal", "heal", "rst", "fin"], seconds)
            elif target == PROCESS[0]:
                if rng.random() < 0.75:
                    book.actions["sigkill"] += 1
                    await self.proc.kill()
                else:  # SIGTERM: it drains, finishing its jobs and waiting for their acks, then exits
                    book.actions["sigterm"] += 1
                    assert self.proc.proc is not None
                    self.proc.proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(self.proc.proc.wait(), DRAIN_BOUND)
                    except TimeoutError:
                        book.problems.append(f"{target}: still running {DRAIN_BOUND:g} s after SIGTERM")
                    await self.proc.kill()
                await asyncio.sleep(rng.uniform(0, 1.0))
                await self.proc.start()
            elif target in self.miners:
                m = self.miners[target]
                if rng.random() < 0.75:
                    book.actions["miner-restart"] += 1
                    await m.kill()
                else:  # Miner.drain(): finish, wait for the acks, then run() returns
                    book.actions["miner-drain"] += 1
                    assert m.miner is not None and m.task is not None
                    m.miner.drain()
                    try:
                        await asyncio.wait_for(asyncio.shield(m.task), DRAIN_BOUND)
                    except TimeoutError:
                        book.problems.append(
                            f"{target}: Miner.run() still running {DRAIN_BOUND:g} s after drain()"
                        )
                    except Exception as exc:
                        book.problems.append(f"{target}: Miner.run() raised {exc!r} after drain()")
                    await m.kill()
                await asyncio.sleep(rng.uniform(0, 1.5))
                m.start()
        finally:
            self.busy.discard(key)


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.INTERNAL)  # fmt: skip


async def submitter(client: Client, rng: random.Random, book: Book, stop: asyncio.Event) -> None:
    """Submits jobs until stop: half under idempotency keys (retried until answered, and now and then
    submitted again: the same job comes back), half without (an error leaves it unknown)."""
    n = 0
    while not stop.is_set():
        n += 1
        keyed = rng.random() < 0.5
        options: dict[str, Any] = {"max_attempts": 100}
        if keyed:
            options["idempotency_key"] = f"chaos-{SEED}-{n}"
            book.keyed.add(n)
        payload: dict[str, Any] = {"n": n, "seed": SEED}
        if rng.random() < 0.1:  # large enough that a stalled stream's flow control window fills
            payload["blob"] = rng.randbytes(150_000).hex()
        t0 = deadline = time.monotonic()
        deadline += 20
        while True:
            try:
                job = await client.jobs.SubmitJob(client.request(payload, **options), metadata=client.metadata,
                                                  timeout=5)  # fmt: skip
                book.told[n] = job.job.job_id
                book.submit_s.append((round(time.monotonic() - t0, 1), n))
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    book.problems.append(f"submit {n}: {exc.code().name} {exc.details()}")
                    break
                if not keyed:
                    book.lost.add(n)
                    break
                if time.monotonic() > deadline:
                    book.problems.append(f"submit {n}: still failing after 20 s: {exc.code().name}")
                    break
                await asyncio.sleep(0.2)
        if keyed and n in book.told and rng.random() < 0.2:  # the same key again: the same job
            with contextlib.suppress(grpc.aio.AioRpcError):
                again = await client.jobs.SubmitJob(client.request(payload, **options), metadata=client.metadata,
                                                    timeout=5)  # fmt: skip
                if again.job.job_id != book.told[n]:
                    book.problems.append(f"submit {n} again: job {again.job.job_id}, not {book.told[n]}")
        await asyncio.sleep(rng.uniform(0.02, 0.15))


async def watcher(client: Client, rng: random.Random, book: Book, stop: asyncio.Event) -> None:
    """Watches jobs now and then during the chaos, recording the events heard (checked against the store)."""
    tasks: list[asyncio.Task] = []

    async def watch(job_id: str) -> None:
        heard: list[tuple[int, int, int]] = []
        book.heard[job_id].append(heard)
        with contextlib.suppress(grpc.aio.AioRpcError):  # a restart ends a watch
            async for update in client.watch(job_id):
                if update.HasField("event"):
                    e = update.event
                    heard.append((e.sequence, e.from_state, e.to_state))
                    if e.to_state != update.job.state or e.attempt != update.job.attempt:
                        book.problems.append(
                            f"watch {job_id}: event {e.sequence} to {e.to_state} attempt "
                            f"{e.attempt} came with a job {update.job.state}/{update.job.attempt}"
                        )

    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.2, 0.6))
        if book.told:
            tasks.append(asyncio.create_task(watch(rng.choice(list(book.told.values())))))
    await asyncio.sleep(1.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------- checks
async def check_jobs(coord: Harness, client: Client, book: Book) -> None:
    db = coord.db
    problems = book.problems
    # every job as ListJobs has it (all pages)
    listed: dict[str, job_pb2.Job] = {}
    token = ""
    while True:
        page = await client.list(page_size=100, page_token=token)
        listed.update((j.job_id, j) for j in page.jobs)
        if not (token := page.next_page_token):
            break
    stored = {row[0]: row for row in db.query("SELECT job_id, state, attempt FROM jobs")}
    if set(listed) != set(stored):
        problems.append(f"ListJobs lists {len(listed)} jobs, the store has {len(stored)}")
    by_n: dict[int, list[str]] = defaultdict(list)
    for job_id, job in listed.items():
        by_n[int(job.payload["n"])].append(job_id)
    for n, job_ids in sorted(by_n.items()):
        if len(job_ids) > 1:
            problems.append(
                f"submit {n} ({'keyed' if n in book.keyed else 'unkeyed'}) made {len(job_ids)} jobs"
            )
        if n in book.told and book.told[n] not in job_ids:
            problems.append(f"submit {n}: told job {book.told[n]}, not stored")
        if n not in book.told and n not in book.lost:
            problems.append(f"jobs {job_ids} of submit {n} that never reached the store's client")
    for n, job_id in book.told.items():
        if job_id not in stored:
            problems.append(f"submit {n}: job {job_id} told, not stored")
    keys = await client.signing_keys()
    keyset = KeySet.load(keys)
    signers = {name for name, _, signs in IN_PROCESS if signs} | {PROCESS[0]}
    completed_events, receipts = db.completions()
    for job_id, (_, state, attempt) in stored.items():
        events = db.events(job_id)
        if state != COMPLETED:
            problems.append(f"job {job_id} ended {JobState(state).name}: {events[-3:]}")
        if completed_events[job_id] != (state == COMPLETED):
            problems.append(f"job {job_id}: {completed_events[job_id]} COMPLETED events")
        if receipts[job_id] != (state == COMPLETED):
            problems.append(f"job {job_id}: {receipts[job_id]} receipts")
        check_events(job_id, state, attempt, events, problems)
        # the job as each read path has it
        got = await client.get(job_id)
        if (got.state, got.attempt) != (state, attempt):
            problems.append(f"job {job_id}: GetJob {got.state}/{got.attempt}, store {state}/{attempt}")
        if (listed[job_id].state, listed[job_id].attempt) != (state, attempt):
            problems.append(f"job {job_id}: ListJobs {listed[job_id].state}, store {state}")
        history = {e["sequence"]: (e["sequence"], e["from_state"], e["to_state"]) for e in events}
        for heard in book.heard.get(job_id, []):
            sequences = [h[0] for h in heard]
            if any(history.get(h[0]) != h for h in heard) or sequences != sorted(set(sequences)):
                problems.append(
                    f"job {job_id}: a watcher heard {heard}, the store has {list(history.values())}"
                )
        if state == COMPLETED:
            receipt = await client.receipt(job_id)
            miner_id = events[-1]["miner_id"]
            if (
                verified := await verified_bundle(client, job_id, keyset, miner_id in signers, problems)
            ) is None:
                continue
            if verified.payload.get("job_id") != job_id or receipt.receipt.receipt_id != verified.receipt_id:
                problems.append(f"job {job_id}: receipt {verified.payload} is not the job's")
            # the result is the job's own (the runners echo their input), from the attempt that completed it
            r = (await client.result(job_id)).result
            output = json.loads(r.result_bytes) if r.result_bytes else MessageToDict(r.result)
            if output != MessageToDict(listed[job_id].payload) or (r.attempt, r.miner_id) != (
                attempt,
                miner_id,
            ):
                problems.append(
                    f"job {job_id}: result {output} of attempt {r.attempt} by {r.miner_id}; job "
                    f"{MessageToDict(listed[job_id].payload)} attempt {attempt} by {miner_id}"
                )
            p = verified.payload
            expected = (verified.receipt_id, attempt, miner_id, r.result_sha256.hex())
            if (r.receipt_id, p["attempt"], p["provider"], p["result_sha256"]) != expected:
                problems.append(
                    f"job {job_id}: result names receipt {r.receipt_id}, receipt {verified.payload}"
                )
    # WatchJob on a finished job: its current state, then the end
    for job_id in random.Random(SEED).sample(sorted(stored), min(10, len(stored))):
        updates = [u async for u in client.watch(job_id)]
        if not updates or updates[-1].job.state != stored[job_id][1]:
            problems.append(f"job {job_id}: WatchJob ends with {updates[-1:]}, store {stored[job_id][1]}")


async def verified_bundle(
    client: Client, job_id: str, keyset: KeySet, miner_signs: bool, problems: list[str]
) -> VerifiedReceipt | None:
    """The job's receipt bundle verified offline (the miner's signature too where it signs); None, and the
    refusal among the problems, where it does not verify."""
    policy = Policy(frozenset({"coordinator", "miner"} if miner_signs else {"coordinator"}))
    try:
        return verify_bundle(await client.bundle(job_id), keyset, policy)
    except Exception as exc:  # any refusal is the finding
        problems.append(f"job {job_id}: its receipt does not verify: {exc!r}")
        return None


def check_events(
    job_id: str, state: int, attempt: int, events: list[dict[str, Any]], problems: list[str]
) -> None:
    if not events:
        problems.append(f"job {job_id}: no events")
        return
    if [e["sequence"] for e in events] != list(range(1, len(events) + 1)):
        problems.append(f"job {job_id}: event sequences {[e['sequence'] for e in events]}")
    if events[0]["to_state"] != JobState.QUEUED:
        problems.append(f"job {job_id}: first event {events[0]}")
    for before, after in itertools.pairwise(events):
        if after["from_state"] != before["to_state"]:
            problems.append(f"job {job_id}: event {after} does not follow {before}")
        elif JobState(after["to_state"]) not in states.ALLOWED.get(JobState(after["from_state"]), ()):
            problems.append(f"job {job_id}: illegal transition in {after}")
    if (events[-1]["to_state"], events[-1]["attempt"]) != (state, attempt):
        problems.append(f"job {job_id}: last event {events[-1]}, job {state}/{attempt}")


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read()


async def check_miners(coord: Harness, miners: list[InProcessMiner], proc: ProcessMiner, book: Book) -> None:
    scheduler = coord.coordinator.scheduler
    names = [m.name for m in miners] + [proc.name]
    admin = coord.admin()

    async def all_back() -> bool:
        listed = await admin.miners()
        return all(
            n in listed and listed[n].status == apb.MINER_STATUS_ONLINE and listed[n].session_id
            for n in names
        ) and all(m.session_id() == listed[m.name].session_id for m in miners)

    deadline = time.monotonic() + 15
    while not await all_back():
        if time.monotonic() > deadline:
            listed = await admin.miners()
            book.problems.append(
                f"miners not all back 15 s after healing: admin {[(n, m.status, m.session_id) for n, m in listed.items()]}"
                f", miners {[(m.name, m.session_id(), m.alive) for m in miners]}, process alive {proc.alive}"
            )
            return
        await asyncio.sleep(0.1)
    # no leaked session, no orphan, no job held (every job is terminal)
    await asyncio.sleep(SETTINGS["reconnect_grace_seconds"] + 0.5)
    if sorted(scheduler.by_miner) != sorted(names) or len(scheduler.sessions) != len(names):
        book.problems.append(
            f"sessions: by_miner {sorted(scheduler.by_miner)}, {len(scheduler.sessions)} sessions"
        )
    if scheduler.orphans or scheduler.jobs:
        book.problems.append(f"orphans {scheduler.orphans}, jobs in memory {list(scheduler.jobs)[:5]}")
    left = {name: len(getattr(scheduler, name)) for name in ("idempotency", "watchers", "_unsettled", "_listings",
            "_detached", "_inflight_keys", "_unsettled_frees", "_background")}  # fmt: skip
    if any(left.values()) or scheduler.queues.depth:
        book.problems.append(f"left in the scheduler: {left}, queue depth {scheduler.queues.depth}")
    if sorted(scheduler.available) != sorted(scheduler.sessions):
        book.problems.append(f"sessions taking work {len(scheduler.available)} of {len(scheduler.sessions)}")
    listed = await admin.miners()
    if sorted(listed) != sorted(names) or any(m.status != apb.MINER_STATUS_ONLINE for m in listed.values()):
        book.problems.append(f"admin view: {[(n, m.status, m.running_jobs) for n, m in listed.items()]}")
    for s in scheduler.sessions.values():
        if s.held or s.reserved or s.closed:
            book.problems.append(f"session {s.miner_id}: held {list(s.held)} reserved {s.reserved} closed "
                                 f"{s.closed}")  # fmt: skip
    obs = coord.coordinator.observability
    if obs is not None and getattr(obs, "metrics_port", 0):
        text = await asyncio.to_thread(scrape, obs.metrics_port)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text.decode()) for s in f.samples}  # fmt: skip
        expect = {("aitbc_miners_connected", ()): len(names), ("aitbc_miners_disconnected", ()): 0,
                  ("aitbc_miners_draining", ()): 0, ("aitbc_miner_slots", (("state", "busy"),)): 0,
                  ("aitbc_miner_slots", (("state", "free"),)): sum(s for _, s, *_ in (*IN_PROCESS, PROCESS))}  # fmt: skip
        for state in ("queued", "assigned", "running"):
            expect[("aitbc_jobs", (("state", state),))] = 0
        book.disconnections = {
            k[1][0][1]: v for k, v in samples.items() if k[0] == "aitbc_miner_disconnections_total" and v
        }
        for key, value in expect.items():
            if samples.get(key) != value:
                book.problems.append(f"metric {key}: {samples.get(key)}, expected {value}")
