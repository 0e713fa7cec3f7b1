"""`python -m bench.queues`: the ready queues in process (no gRPC, no store): what a slot fill costs with many
queue shapes a miner cannot take, a push and a pop in the common case, and memory after a large backlog of
distinct constraint sets is dispatched. Figures only: nothing is asserted (see bench/README.md)."""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from coordinator.domain.model import Capabilities, Constraints, Gpu, Job, JobState, PayloadKind
from coordinator.scheduler.engine import Scheduler, SchedulerSettings
from coordinator.scheduler.pending import Pending
from coordinator.scheduler.queues import ReadyQueues
from coordinator.scheduler.sessions import Session

ANY = Constraints()


def job(n: int, constraints: Constraints = ANY, client: str = "c") -> Job:
    return Job(
        job_id=f"j{n:09d}", client_id=client, state=JobState.QUEUED, payload=b"", payload_kind=PayloadKind.BYTES,
        input_sha256=b"", constraints=constraints, priority=0, ttl_us=10**12, max_attempts=3,
        execution_timeout_us=10**9, idempotency_key="", request_fingerprint=b"", created_us=0, updated_us=0,
    )  # fmt: skip


def scheduler(miners: int, caps: Capabilities) -> tuple[Scheduler, list[Session]]:
    """A scheduler with no store (its _fill only decides) and miners of one slot each."""
    s = Scheduler(None, SchedulerSettings())  # type: ignore[arg-type]
    sessions = []
    for k in range(miners):
        session = Session(session_id=f"s{k}", miner_id=f"m{k}", caps=caps, transport="stream", connected_us=0)
        s.sessions[session.session_id] = s.available[session.session_id] = session
        sessions.append(session)
    return s, sessions


def fills_per_s(foreign: list[Constraints], caps: Capabilities, fills: int, clients: int = 1) -> float:
    """Jobs of foreign constraint sets queued by `clients` clients (16 miners with caps take none of them);
    then, `fills` times, a job any miner takes is queued (by the first client) and the next miner's free slot
    filled (the scheduler's _fill)."""
    s, sessions = scheduler(16, caps)
    for n, c in enumerate(foreign):
        s.queues.push(job(n, c, client=f"c{n % clients}" if clients > 1 else "c"))
    n = len(foreign)
    started = 0.0
    for k in range(fills + len(sessions)):
        if k == len(sessions):  # each miner's first fill (learning what it takes) is not counted
            started = time.perf_counter()
        s.queues.push(job(n := n + 1))
        session = sessions[k % len(sessions)]
        s._fill(session, Pending(), 0)
        session.held.clear()
        s.available[session.session_id] = session
    return fills / (time.perf_counter() - started)


def pick_us(miners: int, submits: int = 200) -> float:
    """`miners` idle miners in us (each filled once, as when it connected), and jobs for regions of their own
    that none of them takes: microseconds per look for a miner (the scheduler's _pick_session, at a submit)."""
    s, sessions = scheduler(miners, Capabilities(region="us"))
    for session in sessions:
        s._fill(session, Pending(), 0)
    jobs = [job(n, Constraints(region=f"eu{n}")) for n in range(submits)]
    started = time.perf_counter()
    for j in jobs:
        s._pick_session(j)
    return (time.perf_counter() - started) / submits * 1e6


def push_pop_us(rounds: int = 99_000) -> float:
    """1,000 jobs with no constraints queued; then one pushed and one popped (as the scheduler pops) `rounds`
    times: microseconds per push and pop, best of 3."""
    q = ReadyQueues()
    for n in range(1000):
        q.push(job(n))
    caps = Capabilities(region="eu")
    reach = q.reach(caps)
    best, n = float("inf"), 1000
    for _ in range(3):
        jobs = [job(n + i) for i in range(rounds)]
        n += rounds
        started = time.perf_counter()
        for j in jobs:
            q.push(j)
            q.pop_in(reach)
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def memory(jobs: int) -> dict[str, float]:
    """`jobs` jobs of distinct constraint sets (regions x min memory) from as many clients queued, then all
    dispatched by a miner per region: the queues' memory (tracemalloc, KiB) full and after."""
    regions = max(1, jobs // 50)
    queued = [
        job(n, Constraints(region=f"r{n % regions}", min_vram_gb=n // regions), client=f"c{n}")
        for n in range(jobs)
    ]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    q = ReadyQueues()
    for j in queued:
        q.push(j)
    full = tracemalloc.get_traced_memory()[0] - base
    started, popped = time.perf_counter(), 0
    for r in range(regions):
        reach = q.reach(Capabilities(region=f"r{r}", gpus=(Gpu("a100", 80),)))
        while q.pop_in(reach) is not None:
            popped += 1
    seconds = time.perf_counter() - started
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    left = len(q.shapes) + len(q.by_region) + len(q.served) + len(q.lanes)
    left += sum(len(reach.shapes) for reach in q.reaches.values())
    return {"dispatched": popped, "kib_full": full / 1024, "kib_after": after / 1024, "entries_left": left,
            "dispatch_us_per_job": seconds / popped * 1e6}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", type=int, default=20_000, help="distinct foreign constraint sets")
    parser.add_argument("--fills", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=100_000, help="backlog of distinct constraint sets")
    parser.add_argument("--miners", type=int, default=10_000, help="idle miners a submit looks through")
    parser.add_argument("--rounds", type=int, default=99_000, help="pushes and pops of the common case")
    args = parser.parse_args()
    regions = [Constraints(region=f"r{i}") for i in range(args.shapes)]
    memory_needs = [Constraints(min_vram_gb=100 + i) for i in range(args.shapes)]
    a100 = Capabilities(region="eu", gpus=(Gpu("a100", 80),))
    print(f"fills/s, {args.shapes:,} foreign regions: {fills_per_s(regions, a100, args.fills):,.0f}")
    per_client = fills_per_s(regions, a100, args.fills, clients=args.shapes)
    print(f"fills/s, {args.shapes:,} foreign regions, a client each: {per_client:,.0f}")
    print(f"fills/s, {args.shapes:,} foreign min memory: {fills_per_s(memory_needs, a100, args.fills):,.0f}")
    print(
        f"a submit's look for a miner, {args.miners:,} idle that cannot take it: {pick_us(args.miners):,.0f} us"
    )
    print(f"push + pop, no constraints, 1,000 queued (best of 3): {push_pop_us(args.rounds):.2f} us")
    print(f"{args.jobs:,} distinct constraint sets queued, then dispatched: {memory(args.jobs)}")


if __name__ == "__main__":
    main()
