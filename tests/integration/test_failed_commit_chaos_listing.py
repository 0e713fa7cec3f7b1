"""Randomized (written by review helper-23): a miner comes back, once or twice, listing a job (or not) while a client's
cancel of it is written behind a held write lock, which then lands or fails; meanwhile it may be drained, send
the job's result, or get more work. After each round: no listing left (_listings), no slot left reserved, no
session holding more jobs than slots, every stream never running more jobs than its slots, never told to
cancel a job it was neither given nor listed, every round's job ended, every drained stream closed.

AITBC_CHAOS_SEED / AITBC_CHAOS_SECONDS as in test_failed_commit_chaos.py (default 8 s)."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time

import pytest
from coord_support import CANCELED, COMPLETED, FAILED, RUNNING, Harness, StreamMiner, eventually
from test_failed_commit import held_lock, refuse

SEED = int(os.environ.get("AITBC_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
SECONDS = float(os.environ.get("AITBC_CHAOS_SECONDS") or 8.0)
TERMINAL = (COMPLETED, FAILED, CANCELED)


def stream_problems(m: StreamMiner, slots: int) -> list[str]:
    out = []
    for n, stream in enumerate(m.streams):
        runs = dict(stream.listed)
        for direction, kind, body in stream.log:
            if direction == "in" and kind == "assignments":
                for a in body.assignments:
                    if runs.get(a.job.job_id) == a.attempt:
                        out.append(f"{m.name}#{n}: given {a.job.job_id[-6:]}/{a.attempt} it already runs")
                    runs[a.job.job_id] = a.attempt
                if len(runs) > slots:
                    out.append(f"{m.name}#{n}: runs {len(runs)} jobs on {slots} slots")
            elif direction == "in" and kind == "cancel":
                if not stream.had(body.job_id, body.attempt):
                    out.append(f"{m.name}#{n}: told {body.reason} for {body.job_id[-6:]} it never had")
                if runs.get(body.job_id) == body.attempt:
                    del runs[body.job_id]
            elif direction == "out" and kind == "results":
                for r in body.results:
                    runs.pop(r.job_id, None)
            elif direction == "out" and kind == "failure":
                runs.pop(body.job_id, None)
    return out


@pytest.mark.coordinator(lease_seconds=5.0, reconnect_grace_seconds=1.0, heartbeat_timeout_seconds=5.0)
async def test_listing_while_a_cancel_is_written(coord: Harness) -> None:
    print(f"\nlisting chaos seed {SEED}, {SECONDS:g} s")
    rng = random.Random(SEED)
    alice = coord.client("alice")
    scheduler = coord.coordinator.scheduler
    miners: list[tuple[StreamMiner, int]] = []
    problems: list[str] = []

    async def connect(listing: tuple[tuple[str, int], ...] = ()) -> StreamMiner:
        n = max(len(listing), rng.randint(1, 3))
        m = await coord.stream_miner("miner-00", slots=n, region="eu", running_jobs=listing)
        miners.append((m, n))
        return m

    m = await connect()
    # now and then a second miner takes the extra jobs (answers each at once)
    helper = await coord.stream_miner("miner-01", slots=2) if rng.random() < 0.5 else None

    async def helper_work() -> None:
        assert helper is not None
        while True:
            a = await helper.inbox["assignment"].get()
            await asyncio.sleep(rng.uniform(0, 0.2))
            helper.result(a.job.job_id, a.attempt)

    worker = asyncio.create_task(helper_work()) if helper is not None else None
    end = time.monotonic() + SECONDS
    rounds = 0
    while time.monotonic() < end:
        rounds += 1
        live = scheduler.by_miner.get("miner-00")
        if live is not None and live.draining:
            await m.wait_closed(5.0)  # (a drained session ends once it holds nothing)
        if m.closed.is_set() or live is None:
            await m.kill()
            m = await connect(tuple(m.held.items()))
        free = miners[-1][1] - len(m.held)
        jobs = [
            await alice.submit({"r": rounds, "i": i}, constraints={"region": "eu"})
            for i in range(rng.randint(1, max(1, free)))
        ]
        ids = {j.job_id for j in jobs}
        got = await m.assignments(len(jobs))
        for a in got:
            m.accept(a)
        await eventually(lambda ids=ids: all(coord.db.job_state(x) == RUNNING for x in ids),
                         what="RUNNING stored")  # fmt: skip
        target = rng.choice(got)
        jid, att = target.job.job_id, target.attempt
        fails = rng.random() < 0.5
        if fails:
            refuse(coord, jid, "job_events", "NEW.reason = 'CANCELED_BY_CLIENT'")
        plan: list[str] = []
        extras: list[asyncio.Future] = []
        blocker = held_lock(coord)
        try:
            cancel = asyncio.create_task(scheduler.cancel(jid, None, "chaos"))
            await eventually(
                lambda jid=jid: scheduler._unsettled.get(jid) is not None, what="the cancel queued"
            )
            for _ in range(rng.randint(1, 3)):
                step = rng.choice(["reconnect", "reconnect", "drain", "result", "extra", "vanish"])
                plan.append(step)
                if step in ("reconnect", "vanish"):
                    runs = dict(m.held)
                    await m.kill()
                    await eventually(lambda: "miner-00" not in scheduler.by_miner
                                     or scheduler.by_miner["miner-00"].closed, what="closed")  # fmt: skip
                    if step == "reconnect":
                        listing = tuple((j, a) for j, a in runs.items() if j != jid or rng.random() < 0.8)
                        m = await connect(listing)
                    else:
                        await asyncio.sleep(rng.uniform(0, 0.1))
                        m = await connect(tuple(runs.items()))
                elif step == "drain":
                    # (in memory, as DrainMiner's once its row is stored: the RPC's write would wait behind the lock)
                    if (live := scheduler.by_miner.get("miner-00")) is not None:
                        scheduler.drain(live, "ADMIN")
                elif step == "result" and jid in m.held:
                    m.result(jid, m.held[jid])
                elif step == "extra":
                    extras.append(asyncio.ensure_future(alice.submit({"extra": rounds})))
                await asyncio.sleep(rng.uniform(0, 0.15))
            # the cancel cannot have landed yet: no stream that listed the job may have been told NOT_HELD
            for mm, _ in miners:
                for st in mm.streams:
                    if (jid, att) in st.listed and any(
                        d == "in" and k == "cancel" and b.job_id == jid for d, k, b in st.log
                    ):
                        problems.append(f"round {rounds} {plan}: a stream listing {jid[-6:]} was told to "
                                        "cancel it while the cancel could still fail")  # fmt: skip
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        last = m.streams[-1]  # the stream open when the cancel settles
        await asyncio.gather(cancel, return_exceptions=True)
        for e in await asyncio.gather(*extras, return_exceptions=True):
            if not isinstance(e, BaseException):  # (an insert building on the failed cancel is refused too)
                ids.add(e.job_id)
        if fails:
            with sqlite3.connect(coord.db_path) as conn:
                conn.execute("DROP TRIGGER IF EXISTS test_refuse_job_events")
        # finish the round: the miner answers what it runs; a drained or closed stream comes back
        deadline = time.monotonic() + 20
        while True:
            if m.closed.is_set():
                await m.kill()
                m = await connect(tuple(m.held.items()))
            while m.pending("assignment"):
                await m.next("assignment")
            for j, a in list(m.held.items()):
                m.result(j, a)
            await asyncio.sleep(0.1)
            states = {x: coord.db.job_state(x) for x in ids}
            if (all(s in TERMINAL for s in states.values()) and not scheduler._unsettled
                    and not scheduler._detached and not m.held):  # fmt: skip
                break
            if time.monotonic() > deadline:
                problems.append(f"round {rounds} {plan} fails={fails}: jobs not ended: {states}; "
                                f"detached {list(scheduler._detached)}")  # fmt: skip
                break
        await asyncio.sleep(0.1)
        if (jid, att) in last.listed and m.streams[-1] is last:  # (not if that stream ended meanwhile)
            told = [b.reason for d, k, b in last.log if d == "in" and k == "cancel" and b.job_id == jid]
            events = [e["reason"] for e in coord.db.events(jid)]
            if not fails and not told:
                problems.append(f"round {rounds} {plan}: the cancel landed, the stream listing "
                                f"{jid[-6:]} was never told NOT_HELD: {[k for _, k, _ in last.log]}")  # fmt: skip
            if fails and (told or "MINER_LOST_JOB" in events or events[-1] != "COMPLETED"):
                problems.append(f"round {rounds} {plan}: the cancel failed, the stream listing "
                                f"{jid[-6:]} was told {told}; its events {events}")  # fmt: skip
        if scheduler._listings:
            problems.append(f"round {rounds} {plan} fails={fails}: listings left {scheduler._listings}")
        for s in list(scheduler.sessions.values()):
            if s.reserved or len(s.held) > s.slots:
                problems.append(f"round {rounds} {plan} fails={fails}: session reserved {s.reserved}, "
                                f"holds {len(s.held)} on {s.slots}")  # fmt: skip
            if s.draining and not s.held and not s.reserved:
                await eventually(lambda s=s: s.closed, within=3, what="a drained session closed")
        for mm, sl in miners:
            problems.extend(f"round {rounds} {plan}: {p}" for p in stream_problems(mm, sl))
        if problems:
            break
    if worker is not None:
        worker.cancel()
    if helper is not None:
        problems.extend(stream_problems(helper, 2))
    print(f"{rounds} rounds (helper {'on' if worker else 'off'})")
    assert not problems, f"seed {SEED}:\n" + "\n".join(problems[:20])
    assert rounds >= 3, f"seed {SEED}: only {rounds} rounds: too few to prove anything"
