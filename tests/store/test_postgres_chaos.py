"""Chaos between the coordinator and PostgreSQL: a real coordinator on a schema of its own, whose connections to
PostgreSQL (the writer's and the read pool's) all go through a TCP proxy that cuts them (RST, FIN, or on the
coordinator's side only: half-open, the backend lives on holding its transaction and the store's lock), stalls
them (no byte flows either way for up to 3 s, then flowing again or cut), and holds back the server's replies
only (a COMMIT reaches the server and lands, its answer does not come back, then the link is cut: an in-doubt
commit). SDK miners and a client (half of its submits under idempotency keys, retried on UNAVAILABLE/INTERNAL)
reach the coordinator directly. No other process ever takes the schema: nothing may be fenced.

Then the network heals, and within a bound:
- every job the client was told of exists and is COMPLETED; an idempotency key names one job; no job other than
  those of unkeyed submits whose answer was an error;
- each completed job has exactly one COMPLETED event and one receipt, which verifies offline; the receipt log's
  leaves are 0..n-1 without gap or duplicate and are exactly the receipts' places; each receipt is booked once
  for the client and once for the miner;
- GetJob, ListJobs, admin GetStats and ListAccounts agree with the rows in PostgreSQL; a job just acknowledged
  is found by GetJob (no stale read after an acknowledged commit);
- the writer is connected again, nothing was fenced, no miner is stuck; the coordinator stops within a bound.

Seeded: AITBC_CHAOS_SEED=<n> replays the same decisions (the interleaving still depends on timing);
AITBC_CHAOS_SECONDS sets the length of the chaos (12 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
from aitbc.channel import open_channel
from aitbc.client import Client
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import admin_service_pb2_grpc, job_pb2
from aitbc.miner import Miner, Outcome, job_input, probe_capabilities
from aitbc.receipts import KeySet, Policy, Signer, verify_bundle

from coordinator.config import ApiKeyEntry, Settings, validate
from coordinator.server import start
from coordinator.store.postgres import PostgresStore
from tests.chaos_support import assert_no_problems, cut, stall, until_terminal
from tests.tcp_relay import DOWN, UP, Link

from .pg_relay import PgRelay
from .store_support import pg_admin

SEED = int(os.environ.get("AITBC_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
CHAOS_SECONDS = float(os.environ.get("AITBC_CHAOS_SECONDS") or 12.0)
SETTLE_SECONDS = 30.0
CLIENT, ADMIN = "client-key-0001", "admin-key-0001"
MINERS = (("pm-1", 2, True), ("pm-2", 1, False), ("pm-3", 2, True))
COMPLETED = job_pb2.JOB_STATE_COMPLETED
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED)


def miner_key(name: str) -> str:
    return f"{name}-secret-key-01"


def settings(database_url: str) -> Settings:
    s = Settings(
        app_host="127.0.0.1", app_port=0, database_url=database_url,
        client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),),
        miner_api_keys=tuple(ApiKeyEntry(n, "miner", miner_key(n)) for n, *_ in MINERS),
        admin_api_keys=(ApiKeyEntry("ops", "admin", ADMIN),),
        heartbeat_interval_seconds=0.2, heartbeat_timeout_seconds=2.0, lease_seconds=2.0,
        reconnect_grace_seconds=1.0, retry_backoff_base_seconds=0.05, retry_backoff_max_seconds=0.2,
        shutdown_grace_seconds=0.2, max_reassignments=1000, job_max_attempts=100,
    )  # fmt: skip
    validate(s)
    return s


# ---------------------------------------------------------------------------------------------- the proxy
class PgProxy(PgRelay):
    """A relay to PostgreSQL (cut: rst, fin or half; stall; heal). Armed (`commit_armed`), it holds back the
    server's answers once a COMMIT has passed, until heal()."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_armed = False
        self.commit_sent = asyncio.Event()

    def stall(self, replies_only: bool = False) -> None:  # type: ignore[override]
        super().stall(DOWN) if replies_only else super().stall()

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and self.commit_armed and b"COMMIT" in data:
            self.commit_armed = False  # the COMMIT is on its way: its answer is held back
            self.flowing[DOWN].clear()
            self.commit_sent.set()
        return data


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Book:
    told: dict[int, str] = field(default_factory=dict)
    keyed: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    actions: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # RPC errors seen by the client, by code
    details: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def runner(rng: random.Random):  # type: ignore[no-untyped-def]
    async def run(job: job_pb2.Job) -> Outcome:
        await asyncio.sleep(rng.uniform(0.02, 0.3))
        return Outcome(job_input(job), units="1", unit_type="jobs")

    return run


