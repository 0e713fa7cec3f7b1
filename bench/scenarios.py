"""The seven scenarios of the performance issue. Each returns flat figures (numbers) for the report."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import (
    CLIENT_KEY,
    CoordinatorProcess,
    Worker,
    WorkerDied,
    cpu_seconds,
    free_port,
    main_thread_cpu_seconds,
    miner_key,
    runqueue_wait_seconds,
    stop_all,
    threads_cpu_seconds,
)


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does: the full suite, or the smoke run (a few seconds, same code)."""

    bare_unary_s: float = 5.0
    bare_warmup_s: float = 1.0
    bare_stream_msgs: int = 100_000
    miners: int = 16
    miner_procs: int = 2
    miner_slots: int = 32
    unary_concurrency: int = 64
    unary_warmup_jobs: int = 1_000
    unary_jobs: int = 15_000
    submit_only_jobs: int = 5_000
    batch: int = 500
    batch_concurrency: int = 4
    batched_warmup_jobs: int = 5_000
    batched_jobs: int = 60_000
    latency_s: float = 8.0
    latency_rate: float = 0.0  # submits/s of 4; 0: half the rate found in 2 (set it to compare builds)
    streams: int = 10_000
    stream_procs: int = 4
    stream_channels: int = 10  # per holder process
    stream_pace_per_s: float = 2_000.0  # initial connects per second, per holder process
    reconnect_timeout_s: float = 120.0
    backlog_small: int = 1_000
    backlog_large: int = 100_000
    backlog_measured: int = 10_000


FULL = Sizes()
SMOKE = Sizes(
    bare_unary_s=0.5, bare_warmup_s=0.2, bare_stream_msgs=5_000, miners=4, miner_procs=1, miner_slots=8,
    unary_concurrency=16, unary_warmup_jobs=50, unary_jobs=300, submit_only_jobs=100, batch=100, batch_concurrency=2,
    batched_warmup_jobs=100, batched_jobs=600, latency_s=0.5, streams=100, stream_procs=2, stream_channels=2,
    stream_pace_per_s=0, reconnect_timeout_s=30.0, backlog_small=100, backlog_large=1_000, backlog_measured=200,
)  # fmt: skip


def median_rate(times: list[float], chunks: int = 9) -> float:
    """Events per second from their sorted times: the median over equal chunks, so that a second or two in
    which the shared machine was busy elsewhere does not decide the figure."""
    n = len(times) - 1
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    rates = [(b - a) / (times[b] - times[a]) for a, b in itertools.pairwise(bounds) if times[b] > times[a]]
    return pct(rates, 50)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def miner_keys(start: int, count: int) -> list[tuple[str, str]]:
    return [miner_key(i) for i in range(start, start + count)]


