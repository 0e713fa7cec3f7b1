"""`python -m bench [--smoke] [--json PATH] [--only NAME ...]`: the coordinator's performance suite."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import scenarios
from .procs import ROOT

# (key, label, unit, target text, check) in the order of the scenarios
ROWS: list[tuple[str, str, str, str, Any]] = [
    ("baseline_unary_calls_per_s", "1 bare grpcio unary, 64 in flight", "calls/s", "", None),
    ("baseline_server_cpu_us_per_call", "1   bare server CPU per call", "us", "", None),
    ("baseline_stream_msgs_per_s", "1 bare grpcio stream, one way", "msgs/s", "", None),
    ("baseline_pipeline_unary_jobs_per_s", "1 bare job pipeline, 1 job per call", "jobs/s", "", None),
    ("baseline_pipeline_unary_server_cpu_us_per_job", "1   CPU per job: server", "us", "", None),
    ("baseline_pipeline_unary_client_cpu_us_per_job", "1   CPU per job: client", "us", "", None),
    ("baseline_pipeline_unary_workers_cpu_us_per_job", "1   CPU per job: workers (miners)", "us", "", None),
    (
        "baseline_pipeline_unary_cpu_ceiling_jobs_per_s",
        "1   ceiling: all cores at this CPU/job",
        "jobs/s",
        "",
        None,
    ),
    ("baseline_pipeline_batched_jobs_per_s", "1 bare job pipeline, batched", "jobs/s", "", None),
    ("baseline_pipeline_batched_server_cpu_us_per_job", "1   CPU per job: server", "us", "", None),
    ("baseline_pipeline_batched_client_cpu_us_per_job", "1   CPU per job: client", "us", "", None),
    ("baseline_pipeline_batched_workers_cpu_us_per_job", "1   CPU per job: workers (miners)", "us", "", None),
    (
        "baseline_pipeline_batched_cpu_ceiling_jobs_per_s",
        "1   ceiling: all cores at this CPU/job",
        "jobs/s",
        "",
        None,
    ),
    ("e2e_unary_jobs_per_s", "2 end to end, 1 job per SubmitJob", "jobs/s", ">= 2000", lambda v: v >= 2000),
    ("e2e_unary_ratio", "2   ratio to bare unary calls/s", "", ">= 0.6", lambda v: v >= 0.6),
    ("e2e_unary_ratio_to_pipeline", "2   ratio to the bare job pipeline", "", "", None),
    ("submit_only_calls_per_s", "2   SubmitJob alone (no miners yet)", "calls/s", "", None),
    ("submit_only_coord_cpu_us_per_job", "2     its coordinator CPU per call", "us", "", None),
    ("e2e_unary_coord_cpu_us_per_job", "2   CPU per job: coordinator", "us", "", None),
    ("e2e_unary_coord_loop_cpu_us_per_job", "2     of which its event loop thread", "us", "", None),
    (
        "e2e_unary_coord_busiest_thread_cpu_us_per_job",
        "2     its busiest other thread (writer)",
        "us",
        "",
        None,
    ),
    ("e2e_unary_client_cpu_us_per_job", "2   CPU per job: client", "us", "", None),
    ("e2e_unary_miners_cpu_us_per_job", "2   CPU per job: miners", "us", "", None),
    ("e2e_unary_cpu_ceiling_jobs_per_s", "2   ceiling: all cores at this CPU/job", "jobs/s", "", None),
    ("e2e_unary_loop_ceiling_jobs_per_s", "2   ceiling: its loop thread always busy", "jobs/s", "", None),
    ("e2e_unary_cores_used", "2   cores all processes used", "cores", "", None),
    ("e2e_unary_loop_busy", "2   share of the time its loop ran", "", "", None),
    ("e2e_unary_loop_runqueue", "2   share its loop waited for a free core", "", "", None),
    ("e2e_batched_jobs_per_s", "3 end to end, batched (receipts)", "jobs/s", ">= 6000", lambda v: v >= 6000),
    ("e2e_batched_ratio_to_pipeline", "3   ratio to the bare job pipeline", "", "", None),
    ("e2e_batched_coord_cpu_us_per_job", "3   CPU per job: coordinator", "us", "", None),
    ("e2e_batched_coord_loop_cpu_us_per_job", "3     of which its event loop thread", "us", "", None),
    (
        "e2e_batched_coord_busiest_thread_cpu_us_per_job",
        "3     its busiest other thread (writer)",
        "us",
        "",
        None,
    ),
    ("e2e_batched_client_cpu_us_per_job", "3   CPU per job: client", "us", "", None),
    ("e2e_batched_miners_cpu_us_per_job", "3   CPU per job: miners", "us", "", None),
    ("e2e_batched_cpu_ceiling_jobs_per_s", "3   ceiling: all cores at this CPU/job", "jobs/s", "", None),
    ("e2e_batched_loop_ceiling_jobs_per_s", "3   ceiling: its loop thread always busy", "jobs/s", "", None),
    ("e2e_batched_cores_used", "3   cores all processes used", "cores", "", None),
    ("e2e_batched_loop_busy", "3   share of the time its loop ran", "", "", None),
    ("e2e_batched_loop_runqueue", "3   share its loop waited for a free core", "", "", None),
    ("e2e_batched_writer_committing", "3   share its writer was in group commits", "", "", None),
    ("e2e_batched_writer_ran", "3     of which it ran", "", "", None),
    ("e2e_batched_writer_runqueue", "3     it waited for a free core", "", "", None),
    ("e2e_batched_slot_cycle_p50_ms", "3   slot held per job p50 (assign to done)", "ms", "", None),
    ("e2e_batched_slot_cycle_mean_ms", "3   slot held per job, mean", "ms", "", None),
    ("e2e_batched_slots_busy", "3   share of the miners' slots in use", "", "", None),
    ("latency_rate_per_s", "4 latency: open-loop submit rate", "jobs/s", "", None),
    ("submit_p50_ms", "4   submit call p50", "ms", "<= 2", lambda v: v <= 2),
    ("submit_p99_ms", "4   submit call p99", "ms", "", None),
    ("dispatch_p50_ms", "4   response -> assignment p50", "ms", "<= 1", lambda v: v <= 1),
    ("dispatch_p99_ms", "4   response -> assignment p99", "ms", "<= 5", lambda v: v <= 5),
    ("dispatch_max_ms", "4   response -> assignment max", "ms", "", None),
    ("streams_count", "5 idle miner streams", "streams", "", None),
    ("streams_rss_mib_10k", "5   coordinator RSS holding them", "MiB", "<= 1024", lambda v: v <= 1024),
    ("streams_rss_kib_per_stream", "5   RSS per stream", "KiB", "", None),
    ("reconnect_all_back_s", "5   restart: all back after SIGTERM", "s", "<= 30", lambda v: v <= 30),
    ("reconnect_failed", "5   restart: failed for good", "miners", "0", lambda v: v == 0),
    ("reconnect_attempts_failed", "5   restart: Connects failed on the way", "attempts", "", None),
    ("reconnect_attempts_internal", "5     of which INTERNAL", "attempts", "", None),
    ("backlog_rate_small_jobs_per_s", "6 dispatch rate, small backlog", "jobs/s", "", None),
    ("backlog_rate_large_jobs_per_s", "6 dispatch rate, large backlog", "jobs/s", "", None),
    ("backlog_rate_ratio_100k_vs_1k", "6   ratio large / small", "", ">= 0.9", lambda v: v >= 0.9),
    ("backlog_small_coord_cpu_us_per_job", "6   coordinator CPU per job, small", "us", "", None),
    ("backlog_large_coord_cpu_us_per_job", "6   coordinator CPU per job, large", "us", "", None),
    ("backlog_small_coord_loop_cpu_us_per_job", "6     its event loop thread, small", "us", "", None),
    ("backlog_large_coord_loop_cpu_us_per_job", "6     its event loop thread, large", "us", "", None),
    ("backlog_small_coord_busiest_thread_cpu_us_per_job", "6     its writer, small", "us", "", None),
    ("backlog_large_coord_busiest_thread_cpu_us_per_job", "6     its writer, large", "us", "", None),
    ("restart_active_jobs", "7 non-terminal jobs in the store", "jobs", "", None),
    ("restart_serving_s", "7   start to serving", "s", "<= 5", lambda v: v <= 5),
    ("start_serving_empty_s", "7   (empty store, for reference)", "s", "", None),
]

REQUIRED_KEYS = (
    "baseline_unary_calls_per_s", "baseline_stream_msgs_per_s", "e2e_unary_jobs_per_s", "e2e_batched_jobs_per_s",
    "submit_p50_ms", "dispatch_p50_ms", "dispatch_p99_ms", "dispatch_max_ms", "streams_rss_mib_10k",
    "reconnect_all_back_s", "reconnect_failed", "backlog_rate_ratio_100k_vs_1k", "restart_serving_s",
)  # fmt: skip

SCENARIOS = {
    "baseline": scenarios.baseline,
    "e2e": scenarios.end_to_end,
    "streams": scenarios.streams,
    "backlog": scenarios.backlog_and_restart,
}


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD")
        + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
        "loadavg_start": os.getloadavg()[0],
    }


def derive(figures: dict[str, Any]) -> None:
    if "e2e_unary_jobs_per_s" in figures and "baseline_unary_calls_per_s" in figures:
        figures["e2e_unary_ratio"] = figures["e2e_unary_jobs_per_s"] / figures["baseline_unary_calls_per_s"]
    if "e2e_batched_jobs_per_s" in figures and "baseline_unary_calls_per_s" in figures:
        figures["e2e_batched_ratio_to_bare_unary"] = (
            figures["e2e_batched_jobs_per_s"] / figures["baseline_unary_calls_per_s"]
        )
    for kind in ("unary", "batched"):
        e2e, bare = figures.get(f"e2e_{kind}_jobs_per_s"), figures.get(f"baseline_pipeline_{kind}_jobs_per_s")
        if e2e is not None and bare:
            figures[f"e2e_{kind}_ratio_to_pipeline"] = e2e / bare
    if "e2e_batched_jobs_per_s" in figures and "baseline_stream_msgs_per_s" in figures:
        figures["e2e_batched_ratio_to_bare_stream"] = (
            figures["e2e_batched_jobs_per_s"] / figures["baseline_stream_msgs_per_s"]
        )
    ceilings(figures, os.cpu_count() or 1)


# the processes whose CPU per job a scenario measures (server side first)
CPU_PARTS = {
    "baseline_pipeline_unary": ("server", "client", "workers"),
    "baseline_pipeline_batched": ("server", "client", "workers"),
    "e2e_unary": ("coord", "client", "miners"),
    "e2e_batched": ("coord", "client", "miners"),
}


def ceilings(figures: dict[str, Any], cpus: int) -> None:
    """The rate no layout of these processes could pass on this machine at the CPU per job measured: every
    core busy with nothing else (`_cpu_ceiling_jobs_per_s`); and, for the coordinator, the rate at which its
    event loop thread alone would be busy all the time (one GIL: `_loop_ceiling_jobs_per_s`). A target above
    the first needs less CPU per job, not more processes; above the second, less on the loop or another one."""
    for prefix, parts in CPU_PARTS.items():
        rate = figures.get(f"{prefix}_jobs_per_s")
        costs = [figures.get(f"{prefix}_{part}_cpu_us_per_job") for part in parts]
        # (a part measured 0 ran under one clock tick of /proc's accounting, 10 ms: a smoke run's client)
        if all(c is not None for c in costs) and sum(costs) > 0:  # type: ignore[arg-type]
            figures[f"{prefix}_cpu_ceiling_jobs_per_s"] = cpus * 1e6 / sum(costs)  # type: ignore[arg-type]
            if rate:  # how much of the machine the run got: near cpus, CPU-bound; well below, waiting or crowded out
                figures[f"{prefix}_cores_used"] = rate * sum(costs) / 1e6  # type: ignore[arg-type]
        loop = figures.get(f"{prefix}_coord_loop_cpu_us_per_job")
        if loop:
            figures[f"{prefix}_loop_ceiling_jobs_per_s"] = 1e6 / loop
            if rate:
                figures[f"{prefix}_loop_busy"] = rate * loop / 1e6  # the share of the run its loop thread ran
        waited = figures.get(f"{prefix}_coord_loop_runqueue_us_per_job")
        if waited is not None and rate:  # runnable with every core taken: the machine, not the coordinator
            figures[f"{prefix}_loop_runqueue"] = rate * waited / 1e6
        writer_shares(figures, prefix, rate)


def writer_shares(figures: dict[str, Any], prefix: str, rate: float | None) -> None:
    """Shares of the run's wall clock: the store's writer in group commits (near 1: every commit waits for the one
    before it), and within them on a core and waiting for a free one. The rest of its commits it slept: on the
    GIL, held by the loop, or on the disk."""
    if not rate:
        return
    for source, share in (
        ("writer_commit", "committing"),
        ("busiest_thread_cpu", "ran"),
        ("writer_runqueue", "runqueue"),
    ):
        us = figures.get(f"{prefix}_coord_{source}_us_per_job")
        if us is not None:
            figures[f"{prefix}_writer_{share}"] = rate * us / 1e6


def fmt(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"AITBC coordinator bench ({'smoke' if meta['smoke'] else 'full'}) {meta['date']}, {meta['nproc']} cpu "
        f"{meta['machine']}, Python {meta['python']}, commit {meta['commit']}, "
        f"load {meta['loadavg_start']:.2f} -> {meta.get('loadavg_end', float('nan')):.2f}",
        f"{'scenario / figure':<40} {'value':>12} {'unit':<8} {'target':<9} ok",
        "-" * 76,
    ]
    for key, label, unit, target, check in ROWS:
        if key not in figures:
            continue
        value = figures[key]
        ok = "" if check is None or meta["smoke"] else ("yes" if check(value) else "NO")
        lines.append(f"{label:<40} {fmt(value):>12} {unit:<8} {target:<9} {ok}")
    if meta["smoke"]:
        lines.append("smoke: sizes are scaled down (see meta in the JSON); targets do not apply")
    return "\n".join(lines)


async def run(names: list[str], sizes: scenarios.Sizes, workdir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in names:
        started = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        figures.update(await SCENARIOS[name](workdir, sizes))
        timings[name] = round(time.monotonic() - started, 1)
    derive(figures)
    figures["_timings"] = timings
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="every scenario, scaled down to a few seconds")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    parser.add_argument("--set", nargs="+", default=[], metavar="SIZE=N",
                        help="override a size of bench/scenarios.py Sizes, e.g. --set unary_jobs=5000")  # fmt: skip
    args = parser.parse_args(argv)
    base = scenarios.SMOKE if args.smoke else scenarios.FULL
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(base, name))
        overrides[name] = kind(float(value)) if kind is int else kind(value)
    sizes = dataclasses.replace(base, **overrides)
    meta = machine() | {"smoke": args.smoke}
    workdir = Path(tempfile.mkdtemp(prefix="aitbc-bench-"))
    try:
        figures = asyncio.run(run(args.only or list(SCENARIOS), sizes, workdir))
    except Exception:
        print(f"bench: failed; logs in {workdir}", file=sys.stderr)
        raise
    timings = figures.pop("_timings")
    meta |= {"loadavg_end": os.getloadavg()[0], "seconds": timings, "sizes": vars(sizes)}
    print(table(figures, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({**figures, "meta": meta}, indent=1) + "\n")
    if args.keep:
        print(f"bench: work directory kept: {workdir}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