async def submitter(client: Client, rng: random.Random, book: Book, stop: asyncio.Event, lane: int) -> None:
    n = lane * 100_000
    while not stop.is_set():
        n += 1
        keyed = rng.random() < 0.5
        options: dict[str, Any] = {"max_attempts": 100}
        if keyed:
            options["idempotency_key"] = f"pgchaos-{SEED}-{n}"
            book.keyed.add(n)
        payload = {"n": n, "seed": SEED}
        deadline = time.monotonic() + 30
        while True:
            try:
                response = await client.jobs.SubmitJob(client.request(payload, **options), metadata=client.metadata,
                                                       timeout=10)  # fmt: skip
                book.told[n] = response.job.job_id
                break
            except grpc.aio.AioRpcError as exc:
                book.errors[exc.code().name] += 1
                book.details[f"submit {exc.code().name}: {(exc.details() or '')[:90]}"] += 1
                if exc.code() not in RETRYABLE:
                    book.problems.append(f"submit {n}: {exc.code().name} {exc.details()}")
                    break
                if not keyed:
                    book.lost.add(n)
                    break
                if time.monotonic() > deadline:
                    book.problems.append(f"submit {n}: still failing after 30 s: {exc.code().name}")
                    break
                await asyncio.sleep(0.2)
        if n in book.told:  # an acknowledged submit is found at once (no stale read after the commit's ack)
            for _ in range(50):
                try:
                    got = await client.jobs.GetJob(
                        job_pb2_get(book.told[n]), metadata=client.metadata, timeout=10
                    )
                    if got.job.job_id != book.told[n]:
                        book.problems.append(f"submit {n}: GetJob answered {got.job.job_id}")
                    break
                except grpc.aio.AioRpcError as exc:
                    book.errors[f"get-{exc.code().name}"] += 1
                    book.details[f"get {exc.code().name}: {(exc.details() or '')[:90]}"] += 1
                    if exc.code() not in RETRYABLE:
                        book.problems.append(f"submit {n}: job {book.told[n]} acknowledged, then GetJob "
                                             f"{exc.code().name} {exc.details()}")  # fmt: skip
                        break
                    await asyncio.sleep(0.2)
        await asyncio.sleep(rng.uniform(0.02, 0.12))


def job_pb2_get(job_id: str) -> Any:
    from aitbc.coordinator.v1 import job_service_pb2

    return job_service_pb2.GetJobRequest(job_id=job_id)


async def chaos(proxy: PgProxy, rng: random.Random, book: Book) -> None:
    started = time.monotonic()
    while time.monotonic() - started < CHAOS_SECONDS:
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        roll = rng.random()
        if roll < 0.35:
            cut(proxy, rng, book.actions, ["rst", "fin", "half"])
        elif roll < 0.65:
            await stall(proxy, rng, book.actions, ["heal", "heal", "rst", "half"], (0.2, 3.0))
        elif roll < 0.85:  # the next COMMIT reaches the server, its answer does not come back: in doubt
            then = rng.choice(["rst", "half", "fin", "heal"])
            proxy.commit_sent.clear()
            proxy.commit_armed = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proxy.commit_sent.wait(), 2.0)
            proxy.commit_armed = False
            if proxy.commit_sent.is_set():
                book.actions[f"commit-{then}"] += 1
                await asyncio.sleep(rng.uniform(0.05, 0.5))
                if then != "heal":
                    proxy.cut(then)
            proxy.heal()
        else:  # the server's answers held back: statements run unanswered; then cut or let through
            then = rng.choice(["rst", "half", "fin", "heal"])
            book.actions[f"replies-{then}"] += 1
            proxy.stall(replies_only=True)
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            if then != "heal":
                proxy.cut(then)
            proxy.heal()