class Fleet:
    """Miner processes over one coordinator; counts accepted results (receipt stored) across processes."""

    def __init__(self, workdir: Path, name: str, address: str, keys: list[tuple[str, str]], procs: int,
                 slots: int, channels: int = 0, pace: float = 0.0, connect_timeout_s: float = 60.0) -> None:  # fmt: skip
        self.workers = [
            Worker(
                workdir,
                f"{name}-{i}",
                "miners",
                {
                    "address": address,
                    "miners": keys[i::procs],
                    "slots": slots,
                    "channels": channels,
                    "pace_per_s": pace,
                    "connect_timeout_s": connect_timeout_s,
                },
            )
            for i in range(procs)
        ]
        self.size = len(keys)

    async def start(self) -> int:
        ready = await asyncio.gather(*(w.start(ready_within=300) for w in self.workers))
        connected = sum(r["connected"] for r in ready)
        if connected < self.size:
            print(f"bench: {connected} of {self.size} miners connected; sessions ended by reason:",
                  [r["ended"] for r in ready], [r["failures"] for r in ready], file=sys.stderr)  # fmt: skip
        return connected

    async def stats(self, attempt_errors: bool = False) -> dict[str, Any]:
        replies = await asyncio.gather(
            *(w.call("stats", attempt_errors=attempt_errors) for w in self.workers)
        )
        out: dict[str, Any] = {
            k: sum(r[k] for r in replies) for k in ("acked", "completed", "connected", "back", "failed")
        }
        out["last_ack_at"] = max(r["last_ack_at"] for r in replies)
        out["failures"] = [f for r in replies for f in r["failures"]]
        out["attempt_errors"] = sorted(e for r in replies for e in r.get("attempt_errors", []))
        out["ended"] = {}
        for r in replies:
            for k, v in r["ended"].items():
                out["ended"][k] = out["ended"].get(k, 0) + v
        return out

    async def wait_acked(self, target: int, within: float = 300.0) -> tuple[float, dict[str, Any]]:
        """Poll until target results were accepted in all; returns the time of the last accept."""
        deadline = time.monotonic() + within
        while True:
            s = await self.stats()
            if s["acked"] >= target:
                return s["last_ack_at"], s
            if time.monotonic() > deadline:
                raise WorkerDied(f"only {s['acked']} of {target} results accepted within {within} s: {s}")
            await asyncio.sleep(0.01)

    async def record(self, on: bool) -> dict[str, float]:
        replies = await asyncio.gather(*(w.call("record", on=on) for w in self.workers))
        return {k: v for r in replies for k, v in r["assigned_at"].items()}

    async def ack_times(self, first: int) -> list[float]:
        """When the first `first` results were accepted, across the fleet (time.monotonic, sorted)."""
        replies = await asyncio.gather(*(w.call("acks", first=first) for w in self.workers))
        return sorted(t for r in replies for t in r["times"])[:first]

    async def mark(self) -> None:
        await asyncio.gather(*(w.call("mark") for w in self.workers))

    async def stop(self) -> None:
        await stop_all(self.workers)


class Cpu:
    """CPU seconds of the coordinator, the client and the miners over a phase, per job."""

    def __init__(self, coord: CoordinatorProcess, client: Worker, fleet: Fleet | None) -> None:
        self.pids = {"coord": [coord.pid], "client": [client.pid]}
        if fleet is not None:
            self.pids["miners"] = [w.pid for w in fleet.workers]
        self.coord, self.coord_pid = coord, coord.pid
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        out = {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.pids.items()}
        out["coord_loop"] = main_thread_cpu_seconds(self.coord_pid)
        self.threads = threads_cpu_seconds(self.coord_pid)
        self.waits = {t: runqueue_wait_seconds(self.coord_pid, t) for t in self.threads}
        self.commit_s = self.coord.commit_seconds()
        return out

    def per_job(self, prefix: str, jobs: int) -> dict[str, float]:
        threads, waits, commit_s = self.threads, self.waits, self.commit_s
        now = self._now()
        out = {f"{prefix}_{k}_cpu_us_per_job": (now[k] - self.start[k]) / jobs * 1e6 for k in now}
        # The busiest thread besides the loop: the SQLite writer, in these runs (Python names no OS thread).
        others = {
            t: self.threads[t] - threads[t]
            for t in self.threads.keys() & threads.keys()
            if t != self.coord_pid
        }
        if others:
            writer = max(others, key=others.__getitem__)
            out[f"{prefix}_coord_busiest_thread_cpu_us_per_job"] = others[writer] / jobs * 1e6
            if (waited := _grown(waits.get(writer), self.waits.get(writer))) is not None:
                out[f"{prefix}_coord_writer_runqueue_us_per_job"] = waited / jobs * 1e6
        if (waited := _grown(waits.get(self.coord_pid), self.waits.get(self.coord_pid))) is not None:
            out[f"{prefix}_coord_loop_runqueue_us_per_job"] = waited / jobs * 1e6  # (runnable, no core free)
        if (committing := _grown(commit_s, self.commit_s)) is not None:
            out[f"{prefix}_coord_writer_commit_us_per_job"] = committing / jobs * 1e6
        return out


