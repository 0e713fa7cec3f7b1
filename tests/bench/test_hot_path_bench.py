"""`python -m bench.hot_path` (the per-job functions in process), scaled down: it runs and prints a figure for
every row. Benchmarks are not tests: no time is checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "check_bounds(SubmitJobsRequest)", "job_spec", "of which struct_digest", "job_message(with_payload=False)",
    "fill_job (an assignment's job)", "check_bounds(ConnectRequest results)", "result_in", "ReceiptIssuer.issue",
    "TiledLog.append", "sum per job",
)  # fmt: skip


@pytest.mark.timeout(120)
def test_the_hot_path_bench_prints_every_row() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.hot_path", "--jobs", "600", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    for row in ROWS:
        assert re.search(rf"^\s*{re.escape(row)}\s+\d+\.\d\d$", run.stdout, re.MULTILINE), (row, run.stdout)