async def test_coordinator_on_postgres_under_connection_chaos(schema: str, caplog) -> None:  # type: ignore[no-untyped-def]
    print(f"\npostgres chaos seed {SEED} (AITBC_CHAOS_SEED={SEED} to run it again), {CHAOS_SECONDS:g} s")
    caplog.set_level(logging.WARNING)
    book = Book()
    rng = random.Random(f"{SEED}-chaos")
    proxy = PgProxy()
    await proxy.start()
    coordinator = await start(settings(proxy.url(schema)))
    store = coordinator.scheduler.store
    assert isinstance(store, PostgresStore)
    address = f"127.0.0.1:{coordinator.port}"
    channels = [open_channel(address)]
    client = Client(address, CLIENT, channel=channels[0])
    admin = admin_service_pb2_grpc.AdminServiceStub(channels[0])
    md = (("x-api-key", ADMIN),)
    miners = [Miner(address, miner_key(n), runner=runner(random.Random(f"{SEED}-{n}")),
                    capabilities=probe_capabilities(slots=slots), signer=Signer.generate() if signs else None,
                    backoff_base_s=0.05, backoff_max_s=0.5) for n, slots, signs in MINERS]  # fmt: skip
    runs = [asyncio.create_task(m.run()) for m in miners]
    stop = asyncio.Event()
    submitting = asyncio.gather(*(submitter(client, random.Random(f"{SEED}-client-{i}"), book, stop, i)
                                  for i in range(3)))  # fmt: skip
    stopped = False
    conn = await pg_admin()
    await conn.execute(f'SET search_path = "{schema}"')
    try:
        await chaos(proxy, rng, book)
        proxy.heal()
        stop.set()
        await asyncio.wait_for(submitting, 40)
        for m, task in zip(miners, runs, strict=True):
            if task.done():
                book.problems.append(f"{m.api_key}: Miner.run() ended on its own: {task!r}")

        async def stuck() -> list[tuple]:
            rows = await conn.fetch("SELECT job_id, state, attempt, miner_id FROM jobs WHERE state NOT IN "
                                    "(4, 5, 6, 7)")  # fmt: skip
            return [tuple(r) for r in rows]

        settled = await until_terminal(stuck, seed=SEED, bound_s=SETTLE_SECONDS, actions=book.actions)
        await asyncio.sleep(0.5)  # (the last acks and bookings)
        await check(conn, client, admin, md, book)
        # the writer is connected again, and not fenced
        if store._fenced is not None:
            book.problems.append(f"fenced without another process: {store._fenced}")
        for record in caplog.records:
            message = record.getMessage()
            if record.name.startswith("coordinator") and (
                "fenced" in message.lower() or "StoreFenced" in repr(record.exc_info) or
                "group commit failed unexpectedly" in message or "writer stopped" in message
            ):  # fmt: skip
                book.problems.append(f"{record.name} logged: {message} {record.exc_info!r}")
        # no miner stuck: every one online, its session free
        listed = {
            m.miner_id: m for m in (await admin.ListMiners(apb.ListMinersRequest(), metadata=md)).miners
        }
        for name, *_ in MINERS:
            if name not in listed or listed[name].status != apb.MINER_STATUS_ONLINE:
                book.problems.append(f"miner {name}: {listed.get(name)}")
        for s in coordinator.scheduler.sessions.values():
            if s.held or s.reserved:
                book.problems.append(f"session {s.miner_id}: held {list(s.held)} reserved {s.reserved}")
        said = Counter(
            record.msg.split(";")[0].split("(")[0].strip()[:60] for record in caplog.records
            if record.name == "coordinator.store.postgres"
        )  # fmt: skip
        print(f"seed {SEED}: store writer said {dict(said)}; the client was told {dict(book.details)}")
        errors = Counter(
            f"{r.name}: {r.getMessage()[:60]} {r.exc_info[0].__name__ if r.exc_info else ''}"
            for r in caplog.records if r.levelno >= logging.ERROR
        )  # fmt: skip
        print(f"seed {SEED}: errors logged {dict(errors)}")
        print(f"seed {SEED}: {len(book.told)} jobs told ({len(book.keyed)} keyed, {len(book.lost)} unkeyed lost), "
              f"settled {settled:.1f} s after healing; actions {dict(book.actions)}; client errors "
              f"{dict(book.errors)}")  # fmt: skip
        assert_no_problems(SEED, book.problems)
        assert len(book.told) >= 20, f"seed {SEED}: only {len(book.told)} jobs acknowledged"
        # shutdown is bounded, even with the database's connections cut on this side only (the backends live on)
        proxy.cut("half")
        t0 = time.monotonic()
        stopped = True
        await asyncio.wait_for(coordinator.stop(grace=0.2), 10)
        print(f"shutdown after a half-open cut: {time.monotonic() - t0:.2f} s")
    finally:
        stop.set()
        submitting.cancel()
        for m in miners:
            m.stop()
        await asyncio.gather(*runs, return_exceptions=True)
        proxy.heal()
        if not stopped:
            await asyncio.wait_for(coordinator.stop(grace=0.2), 20)
        for ch in channels:
            await ch.close()
        await conn.close()
        await proxy.close()