def _grown(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def thread_split(pid: int, since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds of a coordinator: in all, its loop thread, and its busiest other thread (the SQLite writer),
    so far or, with since, since then (the busiest judged over that span)."""
    threads = threads_cpu_seconds(pid)
    now = {"cpu": cpu_seconds(pid), "loop_cpu": threads.get(pid, 0.0)}  # (the process's: ended threads too)
    if since is None:
        return {**now, **{f"tid:{t}": v for t, v in threads.items()}}
    # (a thread born since counts all its CPU)
    grown = [v - since.get(f"tid:{t}", 0.0) for t, v in threads.items() if t != pid]
    return {"cpu": now["cpu"] - since["cpu"], "loop_cpu": now["loop_cpu"] - since["loop_cpu"],
            "busiest_thread_cpu": max(grown, default=0.0)}  # fmt: skip


def slot_cycles(db: Path, since_us: int, until_us: int) -> dict[str, float]:
    """How long a miner's slot stays taken per job, from the coordinator's store: assigned to completed (the
    assignment's commit, its way to the miner, the run, the result's way back) for the jobs completed in the
    window. With the rate and the slots, it says how busy the slots were: near 1, the miners' slots bound the
    rate (Little's law), not the coordinator's CPU."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT c.occurred_us - MAX(a.occurred_us) FROM job_events c JOIN job_events a ON a.job_id = c.job_id "
            "AND a.attempt = c.attempt AND a.reason = 'ASSIGNED' "  # (the last: one given back unspent goes again)
            "WHERE c.reason = 'COMPLETED' AND c.occurred_us BETWEEN ? AND ? GROUP BY c.job_id", (since_us, until_us),
        ).fetchall()  # fmt: skip
    cycles_ms = [r[0] / 1e3 for r in rows]
    if not cycles_ms:
        return {}
    return {"slot_cycle_p50_ms": pct(cycles_ms, 50), "slot_cycle_mean_ms": sum(cycles_ms) / len(cycles_ms)}


def wall_us(monotonic_s: float) -> int:
    """A time.monotonic() reading (any process of this machine) as UTC microseconds, like the store's times."""
    return int((monotonic_s + time.time() - time.monotonic()) * 1e6)


# --------------------------------------------------------------------------------------------- 1. baseline
async def baseline(workdir: Path, sizes: Sizes) -> dict[str, float]:
    server = Worker(workdir, "bare-server", "bare-server", {})
    port = (await server.start())["port"]
    address = f"127.0.0.1:{port}"
    out: dict[str, float] = {}
    try:
        unary = Worker(workdir, "bare-unary", "bare-unary", {"address": address})
        await unary.start()
        cpu = cpu_seconds(server.pid)
        r = await unary.call(
            "run", concurrency=64, warmup_s=sizes.bare_warmup_s, duration_s=sizes.bare_unary_s
        )
        out["baseline_unary_calls_per_s"] = r["rate"]
        # server CPU per call (warm-up calls included in both the CPU and the count)
        calls = r["calls"] * (sizes.bare_warmup_s + sizes.bare_unary_s) / sizes.bare_unary_s
        out["baseline_server_cpu_us_per_call"] = (cpu_seconds(server.pid) - cpu) / calls * 1e6
        await unary.stop()
        stream = Worker(workdir, "bare-stream", "bare-stream", {"address": address})
        await stream.start()
        r = await stream.call(
            "run", count=sizes.bare_stream_msgs, warmup=max(100, sizes.bare_stream_msgs // 20)
        )
        out["baseline_stream_msgs_per_s"] = r["rate"]
        await stream.stop()
    finally:
        await server.stop()
    out.update(await bare_pipeline(workdir, sizes))
    return out


async def bare_pipeline(workdir: Path, sizes: Sizes) -> dict[str, float]:
    """The jobs of 2 and 3 with no work: the same processes, calls and stream messages, bytes only."""
    server = Worker(workdir, "bare-pipeline-server", "bare-pipeline-server", {})
    port = (await server.start())["port"]
    address = f"127.0.0.1:{port}"
    per_proc = sizes.miners // sizes.miner_procs
    worker_args = {"address": address, "streams": per_proc, "slots": sizes.miner_slots}
    workers = [
        Worker(workdir, f"bare-pipeline-workers-{i}", "bare-pipeline-workers", worker_args)
        for i in range(sizes.miner_procs)
    ]
    client = Worker(workdir, "bare-pipeline-submit", "bare-pipeline-submit", {"address": address})
    out: dict[str, float] = {}
    acked = 0

    async def wait_acked(target: int) -> float:
        deadline = time.monotonic() + 300
        while True:
            replies = await asyncio.gather(*(w.call("stats") for w in workers))
            if sum(r["acked"] for r in replies) >= target:
                return max(r["last_ack_at"] for r in replies)
            if time.monotonic() > deadline:
                raise WorkerDied(f"bare pipeline: {replies} acked of {target}")
            await asyncio.sleep(0.01)

    async def run(key: str, n: int, warmup: int, batch: int, concurrency: int) -> None:
        nonlocal acked
        await client.call("run", n=warmup, batch=batch, concurrency=concurrency)
        acked += warmup
        await wait_acked(acked)
        pids = {"server": [server.pid], "client": [client.pid], "workers": [w.pid for w in workers]}
        before = {k: sum(map(cpu_seconds, p)) for k, p in pids.items()}
        r = await client.call("run", n=n, batch=batch, concurrency=concurrency)
        acked += n
        last = await wait_acked(acked)
        out[f"baseline_pipeline_{key}_jobs_per_s"] = n / (last - r["first"])
        for k, p in pids.items():
            used = sum(map(cpu_seconds, p)) - before[k]
            out[f"baseline_pipeline_{key}_{k}_cpu_us_per_job"] = used / n * 1e6

    try:
        await asyncio.gather(*(w.start() for w in workers))
        await client.start()
        await run("unary", sizes.unary_jobs, sizes.unary_warmup_jobs, 1, sizes.unary_concurrency)
        await run(
            "batched", sizes.batched_jobs, sizes.batched_warmup_jobs, sizes.batch, sizes.batch_concurrency
        )
    finally:
        await stop_all([client, *workers, server])
    return out


# ------------------------------------------------------------------------------- 2, 3, 4. end to end, latency
async def end_to_end(workdir: Path, sizes: Sizes) -> dict[str, float]:
    coord = CoordinatorProcess(workdir, "coord-e2e", workdir / "e2e.db", free_port(), sizes.miners)
    out: dict[str, float] = {"start_serving_empty_s": await coord.start()}
    fleet = Fleet(workdir, "e2e-miners", coord.address, miner_keys(0, sizes.miners), sizes.miner_procs,
                  sizes.miner_slots)  # fmt: skip
    client = Worker(workdir, "e2e-client", "submit", {"address": coord.address, "key": CLIENT_KEY})
    try:
        await client.start()
        # 2, its first part alone: SubmitJob calls with no miner connected (insert, commit, response)
        cpu = Cpu(coord, client, None)
        r = await client.call("unary", n=sizes.submit_only_jobs, concurrency=sizes.unary_concurrency)
        out["submit_only_calls_per_s"] = r["rate"]
        out.update(cpu.per_job("submit_only", sizes.submit_only_jobs))
        await fleet.start()
        acked = 1 + sizes.submit_only_jobs  # the client's warm-up job, and those
        await fleet.wait_acked(acked)

        # 2. one job per SubmitJob call, 64 in flight
        await client.call("unary", n=sizes.unary_warmup_jobs, concurrency=sizes.unary_concurrency)
        acked += sizes.unary_warmup_jobs
        await fleet.wait_acked(acked)
        cpu = Cpu(coord, client, fleet)
        r = await client.call("unary", n=sizes.unary_jobs, concurrency=sizes.unary_concurrency)
        acked += sizes.unary_jobs
        last, _ = await fleet.wait_acked(acked)
        out["e2e_unary_jobs_per_s"] = sizes.unary_jobs / (last - r["first"])
        out.update(cpu.per_job("e2e_unary", sizes.unary_jobs))

        # 3. batched: SubmitJobs, several assignments per message, batched results
        await client.call(
            "batched", n=sizes.batched_warmup_jobs, batch=sizes.batch, concurrency=sizes.batch_concurrency
        )
        acked += sizes.batched_warmup_jobs
        await fleet.wait_acked(acked)
        cpu = Cpu(coord, client, fleet)
        r = await client.call(
            "batched", n=sizes.batched_jobs, batch=sizes.batch, concurrency=sizes.batch_concurrency
        )
        acked += sizes.batched_jobs
        last, _ = await fleet.wait_acked(acked)
        out["e2e_batched_jobs_per_s"] = sizes.batched_jobs / (last - r["first"])
        out.update(cpu.per_job("e2e_batched", sizes.batched_jobs))
        window = (wall_us(r["first"]), wall_us(last))

        # 4. latency at half the rate of 2, open loop
        rate = sizes.latency_rate or out["e2e_unary_jobs_per_s"] / 2
        await fleet.record(True)
        r = await client.call("paced", rate=rate, seconds=sizes.latency_s)
        acked += len(r["samples"])
        await fleet.wait_acked(acked)
        assigned = await fleet.record(False)
        submit_ms = [(t1 - t0) * 1e3 for _, t0, t1 in r["samples"]]
        # Response to assignment: 0 when the miner had the job before the client had the response (the
        # assignment rides in the same commit as the insert, so either may arrive first).
        raw_ms = [(assigned[j] - t1) * 1e3 for j, _, t1 in r["samples"] if j in assigned]
        dispatch_ms = [max(0.0, d) for d in raw_ms]
        out.update(
            latency_rate_per_s=rate, latency_samples=len(submit_ms), submit_p50_ms=pct(submit_ms, 50),
            submit_p99_ms=pct(submit_ms, 99), submit_max_ms=max(submit_ms), dispatch_p50_ms=pct(dispatch_ms, 50),
            dispatch_p99_ms=pct(dispatch_ms, 99), dispatch_max_ms=max(dispatch_ms),
            dispatch_before_response_share=sum(1 for d in raw_ms if d <= 0) / max(1, len(raw_ms)),
            submit_to_assignment_p50_ms=pct([(assigned[j] - t0) * 1e3 for j, t0, _ in r["samples"] if j in assigned], 50),
        )  # fmt: skip
    finally:
        await client.stop()
        await fleet.stop()
        await coord.stop()
    # (read once the coordinator is gone: nothing else runs meanwhile)
    cycles = slot_cycles(coord.db, *window)
    out.update({f"e2e_batched_{k}": v for k, v in cycles.items()})
    if cycles:
        slots = sizes.miners * sizes.miner_slots
        out["e2e_batched_slots_busy"] = (
            out["e2e_batched_jobs_per_s"] * cycles["slot_cycle_mean_ms"] / 1e3 / slots
        )
    return out


# ---------------------------------------------------------------------------------- 5. streams and reconnect
async def streams(workdir: Path, sizes: Sizes) -> dict[str, float]:
    n = sizes.streams
    coord = CoordinatorProcess(workdir, "coord-streams", workdir / "streams.db", free_port(), n)
    await coord.start()
    out: dict[str, float] = {"streams_count": n, "streams_rss_mib_idle": coord.rss_mib()}
    holders = Fleet(workdir, "stream-holders", coord.address, miner_keys(0, n), sizes.stream_procs, 1,
                    channels=sizes.stream_channels, pace=sizes.stream_pace_per_s,
                    connect_timeout_s=sizes.reconnect_timeout_s)  # fmt: skip
    try:
        started = time.monotonic()
        connected = await holders.start()
        out["streams_connect_s"] = time.monotonic() - started
        if connected < n:
            raise WorkerDied(f"only {connected} of {n} streams connected")
        await asyncio.sleep(2.0 if n > 1000 else 0.3)  # let allocations settle
        out["streams_rss_mib_10k"] = coord.rss_mib()
        out["streams_rss_kib_per_stream"] = (
            (out["streams_rss_mib_10k"] - out["streams_rss_mib_idle"]) * 1024 / n
        )

        # Restart: SIGTERM (go-away to every miner), start again on the same port and store.
        await holders.mark()
        t0 = time.monotonic()
        await coord.stop()
        out["reconnect_shutdown_s"] = time.monotonic() - t0
        t_spawn = time.monotonic()
        out["reconnect_restart_serving_s"] = await coord.start()
        deadline = time.monotonic() + sizes.reconnect_timeout_s
        while True:
            s = await holders.stats()
            if s["back"] + s["failed"] >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        now = time.monotonic()
        t_stopped, t_serving = t_spawn, t_spawn + out["reconnect_restart_serving_s"]
        out["reconnect_all_back_s"] = now - t0
        out["reconnect_after_serving_s"] = now - t_spawn - out["reconnect_restart_serving_s"]
        out["reconnect_back"] = s["back"]
        ended = s["ended"]
        print(f"bench: streams: sessions ended by reason: {ended}", file=sys.stderr)
        out["reconnect_attempts_failed"] = sum(v for k, v in ended.items() if k != "SHUTTING_DOWN")
        out["reconnect_attempts_cancelled"] = ended.get("CANCELLED", 0) + ended.get("RESOURCE_EXHAUSTED", 0)
        out["reconnect_failed"] = n - s["back"]
        # Failed Connect attempts by phase: against the stopping coordinator (SIGTERM until its process
        # exited), while none ran, and against the new one (from SERVING on), by status code.
        errors = (await holders.stats(attempt_errors=True))["attempt_errors"]
        phases = {"stopping": (t0, t_stopped), "down": (t_stopped, t_serving), "new": (t_serving, math.inf)}
        for phase, (lo, hi) in phases.items():
            codes = Counter(code for t, code, _ in errors if lo <= t < hi)
            print(f"bench: streams: failed attempts, {phase} coordinator: {dict(codes)}", file=sys.stderr)
            out[f"reconnect_attempts_failed_{phase}"] = sum(codes.values())
            out[f"reconnect_attempts_internal_{phase}"] = codes.get("INTERNAL", 0)
        out["reconnect_attempts_internal"] = sum(1 for _, code, _ in errors if code == "INTERNAL")
        out["streams_rss_mib_after_reconnect"] = coord.rss_mib()
    finally:
        await holders.stop()
        await coord.stop()
    return out


# ----------------------------------------------------------------------------------- 6, 7. backlog, restart
async def backlog_case(
    workdir: Path, sizes: Sizes, queued: int, keep: bool
) -> tuple[float, dict[str, float], CoordinatorProcess | None]:
    """Dispatch rate while at least `queued` jobs wait: queue queued + M, then let 16 miners take M."""
    m = sizes.backlog_measured
    coord = CoordinatorProcess(workdir, f"coord-backlog-{queued}", workdir / f"backlog-{queued}.db", free_port(),
                               sizes.miners)  # fmt: skip
    await coord.start()
    client = Worker(
        workdir, f"backlog-client-{queued}", "submit", {"address": coord.address, "key": CLIENT_KEY}
    )
    fleet = Fleet(workdir, f"backlog-miners-{queued}", coord.address, miner_keys(0, sizes.miners),
                  sizes.miner_procs, sizes.miner_slots)  # fmt: skip
    try:
        await client.start()  # its warm-up job is queued too
        await client.call("batched", n=queued + m, batch=1000, concurrency=2, within=1800)
        await client.stop()
        cpu = thread_split(coord.pid)
        await fleet.start()
        await fleet.wait_acked(m)
        cpu_us_per_job = {k: v / m * 1e6 for k, v in thread_split(coord.pid, since=cpu).items()}
        times = await fleet.ack_times(m)
        skip = m // 10  # the miners' first fills (connecting) are not dispatch
        rate = median_rate(times[skip:m])
    finally:
        await client.stop()
        await fleet.stop()
        if not keep:
            await coord.stop()
    return rate, cpu_us_per_job, coord if keep else None


async def backlog_and_restart(workdir: Path, sizes: Sizes) -> dict[str, float]:
    small, small_cpu, _ = await backlog_case(workdir, sizes, sizes.backlog_small, keep=False)
    large, large_cpu, coord = await backlog_case(workdir, sizes, sizes.backlog_large, keep=True)
    assert coord is not None
    out = {"backlog_small": sizes.backlog_small, "backlog_large": sizes.backlog_large,
           "backlog_rate_small_jobs_per_s": small, "backlog_rate_large_jobs_per_s": large,
           "backlog_rate_ratio_100k_vs_1k": large / small}  # fmt: skip
    for size, cpu in (("small", small_cpu), ("large", large_cpu)):
        out.update({f"backlog_{size}_coord_{k}_us_per_job": v for k, v in cpu.items()})
    # 7. restart with the large backlog still in the store
    await coord.stop()
    with sqlite3.connect(coord.db) as db:
        out["restart_active_jobs"] = db.execute(
            "SELECT count(*) FROM jobs WHERE state IN (1, 2, 3)"
        ).fetchone()[0]
        out["restart_receipts"] = db.execute("SELECT count(*) FROM receipts").fetchone()[0]
    try:
        out["restart_serving_s"] = await coord.start()
        out["restart_rss_mib"] = coord.rss_mib()
    finally:
        await coord.stop()
    return out
