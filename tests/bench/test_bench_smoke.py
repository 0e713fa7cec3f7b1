"""The benchmark suite still works: `python -m bench --smoke` runs every scenario, scaled down, against a
real coordinator, miners and clients in their own processes, and writes every figure the issue names.

Benchmarks are not tests: nothing here checks a time or a rate, only that each figure is a number.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

REQUIRED = (
    "baseline_unary_calls_per_s", "baseline_stream_msgs_per_s", "e2e_unary_jobs_per_s", "e2e_batched_jobs_per_s",
    "submit_p50_ms", "dispatch_p50_ms", "dispatch_p99_ms", "dispatch_max_ms", "streams_rss_mib_10k",
    "reconnect_all_back_s", "reconnect_failed", "backlog_rate_ratio_100k_vs_1k", "restart_serving_s",
)  # fmt: skip


@pytest.mark.timeout(300)
def test_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    figures = json.loads(out.read_text())
    for key in REQUIRED:
        value = figures.get(key)
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
    assert figures["meta"]["smoke"] is True
    for scenario in (
        "e2e_unary",
        "e2e_batched",
        "baseline_pipeline_unary",
    ):  # every process's CPU was measured
        assert figures[f"{scenario}_cpu_ceiling_jobs_per_s"] > 0, scenario
    assert figures["e2e_batched_writer_committing"] > 0  # (read from the coordinator's metrics endpoint)
    assert "end to end" in run.stdout and "ok" in run.stdout  # the table was printed


@pytest.mark.timeout(120)
def test_the_in_process_queues_bench_runs() -> None:
    """`python -m bench.queues` (the ready queues alone), scaled down: it runs and prints its figures."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.queues", "--shapes", "300", "--fills", "200", "--jobs", "2000",
         "--miners", "100", "--rounds", "1000"],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "fills/s" in run.stdout and "'entries_left': 0" in run.stdout, run.stdout


@pytest.mark.timeout(120)
def test_the_receipt_log_bench_runs() -> None:
    """`python -m bench.receipt_log` scaled down: it runs and prints a line per way of holding the log."""
    run = subprocess.run([sys.executable, "-m", "bench.receipt_log", "--leaves", "3000"], cwd=ROOT,
                         capture_output=True, text=True, timeout=100)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("receipt log of 3,000 leaves"), run.stdout
    assert [line.split("  ")[0] for line in lines[1:]] == ["whole tree (before tiles)", "tiled, first start (no tiles)",
                                                           "tiled"], run.stdout  # fmt: skip