async def check(conn: Any, client: Client, admin: Any, md: Any, book: Book) -> None:
    problems = book.problems
    rows = {r["job_id"]: r for r in await conn.fetch("SELECT job_id, state, attempt, payload FROM jobs")}
    # jobs: every acknowledged one stored and completed; no job of a submit never answered
    listed: dict[str, job_pb2.Job] = {}
    token = ""
    while True:
        page = await client.list(page_size=100, page_token=token)
        listed.update((j.job_id, j) for j in page.jobs)
        if not (token := page.next_page_token):
            break
    if set(listed) != set(rows):
        problems.append(f"ListJobs lists {len(listed)} jobs, PostgreSQL has {len(rows)}: "
                        f"{sorted(set(listed) ^ set(rows))[:5]}")  # fmt: skip
    by_n: dict[int, list[str]] = defaultdict(list)
    for job_id, job in listed.items():
        by_n[int(job.payload["n"])].append(job_id)
    for n, job_ids in sorted(by_n.items()):
        if len(job_ids) > 1:
            problems.append(f"submit {n} ({'keyed' if n in book.keyed else 'unkeyed'}) made jobs {job_ids}")
        if n not in book.told and n not in book.lost:
            problems.append(f"jobs {job_ids} of submit {n}, never answered")
    for n, job_id in book.told.items():
        if job_id not in rows:
            problems.append(f"submit {n}: job {job_id} acknowledged, not in PostgreSQL")
    completed_events = Counter(
        r[0] for r in await conn.fetch("SELECT job_id FROM job_events WHERE to_state = 4")
    )
    receipts = {
        r["receipt_id"]: r for r in await conn.fetch("SELECT receipt_id, job_id, leaf_index FROM receipts")
    }
    receipts_of = Counter(r["job_id"] for r in receipts.values())
    for job_id, row in rows.items():
        if row["state"] != COMPLETED:
            problems.append(f"job {job_id} ended in state {row['state']}")
        if completed_events[job_id] != (row["state"] == COMPLETED) or receipts_of[job_id] != (
            row["state"] == COMPLETED
        ):
            problems.append(f"job {job_id}: {completed_events[job_id]} COMPLETED events, "
                            f"{receipts_of[job_id]} receipts")  # fmt: skip
        got = await client.get(job_id)
        if (got.state, got.attempt) != (row["state"], row["attempt"]):
            problems.append(f"job {job_id}: GetJob {got.state}/{got.attempt}, PostgreSQL {row['state']}/"
                            f"{row['attempt']}")  # fmt: skip
        if job_id in listed and (listed[job_id].state, listed[job_id].attempt) != (
            row["state"],
            row["attempt"],
        ):
            problems.append(f"job {job_id}: ListJobs {listed[job_id].state}, PostgreSQL {row['state']}")
    # the receipt log: leaves 0..n-1, exactly the receipts' places; each receipt verifies offline
    leaves = [r[0] for r in await conn.fetch("SELECT leaf_index FROM log_leaves ORDER BY leaf_index")]
    if leaves != list(range(len(leaves))):
        problems.append(f"log leaves not contiguous: {len(leaves)} leaves, max {leaves[-1:]}, "
                        f"missing {sorted(set(range(len(leaves))) - set(leaves))[:10]}")  # fmt: skip
    if sorted(r["leaf_index"] for r in receipts.values()) != leaves:
        problems.append(f"receipts' places {sorted(r['leaf_index'] for r in receipts.values())[:10]}... are not the "
                        f"log's leaves ({len(leaves)})")  # fmt: skip
    keyset = KeySet.load(await client.signing_keys())
    for job_id in sorted(receipts_of):
        try:
            verified = verify_bundle(await client.bundle(job_id), keyset, Policy(frozenset({"coordinator"})))
        except Exception as exc:
            problems.append(f"job {job_id}: receipt does not verify: {exc!r}")
            continue
        if verified.payload.get("job_id") != job_id:
            problems.append(f"job {job_id}: receipt of {verified.payload.get('job_id')}")
    # the ledger: one entry for the client and one for the miner per receipt, nothing else
    booked = Counter((r[0], r[1]) for r in await conn.fetch("SELECT receipt_id, kind FROM ledger_entries"))
    expected = Counter((rid, kind) for rid in receipts for kind in ("client", "miner"))
    if booked != expected:
        problems.append(f"ledger: {sum((booked - expected).values())} extra, {sum((expected - booked).values())} "
                        f"missing entries: {list((booked - expected) + (expected - booked))[:5]}")  # fmt: skip
    # admin views against the rows
    stats = await admin.GetStats(apb.GetStatsRequest(), metadata=md)
    by_state = {c.state: c.count for c in stats.jobs_by_state if c.count}
    stored_by_state = Counter(r["state"] for r in rows.values())
    if by_state != dict(stored_by_state):
        problems.append(f"GetStats jobs by state {by_state}, PostgreSQL {dict(stored_by_state)}")
    accounts = (await admin.ListAccounts(apb.ListAccountsRequest(), metadata=md)).accounts
    balances = {(r[0], r[1], r[2]) for r in await conn.fetch(
        "SELECT account_id, sum(amount_nano)::bigint, count(*) FROM ledger_entries GROUP BY account_id")}  # fmt: skip
    shown = {(a.account_id, int(Decimal(a.balance) * 10**9), a.receipts) for a in accounts}
    if shown != balances:
        problems.append(f"ListAccounts {shown}, ledger {balances}")
